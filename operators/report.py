"""Graph node "report": report.json and a report.png that a radiographer can read.

Both are written to ``<output>/<SOP Instance UID>/`` (a UID, never a name).
The PNG shows the source with object contours, the saliency heatmap blended on
it, Q_img, Q_filtered, the verdict and a per-object table.
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
    """The report.json content for a processed case."""
    quality = case.quality.to_dict()
    summary = case.summary
    saliency = case.saliency
    return {
        "source_sop_instance_uid": case.source.sop_instance_uid,
        "q_img": quality["q_img"],
        "q_filtered": quality["q_filtered"],
        "verdict": quality["verdict"],
        "verdict_filtered": quality["verdict_filtered"],
        "objects": quality["objects"],
        "analysis_grid": quality["grid_shape"],
        "source_shape": list(case.source.shape),
        "saliency_method": getattr(saliency, "method", None),
        "model_id": case.segmentation.model_id,
        "summary": getattr(summary, "text", None),
        "summary_source": getattr(summary, "source", None),
        "summary_model": getattr(summary, "model", None),
        "summary_rejected_reason": getattr(summary, "rejected_reason", None),
        "timings_seconds": dict(case.timings),
        "outputs": {kind: path.name for kind, path in case.outputs.items()},
        "xiqa_version": __version__,
    }


def _to_rgb8(gray: np.ndarray) -> np.ndarray:
    return np.repeat((np.clip(gray, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=2)


def render_report_png(case: Case, path: Path, max_side: int = 900) -> Path:
    """Two panels (contours; saliency blend) and a text block with the scores and objects."""
    import matplotlib

    matplotlib.use("Agg")
    import cv2
    import matplotlib.pyplot as plt

    from .preprocess import resize_image
    from .segmentation import mask_at_source

    rows, cols = case.source.shape
    scale = min(1.0, max_side / max(rows, cols))
    height, width = max(1, round(rows * scale)), max(1, round(cols * scale))
    image = resize_image(case.source.pixels, height, width)
    mask = mask_at_source(case.segmentation.probability, (height, width))
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    outlined = cv2.drawContours(_to_rgb8(image), contours, -1, (255, 40, 40), max(1, round(2 / scale * 0.5)))

    quality = case.quality
    figure, axes = plt.subplots(1, 3, figsize=(15, 6), gridspec_kw={"width_ratios": [1, 1, 0.9]})
    axes[0].imshow(outlined)
    axes[0].set_title(f"Objects found: {len(quality.objects)}")
    axes[1].imshow(image, cmap="gray", vmin=0, vmax=1)
    if case.saliency is not None:
        heat = axes[1].imshow(resize_image(case.saliency.combined, height, width), cmap="jet",
                              alpha=0.45, vmin=0, vmax=1)
        figure.colorbar(heat, ax=axes[1], fraction=0.046, pad=0.02, label="saliency (0-1)")
        axes[1].set_title(f"Saliency ({case.saliency.method})")
    for axis in axes[:2]:
        axis.axis("off")
    lines = [
        f"Q_img        {quality.q_img:.3f}",
        f"Q_filtered   {quality.q_filtered:.3f}",
        f"Verdict      {quality.verdict.value}",
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
    if case.summary is not None:
        import textwrap

        lines += ["", *textwrap.wrap(case.summary.text, 52)]
    axes[2].axis("off")
    axes[2].text(0, 1, "\n".join(lines), va="top", family="monospace", fontsize=9.5)
    colour = {"Good": "#1a7f37", "Acceptable": "#b08800", "Poor": "#cf222e"}[quality.verdict.value]
    figure.suptitle(f"xiqa {__version__} - image quality {quality.verdict.value}", color=colour, fontsize=14)
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
