"""The review page shows removable objects and medical devices apart, with filters (no browser needed)."""

from __future__ import annotations

import json
from pathlib import Path

from xiqa.service.metrics import NodeMetrics
from xiqa.service.review import ImageReport, NodeState, detail_html, overview_html


def _object(object_class: str, severity: float, category: str | None = None, expected: bool = False) -> dict:
    return {"object_class": object_class, "class_confidence": 0.93, "category": category,
            "expected": expected, "area_fraction": 0.01, "location_weight": 1.0, "size_penalty": 0.0,
            "severity": severity, "mean_saliency": None}


def _write(output: Path, uid: str, objects: list[dict]) -> dict:
    report = {"source_sop_instance_uid": uid, "study_instance_uid": "1.2.3", "frontal_chest": True,
              "verdict": "Good", "q_img": 0.5, "q_removable": 0.9, "objects": objects,
              "removable_count": sum(o["object_class"] == "removable" and not o["expected"] for o in objects),
              "device_count": sum(o["object_class"] == "device" for o in objects), "summary": "s"}
    (output / uid).mkdir(parents=True)
    (output / uid / "report.json").write_text(json.dumps(report))
    return report


def _rows(page: str) -> list[str]:
    return [row.split('data-uid="')[1].split('"')[0] for row in page.split('<tr class="image"')[1:]]


def test_the_overview_filters_images_with_removable_objects_or_with_devices(tmp_path: Path) -> None:
    output = tmp_path / "out"
    _write(output, "1.2.3.1", [_object("removable", 0.4, "jewellery_chain")])
    _write(output, "1.2.3.2", [_object("device", 0.6, "endotracheal_tube")])
    _write(output, "1.2.3.3", [])
    state = NodeState(NodeMetrics(), "XIQA", lambda: True)
    everything = overview_html(state, output, tmp_path / "storage").decode()
    assert sorted(_rows(everything)) == ["1.2.3.1", "1.2.3.2", "1.2.3.3"]
    assert "<th>Removable objects</th><th>Medical devices</th>" in everything
    assert _rows(overview_html(state, output, tmp_path / "storage", "removable").decode()) == ["1.2.3.1"]
    devices = overview_html(state, output, tmp_path / "storage", "devices").decode()
    assert _rows(devices) == ["1.2.3.2"]
    assert '<a href="/?show=removable">With removable objects</a>' in devices
    assert _rows(overview_html(state, output, tmp_path / "storage", "nonsense").decode()) == \
        _rows(everything)


def test_the_image_page_lists_removable_objects_and_devices_in_two_tables(tmp_path: Path) -> None:
    objects = [_object("device", 0.61, "endotracheal_tube"), _object("removable", 0.42, "button_snap"),
               _object("removable", 0.33, "ecg_lead_wire", expected=True)]
    report = ImageReport("1.2.3.9", "1.2.3", 0.0, _write(tmp_path, "1.2.3.9", objects))
    page = detail_html(report).decode()
    removable, devices = page.split('id="removable-objects"')[1].split('id="medical-devices"')
    assert "button snap" in removable and "(expected here)" in removable and "0.420" in removable
    assert "endotracheal tube" in devices and "0.610" in devices and "button" not in devices
    only_devices = detail_html(report, "device").decode()
    assert 'id="removable-objects"' not in only_devices and "endotracheal tube" in only_devices
    only_removable = detail_html(report, "removable").decode()
    assert 'id="medical-devices"' not in only_removable and "button snap" in only_removable
