"""All acquisition checks on one image: the lung fields they share, then each check."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from ..chest_region import ChestRegion, ChestRegionConfig, exposed_field, find_chest_region
from .collimation import check_collimation
from .common import CheckResult, LungBox, lung_boxes
from .config import AcquisitionConfig
from .cut_off import FieldBox, check_cut_off
from .exposure import check_exposure
from .inspiration import check_inspiration
from .rotation import check_rotation


@dataclass(frozen=True)
class AcquisitionResult:
    """The checks of one image, in :data:`~.common.CHECKS` order, and what they measured on.

    Two kinds of lung field are measured on (:func:`acquisition_lungs`): the lung's outline
    (``lung_labels``; cut-off, exposure, collimation) and the dark, aerated fields of the classical
    finder (rotation and inspiration, whose measures are defined on the mediastinum's borders and
    the diaphragm's dome).  ``lungs_from`` says where the outline came from: ``"network"`` (the
    learned lung-field network) or, where the network is off or found fewer than two fields, the
    dark fields' own source; ``dark_fields_from``: ``"gate"`` (the input gate's lung fields),
    ``"relaxed"`` (found again with more border contact allowed, where the gate's finder found
    fewer than two) or ``"none"``.
    """

    checks: tuple[CheckResult, ...]
    lungs_from: str
    lung_labels: np.ndarray | None  # uint8 grid labels, 1 right lung (image left), 2 left lung
    field: FieldBox
    verdict_effect: str
    dark_fields_from: str = "gate"

    @property
    def failed(self) -> tuple[CheckResult, ...]:
        return tuple(check for check in self.checks if check.failed)

    def by_name(self, name: str) -> CheckResult:
        return next(check for check in self.checks if check.check == name)

    def overall_verdict(self, verdict: str) -> str:
        """The foreign-object ``verdict`` ("Good", "Acceptable", "Poor") combined with the checks:
        unchanged under ``verdict_effect`` "report", Poor under "poor" when a check failed."""
        return "Poor" if self.verdict_effect == "poor" and self.failed else verdict

    def to_dict(self) -> dict:
        return {"checks": {check.check: check.to_dict() for check in self.checks},
                "failed": [check.check for check in self.failed], "lungs_from": self.lungs_from,
                "dark_fields_from": self.dark_fields_from, "verdict_effect": self.verdict_effect}


@dataclass(frozen=True)
class AcquisitionLungs:
    """The lung fields of one image, as the checks measure on them (see :class:`AcquisitionResult`)."""

    outline: dict[str, LungBox]
    outline_labels: np.ndarray | None
    outline_from: str
    dark: dict[str, LungBox]
    dark_from: str


def dark_lung_fields(image: np.ndarray, region: ChestRegion | None,
                     config: AcquisitionConfig) -> tuple[dict[str, LungBox], np.ndarray | None, str]:
    """The classical finder's dark lung fields: the gate's, or found again with a relaxed border rule."""
    labels = region.lung_labels if region is not None else None
    lungs = lung_boxes(labels)
    if len(lungs) == 2:
        return lungs, labels, "gate"
    relaxed = find_chest_region(image, replace(ChestRegionConfig(),
                                               max_border_contact=config.relaxed_border_contact))
    relaxed_lungs = lung_boxes(relaxed.lung_labels)
    if len(relaxed_lungs) == 2 and relaxed.found:
        return relaxed_lungs, relaxed.lung_labels, "relaxed"
    return lungs, labels, "gate" if lungs else "none"


def acquisition_lungs(image: np.ndarray, region: ChestRegion | None,
                      config: AcquisitionConfig) -> AcquisitionLungs:
    """The dark fields, and the outline: the network's where ``config.lung_finder`` is "network"
    and it finds two fields, else the dark fields."""
    dark, dark_labels, dark_from = dark_lung_fields(image, region, config)
    if config.lung_finder == "network":
        # imported here: the CLI reads this package for its options before it prepares Holoscan,
        # which MONAI (the network's architecture) imports
        from ..lung_fields import load_lung_model

        labels = load_lung_model().lung_labels(image)
        outline = lung_boxes(labels)
        if len(outline) == 2:
            return AcquisitionLungs(outline, labels, "network", dark, dark_from)
    return AcquisitionLungs(dark, dark_labels, dark_from, dark, dark_from)


def assess_acquisition(image: np.ndarray, region: ChestRegion | None, dataset,
                       source_shape: tuple[int, int] | None = None,
                       config: AcquisitionConfig = AcquisitionConfig()) -> AcquisitionResult:
    """Every acquisition check on ``image`` (2-D analysis grid, display domain, values in [0, 1]).

    ``region``: the input gate's chest region (its lung fields are reused); ``dataset``: the
    source's DICOM dataset (exposure indices), or None; ``source_shape``: the source's
    (rows, columns), default the grid's.

    Raises
    ------
    ValueError
        ``image`` is not 2-D.
    """
    if image.ndim != 2:
        raise ValueError(f'Argument "image" must be 2-D, got shape {image.shape}')
    source_shape = tuple(source_shape) if source_shape is not None else image.shape
    lungs = acquisition_lungs(image, region, config)
    field = FieldBox.of(exposed_field(image))
    checks = run_checks(image, lungs, field, source_shape, dataset, config)
    return AcquisitionResult(checks, lungs.outline_from, lungs.outline_labels, field, config.verdict_effect,
                             lungs.dark_from)


def _call(name: str, check: Callable[..., CheckResult], *args) -> CheckResult:
    return check(*args)


def run_checks(image: np.ndarray, lungs: AcquisitionLungs, field: FieldBox, source_shape: tuple[int, int],
               dataset, config: AcquisitionConfig,
               call: Callable[..., CheckResult] = _call) -> tuple[CheckResult, ...]:
    """Each check on the lung fields it measures on, in :data:`~.common.CHECKS` order; ``call(name,
    check, *args)`` runs one (``benchmarks/acquisition.py`` times each)."""
    shape = image.shape
    return (
        call("anatomy_cut_off", check_cut_off, lungs.outline, field, shape, config),
        call("rotation", check_rotation, lungs.dark, config),
        call("inspiration", check_inspiration, lungs.dark, shape, source_shape, config),
        call("exposure", check_exposure, image, lungs.outline, dataset, config),
        call("collimation", check_collimation, lungs.outline, field, config),
    )
