"""The reliability suite's shared parts: canary identities, the PHI scan, the run sizes.

Every instance the suite sends carries the canary patient name, ID, birth date
and accession number below; :func:`phi_hits` looks for them in every text a
test produced (logs, metrics, prompts, report.json, reason files, outbox
entries).  DICOM outputs are not scanned: SEG, SC and SR copy the patient
module on purpose.

``XIQA_RELIABILITY_SCALE=full`` gives the benchmark's sizes (``benchmarks/reliability.py``),
otherwise the CI subset runs; ``XIQA_RELIABILITY_<FIELD>`` (e.g. ``XIQA_RELIABILITY_LOAD_INSTANCES``)
overrides one field of it, and ``XIQA_RELIABILITY_FIGURES=FILE`` makes the session write every
test's figures to that JSON file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, fields, replace
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import generate_uid
from xiqa.dicom_fixtures.instances import PatientStudy

CANARY_NAME = "ZZCANARY^PHINAME"
CANARY_ID = "ZZCANARYPID"
CANARY_BIRTH_DATE = "19010911"
CANARY_ACCESSION = "ZZCANARYACC"
#: what must never appear: the canaries and the parts of the name
CANARIES = (CANARY_NAME, "ZZCANARY", "PHINAME", CANARY_ID, CANARY_BIRTH_DATE, CANARY_ACCESSION)
#: text files a node or ``xiqa analyze`` writes beside the DICOM outputs
SCANNED_SUFFIXES = {".log", ".json", ".txt", ".err", ".out", ".csv"}


@dataclass(frozen=True)
class Scale:
    """How much each scenario does: the CI subset or the benchmark's full run."""

    name: str
    load_instances: int
    load_studies: int
    kills: int
    crash_instances: int
    corpus: int  # mutants through ``xiqa analyze`` and through the listener
    hypothesis_examples: int  # mutants straight into the loader


SCALES = {
    "ci": Scale("ci", load_instances=24, load_studies=4, kills=2, crash_instances=12, corpus=36,
                hypothesis_examples=200),
    "full": Scale("full", load_instances=1000, load_studies=20, kills=10, crash_instances=60, corpus=216,
                  hypothesis_examples=500),
}


CANARY_STUDY = PatientStudy(CANARY_NAME, CANARY_ID, CANARY_BIRTH_DATE, "O", "1.2.826.0.1.3680043.10.1432.13",
                            "20260102", "101500", CANARY_ACCESSION, "13")


def scale_from_environment() -> Scale:
    """The scale ``XIQA_RELIABILITY_SCALE`` names (default ``ci``) with any field overridden."""
    name = os.environ.get("XIQA_RELIABILITY_SCALE", "ci")
    if name not in SCALES:
        raise ValueError(f"XIQA_RELIABILITY_SCALE must be one of {sorted(SCALES)}, got {name!r}")
    overrides = {f.name: int(os.environ[f"XIQA_RELIABILITY_{f.name.upper()}"]) for f in fields(Scale)
                 if f.name != "name" and f"XIQA_RELIABILITY_{f.name.upper()}" in os.environ}
    return replace(SCALES[name], **overrides)


def explicit_sources(sources: list[Path]) -> list[Path]:
    """The sources whose dataset is explicit VR little endian (what the mutations can parse)."""
    return [path for path in sources if dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
            != "1.2.840.10008.1.2"]


def copies(sources: list[Path], folder: Path, count: int, studies: int) -> list[Path]:
    """``count`` copies of the sources in turn, each with its own SOP Instance UID, in ``studies`` studies."""
    folder.mkdir(parents=True, exist_ok=True)
    templates = [dcmread(path) for path in sources]
    study_uids = [generate_uid() for _ in range(studies)]
    paths = []
    for index in range(count):
        dataset = templates[index % len(templates)]
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        dataset.StudyInstanceUID = study_uids[index % studies]
        path = folder / f"copy_{index:04d}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def phi_hits(paths: Iterable[Path] = (), texts: Iterable[str] = ()) -> list[str]:
    """Each canary found: ``where: canary``.  Folders are searched for the text files a node writes."""
    found = []

    def scan(where: str, text: str) -> None:
        found.extend(f"{where}: {canary}" for canary in CANARIES if canary in text)

    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SCANNED_SUFFIXES) \
            if path.is_dir() else [path]
        for file in files:
            scan(str(file), file.read_text(errors="replace"))
    for index, text in enumerate(texts):
        scan(f"text {index}", text)
    return found
