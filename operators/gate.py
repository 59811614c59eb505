"""Graph node 3: the input gate. Only frontal chest radiographs are scored.

Two kinds of evidence, both recorded:

- tags, where present: Body Part Examined, View Position and Image Laterality.  A tag
  that names another body part or a lateral view is the site's own statement and is
  followed;
- the image itself: a frontal chest shows two lung fields side by side with a brighter
  mediastinum between them (``chest_region``).  That finder fails on many real frontal chests
  (ICU supine plates, a white-out hemithorax, black borders), so its failure alone does not
  overrule tags that say "chest, PA/AP": only strong evidence of something else does
  (``image_evidence``: no radiograph at all, a limb).  With no such tags the image decides:
  strong evidence refuses, and so does a plate where not even one lung field was found.

A frontal chest whose lung fields were not found is scored with an estimated chest region
(``estimate_chest_region``), and report.json, the SR and report.png say so.

A case that fails the gate is not an error: it carries ``case.gate`` with the reason, the
later analysis nodes pass it by, and report.json and the SR say "not a frontal chest
radiograph" with no Q_img verdict.  The chest region found here is what scoring counts
objects in.
"""

from __future__ import annotations

from dataclasses import dataclass

from monai.deploy.core import Fragment

from .case import Case, CaseOperator
from .chest_region import (
    ChestRegion,
    ChestRegionConfig,
    body_outline,
    estimate_chest_region,
    find_chest_region,
)
from .image_evidence import ImageEvidenceConfig, strong_evidence_against_chest

NOT_FRONTAL_CHEST = "not a frontal chest radiograph"

CHEST_BODY_PARTS = frozenset({"CHEST", "THORAX", "LUNG", "HEART", "RIB", "RIBS", "TORSO", "CHEST_LUNG"})
FRONTAL_VIEWS = frozenset({"PA", "AP"})
LATERAL_VIEWS = frozenset({"LL", "RL", "LATERAL", "LAT", "LLD", "RLD", "LLO", "RLO", "OBL", "OBLIQUE"})


@dataclass(frozen=True)
class GateConfig:
    use_tags: bool = True
    use_image: bool = True
    region: ChestRegionConfig = ChestRegionConfig()
    evidence: ImageEvidenceConfig = ImageEvidenceConfig()


@dataclass(frozen=True)
class GateDecision:
    frontal_chest: bool
    reason: str | None  # why not, one line, tag values and our own words only
    tags: dict[str, str]
    region: ChestRegion

    def to_dict(self) -> dict:
        return {
            "frontal_chest": self.frontal_chest,
            "reason": self.reason,
            "tags": self.tags,
            "chest_region": self.region.to_dict(),
        }


def _tag(dataset, keyword: str) -> str:
    """An upper-case code string, or "" when absent or unreadable (a damaged element is no evidence)."""
    try:
        value = dataset.get(keyword, "")
    except Exception:  # noqa: BLE001 - pydicom converts lazily; any failure means "no tag"
        return ""
    return str(value or "").strip().upper().replace(" ", "_")[:32]


def read_gate_tags(dataset) -> dict[str, str]:
    return {
        keyword: value
        for keyword in ("BodyPartExamined", "ViewPosition", "ImageLaterality")
        if (value := _tag(dataset, keyword))
    }


def tag_problem(tags: dict[str, str]) -> str | None:
    body_part = tags.get("BodyPartExamined", "")
    view = tags.get("ViewPosition", "")
    if body_part and body_part not in CHEST_BODY_PARTS:
        return f"Body Part Examined is {body_part}"
    if view in LATERAL_VIEWS:
        return f"View Position is {view} (not frontal)"
    if view and view not in FRONTAL_VIEWS:
        return f"View Position is {view}"
    if not body_part and tags.get("ImageLaterality") in {"L", "R"}:
        return f"Image Laterality {tags['ImageLaterality']} with no chest Body Part (a paired body part)"
    return None


def tags_say_frontal_chest(tags: dict[str, str]) -> bool:
    """Body Part Examined names the chest and View Position is PA or AP: the site's own statement."""
    return tags.get("BodyPartExamined") in CHEST_BODY_PARTS and tags.get("ViewPosition") in FRONTAL_VIEWS


def image_problem(image, body, region: ChestRegion, trusted_tags: bool, aspect: float,
                  config: GateConfig) -> str | None:
    """Why the image check refuses a plate whose lung fields ``region`` could not show, or None;
    ``body`` is the image's body outline."""
    against = strong_evidence_against_chest(image, body, aspect, config.evidence)
    if against is not None:
        return against
    if not trusted_tags and not region.lungs:
        return f"{region.problem} and no tags say chest PA/AP"
    return None


def judge_frontal_chest(dataset, image, config: GateConfig = GateConfig(),
                        source_shape: tuple[int, int] | None = None) -> GateDecision:
    """Whether ``image`` (2-D analysis grid, display domain) of ``dataset`` is a frontal chest.

    ``source_shape`` (rows, columns) of the source image tells a limb's real proportions; the
    analysis grid is square.
    """
    tags = read_gate_tags(dataset) if dataset is not None else {}
    region = find_chest_region(image, config.region)
    reason = tag_problem(tags) if config.use_tags else None
    if reason is None and config.use_image and not region.found:
        aspect = source_shape[1] / source_shape[0] if source_shape else 1.0
        trusted = config.use_tags and tags_say_frontal_chest(tags)
        body = body_outline(image, config.region)
        problem = image_problem(image, body, region, trusted, aspect, config)
        if problem is None:
            region = estimate_chest_region(image, region, body, config.region)
        else:
            reason = f"image check: {problem}"
    return GateDecision(reason is None, f"{NOT_FRONTAL_CHEST}: {reason}" if reason else None, tags, region)


class GateOperator(CaseOperator):
    """Sets ``case.gate``; a case that is not a frontal chest is passed by the analysis nodes."""

    stage = "gate"

    def __init__(self, fragment: Fragment, *args, config: GateConfig = GateConfig(), **kwargs) -> None:
        self.config = config
        super().__init__(fragment, *args, **kwargs)

    def step(self, case: Case) -> None:
        case.gate = judge_frontal_chest(case.source.dataset, case.network_input[0], self.config,
                                        case.source.shape)
