"""`bcscan train` and `bcscan evaluate`: data, splits, augmentation, training, calibration,
metrics and the model card."""
