"""The review page of ``xiqa serve``: what the node did, for the people who look after it.

A stdlib HTTP server on its own port (``--review-port``, 127.0.0.1 unless
``--review-bind`` says otherwise), like the metrics endpoint: no web framework.
It only reads what the node already writes:

* ``OUTPUT/<SOP Instance UID>/report.json`` and ``report.png`` per image;
* ``STORAGE/rejected/<study>/<sop>.reason.txt`` per rejected instance;
* the node's own figures (queue and outbox depth, counters) from its metrics.

Pages: ``/`` (health, depths, recent images with verdict, Q_img, removable objects, medical
devices and a thumbnail, images not scored and why, rejected instances and why; ``?show=removable``
or ``?show=devices`` keeps the images with removable objects or with medical devices) and
``/image/<SOP Instance UID>`` (report.png, the summary, the removable objects and the medical
devices in two tables; ``?class=removable`` or ``?class=device`` shows one);
``/image/<SOP Instance UID>/report.png`` is the only file served.  UIDs,
verdicts and reasons only: report.json and reason files hold no patient name,
ID or birth date, and nothing else is read.  Every text is escaped, and a
request names a UID, never a path, so nothing outside the output folder can be
reached.
"""

from __future__ import annotations

import html
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote

from xiqa.operators.acquisition.common import CHECKS

from .metrics import NodeMetrics
from .spool import REJECTED

logger = logging.getLogger(__name__)

REPORT_JSON, REPORT_PNG = "report.json", "report.png"
#: a DICOM UID (PS3.5 9.1): digits and dots, at most 64 characters
_UID = re.compile(r"[0-9][0-9.]{0,63}")
_IMAGE_PAGE = re.compile(r"/image/(?P<uid>[^/]+)(?P<png>/report\.png)?")
#: how many images the overview lists (newest first)
RECENT = 50
_STYLE = """body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse}
td,th{border:1px solid #bbb;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#eee}.Good{color:#176417}.Acceptable{color:#8a6d00}.Poor{color:#a31515}
img.thumb{height:96px}code{font-size:90%;word-break:break-all}"""


@dataclass(frozen=True)
class ImageReport:
    """One image's report.json, as the pages show it."""

    sop_instance_uid: str
    study_instance_uid: str | None
    written: float  # report.json's modification time
    report: dict

    @property
    def scored(self) -> bool:
        return bool(self.report.get("frontal_chest"))


def read_reports(output: Path, limit: int | None = RECENT) -> list[ImageReport]:
    """The images under ``output`` with a readable report.json, newest first."""
    found = []
    for path in Path(output).glob(f"*/{REPORT_JSON}"):
        if not _UID.fullmatch(path.parent.name):
            continue
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
            written = path.stat().st_mtime
        except (OSError, ValueError):  # being written, or removed meanwhile
            continue
        found.append(ImageReport(path.parent.name, report.get("study_instance_uid"), written, report))
    found.sort(key=lambda item: item.written, reverse=True)
    return found[:limit]


@dataclass(frozen=True)
class RejectedInstance:
    study: str  # the spool's folder name (a UID)
    sop_instance_uid: str
    reason: str


def read_rejected(storage: Path, limit: int | None = RECENT) -> list[RejectedInstance]:
    """The spool's rejected instances with their reasons, newest first."""
    paths = []
    for path in (Path(storage) / REJECTED).glob("*/*.reason.txt"):
        try:
            paths.append((path.stat().st_mtime, path))
        except OSError:
            continue
    rejected = []
    for _, path in sorted(paths, reverse=True)[:limit]:
        try:
            reason = path.read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            continue
        rejected.append(RejectedInstance(path.parent.name, path.name.removesuffix(".reason.txt"), reason))
    return rejected


