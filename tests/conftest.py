"""Shared fixtures: a small synthetic fixture set written once per test session."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from writer_cases import ToolReport, WriterCase, pixelmed, requires_pixelmed, writer_cases
from xiqa.dicom_fixtures.generate import FixtureRecord, write_fixture_set

# Holoscan warns about the stack size and missing CUDA on import; neither matters to the tests.
warnings.filterwarnings("ignore", message=".*stack size.*")

FIXTURE_SEED = 7


@pytest.fixture(scope="session")
def fixture_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One instance of every DICOM variant (plus masks, Object-CXR JPEG/CSV, manifest)."""
    from xiqa.dicom_fixtures.instances import VARIANTS

    folder = tmp_path_factory.mktemp("fixtures")
    write_fixture_set(folder, count=len(VARIANTS), seed=FIXTURE_SEED, size_range=(300, 640))
    return folder


@pytest.fixture(scope="session")
def fixture_records(fixture_dir: Path) -> list[FixtureRecord]:
    from xiqa.dicom_fixtures.generate import FixtureRecord
    from xiqa.dicom_fixtures.instances import VARIANTS_BY_NAME

    manifest = json.loads((fixture_dir / "manifest.json").read_text())
    return [FixtureRecord(entry["name"], fixture_dir / entry["dicom"], fixture_dir / entry["mask"],
                          VARIANTS_BY_NAME[entry["variant"]],
                          tuple(o["kind"] for o in entry["objects"])) for entry in manifest]


@pytest.fixture(scope="session")
def cases(fixture_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, WriterCase]:
    """Every writer case (fixture variants and quirky sources) with its SEG/SC/SR written; read only."""
    return writer_cases(fixture_dir, tmp_path_factory.mktemp("writer_cases"))


@pytest.fixture(scope="session")
def pixelmed_reports(cases: dict[str, WriterCase]) -> dict[Path, ToolReport]:
    """PixelMed's report on every SEG, SC and SR of ``cases`` (one JVM for all, about a minute)."""
    if requires_pixelmed.args[0]:
        pytest.skip(requires_pixelmed.kwargs["reason"])
    return pixelmed([case.paths[kind] for case in cases.values() for kind in ("seg", "sc", "sr")])
