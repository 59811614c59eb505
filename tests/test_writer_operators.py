"""The three writer nodes run in a real MONAI Deploy (Holoscan) graph and write what write_outputs writes."""

from __future__ import annotations

from pathlib import Path

from graph_harness import run_node
from pydicom import dcmread
from writer_cases import ALGORITHM, WriterCase
from xiqa.operators.case import Case
from xiqa.operators.saliency import SaliencyResult
from xiqa.operators.sc_writer import ScWriterOperator
from xiqa.operators.seg_writer import SegWriterOperator
from xiqa.operators.segmentation import SegmentationResult
from xiqa.operators.sr_writer import SrWriterOperator
from xiqa.operators.summary import Summary


def _case(case: WriterCase, with_summary: bool = True) -> Case:
    return Case(
        path=case.source.path, source=case.source,
        segmentation=SegmentationResult(case.probability, case.grid_mask, ALGORITHM.model_id),
        saliency=SaliencyResult(case.saliency, "gradcam", []), quality=case.quality,
        summary=Summary(case.summary, "template", "template") if with_summary else None)


def _writers(output: Path):
    return [lambda app: SegWriterOperator(app, output=output, name="seg_writer"),
            lambda app: ScWriterOperator(app, output=output, name="sc_writer"),
            lambda app: SrWriterOperator(app, output=output, name="sr_writer")]


def test_writer_nodes_write_the_same_outputs_as_write_outputs(cases, tmp_path):
    case = cases["cr_m1_12bit_explicit_window"]
    (written,) = run_node(_writers(tmp_path), [_case(case)])
    assert written.ok, written.error
    uid = case.source.sop_instance_uid
    assert sorted(written.outputs) == ["sc", "seg", "sr"]
    for kind in ("seg", "sc", "sr"):
        assert written.outputs[kind] == tmp_path / uid / f"{uid}_{kind}.dcm"
        # same algorithm (model id, saliency method) as write_outputs in the shared cases: same UIDs
        assert dcmread(written.outputs[kind]).SOPInstanceUID == dcmread(case.paths[kind]).SOPInstanceUID
    sr = dcmread(written.outputs["sr"])
    evidence = {item.ReferencedSOPInstanceUID for study in sr.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence for item in series.ReferencedSOPSequence}
    assert evidence == {uid, dcmread(written.outputs["seg"]).SOPInstanceUID}


def test_a_case_without_summary_fails_at_the_sr_and_the_next_case_is_written(cases, tmp_path):
    broken, good = _case(cases["utf8_names"], with_summary=False), _case(cases["dx_m2_14bit_j2k_window"])
    done = run_node(_writers(tmp_path), [broken, good])
    assert done[0].error.startswith("sr_writer failed: AttributeError")
    assert sorted(done[0].outputs) == ["sc", "seg"]
    assert done[1].ok and sorted(done[1].outputs) == ["sc", "seg", "sr"]
