"""Every error bcscan reports to a person, and the exit codes of every command.

Each error's message is one line that names the file and the problem.  A command
catches `BcscanError`, prints `bcscan: error: <message>` and exits with the code of
the error's class (`exit_code`), so the same problem exits the same way whichever
command met it.
"""
from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit codes shared by `scan`, `report`, `train` and `evaluate`."""
    OK = 0               # everything asked for was done
    SOME_FAILED = 1      # the run completed, but some scans (scan) or reports (report) failed: listed
    CANNOT_RUN = 2       # nothing could run: bad arguments, config, model, data or patient list
    LOCKED = 3           # another bcscan run holds the lock on the output folder
    DID_NOT_LEARN = 4    # train: everything was written, but the model stayed at chance
    NOT_BETTER = 5       # train, fine-tuning: the new model did worse on the held-back verified cells; not written


EXIT_CODES_HELP = """\b
Exit codes (every bcscan command):
  0  done
  1  completed, but some scans or reports failed (listed in failures.csv / on stderr)
  2  nothing could run (bad arguments, config, model, data or patient list)
  3  another bcscan run holds the lock on the output folder
  4  train only: the model did not learn (validation at chance); everything was written
  5  train, fine-tuning: worse than the init model on the held-back verified cells; not written"""


class BcscanError(Exception):
    """Base of every error bcscan reports; the message is one line."""
    exit_code = ExitCode.CANNOT_RUN


class ConfigError(BcscanError, ValueError):
    """A configuration file, option or override that cannot be used."""


class ModelError(BcscanError):
    """A model file that cannot be used (missing, corrupt, checksum mismatch)."""


class PatientError(BcscanError, ValueError):
    """A manifest or patient pattern that cannot be used."""


class TrainingError(BcscanError):
    """A training or evaluation run that cannot proceed."""


class NotBetterError(TrainingError):
    """A fine-tuned model that does worse on the lab's held-back verified cells than its init model."""
    exit_code = ExitCode.NOT_BETTER


class LockedError(BcscanError):
    """Another bcscan run is using the output folder."""
    exit_code = ExitCode.LOCKED


class ScanError(BcscanError):
    """A scan that cannot be used; recorded in failures.csv and the batch goes on."""


class StageError(BcscanError):
    """A scan failed in one stage (read, tile, segment, classify); the batch goes on."""

    def __init__(self, stage: str, message: str):
        super().__init__(message)
        self.stage = stage


class ReviewError(BcscanError):
    """A review decision, sign-off, import or review folder that cannot be used."""


class ReportError(BcscanError):
    """Reports that cannot be made."""


class ReportsIncomplete(ReportError):
    """Some patients' reports failed; the others and the summary were written."""
    exit_code = ExitCode.SOME_FAILED


def describe_failure(error: BaseException, scan: str) -> tuple[str, str]:
    """(stage, one-line message) of a scan's failure, for failures.csv: the one place errors map to
    stages.  `scan` names the scan in the message of an unexpected error."""
    if isinstance(error, StageError):
        return error.stage, str(error)
    if isinstance(error, ScanError):
        return "read", str(error)
    return "internal", f"{scan}: unexpected {type(error).__name__}: {error}"
