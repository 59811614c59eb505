"""Heatmap Secondary Capture: valid for every variant and quirk, RGB at source size, readable."""

from __future__ import annotations

import dataclasses
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import JPEGLSLossless
from writer_cases import (
    ALGORITHM,
    CASE_NAMES,
    ToolReport,
    WriterCase,
    dciodvfy,
    requires_dciodvfy,
    requires_pixelmed,
)
from xiqa.operators.sc_writer import (
    CONTOUR_RGB,
    DEFAULT_COMPRESSION,
    JPEG_BASELINE_METHOD,
    ScCompression,
    build_heatmap_capture,
    display_saliency,
    render_heatmap,
)
from xiqa.operators.scoring import score_mask


@requires_dciodvfy
@pytest.mark.parametrize("name", CASE_NAMES)
def test_dciodvfy_finds_no_error(cases: dict[str, WriterCase], name: str) -> None:
    report = dciodvfy(cases[name].paths["sc"])
    assert "SCImage" in report.text, report.text
    assert report.errors == [], report.text


@pytest.mark.parametrize("name", CASE_NAMES)
def test_rgb_at_source_resolution_in_the_source_study(cases: dict[str, WriterCase],
                                                      name: str) -> None:
    case = cases[name]
    sc, source = dcmread(case.paths["sc"]), case.source.dataset
    assert (sc.SamplesPerPixel, sc.BitsAllocated) == (3, 8)
    # lossless JPEG-LS by default: the decoded pixels are exactly the rendered picture
    assert sc.file_meta.TransferSyntaxUID == JPEGLSLossless == DEFAULT_COMPRESSION.transfer_syntax
    assert sc.PhotometricInterpretation == "RGB"
    picture = render_heatmap(case.source.pixels, case.saliency, case.mask, case.quality, ALGORITHM)
    np.testing.assert_array_equal(sc.pixel_array, picture)
    assert sc.LossyImageCompression == "00"
    assert sc.StudyInstanceUID == source.StudyInstanceUID
    assert sc.SeriesInstanceUID != source.SeriesInstanceUID and int(sc.SeriesNumber) == 9102
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert sc.BurnedInAnnotation == "NO" and sc.SpecificCharacterSet == "ISO_IR 192"


