"""`bcscan train` and `bcscan evaluate`, one module per job, imports only downward:

- recipe (the YAML config), duplicates (average hash, near-duplicate groups), samples
  (discover, decode, cells-mode crops, cache), splits (split by image, balancing), augment;
- predict (softmax of uint8 samples), metrics, calibration (temperatures), baselines (colour-only
  baseline, stain swap), reports (report text, PNGs, JSON), card (model card);
- fit (build and fit the VGG-16), train (the `bcscan train` run) and evaluate (`bcscan evaluate`).
"""
