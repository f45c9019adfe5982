"""The pathologist's PDF report per patient, and the batch summary (PDF + CSV).

Everything is rebuilt from the tables a `bcscan scan` run leaves in OUT_DIR
(cells.csv, scans.csv, patients.csv, failures.csv, run.json), so `bcscan report
OUT_DIR` regenerates the reports without the model.  The scans themselves are
only needed for pictures (thumbnails, cell crops); a scan that cannot be opened
any more gets a note instead.

The numbers and the flag of a patient are printed exactly as `patients.csv`
holds them: the report never recomputes a call.  Every string that comes from a
file or a file name is escaped before it reaches reportlab's Paragraph markup,
and characters that DejaVu Sans lacks (CJK, Hangul) are set in a fallback font.

reportlab (and cv2, matplotlib) are imported only where a PDF or a picture is made.
"""
from bcscan.results.reports.params import ReportingParams, params_from
from bcscan.results.reports.report_files import REPORTS_DIR, report_names
from bcscan.results.reports.run_data import RunData, load_run
from bcscan.results.reports.summary import SUMMARY_COLUMNS
from bcscan.results.reports.writing import write_reports

__all__ = ["REPORTS_DIR", "SUMMARY_COLUMNS", "ReportingParams", "RunData", "load_run", "params_from", "report_names",
           "write_reports"]