def test_picture_shows_outlines_heat_and_legend(cases: dict[str, WriterCase]) -> None:
    case = cases["cr_m1_12bit_explicit_window"]
    assert case.mask.any()
    picture = dcmread(case.paths["sc"]).pixel_array
    outline = np.all(picture == np.array(CONTOUR_RGB, np.uint8), axis=2)
    assert outline.any()
    # outline pixels sit on or next to the object, never far from it
    ys, xs = np.nonzero(outline)
    near = np.zeros_like(case.mask)
    rows, columns = case.mask.shape
    for dy in (-2, -1, 0, 1, 2):
        for dx in (-2, -1, 0, 1, 2):
            near[max(dy, 0):rows + min(dy, 0), max(dx, 0):columns + min(dx, 0)] |= \
                case.mask[max(-dy, 0):rows - max(dy, 0), max(-dx, 0):columns - max(dx, 0)]
    assert near[ys, xs].all()
    # the most salient area is tinted (red dominates), the least salient stays grey
    heat = display_saliency(case.saliency, case.source.shape)
    hot = np.unravel_index(np.argmax(np.where(case.mask > 0, -1, heat)), heat.shape)
    red, green, blue = (int(v) for v in picture[hot])
    assert red > blue + 40
    # the legend box darkens the top-left corner and holds white text
    corner = picture[: rows // 8, : columns // 4]
    assert (corner == 255).all(axis=2).any()


def test_flat_saliency_leaves_the_image_grey(cases: dict[str, WriterCase]) -> None:
    case = cases["sc_m2_8bit_explicit_none"]
    flat = np.full((256, 256), 0.4, np.float32)
    quality = score_mask(np.zeros((256, 256), np.uint8), flat)
    picture = render_heatmap(case.source.pixels, flat, np.zeros(case.source.shape, np.uint8),
                             quality, ALGORITHM)
    rows, columns = case.source.shape
    below_legend = picture[rows // 2:, :]
    assert (below_legend[..., 0] == below_legend[..., 1]).all()
    assert (below_legend[..., 1] == below_legend[..., 2]).all()
    expected = np.round(np.clip(case.source.pixels[rows // 2:], 0, 1) * 255)
    np.testing.assert_array_equal(below_legend[..., 0], expected.astype(np.uint8))


def test_heat_blend_is_grey_times_one_minus_alpha_plus_jet_times_alpha_per_channel() -> None:
    """The blend, computed once in 2-D and in place, keeps every pixel of the 3-channel formula."""
    from xiqa.operators.sc_writer import HEATMAP_MAX_ALPHA, _jet

    rng = np.random.default_rng(7)
    shape = (300, 240)
    pixels = rng.random(shape, dtype=np.float32)
    saliency = rng.random((256, 256), dtype=np.float32)
    quality = score_mask(np.zeros((256, 256), np.uint8), saliency)
    picture = render_heatmap(pixels, saliency, np.zeros(shape, bool), quality, ALGORITHM)
    heat = display_saliency(saliency, shape)
    grey = np.repeat(np.round(pixels * 255)[..., None], 3, axis=2)
    alpha = HEATMAP_MAX_ALPHA * heat[..., None]
    expected = np.clip(np.round(grey * (1 - alpha) + _jet(heat).astype(np.float32) * alpha), 0, 255)
    below_legend = slice(shape[0] // 2, None)
    np.testing.assert_array_equal(picture[below_legend], expected.astype(np.uint8)[below_legend])
    assert (picture[below_legend, :, 0] != picture[below_legend, :, 2]).any()  # it is tinted


@pytest.mark.parametrize("shape", [(64, 64), (64, 900), (900, 64), (2000, 1500)])
def test_legend_fits_any_size(shape: tuple[int, int]) -> None:
    pixels = np.linspace(0, 1, shape[0] * shape[1], dtype=np.float32).reshape(shape)
    saliency = np.random.default_rng(0).random((256, 256), dtype=np.float32)
    quality = score_mask(np.zeros((256, 256), np.uint8), saliency)
    picture = render_heatmap(pixels, saliency, np.zeros(shape, bool), quality, ALGORITHM)
    assert picture.shape == (*shape, 3) and picture.dtype == np.uint8


def test_orientation_and_laterality_follow_the_source(cases: dict[str, WriterCase]) -> None:
    assert list(dcmread(cases["multi_letter_orientation"].paths["sc"]).PatientOrientation) == \
        ["A", "FR"]
    sc = dcmread(cases["no_spacing_no_orientation"].paths["sc"])
    assert sc.PatientOrientation == "" and sc.Laterality == "" and "PixelSpacing" not in sc
    sc = dcmread(cases["cr_m1_12bit_explicit_window"].paths["sc"])
    assert list(sc.PatientOrientation) == ["L", "F"] and sc.BodyPartExamined == "CHEST"
    assert [float(v) for v in sc.PixelSpacing] == \
        [float(v) for v in cases["cr_m1_12bit_explicit_window"].source.dataset.PixelSpacing]
    assert "PixelSpacing" not in dcmread(cases["zero_spacing"].paths["sc"])
    assert "PixelSpacing" not in dcmread(cases["imager_spacing_only_cr"].paths["sc"])


def test_round_trips_through_bytes(cases: dict[str, WriterCase]) -> None:
    case = cases["dx_m1_16bit_rle_lut"]
    sc = build_heatmap_capture(case.source, case.saliency, case.mask, case.quality, ALGORITHM)
    buffer = BytesIO()
    sc.save_as(buffer, enforce_file_format=True)
    again = dcmread(BytesIO(buffer.getvalue()))
    np.testing.assert_array_equal(again.pixel_array, dcmread(case.paths["sc"]).pixel_array)
    assert again.SOPInstanceUID == dcmread(case.paths["sc"]).SOPInstanceUID


def _heatmap_file(case: WriterCase, compression: ScCompression, folder: Path) -> Path:
    sc = build_heatmap_capture(case.source, case.saliency, case.mask, case.quality, ALGORITHM,
                               compression=compression)
    path = folder / f"{compression.value}.dcm"
    sc.save_as(path, enforce_file_format=True)
    return path


@requires_dciodvfy
@pytest.mark.parametrize("compression", list(ScCompression))
def test_every_compression_is_valid_and_lossless_ones_keep_every_pixel(
        cases: dict[str, WriterCase], compression: ScCompression, tmp_path: Path) -> None:
    case = cases["latin1_long_names"]
    path = _heatmap_file(case, compression, tmp_path)
    report = dciodvfy(path)
    assert report.errors == [], report.text
    sc = dcmread(path)
    assert sc.file_meta.TransferSyntaxUID == compression.transfer_syntax
    picture = render_heatmap(case.source.pixels, case.saliency, case.mask, case.quality, ALGORITHM)
    difference = np.abs(sc.pixel_array.astype(np.int16) - picture.astype(np.int16))
    uncompressed = picture.nbytes
    if compression.lossy:
        assert sc.LossyImageCompression == "01"
        assert sc.LossyImageCompressionMethod == JPEG_BASELINE_METHOD  # one value: VM 1
        ratio = float(sc.LossyImageCompressionRatio)
        assert ratio == pytest.approx(uncompressed / len(sc.PixelData), rel=0.01) and ratio > 3
        assert 0 < difference.mean() < 3  # visually the same picture
    else:
        assert sc.LossyImageCompression == "00" and "LossyImageCompressionRatio" not in sc
        assert difference.max() == 0


def test_lossy_sources_keep_their_compression_history(cases: dict[str, WriterCase]) -> None:
    case = cases["dx_m2_14bit_j2k_window"]
    source = case.source
    dataset = source.dataset.copy()
    dataset.LossyImageCompression = "01"
    dataset.LossyImageCompressionRatio = ["8.5"]
    dataset.LossyImageCompressionMethod = ["ISO_15444_1"]
    lossy = dataclasses.replace(source, dataset=dataset)
    lossless = build_heatmap_capture(lossy, case.saliency, case.mask, case.quality, ALGORITHM)
    assert lossless.LossyImageCompression == "01" and "LossyImageCompressionMethod" not in lossless
    jpeg = build_heatmap_capture(lossy, case.saliency, case.mask, case.quality, ALGORITHM,
                                 compression="jpeg")
    assert list(jpeg.LossyImageCompressionMethod) == ["ISO_15444_1", JPEG_BASELINE_METHOD]
    assert [float(v) for v in jpeg.LossyImageCompressionRatio][0] == 8.5
    with pytest.raises(ValueError, match=r'Argument "compression" must be one of'):
        build_heatmap_capture(source, case.saliency, case.mask, case.quality, ALGORITHM,
                              compression="jpeg-xl")


@requires_pixelmed
def test_pixelmed_finds_no_error_where_it_knows_the_iod(
        cases: dict[str, WriterCase], pixelmed_reports: dict[Path, ToolReport]) -> None:
    reports = [pixelmed_reports[case.paths["sc"]] for case in cases.values()]
    if all("IOD (SOP Class) unrecognized" in report.text for report in reports):
        pytest.skip("this PixelMed's DicomInstanceValidator has no Secondary Capture IOD "
                    "(it knows SEG, Raw Data, Enhanced/Legacy CT and MR, MR Spectroscopy)")
    assert [report.errors for report in reports] == [[] for _ in reports]


def test_rejects_bad_maps(cases: dict[str, WriterCase]) -> None:
    case = cases["cr_m2_10bit_implicit_none"]
    with pytest.raises(ValueError, match=r'Argument "saliency" must be a non-empty 2-D array'):
        build_heatmap_capture(case.source, np.zeros((3, 256, 256), np.float32), case.mask,
                              case.quality, ALGORITHM)
    with pytest.raises(ValueError, match=r'Argument "saliency" must be finite'):
        build_heatmap_capture(case.source, np.full((256, 256), np.nan, np.float32), case.mask,
                              case.quality, ALGORITHM)
    with pytest.raises(ValueError, match=r'Argument "mask" must have the source\'s shape'):
        build_heatmap_capture(case.source, case.saliency, np.zeros((256, 256), np.uint8),
                              case.quality, ALGORITHM)
    with pytest.raises(TypeError, match=r'Argument "quality" must be a QualityResult'):
        build_heatmap_capture(case.source, case.saliency, case.mask, case.quality.to_dict(),
                              ALGORITHM)
