"""The three writer operators run in a real MONAI Deploy (Holoscan) graph and write their files."""

from __future__ import annotations

from pathlib import Path

import pytest
from monai.deploy.conditions import CountCondition
from monai.deploy.core import Application, Fragment, Operator, OperatorSpec
from pydicom import dcmread
from writer_cases import ALGORITHM, WriterCase, writer_cases
from xiqa.operators import sc_writer, seg_writer, sr_writer
from xiqa.operators.summary import Summary


@pytest.fixture(scope="module")
def cases(fixture_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, WriterCase]:
    return writer_cases(fixture_dir, tmp_path_factory.getbasetemp() / "writer_cases")


class _Feed(Operator):
    PORTS = ("source_image", "mask_at_source", "grid_mask", "saliency", "quality", "summary")

    def __init__(self, fragment: Fragment, *args, case: WriterCase, **kwargs) -> None:
        self.case = case
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        for port in self.PORTS:
            spec.output(port)

    def compute(self, op_input, op_output, context) -> None:
        case = self.case
        values = (case.source, case.mask, case.grid_mask, case.saliency, case.quality,
                  Summary(text=case.summary, source="template", model="template"))
        for port, value in zip(self.PORTS, values, strict=True):
            op_output.emit(value, port)


class _Sink(Operator):
    def __init__(self, fragment: Fragment, *args, received: list, **kwargs) -> None:
        self.received = received
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("sc")
        spec.input("sr")

    def compute(self, op_input, op_output, context) -> None:
        self.received += [op_input.receive("sc"), op_input.receive("sr")]


class _WritersApp(Application):
    def __init__(self, case: WriterCase, output: Path, received: list) -> None:
        self.case, self.output, self.received = case, output, received
        super().__init__()

    def compose(self) -> None:
        feed = _Feed(self, CountCondition(self, 1), case=self.case, name="feed")
        seg = seg_writer.SegWriterOperator(self, output_folder=self.output, algorithm=ALGORITHM,
                                           name="seg")
        sc = sc_writer.ScWriterOperator(self, output_folder=self.output, algorithm=ALGORITHM,
                                        name="sc")
        sr = sr_writer.SrWriterOperator(self, output_folder=self.output, algorithm=ALGORITHM,
                                        name="sr")
        sink = _Sink(self, received=self.received, name="sink")
        self.add_flow(feed, seg, {("source_image", seg_writer.INPUT_PORT_IMAGE),
                                  ("mask_at_source", seg_writer.INPUT_PORT_MASK)})
        self.add_flow(feed, sc, {("source_image", sc_writer.INPUT_PORT_IMAGE),
                                 ("mask_at_source", sc_writer.INPUT_PORT_MASK),
                                 ("saliency", sc_writer.INPUT_PORT_SALIENCY),
                                 ("quality", sc_writer.INPUT_PORT_QUALITY)})
        self.add_flow(feed, sr, {("source_image", sr_writer.INPUT_PORT_IMAGE),
                                 ("quality", sr_writer.INPUT_PORT_QUALITY),
                                 ("summary", sr_writer.INPUT_PORT_SUMMARY),
                                 ("grid_mask", sr_writer.INPUT_PORT_GRID_MASK)})
        self.add_flow(seg, sr, {(seg_writer.OUTPUT_PORT_SEG, sr_writer.INPUT_PORT_SEG)})
        self.add_flow(sc, sink, {(sc_writer.OUTPUT_PORT_SC, "sc")})
        self.add_flow(sr, sink, {(sr_writer.OUTPUT_PORT_SR, "sr")})


def test_operators_write_the_same_outputs_as_write_outputs(cases: dict[str, WriterCase],
                                                           tmp_path: Path) -> None:
    case = cases["dx_m2_14bit_j2k_window"]
    received: list = []
    _WritersApp(case, tmp_path, received).run()
    uid = case.source.sop_instance_uid
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{uid}_{kind}.dcm" for kind in ("seg", "sc", "sr"))
    for kind in ("seg", "sc", "sr"):
        assert dcmread(tmp_path / f"{uid}_{kind}.dcm").SOPInstanceUID == \
            dcmread(case.paths[kind]).SOPInstanceUID
    assert [ds.Modality for ds in received] == ["OT", "SR"]


def test_case_node_writes_outputs_beside_the_report(cases: dict[str, WriterCase],
                                                    tmp_path: Path) -> None:
    from graph_harness import run_node
    from xiqa.operators.case import Case
    from xiqa.operators.output_writer import DicomOutputsOperator
    from xiqa.operators.saliency import SaliencyResult
    from xiqa.operators.segmentation import SegmentationResult

    def make_case(case: WriterCase, with_summary: bool = True) -> Case:
        return Case(
            path=case.source.path, source=case.source,
            segmentation=SegmentationResult(case.probability, case.grid_mask, ALGORITHM.model_id),
            saliency=SaliencyResult(case.saliency, "gradcam", []), quality=case.quality,
            summary=Summary(case.summary, "template", "template") if with_summary else None)

    done = run_node(lambda app: DicomOutputsOperator(app, output=tmp_path, name="dicom_outputs"),
                    [make_case(cases["cr_m1_12bit_explicit_window"]),
                     make_case(cases["utf8_names"], with_summary=False)])
    written, missing = done
    assert written.ok and sorted(written.outputs) == ["sc", "seg", "sr"]
    uid = cases["cr_m1_12bit_explicit_window"].source.sop_instance_uid
    assert written.outputs["sr"] == tmp_path / uid / f"{uid}_sr.dcm"
    # same algorithm (model id, saliency method) as write_outputs in the shared cases: same UIDs
    assert dcmread(written.outputs["sr"]).SOPInstanceUID == \
        dcmread(cases["cr_m1_12bit_explicit_window"].paths["sr"]).SOPInstanceUID
    assert missing.error == "dicom_outputs failed: ValueError: case has no summary to write " \
                            "DICOM outputs from"
