"""Bad input: malformed files made by mutation, straight into the loader, through ``xiqa analyze`` and
through the listener of a running node.  No crash, no hang, one line per rejected file, the good files of
the same batch or association still processed, no canary identity anywhere."""

from __future__ import annotations

import os
import re
import resource
import signal
import struct
import subprocess
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mutations import MUTATIONS, mutate, parse_elements, with_own_instance_uid, write_corpus
from orthanc import free_port
from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from serve_helpers import ServeNode, echo, peak_resident_bytes, send_raw, xiqa_command
from support import CANARIES, explicit_sources, phi_hits
from xiqa.operators.loader import load_case
from xiqa.service.listener import SUCCESS
from xiqa.service.spool import INCOMING, PROCESSED, REJECTED

pytestmark = pytest.mark.reliability

WINDOW_WIDTH = (0x0028, 0x1051)
#: a mutant the loader needs longer for than this counts as a hang
LOAD_SECONDS = 20.0
#: peak RSS allowed to ``xiqa analyze`` over a whole corpus (torch + Holoscan + the LLM take ~1.5 GB)
ANALYZE_RSS_BYTES = 4 * 2**30


def _flip_vr(data: bytes, tag: tuple[int, int]) -> bytes:
    """``data`` with the VR of the first element ``tag`` turned into the unknown VR 'ES' (one bit)."""
    offset = data.index(struct.pack("<HH", *tag))
    damaged = bytearray(data)
    damaged[offset + 4] ^= 0x01  # 'D' -> 'E', 'L' -> 'M', ...
    return bytes(damaged)


def _raw_elements(dataset) -> list:
    """Elements of ``dataset`` and its sequence items that pydicom has not converted yet."""
    raw = [element for element in dataset._dict.values() if isinstance(element, RawDataElement)]
    for element in dataset._dict.values():
        if not isinstance(element, RawDataElement) and element.VR == "SQ":
            for item in element.value:
                raw += _raw_elements(item)
    return raw


def test_an_unknown_vr_rejects_its_file_in_the_loader_and_the_batch_goes_on(canary_sources, tmp_path):
    """The bug mutation found: a bit flip makes Window Width's VR unknown; pydicom raised
    NotImplementedError at the loader's first read of it, outside the per-case isolation."""
    from xiqa.app import build_settings, run_graph

    flipped = tmp_path / "flipped_window_width.dcm"
    flipped.write_bytes(_flip_vr(with_own_instance_uid(canary_sources[0].read_bytes(), 1), WINDOW_WIDTH))
    good = canary_sources[1]
    settings = build_settings([flipped, good], tmp_path / "out", device="cpu")
    cases = run_graph(settings)
    assert [case.path for case in cases] == [flipped, good]
    assert cases[0].rejected
    assert cases[0].error == "element (0028,1051) cannot be decoded (NotImplementedError)"
    assert cases[1].ok and (tmp_path / "out" / str(dcmread(good).SOPInstanceUID) / "report.json").exists()


def test_the_loader_converts_every_element_nested_ones_included(canary_sources, tmp_path):
    lut_source = next(p for p in canary_sources if "lut" in p.name and "rle" in p.name)
    case = load_case(lut_source)
    assert case.ok and "VOILUTSequence" in case.source.dataset
    assert _raw_elements(case.source.dataset) == []  # nothing is left for a later node to convert
    # an unknown VR inside a sequence item is converted (and fails) only when the item is read
    data = lut_source.read_bytes()
    sequence = data.index(struct.pack("<HH", 0x0028, 0x3010))
    explanation = data.index(struct.pack("<HH", 0x0028, 0x3003), sequence)
    damaged = bytearray(data)
    damaged[explanation + 4] ^= 0x01
    nested = tmp_path / "nested.dcm"
    nested.write_bytes(bytes(damaged))
    lazily = dcmread(nested)  # reading alone does not fail: the item is converted on first access
    assert isinstance(lazily._dict[0x00283010], RawDataElement)
    rejected = load_case(nested)
    assert rejected.rejected
    assert rejected.error == "element (0028,3003) cannot be decoded (NotImplementedError)"  # the nested one


