"""The review page of a real ``xiqa serve``, read in headless Chromium.

A chest phantom, the WG04 ankle (refused by the gate) and an instance with
too little pixel data (rejected) reach the node over a real association, all
carrying canary patient data.  The overview and the detail page show the
figures of report.json and the reason files, no canary reaches the HTML, and
no request reaches a file outside the output folder.  Screenshots are kept in
the test folder and in ``$XIQA_SCREENSHOTS`` if set.
"""

from __future__ import annotations

import html
import http.client
import json
from pathlib import Path

import numpy as np
import pytest
from chromium import requires_chromium, running_chromium
from orthanc import free_port
from pydicom import dcmread
from pydicom.data import get_testdata_file
from serve_helpers import ServeNode, send, wait_for
from xiqa.dicom_fixtures.instances import VARIANTS_BY_NAME, PatientStudy, build_instance, fixture_uid
from xiqa.dicom_fixtures.phantom import render_phantom
from xiqa.service.listener import SUCCESS
from xiqa.service.spool import REJECTED

pytestmark = requires_chromium

CANARY = PatientStudy(
    patient_name="ZZCANARY^REVIEWNAME", patient_id="ZZREVIEWPID", birth_date="19020304", sex="O",
    study_uid=fixture_uid("review-study"), study_date="20260103", study_time="101500",
    accession_number="ZZREVIEWACC", study_id="5")
CANARIES = ("ZZCANARY", "REVIEWNAME", "ZZREVIEWPID", "19020304", "ZZREVIEWACC")


def _sources(folder: Path) -> tuple[Path, Path, Path]:
    """A chest phantom, the ankle and a broken copy of the phantom, all with the canary identity."""
    folder.mkdir(parents=True, exist_ok=True)
    phantom = render_phantom(np.random.default_rng(41), 384, 320, ["coin", "wire"])
    chest = build_instance(phantom.image, VARIANTS_BY_NAME["dx_processing_m2_12bit_explicit_none"], CANARY,
                           series_number=1, instance_number=1, uid_seed=("review", 1))
    chest.save_as(folder / "chest.dcm", enforce_file_format=True)
    broken = build_instance(phantom.image, VARIANTS_BY_NAME["dx_processing_m2_12bit_explicit_none"], CANARY,
                            series_number=1, instance_number=2, uid_seed=("review", 2))
    broken.Rows = broken.Rows * 2  # pixel data too short for the header: stored, then rejected
    broken.save_as(folder / "broken.dcm", enforce_file_format=True)
    ankle = dcmread(get_testdata_file("RG3_UNCR.dcm"))
    ankle.PatientName, ankle.PatientID, ankle.PatientBirthDate = (
        CANARY.patient_name, CANARY.patient_id, CANARY.birth_date)
    ankle.AccessionNumber = CANARY.accession_number
    ankle.save_as(folder / "ankle.dcm")
    return folder / "chest.dcm", folder / "ankle.dcm", folder / "broken.dcm"