@dataclass
class NodeState:
    """What the overview shows about the node itself.

    ``dicom_listening`` tells whether the DICOM listener holds its port (it is
    started after the review page and stopped before it).
    """

    metrics: NodeMetrics
    ae_title: str
    dicom_listening: Callable[[], bool]
    started: float = field(default_factory=time.time)

    def figure(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _number(value: object, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else ""


def _page(title: str, body: str) -> bytes:
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f"<style>{_STYLE}</style></head><body>{body}</body></html>").encode()


def _table(headers: tuple[str, ...], rows: list[str], empty: str) -> str:
    if not rows:
        return f"<p>{_e(empty)}</p>"
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


#: the overview's filters: ``?show=`` value -> (link text, which scored images it keeps)
SHOW_FILTERS: dict[str, tuple[str, Callable[[dict], bool]]] = {
    "all": ("All images", lambda report: True),
    "removable": ("With removable objects", lambda report: bool(report.get("removable_count"))),
    "devices": ("With medical devices", lambda report: bool(report.get("device_count"))),
    "acquisition": ("Failing an acquisition check",
                    lambda report: bool((report.get("acquisition") or {}).get("failed"))),
}
#: the detail page's filters: ``?class=`` value -> the object classes it shows
CLASS_FILTERS = {"all": ("removable", "device"), "removable": ("removable",), "device": ("device",)}


def _filter_links(parameter: str, choices: dict[str, str], current: str, href: str) -> str:
    links = [f"<strong>{_e(text)}</strong>" if key == current else
             f'<a href="{_e(href)}?{parameter}={_e(key)}">{_e(text)}</a>' for key, text in choices.items()]
    return f'<p class="filters" id="{parameter}-filter">Show: {" | ".join(links)}</p>'


def _object_class(item: dict) -> str:
    return item.get("object_class") or "removable"  # not classed: every object counted as removable


def overview_html(state: NodeState, output: Path, storage: Path, show: str = "all") -> bytes:
    """The overview page; ``show`` (a key of :data:`SHOW_FILTERS`) filters the scored images."""
    show = show if show in SHOW_FILTERS else "all"
    reports = read_reports(output)
    figures = [("Health", f"{state.ae_title}: DICOM listener "
                          + ("accepting associations" if state.dicom_listening() else "not listening")),
               ("Up since", time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(state.started))),
               ("Queue depth", int(state.figure("xiqa_queue_depth"))),
               ("Outbox depth", int(state.figure("xiqa_outbox_depth"))),
               ("Instances received", int(state.figure("xiqa_instances_received_total"))),
               ("Instances processed", int(state.figure("xiqa_instances_processed_total"))),
               ("Instances rejected", int(state.figure("xiqa_instances_rejected_total"))),
               ("Studies failed", int(state.figure("xiqa_studies_failed_total"))),
               *((f"Acquisition failures: {check.replace('_', ' ')}",
                  int(state.figure("xiqa_acquisition_failures_total", {"check": check})))
                 for check in CHECKS)]
    health = "".join(f'<tr><th>{_e(name)}</th><td id="{_e(name.lower().replace(" ", "-"))}">{_e(value)}'
                     f"</td></tr>" for name, value in figures)
    scored = [
        f'<tr class="image" data-uid="{_e(r.sop_instance_uid)}"><td><code>{_e(r.study_instance_uid)}'
        f'</code></td><td><a href="/image/{_e(r.sop_instance_uid)}"><code>{_e(r.sop_instance_uid)}'
        f'</code></a></td><td class="{_e(r.report.get("verdict"))} verdict">{_e(r.report.get("verdict"))}'
        f'</td><td class="q_img">{_number(r.report.get("q_img"))}</td>'
        f'<td class="objects">{len(r.report.get("objects") or [])}</td>'
        f'<td class="removable">{_e(r.report.get("removable_count", ""))}</td>'
        f'<td class="devices">{_e(r.report.get("device_count", ""))}</td>'
        f'<td class="acquisition">{_e(", ".join((r.report.get("acquisition") or {}).get("failed", [])))}</td>'
        f'<td><img class="thumb" alt="report" src="/image/{_e(r.sop_instance_uid)}/report.png"></td></tr>'
        for r in reports if r.scored and SHOW_FILTERS[show][1](r.report)]
    not_scored = [
        f'<tr class="not-scored" data-uid="{_e(r.sop_instance_uid)}"><td><code>'
        f'{_e(r.study_instance_uid)}</code></td><td><a href="/image/{_e(r.sop_instance_uid)}"><code>'
        f'{_e(r.sop_instance_uid)}</code></a></td><td class="reason">{_e(r.report.get("not_scored_reason"))}'
        f"</td></tr>" for r in reports if not r.scored]
    rejected = [
        f'<tr class="rejected" data-uid="{_e(r.sop_instance_uid)}"><td><code>{_e(r.study)}</code></td>'
        f'<td><code>{_e(r.sop_instance_uid)}</code></td><td class="reason">{_e(r.reason)}</td></tr>'
        for r in read_rejected(storage)]
    body = (f"<h1>xiqa node</h1><table>{health}</table>"
            f"<h2>Recent images (newest first, at most {RECENT})</h2>"
            + _filter_links("show", {key: text for key, (text, _) in SHOW_FILTERS.items()}, show, "/")
            + _table(("Study Instance UID", "SOP Instance UID", "Verdict", "Q_img", "Objects",
                      "Removable objects", "Medical devices", "Acquisition failures", "Report"),
                     scored, "No image scored yet." if show == "all" else "No image of this kind.")
            + "<h2>Not scored (not a frontal chest radiograph)</h2>"
            + _table(("Study Instance UID", "SOP Instance UID", "Reason"), not_scored, "None.")
            + "<h2>Rejected instances</h2>"
            + _table(("Study", "SOP Instance UID", "Reason"), rejected, "None."))
    return _page("xiqa node", body)