def test_mutants_straight_into_the_loader_never_raise_and_get_one_line(canary_sources, scale, figures,
                                                                      tmp_path):
    bases = [path.read_bytes() for path in explicit_sources(canary_sources)]
    outcomes = {"tried": 0, "rejected": 0, "loaded": 0, "slowest_s": 0.0}
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    @settings(max_examples=scale.hypothesis_examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(kind=st.sampled_from(sorted(MUTATIONS)), seed=st.integers(0, 2**31), base=st.integers(0, 10))
    def property_(kind: str, seed: int, base: int) -> None:
        data = bases[0] if kind in ("huge_dimensions", "pixel_data_length", "two_gigabyte_length") \
            else bases[base % len(bases)]
        damaged, what = mutate(data, kind, seed)
        path = tmp_path / "mutant.dcm"
        path.write_bytes(damaged)
        started = time.perf_counter()
        case = load_case(path)  # must not raise, whatever the damage
        seconds = time.perf_counter() - started
        outcomes["tried"] += 1
        outcomes["slowest_s"] = max(outcomes["slowest_s"], seconds)
        assert seconds < LOAD_SECONDS, what
        if case.ok:
            outcomes["loaded"] += 1
            assert case.source.pixels.ndim == 2
        else:
            outcomes["rejected"] += 1
            assert case.rejected and case.error and "\n" not in case.error and "\r" not in case.error
            assert not any(canary in case.error for canary in CANARIES), (what, case.error)

    property_()
    growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - maxrss_before) * 1024
    figures["bad input: loader"] = {**outcomes, "peak_rss_growth_bytes": growth}
    assert outcomes["tried"] >= scale.hypothesis_examples * 0.9
    assert outcomes["rejected"] > outcomes["tried"] / 3
    assert growth < 2**30


_PROCESSED_LINE = re.compile(r"^(?P<path>\S+): Q_img \d\.\d{3} Q_filtered \d\.\d{3} verdict \w+ \([a-z ]+\) "
                             r"objects \d+ removable \d+ devices \d+$")
_REJECTED_LINE = re.compile(r"^(?:rejected|failed) (?P<path>\S+): (?P<reason>\S.*)$")
#: a mutant whose pixels still decode may be no frontal chest any more: read, not scored, one line too
_NOT_SCORED_LINE = re.compile(r"^not scored (?P<path>\S+): (?P<reason>\S.*)$")


