"""What a run produces from per-scan results: patient assignment, per-patient counts and flags,
the tables (written atomically) and the PDF reports."""
