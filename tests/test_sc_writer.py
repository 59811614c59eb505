"""Heatmap Secondary Capture: valid for every variant and quirk, RGB at source size, readable."""

from __future__ import annotations

from io import BytesIO

import numpy as np
import pytest
from pydicom import dcmread
from writer_cases import ALGORITHM, CASE_NAMES, WriterCase, dciodvfy, requires_dciodvfy
from xiqa.operators.sc_writer import (
    CONTOUR_RGB,
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
    assert (sc.SamplesPerPixel, sc.PhotometricInterpretation, sc.BitsAllocated) == (3, "RGB", 8)
    assert sc.pixel_array.shape == (*case.source.shape, 3)
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
