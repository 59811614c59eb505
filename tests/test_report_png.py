"""report.png, drawn without matplotlib: the same two panels, colour scale, scores and summary."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from xiqa.operators.report import (
    CANVAS_HEIGHT,
    CANVAS_WIDTH,
    CHEST_COLOUR,
    DEVICE_COLOUR,
    OBJECT_COLOUR,
    PANEL_SIDE,
    PANEL_TITLE_HEIGHT,
    TITLE_HEIGHT,
    VERDICT_COLOURS,
    render_report_png,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from pipeline import _write_plates  # noqa: E402 - the benchmark's synthetic CR plates


@pytest.fixture(scope="module")
def plate_case(tmp_path_factory):
    """One synthetic 800 px plate stepped through the app's own operators (shipped model, CPU)."""
    from xiqa.app import XiqaApp, build_settings
    from xiqa.operators.case import CaseOperator, run_step
    from xiqa.operators.loader import load_case

    folder = tmp_path_factory.mktemp("plate")
    paths = _write_plates(folder, 1, 800)
    app = XiqaApp(build_settings(paths, folder / "out", device="cpu"))
    app.compose()
    case = load_case(paths[0], app.settings.loader)
    for node in app.graph.get_nodes():
        if isinstance(node, CaseOperator) and node.stage != "report":
            run_step(case, node.stage, node.step)
    assert case.ok, case.error
    return case


def _has(pixels: np.ndarray, colour: tuple[int, int, int], tolerance: int = 8) -> bool:
    return bool(np.any(np.all(np.abs(pixels.astype(int) - colour) <= tolerance, axis=-1)))


def test_report_png_shows_title_outlines_saliency_scale_and_scores(plate_case, tmp_path):
    path = render_report_png(plate_case, tmp_path / "report.png")
    picture = np.asarray(Image.open(path).convert("RGB"))
    assert picture.shape == (CANVAS_HEIGHT, CANVAS_WIDTH, 3)
    verdict = plate_case.quality.default_verdict.value  # removable objects, once classed
    assert _has(picture[:TITLE_HEIGHT], VERDICT_COLOURS[verdict])  # the title in the verdict's colour
    left = picture[TITLE_HEIGHT:, 20:20 + PANEL_SIDE]
    assert _has(left, CHEST_COLOUR) == bool(plate_case.gate.region.mask.any())
    quality = plate_case.quality
    assert _has(left, OBJECT_COLOUR) == any(f.object_class != "device" for f in quality.objects)
    assert _has(left, DEVICE_COLOUR) == bool(quality.devices)  # medical devices in green
    middle = picture[TITLE_HEIGHT:, 20 + PANEL_SIDE + 30:20 + 2 * PANEL_SIDE + 30]
    blueness = middle[..., 2].astype(int) - middle[..., 0]
    assert blueness.max() > 60 and -blueness.min() > 60  # JET over grey: cold and warm parts
    bar = picture[TITLE_HEIGHT + PANEL_TITLE_HEIGHT:TITLE_HEIGHT + PANEL_TITLE_HEIGHT + PANEL_SIDE,
                  2 * PANEL_SIDE + 58:2 * PANEL_SIDE + 64]
    assert _has(bar, (128, 0, 0), 30) and _has(bar, (0, 0, 128), 30)  # the colour scale's two ends
    text = picture[TITLE_HEIGHT:, 2 * PANEL_SIDE + 125:]
    assert (text.min(axis=-1) < 80).sum() > 2000  # a block of dark text: scores, table, summary


def test_report_png_grows_to_hold_a_long_text_block(plate_case, tmp_path):
    from dataclasses import replace

    long_summary = replace(plate_case.summary, text="word " * 400)
    case = replace(plate_case, summary=long_summary, outputs={})
    picture = Image.open(render_report_png(case, tmp_path / "long.png"))
    assert picture.width == CANVAS_WIDTH and picture.height > CANVAS_HEIGHT
    bottom = np.asarray(picture.convert("L"))[-40:, 2 * PANEL_SIDE + 125:]
    assert bottom.min() < 80 and bottom[-6:].min() == 255  # the last lines are drawn, not cut off