def _objects_table(objects: list[tuple[int, dict]], empty: str) -> str:
    rows = [f'<tr class="object {_e(_object_class(o))}"><td>{number}</td>'
            f'<td class="class">{_e(_object_class(o))}{" (expected here)" if o.get("expected") else ""}</td>'
            f'<td class="category">{_e((o.get("category") or "").replace("_", " "))}</td>'
            f'<td>{_number(o.get("class_confidence"), 2)}</td><td>{_number(o.get("area_fraction"), 4)}</td>'
            f'<td>{_number(o.get("location_weight"))}</td><td>{_number(o.get("size_penalty"))}</td>'
            f'<td class="severity">{_number(o.get("severity"))}</td>'
            f'<td>{_number(o.get("mean_saliency"))}</td></tr>'
            for number, o in objects]
    return _table(("Object", "Class", "Category", "Confidence", "Area fraction", "Location weight",
                   "Size penalty", "Severity", "Mean saliency"), rows, empty)


def detail_html(report: ImageReport, shown: str = "all") -> bytes:
    """The page of one image: report.png, the summary, the figures, and the removable objects and
    the medical devices in two tables; ``shown`` (a key of :data:`CLASS_FILTERS`) keeps one."""
    shown = shown if shown in CLASS_FILTERS else "all"
    data = report.report
    uid = _e(report.sop_instance_uid)
    facts = [("SOP Instance UID", report.sop_instance_uid), ("Study Instance UID", report.study_instance_uid)]
    if report.scored:
        facts += [("Verdict", data.get("verdict")), ("Verdict counts", data.get("verdict_basis")),
                  ("Q_removable", _number(data.get("q_removable"))),
                  ("Verdict (removable objects)", data.get("verdict_removable")),
                  ("Verdict (all objects)", data.get("verdict_all_objects")),
                  ("ECG rule", data.get("ecg_rule")), ("Q_img", _number(data.get("q_img"))),
                  ("Q_filtered", _number(data.get("q_filtered"))),
                  ("Verdict (saliency-filtered)", data.get("verdict_filtered")),
                  ("Saliency method", data.get("saliency_method")), ("Model", data.get("model_id"))]
    else:
        facts.append(("Not scored", data.get("not_scored_reason")))
    acquisition = data.get("acquisition") or {}
    facts += [(f"Acquisition: {name.replace('_', ' ')}",
               f"{check['status']} (value {_number(check.get('value'))}, threshold {check.get('threshold')})")
              for name, check in (acquisition.get("checks") or {}).items()]
    facts.append(("Summary written by", data.get("summary_source")))
    table = "".join(f'<tr><th>{_e(name)}</th><td id="{_e(name.lower().replace(" ", "-"))}">{_e(value)}'
                    f"</td></tr>" for name, value in facts)
    numbered = list(enumerate(data.get("objects") or [], start=1))
    sections = ""
    if "removable" in CLASS_FILTERS[shown]:
        sections += '<h2 id="removable-objects">Removable objects</h2>' + _objects_table(
            [(n, o) for n, o in numbered if _object_class(o) == "removable"], "No removable object counted.")
    if "device" in CLASS_FILTERS[shown]:
        sections += '<h2 id="medical-devices">Medical devices</h2>' + _objects_table(
            [(n, o) for n, o in numbered if _object_class(o) == "device"], "No medical device seen.")
    choices = {"all": "All objects", "removable": "Removable objects", "device": "Medical devices"}
    filters = _filter_links("class", choices, shown, f"/image/{report.sop_instance_uid}")
    body = (f'<p><a href="/">Overview</a></p><h1>Image <code>{uid}</code></h1><table>{table}</table>'
            f'<h2>Summary</h2><p id="summary">{_e(data.get("summary"))}</p>'
            f"{filters}{sections}"
            f'<h2>Report</h2><img id="report" alt="report" style="max-width:100%" '
            f'src="/image/{uid}/report.png">')
    return _page(f"xiqa image {report.sop_instance_uid}", body)


