"""Loader: correct display pixels for every fixture variant, one-line rejections for broken files."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.encaps import encapsulate
from xiqa.dicom_fixtures.instances import VARIANTS, PatientStudy, build_instance, expected_display
from xiqa.dicom_fixtures.phantom import render_phantom
from xiqa.operators.loader import LoaderConfig, RejectedInput, expand_inputs, load_case, load_source_image

STUDY = PatientStudy("CANARY^LOADER", "PID-CANARY-1", "19600101", "F", "1.2.826.0.1.3680043.10.1432.9",
                     "20260101", "101010", "ACC1", "1")


@pytest.fixture(scope="module")
def phantom():
    # odd sizes on purpose: 301 rows, 257 columns
    return render_phantom(np.random.default_rng(11), 301, 257, ["coin", "wire"])


def _write(tmp_path: Path, dataset, name: str) -> Path:
    path = tmp_path / name
    dataset.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("variant", VARIANTS, ids=[v.name for v in VARIANTS])
def test_every_variant_decodes_to_the_phantom_display_values(tmp_path, phantom, variant):
    dataset = build_instance(phantom.image, variant, STUDY, 1, 1, variant.name)
    path = _write(tmp_path, dataset, "x.dcm")
    assert dcmread(path).file_meta.TransferSyntaxUID == variant.transfer_syntax
    image = load_source_image(path)
    assert image.shape == (301, 257)
    assert image.pixels.dtype == np.float32
    lut_step = 1 / 65535 if variant.voi == "lut" else 0  # the VOI LUT output is 16-bit
    np.testing.assert_allclose(image.pixels, expected_display(phantom.image, variant), atol=lut_step + 1e-6)
    # metal is bright whatever the photometric interpretation was
    assert image.pixels[phantom.mask > 0].mean() > image.pixels[phantom.mask == 0].mean() + 0.2


def test_monochrome1_is_inverted_relative_to_stored_values(tmp_path, phantom):
    variant = next(v for v in VARIANTS if v.photometric == "MONOCHROME1" and v.voi == "window")
    dataset = build_instance(phantom.image, variant, STUDY, 1, 1, "m1")
    stored = dataset.pixel_array.astype(float)
    image = load_source_image(_write(tmp_path, dataset, "m1.dcm"))
    assert np.corrcoef(stored.ravel(), image.pixels.ravel())[0, 1] < -0.99


def test_large_15_bit_monochrome1_cr_plate_loads(tmp_path):
    variant = next(v for v in VARIANTS if v.bits_stored == 15)
    big = render_phantom(np.random.default_rng(3), 2000, 1994, ["coin"])
    image = load_source_image(_write(tmp_path, build_instance(big.image, variant, STUDY, 1, 1, "b"), "b.dcm"))
    assert image.shape == (2000, 1994)
    np.testing.assert_allclose(image.pixels, expected_display(big.image, variant), atol=1e-6)


def _good_dataset(phantom):
    return build_instance(phantom.image, VARIANTS[0], STUDY, 1, 1, "good")


def _broken_cases(tmp_path: Path, phantom) -> dict[str, tuple[Path, str]]:
    cases: dict[str, tuple[Path, str]] = {}
    good = _write(tmp_path, _good_dataset(phantom), "good.dcm")
    data = good.read_bytes()
    (tmp_path / "truncated.dcm").write_bytes(data[: len(data) // 2])
    cases["truncated"] = (tmp_path / "truncated.dcm", "truncated|cannot be decoded|corrupt")
    (tmp_path / "header_cut.dcm").write_bytes(data[:200])
    cases["header cut"] = (tmp_path / "header_cut.dcm", "truncated or incomplete header")
    (tmp_path / "empty.dcm").write_bytes(b"")
    cases["zero bytes"] = (tmp_path / "empty.dcm", "empty file")
    (tmp_path / "notes.txt").write_text("Patient CANARY^LOADER was here\n")
    cases["text"] = (tmp_path / "notes.txt", "not a DICOM file")

    no_pixels = _good_dataset(phantom)
    del no_pixels.PixelData
    cases["no pixel data"] = (_write(tmp_path, no_pixels, "nopix.dcm"), "no pixel data")

    colour = _good_dataset(phantom)
    rgb = np.repeat((colour.pixel_array >> 4).astype(np.uint8)[..., None], 3, axis=2)
    colour.SamplesPerPixel, colour.PhotometricInterpretation, colour.PlanarConfiguration = 3, "RGB", 0
    colour.BitsAllocated = colour.BitsStored = 8
    colour.HighBit = 7
    colour.PixelData = rgb.tobytes()
    cases["colour"] = (_write(tmp_path, colour, "rgb.dcm"), "colour")

    frames = _good_dataset(phantom)
    frames.NumberOfFrames = 2
    frames.PixelData = frames.PixelData * 2
    cases["multi-frame"] = (_write(tmp_path, frames, "frames.dcm"), "multi-frame image \\(2 frames\\)")

    ct = _good_dataset(phantom)
    ct.Modality = "CT"
    cases["modality"] = (_write(tmp_path, ct, "ct.dcm"), "modality CT is not allowed")

    ct_class = _good_dataset(phantom)
    ct_class.SOPClassUID = ct_class.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    cases["sop class"] = (_write(tmp_path, ct_class, "ctclass.dcm"), "not a supported radiograph class")

    undecodable = _good_dataset(phantom)
    undecodable.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.90"  # says J2K, holds raw bytes

    undecodable.PixelData = encapsulate([b"\x00\x01garbage" * 10])
    cases["undecodable"] = (_write(tmp_path, undecodable, "j2kbad.dcm"), "cannot be decoded")
    return cases


def test_broken_files_are_rejected_with_one_line_reasons(tmp_path, phantom):
    for label, (path, pattern) in _broken_cases(tmp_path, phantom).items():
        with pytest.raises(RejectedInput, match=pattern) as raised:
            load_source_image(path)
        message = str(raised.value)
        assert "\n" not in message, label
        assert message.startswith(str(path)), label
        assert "CANARY" not in message and "PID-CANARY" not in message, label


def test_rejection_becomes_a_case_and_good_files_still_load(tmp_path, phantom):
    cases = _broken_cases(tmp_path, phantom)
    results = [load_case(path) for path, _ in cases.values()] + [load_case(tmp_path / "good.dcm")]
    assert all(case.rejected and case.error for case in results[:-1])
    assert results[-1].ok and results[-1].source.shape == (301, 257)


def test_modalities_are_configurable(tmp_path, phantom):
    path = _write(tmp_path, _good_dataset(phantom), "cr.dcm")
    with pytest.raises(RejectedInput, match="modality CR is not allowed"):
        load_source_image(path, LoaderConfig(allowed_modalities=frozenset({"DX"})))


def test_sloppy_sources_are_tolerated(tmp_path, phantom):
    dataset = _good_dataset(phantom)
    dataset.RescaleSlope = 0  # would flatten the image
    dataset.WindowWidth = 0  # invalid window: fall back to the image's range
    image = load_source_image(_write(tmp_path, dataset, "sloppy.dcm"))
    assert image.pixels.min() == 0.0 and image.pixels.max() == 1.0
    assert image.pixels[phantom.mask > 0].mean() > 0.8


def test_folders_are_expanded_recursively_skipping_hidden_files(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "x.dcm").write_bytes(b"1")
    (tmp_path / "a" / ".hidden").write_bytes(b"1")
    (tmp_path / "y.dcm").write_bytes(b"1")
    found = list(expand_inputs([tmp_path]))
    assert found == [tmp_path / "a" / "b" / "x.dcm", tmp_path / "y.dcm"]



@pytest.mark.parametrize("option, syntax", [("+e1", "1.2.840.10008.1.2.4.70"),
                                            ("+eb", "1.2.840.10008.1.2.4.50")])
def test_jpeg_plates_compressed_by_dcmtk_still_load(tmp_path, phantom, option, syntax):
    variant = next(v for v in VARIANTS if v.name == "sc_m2_8bit_explicit_none")  # baseline JPEG is 8-bit
    source = _write(tmp_path, build_instance(phantom.image, variant, STUDY, 1, 1, "j"), "plain.dcm")
    subprocess.run(["dcmcjpeg", option, str(source), str(tmp_path / "jpeg.dcm")], check=True)
    assert dcmread(tmp_path / "jpeg.dcm").file_meta.TransferSyntaxUID == syntax
    image = load_source_image(tmp_path / "jpeg.dcm")
    tolerance = 0 if option == "+e1" else 0.05  # lossless, or baseline's quantisation
    np.testing.assert_allclose(image.pixels, load_source_image(source).pixels, atol=tolerance + 1e-6)


def test_a_stream_its_syntax_calls_jpeg_but_is_not_is_rejected_without_decoder_output(
        tmp_path, phantom, capfd):
    jpeg_ls = next(v for v in VARIANTS if v.transfer_syntax == "1.2.840.10008.1.2.4.80")
    relabelled = build_instance(phantom.image, jpeg_ls, STUDY, 1, 1, "ls")
    relabelled.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.50"
    raw = build_instance(phantom.image, jpeg_ls, STUDY, 1, 2, "raw")
    raw.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.70"
    raw.PixelData = encapsulate([b"\x02\x00" + bytes(64)])
    capfd.readouterr()
    with pytest.raises(RejectedInput, match=r"Baseline.*: the stream is JPEG-LS \(frame marker 0xfff7\)"):
        load_source_image(_write(tmp_path, relabelled, "ls_as_baseline.dcm"))
    with pytest.raises(RejectedInput, match=r"the stream is no JPEG image \(it starts 0x0200, not 0xffd8\)"):
        load_source_image(_write(tmp_path, raw, "raw_as_lossless.dcm"))
    # GDCM's libjpeg would have printed "Unsupported marker type 0xf7" and "Not a JPEG file" to fd 2
    assert capfd.readouterr() == ("", "")
