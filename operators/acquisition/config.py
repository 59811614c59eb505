"""Thresholds of the acquisition checks: one frozen dataclass, part of ``RunSettings``.

Every default is argued here; ``benchmarks/acquisition.py`` measures them against the labelled
plates in ``data/acquisition_labels/`` (README "Acquisition checks" has the figures).

Lengths are fractions of the analysis grid's side unless said otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

#: how failed checks combine with the foreign-object verdict
VERDICT_EFFECTS = ("report", "poor")
#: where the checks' lung fields come from
LUNG_FINDERS = ("network", "classical")


@dataclass(frozen=True)
class AcquisitionConfig:
    """Thresholds and switches of the acquisition checks.

    ``cut_off_margin``: a landmark (apex, lateral lung edge, costophrenic angle) is cut off when
    its lung field comes closer than this to the exposed field's edge (image border or collimator
    shutter).  0.012 of the side is 3 pixels of the 256 grid, about 5 mm on a 43 cm plate: the
    lung finder's outline sits a pixel or two inside the true lung edge, and European guidelines
    (EUR 16260) ask for the whole lung fields with a margin, so a lung that reaches the field's
    edge has lost some of itself.

    ``max_mediastinum_offset``: rotation fails when the mediastinum's centre (halfway between the
    medial lung edges, upper half of the lung fields, where the spine and trachea lie) is further
    than this from the thorax's centre (halfway between the lateral lung edges), as a fraction of
    the thorax's half width.  Rotating the trunk by an angle moves the spine against the lateral
    chest walls by about depth x sin(angle); with a chest depth about 0.7 of its width, 0.10 of
    the half width is roughly 4 degrees, the rotation at which the medial clavicle ends are
    visibly unequal about the spinous processes.

    ``min_lung_height_ratio``: inspiration is poor when the right lung field's height (apex to
    the dome of the right hemidiaphragm, its lowest row over the middle third of its width) is
    less than this share of the thorax width (between the lateral lung edges), both in source
    proportions.  A full inspiration (10 posterior ribs above the right dome, about 20-24 cm of
    lung height on a 28-32 cm wide adult thorax) gives ratios near 0.75; 8 ribs or fewer give
    about 0.6 or less.

    ``deviation_index_band``: IEC 62494-1 Deviation Index range accepted when the modality sends
    it ((0018,1413), or 10 log10(EI/EI_T) from (0018,1411) and (0018,1412)).  AAPM Report 116
    (Shepard et al., Med Phys 36(7), 2009) asks to repeat below -3 (underexposed, noisy) and to
    follow up above +3 (excessive dose); its target range is -0.5 to +0.5, and -1 to +1 is
    "acceptable" on most vendors' consoles.  Default (-3, 3): fail where TG-116 acts.

    ``max_clipped_lung``: exposure also fails when more than this share of the lung fields is
    clipped (at the lowest or highest displayed value): burnt-out or saturated lung shows nothing.

    ``max_field_ratio``: collimation is too wide when the exposed field's area is more than this
    many times the area of the box around both lung fields.  A PA chest collimated to the lungs
    with the usual margins gives 1.6-2.4; an uncollimated 43 x 43 cm plate on an average adult
    about 3 or more.

    ``lung_finder``: ``"network"`` (default): cut-off, exposure and collimation measure on the
    lung outline of the learned network (``xiqa.operators.lung_fields``), trained on lung outlines
    drawn by people, which follow the lung to the ribs, the apex and the costophrenic angle also
    where it is not dark; where it finds fewer than two fields the dark fields stand in.
    ``"classical"``: every check on the gate's dark fields.  Rotation and inspiration measure on
    the dark fields either way (their measures are defined on the mediastinum's borders and the
    dome); README "Acquisition checks" compares the two on the labelled plates.

    ``verdict_effect``: ``"report"`` (default) reports failed checks and leaves the foreign-object
    verdict as it is: the foreign-object verdict keeps its meaning (the thesis' Q_img) and the
    acquisition checks have their own pass/fail; ``"poor"`` makes the overall verdict Poor when
    any check fails (a site whose reject analysis wants one verdict).
    """

    cut_off_margin: float = 0.012
    max_mediastinum_offset: float = 0.10
    min_lung_height_ratio: float = 0.62
    deviation_index_band: tuple[float, float] = (-3.0, 3.0)
    max_clipped_lung: float = 0.05
    clip_level: float = 0.5 / 255  # a displayed value this close to 0 or 1 is clipped
    max_field_ratio: float = 3.2
    #: the lung finder keeps dark fields that touch the image border along at most this share of
    #: their outline; where the gate's finder found no two lungs, the checks look again with this
    #: much contact allowed (a lung field cut by the border touches it along its cut)
    relaxed_border_contact: float = 0.3
    lung_finder: str = "network"
    verdict_effect: str = "report"

    def __post_init__(self) -> None:
        low, high = self.deviation_index_band
        if not low < high:
            raise ValueError(f'Argument "deviation_index_band" must be (low, high) with low < high, '
                             f"got {self.deviation_index_band!r}")
        for name in ("cut_off_margin", "max_mediastinum_offset", "min_lung_height_ratio",
                     "max_clipped_lung", "clip_level", "relaxed_border_contact"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f'Argument "{name}" must be in [0, 1], got {getattr(self, name)!r}')
        if self.max_field_ratio < 1:
            raise ValueError(f'Argument "max_field_ratio" must be at least 1, got {self.max_field_ratio!r}')
        if self.lung_finder not in LUNG_FINDERS:
            raise ValueError(f'Argument "lung_finder" must be one of {LUNG_FINDERS}, '
                             f"got {self.lung_finder!r}")
        if self.verdict_effect not in VERDICT_EFFECTS:
            raise ValueError(f'Argument "verdict_effect" must be one of {VERDICT_EFFECTS}, '
                             f"got {self.verdict_effect!r}")


#: What a site sets, by its name in ``xiqa serve``'s config file and in the flags of ``xiqa serve`` and
#: ``xiqa analyze`` (``-`` for ``_``), and the :class:`AcquisitionConfig` field each one sets.  The
#: others (``clip_level``, ``relaxed_border_contact``, ``lung_finder``) tune the lung finder, not a
#: site's policy.
SITE_KEYS: dict[str, str] = {
    "acquisition_verdict_effect": "verdict_effect",
    "deviation_index_band": "deviation_index_band",
    "cut_off_margin": "cut_off_margin",
    "max_mediastinum_offset": "max_mediastinum_offset",
    "min_lung_height_ratio": "min_lung_height_ratio",
    "max_clipped_lung": "max_clipped_lung",
    "max_field_ratio": "max_field_ratio",
}
#: what a value must look like, where "a number" does not say it
_SHAPES = {"deviation_index_band": "two numbers LOW,HIGH", "verdict_effect": f"one of {VERDICT_EFFECTS}"}


def site_config(values: Mapping[str, object]) -> AcquisitionConfig:
    """The :class:`AcquisitionConfig` of a site's settings, keyed by :data:`SITE_KEYS`; a key that is
    missing or None keeps its default.  ``deviation_index_band`` may be two numbers or ``"LOW,HIGH"``.

    Raises
    ------
    ValueError
        A key is unknown, or a value is not a number or out of its range; the message names the site's
        key and fits one line.
    """
    unknown = sorted(set(values) - set(SITE_KEYS))
    if unknown:
        raise ValueError(f"unknown acquisition setting {unknown[0]!r}")
    changes = {}
    for key, value in values.items():
        if value is None:
            continue
        name = SITE_KEYS[key]
        if name == "verdict_effect":
            changes[name] = value
            continue
        try:
            changes[name] = _band(value) if name == "deviation_index_band" else _number(value)
        except (TypeError, ValueError):
            raise ValueError(f"{key} must be {_SHAPES.get(name, 'a number')}, got {value!r}") from None
    try:
        return AcquisitionConfig(**changes)
    except ValueError as error:
        message = str(error)
        for key, name in SITE_KEYS.items():
            message = message.replace(f'Argument "{name}"', key)
        raise ValueError(message) from None


def _number(value: object) -> float:
    """A number from a number or its text; a bool is no number (never coerced)."""
    if isinstance(value, bool):
        raise TypeError("a bool is no number")
    return float(value)


def _band(value: object) -> tuple[float, float]:
    """(low, high) from two numbers or ``"LOW,HIGH"``."""
    items = value.split(",") if isinstance(value, str) else list(value)
    if len(items) != 2:
        raise ValueError("two numbers")
    return _number(items[0]), _number(items[1])