def image_file(output: Path, uid: str, name: str) -> Path | None:
    """``output/uid/name`` when ``uid`` is a UID and the file lies in the output folder; else None."""
    if not _UID.fullmatch(uid):
        return None
    root = Path(output).resolve()
    path = (root / uid / name).resolve()
    return path if path.is_relative_to(root) and path.is_file() else None


class _Handler(BaseHTTPRequestHandler):
    server: ReviewServer

    def log_message(self, *args: object) -> None:  # requests name UIDs only, but need no log line each
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = unquote(self.path.split("?", 1)[0])
        query = parse_qs(self.path.split("?", 1)[1]) if "?" in self.path else {}
        server = self.server
        try:
            if path in ("/", "/index.html"):
                show = query.get("show", ["all"])[0]
                self._send(200, overview_html(server.state, server.output, server.storage, show), "text/html")
                return
            match = _IMAGE_PAGE.fullmatch(path)
            if match and match["png"]:
                png = image_file(server.output, match["uid"], REPORT_PNG)
                if png is not None:
                    self._send(200, png.read_bytes(), "image/png")
                    return
            elif match:
                report = image_file(server.output, match["uid"], REPORT_JSON)
                if report is not None:
                    data = json.loads(report.read_text(encoding="utf-8"))
                    item = ImageReport(match["uid"], data.get("study_instance_uid"),
                                       report.stat().st_mtime, data)
                    self._send(200, detail_html(item, query.get("class", ["all"])[0]), "text/html")
                    return
            self._send(404, _page("not found", "<h1>Not found</h1>"), "text/html")
        except (OSError, ValueError) as error:  # a report being replaced; no patient data in it
            logger.warning("review page: %s: %s", path, error)  # paths hold UIDs only
            self._send(500, _page("error", "<h1>Could not read the report</h1>"), "text/html")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type + ("; charset=utf-8" if content_type == "text/html"
                                                         else ""))
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", "default-src 'self'; style-src 'unsafe-inline'")
        self.end_headers()
        self.wfile.write(body)


class ReviewServer(ThreadingHTTPServer):
    """The review page's HTTP server; :meth:`start` serves it from a daemon thread."""

    daemon_threads = True

    def __init__(self, address: str, port: int, output: Path, storage: Path, state: NodeState) -> None:
        super().__init__((address, port), _Handler)
        self.output, self.storage, self.state = Path(output), Path(storage), state

    @property
    def port(self) -> int:
        return self.server_address[1]

    def start(self) -> None:
        threading.Thread(target=self.serve_forever, name="xiqa-review", daemon=True).start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
