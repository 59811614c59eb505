"""Fixtures of the reliability suite (``support`` holds its canaries and sizes)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from support import CANARY_STUDY, Scale, scale_from_environment
from xiqa.dicom_fixtures.instances import VARIANTS, build_instance
from xiqa.dicom_fixtures.phantom import render_phantom


@pytest.fixture(scope="session")
def scale() -> Scale:
    try:
        return scale_from_environment()
    except ValueError as error:
        raise pytest.UsageError(str(error)) from None


@pytest.fixture(scope="session")
def figures() -> Iterator[dict[str, dict]]:
    """Scenario name -> its measured figures; written to ``XIQA_RELIABILITY_FIGURES`` at the end."""
    collected: dict[str, dict] = {}
    yield collected
    target = os.environ.get("XIQA_RELIABILITY_FIGURES")
    if target:
        Path(target).write_text(json.dumps(collected, indent=1, sort_keys=True))


@pytest.fixture(scope="session")
def canary_sources(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """One small canary-carrying instance per fixture variant; the first is a 12-bit CR plate with native
    pixels, every other one but the implicit VR one has an explicit VR little endian dataset."""
    folder = tmp_path_factory.mktemp("canary-sources")
    rng = np.random.default_rng(13)
    paths = []
    for index, variant in enumerate(VARIANTS):
        phantom = render_phantom(rng, 320, 288, ["coin", "wire"] if index % 2 else ["button"])
        path = folder / f"{index:02d}_{variant.name}.dcm"
        build_instance(phantom.image, variant, CANARY_STUDY, 1, index + 1, ("canary", index)).save_as(
            path, enforce_file_format=True)
        paths.append(path)
    return paths