def _status(port: int, path: str) -> int:
    """The HTTP status of a GET sent as written (no client-side normalisation of ``..``)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    finally:
        connection.close()


def test_review_page_shows_report_figures_and_reasons_without_patient_data(
        nodes: list[ServeNode], tmp_path: Path) -> None:
    chest, ankle, broken = _sources(tmp_path / "sources")
    port, review_port = free_port(), free_port()
    node = ServeNode(tmp_path / "node", port, study_timeout=1, extra=("--review-port", str(review_port)))
    nodes.append(node)
    assert send(port, [chest, ankle, broken]) == [SUCCESS] * 3
    output, storage = tmp_path / "node" / "out", tmp_path / "node" / "storage"
    wait_for(lambda: len(list(output.glob("*/report.json"))) == 2
             and len(list((storage / REJECTED).glob("*/*.reason.txt"))) == 1, 600,
             "two reports and one rejected instance", node)
    reports = {path.parent.name: json.loads(path.read_text()) for path in output.glob("*/report.json")}
    scored_uid = str(dcmread(chest).SOPInstanceUID)
    refused_uid = str(dcmread(ankle).SOPInstanceUID)
    scored, refused = reports[scored_uid], reports[refused_uid]
    assert scored["frontal_chest"] and not refused["frontal_chest"]
    (reason_file,) = (storage / REJECTED).glob("*/*.reason.txt")

    # only UIDs reach files, and only files in the output folder
    base = f"/image/{scored_uid}"
    assert _status(review_port, f"{base}/report.png") == 200
    for path in (f"{base}/report.json", f"{base}/../../storage/rejected", "/image/..%2F..%2Fnode.log",
                 f"/image/{scored_uid}%2F..%2F..%2F{reason_file.relative_to(tmp_path / 'node')}",
                 "/image/../../../../etc/passwd", "/image/1.2.3/report.png", "/etc/passwd",
                 f"/{reason_file}"):
        assert _status(review_port, path) == 404, path

    url = f"http://127.0.0.1:{review_port}"
    with running_chromium() as browser:
        page = browser.new_page(1280, 900)
        page.goto(f"{url}/")
        page.wait_for("[...document.images].every(i => i.complete)", timeout=30)
        page.keep_screenshot("review_1_overview", tmp_path)
        pages = page.html()
        rows = page.evaluate("""[...document.querySelectorAll('tr.image')].map(r => ({
            uid: r.dataset.uid, verdict: r.querySelector('.verdict').innerText,
            q_img: r.querySelector('.q_img').innerText, objects: r.querySelector('.objects').innerText,
            thumb: r.querySelector('img').naturalWidth}))""")
        assert rows == [{"uid": scored_uid, "verdict": scored["verdict"], "q_img": f"{scored['q_img']:.3f}",
                         "objects": str(len(scored["objects"])), "thumb": rows[0]["thumb"]}]
        assert rows[0]["thumb"] > 0  # the thumbnail is report.png, decoded
        not_scored = page.evaluate("""[...document.querySelectorAll('tr.not-scored')].map(r =>
            [r.dataset.uid, r.querySelector('.reason').innerText])""")
        assert not_scored == [[refused_uid, refused["not_scored_reason"]]]
        rejected = page.evaluate("""[...document.querySelectorAll('tr.rejected')].map(r =>
            [r.dataset.uid, r.querySelector('.reason').innerText])""")
        assert rejected == [[dcmread(broken).SOPInstanceUID, reason_file.read_text().strip()]]
        assert page.evaluate("document.getElementById('queue-depth').innerText") == "0"
        assert page.evaluate("document.getElementById('instances-received').innerText") == "3"
        assert "accepting associations" in page.evaluate("document.getElementById('health').innerText")

        page.goto(f"{url}/image/{scored_uid}")
        page.wait_for("document.getElementById('report').complete", timeout=30)
        page.keep_screenshot("review_2_image", tmp_path)
        pages += page.html()
        assert page.evaluate("document.getElementById('report').naturalWidth") > 0
        assert page.evaluate("document.getElementById('summary').innerText") == scored["summary"]
        assert page.evaluate("document.getElementById('q_img').innerText") == f"{scored['q_img']:.3f}"
        severities = page.evaluate(
            "[...document.querySelectorAll('tr.object .severity')].map(c => c.innerText)")
        # removable objects first, then the medical devices, each in report.json's order
        by_class = sorted(scored["objects"], key=lambda o: (o.get("object_class") or "removable") == "device")
        assert severities == [f"{o['severity']:.3f}" for o in by_class]

        page.goto(f"{url}/image/{refused_uid}")
        page.keep_screenshot("review_3_not_scored", tmp_path)
        pages += page.html()
        reason = page.evaluate("document.getElementById('not-scored').innerText")
        assert reason == refused["not_scored_reason"]
        assert page.evaluate("document.getElementById('summary').innerText") == refused["summary"]
    for canary in CANARIES:
        assert canary not in pages, canary
    assert node.stop() == 0
    for canary in CANARIES:
        assert canary not in node.text(), canary


@pytest.mark.parametrize("text", ["<script>alert(1)</script>", "a & b \"quoted\" 'single'"])
def test_review_page_escapes_what_it_shows(tmp_path: Path, text: str) -> None:
    """A reason file is text from a library message: it reaches the page escaped."""
    from xiqa.service.metrics import NodeMetrics
    from xiqa.service.review import NodeState, overview_html

    reason = tmp_path / "storage" / REJECTED / "1.2.3" / "1.2.3.4.reason.txt"
    reason.parent.mkdir(parents=True)
    reason.write_text(text)
    page = overview_html(NodeState(NodeMetrics(), "XIQA", lambda: True), tmp_path / "out",
                         tmp_path / "storage").decode()
    assert text not in page and "<script>" not in page
    assert html.escape(text, quote=True) in page
