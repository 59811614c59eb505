"""Graph node "report": report.json and a report.png that a radiographer can read.

Both are written to ``<output>/<SOP Instance UID>/`` (a UID, never a name).
The PNG shows the source with the chest region (dashed and captioned where the gate
estimated it) and the object contours (objects outside the chest boxed apart),
the saliency heatmap blended on it, Q_img, Q_filtered, the verdict and a
per-object table; for an image that is not a frontal chest, the gate's reason
instead of a score.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from monai.deploy.core import Fragment
from xiqa import __version__
from xiqa.durable import write_atomically, write_bytes_atomically

from .case import Case, CaseOperator
from .scoring import overall_verdict

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
        "verdict_basis": None, "verdict_all_objects": None, "q_removable": None, "verdict_removable": None,
        "acquisition": None, "overall_verdict": None,
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
            "raw_component_count", "merge_radius", "chest_region_used", "verdict_basis",
            "verdict_all_objects", "q_removable", "verdict_removable", "count_devices", "classifier_version",
            "removable_count", "device_count", "expected_count", "ecg_rule")})
        report["analysis_grid"] = quality["grid_shape"]
    if case.acquisition is not None:
        report["acquisition"] = case.acquisition.to_dict()
        if case.quality is not None:
            report["overall_verdict"] = overall_verdict(case.quality, case.acquisition).value
    return report


def _to_rgb8(gray: np.ndarray) -> np.ndarray:
    return np.repeat((np.clip(gray, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=2)


CHEST_COLOUR, OBJECT_COLOUR, OUTSIDE_COLOUR = (0, 200, 255), (255, 40, 40), (255, 200, 0)
DEVICE_COLOUR = (40, 220, 60)  # medical devices: listed, not counted in the default verdict
DASH = 6  # panel pixels drawn, then as many left out, along an estimated chest region
REGION_ESTIMATED_CAPTION = "chest region estimated"


def _draw_dashed(canvas: np.ndarray, contours, colour, thickness: int) -> np.ndarray:
    """Contours (every pixel, CHAIN_APPROX_NONE) drawn in dashes: a region that was only estimated."""
    import cv2

    for contour in contours:
        for start in range(0, len(contour), 2 * DASH):
            cv2.polylines(canvas, [contour[start : start + DASH]], False, colour, thickness)
    return canvas


def _outlined(case: Case, image: np.ndarray) -> np.ndarray:
    """The image with the chest region (cyan), counted objects (red) and objects outside (yellow box)."""
    import cv2

    from .preprocess import resize_mask
    from .scoring import counted_at_source
    from .segmentation import mask_at_source

    height, width = image.shape
    thickness = 1  # drawn at the size report.png shows it: thin lines stay visible
    canvas = _to_rgb8(image)
    region = case.gate.region if case.gate is not None else None
    if region is not None and region.mask.any():
        contours, _ = cv2.findContours(resize_mask(region.mask, height, width), cv2.RETR_EXTERNAL,
                                       cv2.CHAIN_APPROX_NONE)
        if region.estimated:
            canvas = _draw_dashed(canvas, contours, CHEST_COLOUR, thickness)
        else:
            canvas = cv2.drawContours(canvas, contours, -1, CHEST_COLOUR, thickness)
    if case.acquisition is not None:
        canvas = _draw_acquisition(canvas, case.acquisition)
    if case.segmentation is None:
        return canvas
    network_mask = mask_at_source(case.segmentation.probability, (height, width), case.segmentation.threshold)
    removable = counted_at_source(network_mask, case.quality, "removable")
    contours, _ = cv2.findContours(removable, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    canvas = cv2.drawContours(canvas, contours, -1, OBJECT_COLOUR, 2)
    devices = counted_at_source(network_mask, case.quality, "device")
    contours, _ = cv2.findContours(devices, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    canvas = cv2.drawContours(canvas, contours, -1, DEVICE_COLOUR, 2)
    grid_rows, grid_columns = case.quality.grid_shape
    for finding in case.quality.objects_outside:
        y0, x0, y1, x1 = finding.bbox
        cv2.rectangle(canvas, (int(x0 * width / grid_columns) - 2, int(y0 * height / grid_rows) - 2),
                      (int(x1 * width / grid_columns) + 2, int(y1 * height / grid_rows) + 2),
                      OUTSIDE_COLOUR, thickness)
    return canvas


LUNG_COLOUR, MIDLINE_COLOUR = (200, 80, 255), (255, 140, 0)
THORAX_COLOUR, CUT_COLOUR = (120, 120, 255), (255, 0, 0)


def _draw_acquisition(canvas: np.ndarray, acquisition) -> np.ndarray:
    """What the acquisition checks measured: the lung fields (violet), the mediastinum's centre
    (orange) and the thorax's (blue) over the rows the rotation check used, and each edge of the
    exposed field where a landmark is cut off (thick red)."""
    import cv2

    from .preprocess import resize_mask

    height, width = canvas.shape[:2]
    if acquisition.lung_labels is not None:
        grid_rows, grid_columns = acquisition.lung_labels.shape
        for value in (1, 2):
            lung = resize_mask(acquisition.lung_labels == value, height, width)
            contours, _ = cv2.findContours(lung, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            canvas = cv2.drawContours(canvas, contours, -1, LUNG_COLOUR, 1)
        sy, sx = height / grid_rows, width / grid_columns
        rotation = acquisition.by_name("rotation").findings
        if "rows" in rotation:
            top, bottom = (round(r * sy) for r in rotation["rows"])
            for key, colour in (("mediastinum_x", MIDLINE_COLOUR), ("thorax_x", THORAX_COLOUR)):
                x = round((rotation[key] + 0.5) * sx)
                cv2.line(canvas, (x, top), (x, bottom), colour, 1)
        field = acquisition.field
        edges = {"apex": ((field.left, field.top), (field.right + 1, field.top)),
                 "costophrenic angle": ((field.left, field.bottom + 1), (field.right + 1, field.bottom + 1)),
                 "right lateral edge": ((field.left, field.top), (field.left, field.bottom + 1)),
                 "left lateral edge": ((field.right + 1, field.top), (field.right + 1, field.bottom + 1))}
        for name in acquisition.by_name("anatomy_cut_off").findings.get("cut_off", []):
            key = name if "lateral" in name else name.split(" ", 1)[1]
            (x0, y0), (x1, y1) = edges[key]
            cv2.line(canvas, (min(round(x0 * sx), width - 2), min(round(y0 * sy), height - 2)),
                     (min(round(x1 * sx), width - 2), min(round(y1 * sy), height - 2)), CUT_COLOUR, 3)
    return canvas


def _acquisition_lines(acquisition) -> list[str]:
    lines = ["", "Acquisition  result       value (threshold)"]
    for check in acquisition.checks:
        value = "-" if check.value is None else f"{check.value:.3f}"
        threshold = check.threshold if not isinstance(check.threshold, tuple) else \
            f"{check.threshold[0]:g}..{check.threshold[1]:g}"
        name = check.check.replace("anatomy_", "")[:12]
        lines.append(f"{name:<12} {check.status.value:<12} {value} ({threshold})")
    return lines


def _class_label(finding) -> str:
    """``R`` removable or ``D`` device, with the finer category where one was named."""
    if finding.object_class is None:
        return "-"
    label = "D" if finding.object_class == "device" else "R"
    return f"{label} {finding.category.replace('_', ' ')}" if finding.category else label


def _score_lines(case: Case) -> list[str]:
    quality = case.quality
    lines = [
        f"Verdict      {quality.default_verdict.value} ({quality.verdict_basis})",
        f"Q_img        {quality.q_img:.3f} (all objects, {quality.verdict.value})",
        *([f"Q_removable  {quality.q_removable:.3f} ({quality.verdict_removable.value})"]
          if quality.classified else []),
        f"Q_filtered   {quality.q_filtered:.3f}",
        f"Objects      {len(quality.objects)} counted, {len(quality.objects_outside)} outside the chest",
        f"             ({quality.raw_component_count} raw components, merge radius {quality.merge_radius})",
        "",
        "#  area%   y    x    ImpL  Pen_S  sev   sal  class",
    ]
    for index, finding in enumerate(quality.objects[:15], start=1):
        saliency = "  -  " if finding.mean_saliency is None else f"{finding.mean_saliency:.2f}"
        lines.append(f"{index:<2} {100 * finding.area_fraction:5.2f} {finding.centroid_y:.2f} "
                     f"{finding.centroid_x:.2f} {finding.location_weight:.2f}  {finding.size_penalty:.3f} "
                     f"{finding.severity:.2f}  {saliency} {_class_label(finding)}")
    if len(quality.objects) > 15:
        lines.append(f"... and {len(quality.objects) - 15} more (see report.json)")
    return lines


#: report.png's layout, in pixels (what the matplotlib figure of 15 x 6 in at 80 dpi measured)
CANVAS_WIDTH, CANVAS_HEIGHT = 1200, 480
PANEL_SIDE = 340  # each image panel fits in a square of this side
TEXT_SIZE, TEXT_SPACING = 11, 3
TITLE_HEIGHT, PANEL_TITLE_HEIGHT = 36, 22
VERDICT_COLOURS = {"Good": (26, 127, 55), "Acceptable": (176, 136, 0), "Poor": (207, 34, 46)}
NOT_SCORED_COLOUR = (87, 96, 106)
SALIENCY_ALPHA = 0.45


def _font(size: int, mono: bool = False):
    """DejaVu (shipped with matplotlib's data, no pyplot imported), else Pillow's own font."""
    from PIL import ImageFont

    name = "DejaVuSansMono.ttf" if mono else "DejaVuSans.ttf"
    try:
        import matplotlib

        return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name), size)
    except (ImportError, OSError):
        return ImageFont.load_default(size)


def _saliency_blend(image: np.ndarray, saliency: np.ndarray) -> np.ndarray:
    """Grey image with the JET saliency map over it at a fixed opacity (what imshow's alpha did)."""
    from .preprocess import resize_image
    from .sc_writer import _jet

    height, width = image.shape
    heat = _jet(np.clip(resize_image(saliency, height, width), 0, 1)).astype(np.float32)
    blend = _to_rgb8(image).astype(np.float32) * (1 - SALIENCY_ALPHA) + heat * SALIENCY_ALPHA
    return np.round(blend).astype(np.uint8)


def report_title(case: Case) -> tuple[str, tuple[int, int, int]]:
    """report.png's title and its colour: the overall verdict, the acquisition checks included.

    Under ``acquisition_verdict_effect`` "report" a failed check leaves the verdict to the foreign
    objects, and the title says both ("image quality Good (foreign objects) - 2 acquisition checks
    failed"); under "poor" it gives the combined verdict and why ("image quality Poor - 2
    acquisition checks failed; foreign objects Good").  The colour is the overall verdict's.
    """
    lead = f"xiqa {__version__} -"
    if not case.frontal_chest:
        return f"{lead} not a frontal chest radiograph", NOT_SCORED_COLOUR
    verdict = case.quality.default_verdict.value
    failed = len(case.acquisition.failed) if case.acquisition is not None else 0
    if not failed:
        return f"{lead} image quality {verdict}", VERDICT_COLOURS[verdict]
    checks = f"{failed} acquisition check{'s' if failed > 1 else ''} failed"
    overall = overall_verdict(case.quality, case.acquisition).value
    if overall == verdict:
        return f"{lead} image quality {verdict} (foreign objects) - {checks}", VERDICT_COLOURS[verdict]
    return f"{lead} image quality {overall} - {checks}; foreign objects {verdict}", VERDICT_COLOURS[overall]


def render_report_png(case: Case, path: Path, max_side: int = PANEL_SIDE) -> Path:
    """Two panels (chest region and contours; saliency blend with its colour scale) and a text
    block with the scores, under the title of :func:`report_title` in the verdict's colour.

    A case that is not a frontal chest shows the image, the reason and no score.  Drawn with
    numpy, OpenCV and Pillow at the size it is shown (no matplotlib figure per image: that cost
    about 0.3 s of 2 cores per plate); the outlines are drawn at panel resolution, from the same
    256-grid masks, so they stay crisp.
    """
    import textwrap

    from PIL import Image, ImageDraw

    from .preprocess import resize_image

    rows, cols = case.source.shape
    scale = min(1.0, max_side / max(rows, cols))
    height, width = max(1, round(rows * scale)), max(1, round(cols * scale))
    image = resize_image(case.source.pixels, height, width)
    if case.frontal_chest:
        region = case.gate.region if case.gate is not None else None
        estimated = region is not None and region.estimated
        region_key = f"{REGION_ESTIMATED_CAPTION} (dashed)" if estimated else "chest region (cyan)"
        quality = case.quality
        device_count = len(quality.devices)
        devices = f"{device_count} device{'' if device_count == 1 else 's'}"
        panel_title = f"{len(quality.removable_objects)} counted (red), {devices} (green); {region_key}"
        lines = _score_lines(case)
        if estimated:
            lines = [f"Note: {REGION_ESTIMATED_CAPTION.capitalize()} from the {region.estimated_from},",
                     *textwrap.wrap(f"lung fields not found: {region.problem}.", 52), "", *lines]
        if case.acquisition is not None:
            lines += _acquisition_lines(case.acquisition)
    else:
        panel_title = "Not scored"
        lines = ["Not scored: no Q_img, no verdict.", "", *textwrap.wrap(case.gate.reason, 52)]
    title, colour = report_title(case)
    if case.summary is not None:
        lines += ["", *textwrap.wrap(case.summary.text, 52)]
    title_font, panel_font, text_font = _font(18), _font(13), _font(TEXT_SIZE, mono=True)
    text = "\n".join(lines)
    text_bottom = ImageDraw.Draw(Image.new("RGB", (1, 1))).multiline_textbbox(
        (0, 0), text, font=text_font, spacing=TEXT_SPACING)[3]
    canvas_height = max(CANVAS_HEIGHT, TITLE_HEIGHT + 4 + text_bottom + 12)  # a long text block grows it
    canvas = Image.new("RGB", (CANVAS_WIDTH, canvas_height), "white")
    draw = ImageDraw.Draw(canvas)
    top = TITLE_HEIGHT + PANEL_TITLE_HEIGHT
    left_x, middle_x = 20, 20 + PANEL_SIDE + 30
    canvas.paste(Image.fromarray(_outlined(case, image)), (left_x + (PANEL_SIDE - width) // 2, top))
    if case.saliency is not None:
        blend = _saliency_blend(image, case.saliency.combined)
        canvas.paste(Image.fromarray(blend), (middle_x + (PANEL_SIDE - width) // 2, top))
        _draw_colour_bar(canvas, draw, middle_x + PANEL_SIDE + 8, top, height, text_font)
        _centred(draw, middle_x + PANEL_SIDE // 2, TITLE_HEIGHT, f"Saliency ({case.saliency.method})",
                 panel_font, (0, 0, 0))
    else:
        canvas.paste(Image.fromarray(_to_rgb8(image)), (middle_x + (PANEL_SIDE - width) // 2, top))
    _centred(draw, left_x + PANEL_SIDE // 2, TITLE_HEIGHT, panel_title, panel_font, (0, 0, 0))
    _centred(draw, CANVAS_WIDTH // 2, 8, title, title_font, colour)
    draw.multiline_text((middle_x + PANEL_SIDE + 75, TITLE_HEIGHT + 4), text, font=text_font,
                        fill=(0, 0, 0), spacing=TEXT_SPACING)
    # level 1: a quarter of the time, ~10 % larger
    return write_atomically(path, lambda stream: canvas.save(stream, format="PNG", compress_level=1))


def _centred(draw, centre_x: int, top: int, text: str, font, fill) -> None:
    width = draw.textlength(text, font=font)
    draw.text((centre_x - width / 2, top), text, font=font, fill=fill)


def _draw_colour_bar(canvas, draw, x: int, top: int, height: int, font) -> None:
    """The JET scale from 0 (bottom) to 1 (top) beside the saliency panel, labelled."""
    from PIL import Image

    from .sc_writer import _jet

    bar = _jet(np.repeat(np.linspace(1, 0, max(2, height), dtype=np.float32)[:, None], 14, axis=1))
    canvas.paste(Image.fromarray(bar), (x, top))
    draw.rectangle((x, top, x + 13, top + height - 1), outline=(0, 0, 0))
    for value in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = top + round((1 - value) * (height - 1))
        draw.line((x + 14, y, x + 17, y), fill=(0, 0, 0))
        draw.text((x + 20, y - 6), f"{value:.2f}", font=font, fill=(0, 0, 0))
    draw.text((x - 60, top + height + 4), "saliency (0-1)", font=font, fill=(0, 0, 0))


def write_report(case: Case, output: Path) -> None:
    """Write report.json and report.png for ``case`` and record them in ``case.outputs``."""
    folder = case.folder(output)
    folder.mkdir(parents=True, exist_ok=True)
    case.outputs["report_png"] = render_report_png(case, folder / REPORT_PNG)
    case.outputs["report_json"] = folder / REPORT_JSON
    # timings of this node are known only afterwards; the JSON is written last.  Atomic, so
    # a reader (the review page, a replica's peer, a script) never sees a half-written report
    write_bytes_atomically(folder / REPORT_JSON, json.dumps(report_dict(case), indent=2).encode())


class ReportOperator(CaseOperator):
    """Writes report.json and report.png under the output folder."""

    stage = "report"

    def __init__(self, fragment: Fragment, *args, output: Path, **kwargs) -> None:
        self.output = Path(output)
        super().__init__(fragment, *args, **kwargs)

    def step(self, case: Case) -> None:
        write_report(case, self.output)
