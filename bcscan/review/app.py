"""The review web application over one output folder (Flask, served by werkzeug's WSGI server).

Security: every request needs the access token printed with the URL (kept in an HttpOnly cookie
after the first visit); a state-changing request must also carry it in a header or form field and,
when the browser names an Origin, come from this server's own.  URLs name cells by scan number and
cell id, never by path.  Decisions are stored the moment they are made.
"""
from __future__ import annotations

import hmac
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pandas as pd

from bcscan.errors import BcscanError
from bcscan.results.aggregation import FLAG_NEGATIVE, FLAG_REVIEW
from bcscan.results.reports import RunData, load_run
from bcscan.results.reports.flags import every_flag
from bcscan.results.reports.pictures import marked_thumbnail
from bcscan.results.reports.scan_pictures import cell_crop, open_recorded_scan
from bcscan.results.verification import CONCLUSIONS, REVIEW_LABELS, verified_counts
from bcscan.review.publish import publish_locked
from bcscan.review.store import ReviewStore

TOKEN_COOKIE = "bcscan_review_token"
TOKEN_HEADER = "X-Review-Token"
TOKEN_FIELD = "token"
# one key per label, in REVIEW_LABELS order: the digit, and a letter that reads as the label
LABEL_KEYS = dict(zip(REVIEW_LABELS, zip("123456789", "blnmeaoxu")))
CROP_PX = 128          # a gallery crop on screen
CONTEXT_FACTOR = 4     # the context view shows this many crop widths around the cell
CONTEXT_PX = 480
THUMBNAIL_PX = 900
OPEN_SCANS = 8         # scans kept open for crops


@dataclass
class Review:
    """What every request reads: the run's tables, its review store, and the scans kept open."""
    out_dir: Path
    data: RunData
    store: ReviewStore
    token: str
    reviewer: str = ""
    scan_dir: Path | None = None                                          # --scan-dir, else run.json's
    run_seen: int = 0                                                     # run_stamp() of the run read
    lock: threading.Lock = field(default_factory=threading.Lock)          # the store's one connection
    scans: OrderedDict = field(default_factory=OrderedDict)               # scan number → (handle, lock)
    scans_lock: threading.Lock = field(default_factory=threading.Lock)

    def follow_reruns(self) -> None:
        """A `bcscan scan` run into the folder while the review is open (run.json is written last):
        read its tables and reconcile the decisions with its cells before answering."""
        stamp = run_stamp(self.out_dir)
        if stamp == self.run_seen:
            return
        with self.lock, self.scans_lock:
            data = load_run(self.out_dir, self.scan_dir)
            self.store.use_run(data.cells, data.run_id)
            self.store.reconcile()
            self._close_scans()
            self.data, self.run_seen = data, stamp

    def scan_row(self, number: int) -> pd.Series:
        from flask import abort

        if not 0 <= number < len(self.data.scans) or self.data.scans.iloc[number]["status"] != "ok":
            abort(404)
        return self.data.scans.iloc[number]

    def scan_number(self, scan: str) -> int:
        return int(np.flatnonzero(self.data.scans["scan"].to_numpy() == scan)[0])

    def with_scan(self, number: int, use):
        """use(handle) on the scan, opened once and kept among the last OPEN_SCANS used."""
        from flask import abort

        row = self.scan_row(number)
        with self.scans_lock:
            if number not in self.scans:
                if self.data.scan_dir is None:
                    abort(404, "the run recorded no scan folder: start bcscan review with --scan-dir")
                try:
                    self.scans[number] = (open_recorded_scan(self.data, row), threading.Lock())
                except (BcscanError, OSError) as exc:
                    abort(404, f"scan {number} cannot be opened: {exc}")
                while len(self.scans) > OPEN_SCANS:
                    old, old_lock = self.scans.popitem(last=False)[1]
                    with old_lock:  # not while another request cuts from it
                        old.close()
            self.scans.move_to_end(number)
            handle, lock = self.scans[number]
        with lock:
            return use(handle)

    def _close_scans(self) -> None:
        for handle, _ in self.scans.values():
            handle.close()
        self.scans.clear()

    def close(self) -> None:
        self._close_scans()
        self.store.close()

    def patient(self, number: int) -> pd.Series:
        from flask import abort

        if not 0 <= number < len(self.data.patients):
            abort(404)
        return self.data.patients.iloc[number]


def new_token() -> str:
    return secrets.token_urlsafe(24)


def run_stamp(out_dir: Path) -> int:
    """When the folder's run.json was last written (0 without one)."""
    try:
        return (Path(out_dir) / "run.json").stat().st_mtime_ns
    except OSError:
        return 0