def test_an_estimated_chest_region_is_dashed_captioned_and_in_report_json(plate_case, tmp_path):
    """A frontal chest whose lung fields were not found is scored with an estimated region: the
    same cyan outline drawn in dashes, a note in the text block, and report.json says why."""
    from dataclasses import replace

    from xiqa.operators.report import report_dict

    region = plate_case.gate.region
    square = np.zeros_like(region.mask)
    square[40:216, 40:216] = True
    solid = replace(region, mask=square)
    estimated = replace(solid, problem="found 0 lung field(s), a frontal chest shows 2",
                        estimated_from="body outline")
    cyan = {}
    for name, shown in (("solid", solid), ("estimated", estimated)):
        case = replace(plate_case, gate=replace(plate_case.gate, region=shown), outputs={})
        picture = np.asarray(Image.open(render_report_png(case, tmp_path / f"{name}.png")).convert("RGB"))
        left = picture[TITLE_HEIGHT + PANEL_TITLE_HEIGHT:, 20:20 + PANEL_SIDE]
        cyan[name] = int(np.all(np.abs(left.astype(int) - CHEST_COLOUR) <= 8, axis=-1).sum())
        text = picture[TITLE_HEIGHT:, 2 * PANEL_SIDE + 125:]
        cyan[f"{name} text"] = int((text.min(axis=-1) < 80).sum())
    assert 0.3 * cyan["solid"] < cyan["estimated"] < 0.75 * cyan["solid"]  # dashes: about half drawn
    assert cyan["estimated text"] > cyan["solid text"]  # the note on the estimated region
    described = report_dict(case)["gate"]["chest_region"]
    assert described["estimated"] is True and described["estimated_from"] == "body outline"
    assert described["problem"] == "found 0 lung field(s), a frontal chest shows 2"


def _drawn_title(case, folder: Path, monkeypatch) -> tuple[str, tuple[int, int, int]]:
    """The title text and colour render_report_png draws (its centred texts, recorded, not read back
    from pixels)."""
    from xiqa.operators import report

    drawn = []
    draw_centred = report._centred
    monkeypatch.setattr(report, "_centred", lambda draw, x, top, text, font, fill: (
        drawn.append((top, text, fill)), draw_centred(draw, x, top, text, font, fill)))
    render_report_png(case, folder / "title.png")
    monkeypatch.undo()
    (title,) = [(text, fill) for top, text, fill in drawn if top < TITLE_HEIGHT]
    return title


def _with_failed_checks(case, failed: tuple[str, ...], verdict_effect: str):
    from dataclasses import replace

    from xiqa.operators.acquisition import CheckStatus

    acquisition = case.acquisition
    checks = tuple(replace(check, status=CheckStatus.FAIL if check.check in failed else CheckStatus.PASS)
                   for check in acquisition.checks)
    return replace(case, acquisition=replace(acquisition, checks=checks, verdict_effect=verdict_effect),
                   outputs={})


def test_the_title_states_the_verdict_and_the_failed_acquisition_checks(plate_case, tmp_path, monkeypatch):
    from xiqa import __version__

    verdict = plate_case.quality.default_verdict.value
    lead = f"xiqa {__version__} - image quality"
    passed = _with_failed_checks(plate_case, (), "report")
    assert _drawn_title(passed, tmp_path, monkeypatch) == (f"{lead} {verdict}", VERDICT_COLOURS[verdict])
    two_failed = _with_failed_checks(plate_case, ("anatomy_cut_off", "rotation"), "report")
    assert _drawn_title(two_failed, tmp_path, monkeypatch) == (
        f"{lead} {verdict} (foreign objects) - 2 acquisition checks failed", VERDICT_COLOURS[verdict])
    one_failed = _with_failed_checks(plate_case, ("exposure",), "report")
    assert _drawn_title(one_failed, tmp_path, monkeypatch)[0].endswith("- 1 acquisition check failed")


def test_under_verdict_effect_poor_the_title_gives_the_combined_verdict(plate_case, tmp_path, monkeypatch):
    from dataclasses import replace

    from xiqa import __version__
    from xiqa.operators.scoring import Verdict

    good = replace(plate_case.quality, verdict=Verdict.GOOD, verdict_removable=Verdict.GOOD)
    case = _with_failed_checks(replace(plate_case, quality=good), ("inspiration", "collimation"), "poor")
    assert _drawn_title(case, tmp_path, monkeypatch) == (
        f"xiqa {__version__} - image quality Poor - 2 acquisition checks failed; foreign objects Good",
        VERDICT_COLOURS["Poor"])
