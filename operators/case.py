"""The message that travels along the graph: one source image and what each node added to it.

Every node after the loader is a ``CaseOperator``: it receives a ``Case`` on its
``case`` port, runs one plain function on it, records how long that took and
emits the same case.  A node that fails marks the case as failed with a
one-line reason (no patient data) and later nodes pass it through untouched,
so one broken instance never stops the others.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monai.deploy.core import Fragment, Operator, OperatorSpec

logger = logging.getLogger(__name__)

CASE_PORT = "case"
_UNSAFE_IN_NAME = re.compile(r"[^0-9A-Za-z._-]")


@dataclass
class Case:
    """One input file on its way through the graph."""

    path: Path
    source: Any = None  # loader.SourceImage
    network_input: Any = None  # numpy (C, H, W)
    gate: Any = None  # gate.GateDecision
    acquisition: Any = None  # acquisition.AcquisitionResult
    segmentation: Any = None  # segmentation.SegmentationResult
    saliency: Any = None  # saliency.SaliencyResult
    quality: Any = None  # scoring.QualityResult
    summary: Any = None  # summary.Summary
    outputs: dict[str, Path] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    rejected: bool = False  # the loader could not use the file at all

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def frontal_chest(self) -> bool:
        """False once the gate found that this is not a frontal chest radiograph (not an error)."""
        return self.gate is None or self.gate.frontal_chest

    def folder(self, output: Path) -> Path:
        """``output/<SOP Instance UID>``: where every output of this case goes (a UID, never a name)."""
        return Path(output) / _UNSAFE_IN_NAME.sub("_", self.source.sop_instance_uid)

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] = round(time.perf_counter() - started, 4)


def run_step(case: Case, stage: str, step) -> Case:
    """Run ``step(case)`` unless the case already failed; a failure becomes ``case.error``."""
    if not case.ok:
        return case
    try:
        with case.timed(stage):
            step(case)
    except Exception as error:  # noqa: BLE001 - isolate the failure to this one case
        lines = str(error).strip().splitlines()
        reason = redact(lines[0][:200], case) if lines else ""
        case.error = f"{stage} failed: {type(error).__name__}" + (f": {reason}" if reason else "")
        logger.error("%s: %s", case.path.name, case.error)
        logger.debug("traceback for %s", case.path.name, exc_info=True)
    return case


IDENTITY_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs",
                     "PatientAddress", "AccessionNumber")


def redact(text: str, case: Case) -> str:
    """``text`` with the case's identity values replaced, since library errors may quote them."""
    dataset = getattr(case.source, "dataset", None)
    if dataset is None:
        return text
    for keyword in IDENTITY_KEYWORDS:
        value = str(dataset.get(keyword, "") or "")
        for part in {value, *value.split("^")}:
            if len(part) >= 3:
                text = text.replace(part, "<redacted>")
    return text


class CaseOperator(Operator):
    """Base of the graph nodes: receive a case, run ``self.step`` on it, emit it.

    A node with ``chest_only`` set passes by a case that the gate found not to be a frontal
    chest radiograph: there is nothing to segment, explain or score on it.
    """

    stage = "step"
    chest_only = False

    def __init__(self, fragment: Fragment, *args, **kwargs) -> None:
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input(CASE_PORT)
        spec.output(CASE_PORT)

    def step(self, case: Case) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement step()")

    def compute(self, op_input, op_output, context) -> None:
        case = op_input.receive(CASE_PORT)
        if self.chest_only and not case.frontal_chest:
            op_output.emit(case, CASE_PORT)
            return
        op_output.emit(run_step(case, self.stage, self.step), CASE_PORT)


class CollectOperator(Operator):
    """Sink node: hands every finished case to ``on_case`` (the caller's bookkeeping)."""

    def __init__(self, fragment: Fragment, *args, on_case, **kwargs) -> None:
        self.on_case = on_case
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input(CASE_PORT)

    def compute(self, op_input, op_output, context) -> None:
        self.on_case(op_input.receive(CASE_PORT))
