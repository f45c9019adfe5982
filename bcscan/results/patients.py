"""Which patient a scan belongs to.

In order: a manifest CSV (`scan,patient_id`), else a filename pattern (a
regular expression with a `patient` group, matched against the scan's path
relative to the scan folder), else the scan's folder.  A scan lying directly
in the scan folder has no folder of its own and becomes its own patient (its
file name without suffix): silently pooling unrelated scans would be worse.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from bcscan.errors import PatientError
from bcscan.scan.reading import SCAN_SUFFIXES


@dataclass(frozen=True)
class PatientParams:
    manifest: str | None = None          # CSV with columns scan,patient_id (scan relative to SCAN_DIR)
    filename_pattern: str | None = None  # regex with a named group 'patient'

    def __post_init__(self):
        if self.filename_pattern is not None:
            try:
                compiled = re.compile(self.filename_pattern)
            except re.error as exc:
                raise ValueError(f"filename_pattern is not a valid regular expression: {exc}") from exc
            if "patient" not in compiled.groupindex:
                raise ValueError("filename_pattern needs a named group (?P<patient>...)")


def read_manifest(path: Path) -> dict[str, str]:
    """scan (relative POSIX path) → patient_id; refuses a manifest it cannot trust."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or not {"scan", "patient_id"} <= set(reader.fieldnames):
                raise PatientError(f"{path}: manifest needs the columns scan,patient_id")
            mapping: dict[str, str] = {}
            for line, row in enumerate(reader, start=2):
                scan = str(PurePosixPath((row["scan"] or "").strip().replace("\\", "/")))
                patient = (row["patient_id"] or "").strip()
                if not scan or scan == "." or not patient:
                    raise PatientError(f"{path}:{line}: empty scan or patient_id")
                if mapping.get(scan, patient) != patient:
                    raise PatientError(f"{path}:{line}: scan '{scan}' is given two patients")
                mapping[scan] = patient
            return mapping
    except OSError as exc:
        raise PatientError(f"{path}: cannot read manifest ({exc.strerror or exc})") from exc
    except (csv.Error, UnicodeDecodeError) as exc:
        raise PatientError(f"{path}: not a readable CSV manifest ({exc})") from exc


class PatientAssigner:
    def __init__(self, params: PatientParams):
        self.manifest = read_manifest(Path(params.manifest)) if params.manifest else {}
        self.pattern = re.compile(params.filename_pattern) if params.filename_pattern else None

    def patient_of(self, relative_scan: str) -> str:
        if relative_scan in self.manifest:
            return self.manifest[relative_scan]
        if self.pattern is not None:
            match = self.pattern.search(relative_scan)
            if match and match.group("patient"):
                return match.group("patient")
        path = PurePosixPath(relative_scan)
        if len(path.parts) > 1:
            return path.parent.name
        return path.stem if path.suffix.lower() in SCAN_SUFFIXES else path.name

    def missing_from_manifest(self, relative_scans: set[str]) -> list[str]:
        """Manifest rows that name no scan found in the folder."""
        return sorted(set(self.manifest) - relative_scans)