def create_app(review: Review):
    from flask import Flask

    app = Flask(__name__)
    app.secret_key = secrets.token_bytes(32)
    app.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Strict", MAX_CONTENT_LENGTH=64 * 1024)
    app.extensions["review"] = review
    app.before_request(_check_token)
    app.before_request(review.follow_reruns)
    app.after_request(_security_headers)
    app.add_url_rule("/", "worklist", _worklist)
    app.add_url_rule("/patient/<int:number>", "patient", _patient_page)
    app.add_url_rule("/patient/<int:number>/sign-off", "sign_off", _sign_off, methods=["POST"])
    app.add_url_rule("/scan/<int:scan>/thumbnail.jpg", "thumbnail", _thumbnail)
    app.add_url_rule("/scan/<int:scan>/cell/<int:cell>/crop.jpg", "crop", _crop)
    app.add_url_rule("/scan/<int:scan>/cell/<int:cell>/context.jpg", "context", _context)
    app.add_url_rule("/scan/<int:scan>/cell/<int:cell>/history", "history", _history)
    app.add_url_rule("/decide", "decide", _decide, methods=["POST"])
    return app


def _review() -> Review:
    from flask import current_app

    return current_app.extensions["review"]


# ------------------------------------------------------------------------------------------------ security

def _check_token():
    """403 without the token; the token in the URL becomes a cookie and leaves the address bar."""
    from flask import abort, redirect, request

    token = _review().token
    given = request.args.get(TOKEN_FIELD)
    if given is not None and request.method == "GET":
        if not hmac.compare_digest(given, token):
            abort(403)
        response = redirect(request.path)
        response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict")
        return response
    if not hmac.compare_digest(request.cookies.get(TOKEN_COOKIE, ""), token):
        abort(403)
    if request.method != "GET":
        sent = request.headers.get(TOKEN_HEADER) or request.form.get(TOKEN_FIELD, "")
        if not hmac.compare_digest(sent, token):
            abort(403)
        origin = request.headers.get("Origin")
        if origin and urlsplit(origin).netloc != request.host:
            abort(403)
    return None


def _security_headers(response):
    response.headers["Content-Security-Policy"] = ("default-src 'self'; img-src 'self'; style-src 'self'; "
                                                   "script-src 'self'; frame-ancestors 'none'; form-action 'self'")
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    # nothing to another site (the first URL holds the token); same-origin, so forms still send their Origin
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"
    return response


# ------------------------------------------------------------------------------------------------- pages

def _worklist():
    """Patients with their flag, % leukemic and CI, cells and verification status; flagged first."""
    from flask import render_template

    review = _review()
    patients = review.data.patients.reset_index(drop=True)
    with review.lock:
        current = review.store.current_labels()
        signed = {pid: review.store.signoff(pid) for pid in patients["patient_id"]}
    decided = current.groupby("patient_id").size()
    rows = []
    for number, p in patients.iterrows():
        pid = str(p["patient_id"])
        sign = signed[pid]
        n_decided = int(decided.get(pid, 0))
        status = (f"signed off by {sign['reviewer']} at {sign['signed_at']}" if sign
                  else f"in review: {n_decided} cell(s) decided" if n_decided else "not verified")
        rank = 0 if p["flag"] == FLAG_REVIEW else 2 if p["flag"] == FLAG_NEGATIVE else 1
        rows.append({"number": number, "patient_id": pid, "flag": p["flag"], "pct": p["pct_leukemic"],
                     "ci_low": p["ci_low"], "ci_high": p["ci_high"], "n_cells": int(p["n_cells"]), "status": status,
                     "signed": bool(sign), "rank": rank})
    rows.sort(key=lambda r: (r["rank"], r["signed"], r["patient_id"]))
    return render_template("worklist.html", rows=rows, review=review)


def _patient_page(number: int):
    """The gallery by the model's call, most suspicious first; the scans with their cells; sign-off."""
    from flask import render_template

    review = _review()
    patient = review.patient(number)
    pid = str(patient["patient_id"])
    with review.lock:
        cells = review.store.labelled_cells()
        sign = review.store.signoff(pid)
        history = review.store.signoff_history(pid)
    cells = cells[cells["patient_id"] == pid].sort_values(["p_leukemic", "scan", "cell_id"],
                                                           ascending=[False, True, True], kind="mergesort")
    cells = cells.assign(scan_number=[review.scan_number(s) for s in cells["scan"]])
    groups = [(call, cells[cells["label"] == call]) for call in ("leukemic", "normal")]
    scans = review.data.scans.reset_index(drop=True)
    mine = [(i, row) for i, row in scans.iterrows() if row["patient_id"] == pid and row["status"] == "ok"]
    return render_template(
        "patient.html", review=review, number=number, patient=patient, pid=pid, groups=groups, scans=mine,
        counts=verified_counts(cells["label"], cells["review_label"]), signoff=sign, history=history,
        flags=every_flag(patient, review.data.config("aggregation")),
        label_keys=LABEL_KEYS, conclusions=CONCLUSIONS, crop_px=CROP_PX,
        context_factor=CONTEXT_FACTOR, positions=_positions(review, mine, cells))


