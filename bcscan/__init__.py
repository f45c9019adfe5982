"""bcscan: batch leukemia screening of peripheral blood smear scans."""

__version__ = "0.2.0"
