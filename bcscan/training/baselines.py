"""Checks against shortcuts: a colour-only baseline (HSV histograms + logistic regression on the
same samples) and the stain-swap check (Reinhard re-staining of test samples as another lab's)."""
from __future__ import annotations

from typing import Any

import numpy as np

from bcscan.training.metrics import image_level, metrics_block, per_source


def hsv_histograms(x_uint8: np.ndarray, bins=(16, 8, 8)) -> np.ndarray:
    """Per-sample normalised H, S and V histograms (concatenated) of uint8 RGB samples."""
    import cv2

    feats = np.empty((len(x_uint8), sum(bins)), np.float32)
    for i, img in enumerate(x_uint8):
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
        parts = [np.histogram(hsv[..., c], bins=b, range=(0, 180 if c == 0 else 256))[0] for c, b in enumerate(bins)]
        v = np.concatenate(parts).astype(np.float32)
        feats[i] = v / max(1.0, hsv.shape[0] * hsv.shape[1])
    return feats


class LogisticRegression:
    """L2-regularised binary logistic regression (L-BFGS) on standardised features."""

    def __init__(self, c: float = 1.0):
        self.c = c

    def fit(self, x: np.ndarray, y: np.ndarray) -> "LogisticRegression":
        from scipy.optimize import minimize

        self.mu, self.sd = x.mean(0), x.std(0) + 1e-6
        z = (x - self.mu) / self.sd
        z = np.hstack([z, np.ones((len(z), 1))])
        y = np.asarray(y, np.float64)
        lam = 1.0 / (self.c * len(y))

        def f(w):
            s = z @ w
            loss = np.mean(np.logaddexp(0, s) - y * s) + 0.5 * lam * np.sum(w[:-1] ** 2)
            g = z.T @ (1 / (1 + np.exp(-s)) - y) / len(y)
            g[:-1] += lam * w[:-1]
            return loss, g

        self.w = minimize(f, np.zeros(z.shape[1]), jac=True, method="L-BFGS-B").x
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        z = np.hstack([(x - self.mu) / self.sd, np.ones((len(x), 1))])
        return 1 / (1 + np.exp(-(z @ self.w)))


def colour_baseline(samples, train_idx, test_idx, seed: int = 0) -> dict[str, Any] | None:
    """Logistic regression on HSV histograms of the same (balanced) training samples,
    scored on the same test samples, at sample and image level and per source."""
    if len(test_idx) == 0:
        return None
    y = samples.label
    clf = LogisticRegression().fit(hsv_histograms(samples.x[train_idx]), (y[train_idx] == 0).astype(float))
    p = clf.predict_proba(hsv_histograms(samples.x[test_idx]))
    ids, iy, ip = image_level(samples.image[test_idx], y[test_idx], p)
    return {"model": "logistic regression (L2, C=1) on HSV histograms (H16+S8+V8) of the same samples",
            "classifier": clf,
            "test_samples": metrics_block(y[test_idx], p),
            "test_images": metrics_block(iy, ip),
            "per_source": per_source(samples.sources, samples.source[ids], iy, ip,
                                     samples.source[samples.image[test_idx]], y[test_idx], p)}


def lab_stats(x_uint8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean over samples of each sample's per-channel CIELAB mean and std (Reinhard statistics)."""
    import cv2

    means, stds = [], []
    for img in x_uint8:
        lab = cv2.cvtColor(img, cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(np.float32)
        means.append(lab.mean(0))
        stds.append(lab.std(0))
    return np.mean(means, 0), np.mean(stds, 0)


def restain(x_uint8: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Reinhard colour transfer of each sample to the given CIELAB statistics (another lab's stain)."""
    import cv2

    out = np.empty_like(x_uint8)
    for i, img in enumerate(x_uint8):
        lab = cv2.cvtColor(img, cv2.COLOR_RGB2LAB).astype(np.float32)
        m, s = lab.reshape(-1, 3).mean(0), lab.reshape(-1, 3).std(0) + 1e-3
        lab = (lab - m) / s * std + mean
        out[i] = cv2.cvtColor(np.clip(lab, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)
    return out


def stain_swap_check(predict, baseline_clf, samples, train_idx, test_idx) -> dict[str, Any]:
    """Re-stain each dataset's test samples to the colour statistics of the other dataset(s)'
    training samples and score them again: a classifier that relies on morphology keeps its
    accuracy, one that relies on the lab's stain collapses.  `predict(x_uint8) -> p_leukemic`."""
    ds_of_source = np.array([s.dataset_name for s in samples.sources])
    smp_ds = ds_of_source[samples.source[samples.image]]
    y = samples.label
    out: dict[str, Any] = {"method": "Reinhard (CIELAB mean/std) colour transfer of test samples to the other "
                                     "dataset's training-sample statistics; image level = mean over cells"}
    for src in np.unique(smp_ds[test_idx]):
        for dst in np.unique(smp_ds[train_idx]):
            if dst == src:
                continue
            ti = test_idx[smp_ds[test_idx] == src]
            mean, std = lab_stats(samples.x[train_idx[smp_ds[train_idx] == dst]][:2000])
            xs = restain(samples.x[ti], mean, std)
            block = {}
            for name, p in (("vgg16", predict(xs)),
                            ("colour_baseline", baseline_clf.predict_proba(hsv_histograms(xs)) if baseline_clf else None),
                            ("vgg16_original_colours", predict(samples.x[ti]))):
                if p is None:
                    continue
                _, iy, ip = image_level(samples.image[ti], y[ti], p)
                block[name] = {"images": metrics_block(iy, ip), "samples": metrics_block(y[ti], p),
                               "called_normal_rate_images": float(np.mean(ip < 0.5))}
            out[f"{src} restained as {dst}"] = block
    return out
