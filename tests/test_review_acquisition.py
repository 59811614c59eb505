"""The review page and the metrics count each acquisition check's failures (no browser needed)."""

from __future__ import annotations

import json
from pathlib import Path

from xiqa.service.metrics import NodeMetrics
from xiqa.service.review import ImageReport, NodeState, detail_html, overview_html


def _write(output: Path, uid: str, failed: list[str]) -> dict:
    checks = {name: {"status": "fail" if name in failed else "pass", "value": 0.2, "threshold": 0.1}
              for name in ("anatomy_cut_off", "rotation", "inspiration", "exposure", "collimation")}
    report = {"source_sop_instance_uid": uid, "study_instance_uid": "1.2.3", "frontal_chest": True,
              "verdict": "Good", "q_img": 1.0, "objects": [], "summary": "s",
              "acquisition": {"checks": checks, "failed": failed}}
    (output / uid).mkdir(parents=True)
    (output / uid / "report.json").write_text(json.dumps(report))
    return report


def test_the_overview_counts_failures_per_check_and_filters_images_that_failed_one(tmp_path: Path) -> None:
    output = tmp_path / "out"
    _write(output, "1.2.3.1", ["rotation", "inspiration"])
    _write(output, "1.2.3.2", [])
    metrics = NodeMetrics()
    metrics.acquisition_failures.labels(check="rotation").inc(2)
    metrics.acquisition_failures.labels(check="inspiration").inc()
    state = NodeState(metrics, "XIQA", lambda: True)
    page = overview_html(state, output, tmp_path / "storage").decode()
    assert '<th>Acquisition failures: rotation</th><td id="acquisition-failures:-rotation">2</td>' in page
    assert '<td id="acquisition-failures:-inspiration">1</td>' in page
    assert '<td id="acquisition-failures:-anatomy-cut-off">0</td>' in page
    assert '<td class="acquisition">rotation, inspiration</td>' in page
    failing = overview_html(state, output, tmp_path / "storage", "acquisition").decode()
    assert 'data-uid="1.2.3.1"' in failing and 'data-uid="1.2.3.2"' not in failing


def test_the_image_page_lists_each_check_with_its_value_and_threshold(tmp_path: Path) -> None:
    report = ImageReport("1.2.3.9", "1.2.3", 0.0, _write(tmp_path, "1.2.3.9", ["exposure"]))
    page = detail_html(report).decode()
    assert "<th>Acquisition: exposure</th>" in page
    assert "fail (value 0.200, threshold 0.1)" in page
    assert "<th>Acquisition: anatomy cut off</th>" in page
