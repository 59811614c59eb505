"""Graph node "report": report.json and a report.png that a radiographer can read.

Both are written to ``<output>/<SOP Instance UID>/`` (a UID, never a name).
The PNG shows the source with the chest region and the object contours (objects
outside the chest boxed apart), the saliency heatmap blended on it, Q_img,
Q_filtered, the verdict and a per-object table; for an image that is not a
frontal chest, the gate's reason instead of a score.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from monai.deploy.core import Fragment
from xiqa import __version__

from .case import Case, CaseOperator

REPORT_JSON = "report.json"
REPORT_PNG = "report.png"


def report_dict(case: Case) -> dict:
    """The report.json content for a processed case (also one that is not a frontal chest)."""
    summary = case.summary
    report = {
        "source_sop_instance_uid": case.source.sop_instance_uid,
        "study_instance_uid": str(case.source.dataset.get("StudyInstanceUID", "")) or None,
        "frontal_chest": case.frontal_chest,
        "not_scored_reason": None if case.frontal_chest else case.gate.reason,
        "gate": case.gate.to_dict() if case.gate is not None else None,
        "q_img": None, "q_filtered": None, "verdict": None, "verdict_filtered": None, "objects": [],
        "source_shape": list(case.source.shape),
        "saliency_method": getattr(case.saliency, "method", None),
        "model_id": getattr(case.segmentation, "model_id", None),
        # hysteresis (segmentation.hysteresis_mask): the components it removed are not objects
        "mask_threshold": getattr(case.segmentation, "threshold", None),
        "seed_threshold": getattr(case.segmentation, "seed_threshold", None),
        "sure_area": getattr(case.segmentation, "sure_area", None),
        "components_below_seed": getattr(case.segmentation, "components_below_seed", None),
        "summary": getattr(summary, "text", None),
        "summary_source": getattr(summary, "source", None),
        "summary_model": getattr(summary, "model", None),
        "summary_rejected_reason": getattr(summary, "rejected_reason", None),
        "timings_seconds": dict(case.timings),
        "outputs": {kind: path.name for kind, path in case.outputs.items()},
        "xiqa_version": __version__,
    }
    if case.quality is not None:
        quality = case.quality.to_dict()
        report.update({key: quality[key] for key in (
            "q_img", "q_filtered", "verdict", "verdict_filtered", "objects", "objects_outside_chest",
            "raw_component_count", "merge_radius", "chest_region_used")})
        report["analysis_grid"] = quality["grid_shape"]
    return report


def _to_rgb8(gray: np.ndarray) -> np.ndarray:
    return np.repeat((np.clip(gray, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=2)


CHEST_COLOUR, OBJECT_COLOUR, OUTSIDE_COLOUR = (0, 200, 255), (255, 40, 40), (255, 200, 0)


def _outlined(case: Case, image: np.ndarray, scale: float) -> np.ndarray:
    """The image with the chest region (cyan), counted objects (red) and objects outside (yellow box)."""
    import cv2

    from .preprocess import resize_mask
    from .scoring import counted_at_source
    from .segmentation import mask_at_source

    height, width = image.shape
    thickness = max(1, round(1 / scale * 0.5))
    canvas = _to_rgb8(image)
    region = case.gate.region if case.gate is not None else None
    if region is not None and region.found:
        contours, _ = cv2.findContours(resize_mask(region.mask, height, width), cv2.RETR_EXTERNAL,
                                       cv2.CHAIN_APPROX_NONE)
        canvas = cv2.drawContours(canvas, contours, -1, CHEST_COLOUR, thickness)
    if case.segmentation is None:
        return canvas
    network_mask = mask_at_source(case.segmentation.probability, (height, width), case.segmentation.threshold)
    mask = counted_at_source(network_mask, case.quality)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    canvas = cv2.drawContours(canvas, contours, -1, OBJECT_COLOUR, max(1, round(2 / scale * 0.5)))
    grid_rows, grid_columns = case.quality.grid_shape
    for finding in case.quality.objects_outside:
        y0, x0, y1, x1 = finding.bbox
        cv2.rectangle(canvas, (int(x0 * width / grid_columns) - 2, int(y0 * height / grid_rows) - 2),
                      (int(x1 * width / grid_columns) + 2, int(y1 * height / grid_rows) + 2),
                      OUTSIDE_COLOUR, thickness)
    return canvas


def _score_lines(case: Case) -> list[str]:
    quality = case.quality
    lines = [
        f"Q_img        {quality.q_img:.3f}",
        f"Q_filtered   {quality.q_filtered:.3f}",
        f"Verdict      {quality.verdict.value}",
        f"Objects      {len(quality.objects)} counted, {len(quality.objects_outside)} outside the chest",
        f"             ({quality.raw_component_count} raw components, merge radius {quality.merge_radius})",
        "",
        "#  area%   y    x    ImpL  Pen_S  sev   sal",
    ]
    for index, finding in enumerate(quality.objects[:15], start=1):
        saliency = "  -  " if finding.mean_saliency is None else f"{finding.mean_saliency:.2f}"
        lines.append(f"{index:<2} {100 * finding.area_fraction:5.2f} {finding.centroid_y:.2f} "
                     f"{finding.centroid_x:.2f} {finding.location_weight:.2f}  {finding.size_penalty:.3f} "
                     f"{finding.severity:.2f}  {saliency}")
    if len(quality.objects) > 15:
        lines.append(f"... and {len(quality.objects) - 15} more (see report.json)")
    return lines


def render_report_png(case: Case, path: Path, max_side: int = 900) -> Path:
    """Two panels (chest region and contours; saliency blend) and a text block with the scores.

    A case that is not a frontal chest shows the image, the reason and no score.
    """
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .preprocess import resize_image

    rows, cols = case.source.shape
    scale = min(1.0, max_side / max(rows, cols))
    height, width = max(1, round(rows * scale)), max(1, round(cols * scale))
    image = resize_image(case.source.pixels, height, width)
    figure, axes = plt.subplots(1, 3, figsize=(15, 6), gridspec_kw={"width_ratios": [1, 1, 0.9]})
    axes[0].imshow(_outlined(case, image, scale))
    axes[1].imshow(image, cmap="gray", vmin=0, vmax=1)
    if case.saliency is not None:
        heat = axes[1].imshow(resize_image(case.saliency.combined, height, width), cmap="jet",
                              alpha=0.45, vmin=0, vmax=1)
        figure.colorbar(heat, ax=axes[1], fraction=0.046, pad=0.02, label="saliency (0-1)")
        axes[1].set_title(f"Saliency ({case.saliency.method})")
    for axis in axes[:2]:
        axis.axis("off")
    if case.frontal_chest:
        axes[0].set_title(f"Objects counted: {len(case.quality.objects)} (red); chest region (cyan)")
        lines = _score_lines(case)
        verdict = case.quality.verdict.value
        colour = {"Good": "#1a7f37", "Acceptable": "#b08800", "Poor": "#cf222e"}[verdict]
        title = f"xiqa {__version__} - image quality {verdict}"
    else:
        axes[0].set_title("Not scored")
        lines = ["Not scored: no Q_img, no verdict.", "", *textwrap.wrap(case.gate.reason, 52)]
        colour, title = "#57606a", f"xiqa {__version__} - not a frontal chest radiograph"
    if case.summary is not None:
        lines += ["", *textwrap.wrap(case.summary.text, 52)]
    axes[2].axis("off")
    axes[2].text(0, 1, "\n".join(lines), va="top", family="monospace", fontsize=9.5)
    figure.suptitle(title, color=colour, fontsize=14)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


def write_report(case: Case, output: Path) -> None:
    """Write report.json and report.png for ``case`` and record them in ``case.outputs``."""
    folder = case.folder(output)
    folder.mkdir(parents=True, exist_ok=True)
    case.outputs["report_png"] = render_report_png(case, folder / REPORT_PNG)
    case.outputs["report_json"] = folder / REPORT_JSON
    # timings of this node are known only afterwards; the JSON is written last
    (folder / REPORT_JSON).write_text(json.dumps(report_dict(case), indent=2))


class ReportOperator(CaseOperator):
    """Writes report.json and report.png under the output folder."""

    stage = "report"

    def __init__(self, fragment: Fragment, *args, output: Path, **kwargs) -> None:
        self.output = Path(output)
        super().__init__(fragment, *args, **kwargs)

    def step(self, case: Case) -> None:
        write_report(case, self.output)