def test_mutants_through_xiqa_analyze(canary_sources, scale, figures, tmp_path):
    corpus = write_corpus(explicit_sources(canary_sources), tmp_path / "corpus", scale.corpus, seed=1)
    good = [canary_sources[1], canary_sources[-1]]
    inputs = [good[0], *(m.path for m in corpus), good[1]]
    out, err = tmp_path / "analyze.out", tmp_path / "analyze.err"
    with open(out, "w") as stdout, open(err, "w") as stderr:  # stderr is a file, not a terminal
        process = subprocess.Popen(xiqa_command("analyze", *map(str, inputs), "--output", str(tmp_path / "o"),
                                                "--device", "cpu"), stdout=stdout, stderr=stderr)
        hang, deadline = False, time.monotonic() + 120 + 20 * len(inputs)
        peak_rss = 0
        while True:
            # the child's own peak, not wait4's (that also counts the pytest process it came from)
            peak_rss = max(peak_rss, peak_resident_bytes(process.pid))
            pid, status, _ = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                hang = True
                process.send_signal(signal.SIGKILL)
            time.sleep(0.5)
    returncode = process.returncode = os.waitstatus_to_exitcode(status)
    stdout_text, stderr_text = out.read_text(), err.read_text()
    processed = [m["path"] for line in stdout_text.splitlines() if (m := _PROCESSED_LINE.match(line))]
    rejected = [m["path"] for line in stderr_text.splitlines() if (m := _REJECTED_LINE.match(line))]
    not_scored = [m["path"] for line in stderr_text.splitlines() if (m := _NOT_SCORED_LINE.match(line))]
    crashes = int(returncode not in (0, 1) or "Traceback" in stderr_text)
    hits = phi_hits([out, err, tmp_path / "o"])
    figures["bad input: xiqa analyze"] = {
        "tried": len(corpus), "rejected": len(set(rejected) - set(map(str, good))),
        "processed": len(set(processed) - set(map(str, good))), "not scored": len(set(not_scored)),
        "crashes": crashes, "hangs": int(hang),
        "peak_rss_bytes": peak_rss, "phi_hits": len(hits)}
    assert not hang and crashes == 0, stderr_text[-3000:]
    assert returncode == 1
    assert "\r" not in stderr_text and "\x1b" not in stderr_text  # no progress bar when not a terminal
    assert sorted(processed + rejected + not_scored) == sorted(map(str, inputs))  # each: exactly one line
    # and nothing else: no decoder's own complaint ("Not a JPEG file: ...") outside those lines
    assert [line for line in stderr_text.splitlines()
            if not (_REJECTED_LINE.match(line) or _NOT_SCORED_LINE.match(line))] == []
    assert set(map(str, good)) <= set(processed)
    assert 0 < peak_rss < ANALYZE_RSS_BYTES
    assert hits == []


def test_mutants_through_the_listener_of_a_running_node(canary_sources, scale, figures, tmp_path):
    corpus = write_corpus(explicit_sources(canary_sources), tmp_path / "corpus", scale.corpus, seed=2)
    good = [canary_sources[1], canary_sources[-1]]  # the canary study, like the mutants
    port = free_port()
    node = ServeNode(tmp_path, port, study_timeout=2)
    try:
        statuses = send_raw(port, [good[0], *(m.path for m in corpus), good[1]])
        assert statuses[0] == statuses[-1] == SUCCESS
        assert echo(port)
        storage = tmp_path / "storage"
        sent = sum(status == SUCCESS for status in statuses)
        finished = lambda: list((storage / PROCESSED).rglob("*.dcm")) + list(  # noqa: E731
            (storage / REJECTED).rglob("*.dcm"))
        node.wait_for(lambda: len(finished()) == sent and not list((storage / INCOMING).rglob("*.dcm")),
                      120 + 10 * sent, "every stored mutant processed or rejected")
        assert echo(port), "the node stopped answering"
        good_uids = {str(dcmread(path).SOPInstanceUID) for path in good}
        assert good_uids <= {path.stem for path in (storage / PROCESSED).rglob("*.dcm")}
        rejected = list((storage / REJECTED).rglob("*.dcm"))
        for instance in rejected:
            reason = instance.with_suffix(".reason.txt").read_text()
            assert reason.count("\n") == 1 and reason.strip()
            assert f"rejected {instance.name}: " in node.text()
        log_text = node.text()
        assert node.stop() == 0
    finally:
        node.stop(signal.SIGKILL)
    hits = phi_hits([tmp_path / "storage", tmp_path / "out", node.log_path])
    figures["bad input: listener"] = {
        "tried": len(corpus), "stored": sent - 2, "refused or unsendable": len(statuses) - sent,
        "rejected": len(rejected), "processed": sent - len(rejected) - 2, "crashes": 0, "hangs": 0,
        "phi_hits": len(hits)}
    assert "Traceback" not in log_text
    assert hits == []


def test_mutations_each_parse_the_base_layout(canary_sources):
    elements = parse_elements(canary_sources[0].read_bytes())
    assert (0x7FE0, 0x0010) in [element.tag for element in elements]
    for kind in MUTATIONS:
        damaged, what = mutate(canary_sources[0].read_bytes(), kind, 0)
        assert damaged != canary_sources[0].read_bytes(), kind