def _positions(review: Review, scans: list, cells: pd.DataFrame) -> dict:
    """(scan number, cell id) → the cell's place on its scan's thumbnail, in % of its width and height."""
    out = {}
    for number, _ in scans:
        try:
            width, height = review.with_scan(number, lambda h: h.dimensions)
        except Exception:  # noqa: BLE001 - a scan that cannot be opened shows no thumbnail markers
            continue
        for cell in cells[cells["scan_number"] == number].itertuples():
            out[(number, int(cell.cell_id))] = (100.0 * cell.x / width, 100.0 * cell.y / height)
    return out


# ---------------------------------------------------------------------------------------------- pictures

def _jpeg(rgb: np.ndarray):
    import cv2
    from flask import Response

    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    return Response(buf.tobytes(), mimetype="image/jpeg")


def _cell(review: Review, scan: int, cell: int) -> pd.Series:
    from flask import abort

    try:
        return review.store.cell(str(review.scan_row(scan)["scan"]), cell)
    except BcscanError:
        abort(404)


def _crop(scan: int, cell: int):
    """The cell at the model's scale: the crop it was judged on."""
    review = _review()
    c = _cell(review, scan, cell)
    return _jpeg(review.with_scan(scan, lambda h: cell_crop(h, c["x"], c["y"], review.data.model_crop_um, CROP_PX)))


def _context(scan: int, cell: int):
    """A larger view around the cell, its crop outlined."""
    import cv2

    review = _review()
    c = _cell(review, scan, cell)
    image = review.with_scan(scan, lambda h: cell_crop(h, c["x"], c["y"], CONTEXT_FACTOR * review.data.model_crop_um,
                                                       CONTEXT_PX)).copy()
    half = CONTEXT_PX // (2 * CONTEXT_FACTOR)
    centre = CONTEXT_PX // 2
    cv2.rectangle(image, (centre - half, centre - half), (centre + half, centre + half), (20, 20, 20), 1)
    return _jpeg(image)


def _thumbnail(scan: int):
    """The scan with every cell marked in its class colour."""
    review = _review()
    name = str(review.scan_row(scan)["scan"])
    cells = review.data.cells[review.data.cells["scan"] == name]

    def draw(handle):
        return marked_thumbnail(handle.thumbnail(THUMBNAIL_PX), cells, handle.dimensions[0], handle.mpp)[0]

    return _jpeg(review.with_scan(scan, draw))


def _history(scan: int, cell: int):
    """Every decision on the cell, oldest first (set-aside ones too): who changed what, when."""
    from flask import jsonify

    review = _review()
    c = _cell(review, scan, cell)
    with review.lock:
        rows = review.store.history(str(c["scan"]), int(c["cell_id"]))
    return jsonify([{k: r[k] for k in ("label", "previous_label", "reviewer", "decided_at", "source", "dropped_at")}
                    for r in rows])


# ----------------------------------------------------------------------------------------------- changes

def _decide():
    """One decision, stored at once; answers with the cell's label and the patient's verified counts."""
    from flask import abort, jsonify, request

    review = _review()
    body = request.get_json(silent=True) or {}
    try:
        scan, cell = int(body.get("scan")), int(body.get("cell"))
    except (TypeError, ValueError):
        abort(400)
    name = str(review.scan_row(scan)["scan"])
    try:
        with review.lock:
            decision = review.store.decide(name, cell, str(body.get("label", "")), str(body.get("reviewer", "")))
            cells = review.store.labelled_cells()
    except BcscanError as exc:
        return jsonify(error=str(exc)), 400
    pid = str(review.store.cell(name, cell)["patient_id"])
    mine = cells[cells["patient_id"] == pid]
    counts = verified_counts(mine["label"], mine["review_label"])
    return jsonify(label=decision.label, previous_label=decision.previous_label, decided_at=decision.decided_at,
                   reopened=decision.reopened, n_cells=counts.n_cells, n_blasts=counts.n_blasts,
                   pct_blasts=counts.pct_blasts, ci_low=counts.ci_low, ci_high=counts.ci_high)


def _sign_off(number: int):
    """Sign off, then put the verified counts into patients.csv and the patient's PDF."""
    from flask import flash, redirect, request, url_for

    review = _review()
    pid = str(review.patient(number)["patient_id"])
    with review.lock:
        try:
            v = review.store.sign_off(pid, request.form.get("reviewer", ""), request.form.get("conclusion", ""),
                                      request.form.get("comment", ""))
        except BcscanError as exc:
            flash(f"Not signed off: {exc}")
            return redirect(url_for("patient", number=number))
        signed = f"Signed off by {v.reviewer}: {v.counts.n_blasts} blasts of {v.counts.n_cells} white cells."
        try:
            publish_locked(review.out_dir, review.store, [pid])
            flash(f"{signed} patients.csv and the patient's PDF are updated.")
        except BcscanError as exc:  # the sign-off stands; `bcscan report` publishes it later
            flash(f"{signed} The reports were not updated: {exc}")
    return redirect(url_for("patient", number=number))
