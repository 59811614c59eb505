"""Shared material for the SEG/SC/SR writer tests: quirky sources, synthetic maps, dciodvfy.

Every fixture variant (one instance each, from conftest's ``fixture_dir``) and
every quirk below becomes a :class:`WriterCase`: a source, a synthetic
probability and saliency map (no model involved), the scores, and the three
files written by ``write_outputs``.  Cases are built once per test session and
shared by the writer test modules.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydicom import Dataset, config
from xiqa import __version__
from xiqa.dicom_fixtures.instances import (
    VARIANTS,
    VARIANTS_BY_NAME,
    PatientStudy,
    build_instance,
    fixture_uid,
)
from xiqa.dicom_fixtures.phantom import render_phantom
from xiqa.operators.loader import SourceImage, load_source_image
from xiqa.operators.output_writer import write_outputs
from xiqa.operators.preprocess import resize_image
from xiqa.operators.scoring import QualityResult, score_mask, verdict_for
from xiqa.operators.segmentation import mask_at_source
from xiqa.operators.writer_common import AlgorithmInfo

DCIODVFY = shutil.which("dciodvfy")
DSRDUMP = shutil.which("dsrdump")
JAVA = shutil.which("java")
PIXELMED_JAR = Path("/usr/share/java/pixelmed.jar")  # Debian libpixelmed-java
PIXELMED_BATCH = Path(__file__).parent / "tools" / "PixelmedValidate.java"
requires_dciodvfy = pytest.mark.skipif(
    DCIODVFY is None, reason="dciodvfy not installed (Debian package dicom3tools)")
requires_dsrdump = pytest.mark.skipif(
    DSRDUMP is None, reason="dsrdump not installed (Debian package dcmtk)")
requires_pixelmed = pytest.mark.skipif(
    JAVA is None or not PIXELMED_JAR.is_file(),
    reason="PixelMed not installed (Debian packages libpixelmed-java, default-jdk-headless)")

ALGORITHM = AlgorithmInfo(name="xiqa", version=__version__, model_id="xiqa_phantom_seg@0123456789ab",
                          parameters=("saliency=gradcam",))
THRESHOLD = 0.5
GRID = 256


# --- quirky sources --------------------------------------------------------------------------

def _drop(ds: Dataset, *keywords: str) -> None:
    for keyword in keywords:
        if keyword in ds:
            delattr(ds, keyword)


def _no_spacing_no_orientation(ds: Dataset) -> None:
    _drop(ds, "PixelSpacing", "ImagerPixelSpacing", "PatientOrientation", "BodyPartExamined")


def _zero_spacing(ds: Dataset) -> None:
    ds.PixelSpacing = [0, 0]
    ds.ImagerPixelSpacing = [0, 0]


def _imager_spacing_only(ds: Dataset) -> None:
    _drop(ds, "PixelSpacing")


def _missing_study_attributes(ds: Dataset) -> None:
    _drop(ds, "AccessionNumber", "StudyID", "ReferringPhysicianName", "StudyTime",
          "PatientBirthDate", "PatientSex", "Manufacturer")


LATIN1_NAME = "MÜLLER-LÜDENSCHEIDT-" * 4 + "^FRANÇOIS-JÉRÔME^^DR.^PH.D."


def _latin1_long_names(ds: Dataset) -> None:
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = LATIN1_NAME  # family name alone is 80 characters (PN allows 64)
    ds.ReferringPhysicianName = "GRÜNBERG-HÄUSSLER^ÆLFRÆD"
    ds.StudyDescription = "THORAX PA ÜBERSICHT " * 5  # 100 characters (LO allows 64)
    ds.InstitutionName = "Universitätsklinikum Groß-Gerau, Röntgenabteilung, Gebäude Süd 3"


UTF8_NAME = "山田^太郎=やまだ^たろう"


def _utf8_names(ds: Dataset) -> None:
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = UTF8_NAME
    ds.ReferringPhysicianName = "Ñúñez^José"


def _private_tags(ds: Dataset) -> None:
    block = ds.private_block(0x0029, "ACME IMAGING 1.0", create=True)
    block.add_new(0x10, "LO", "vendor secret")
    item = Dataset()
    item.add_new(0x00291011, "LO", "nested")
    block.add_new(0x11, "SQ", [item])
    ds.add_new(0x00431001, "UN", b"\x01\x02\x03\x04")  # no creator: an orphan private tag


BROKEN_BIRTH_DATE = "30.02.1980"


def _broken_dates_and_codes(ds: Dataset) -> None:
    ds.StudyDate = "2024-01-31"  # ISO form: repaired to 20240131
    ds.StudyTime = "12:30:00"  # ACR-NEMA form: repaired to 123000
    ds.PatientBirthDate = BROKEN_BIRTH_DATE  # not a DA at all: dropped to empty
    ds.PatientSex = "MALE"  # not M/F/O: dropped to empty
    ds.PatientAge = "45Y"  # not nnnY: dropped


def _multi_letter_orientation(ds: Dataset) -> None:
    ds.PatientOrientation = ["A", "FR"]


CARET_LESS_NAME = "CANARYLEAK"


def _name_without_caret(ds: Dataset) -> None:
    ds.PatientName = CARET_LESS_NAME  # highdicom warns with the name in the text


@dataclass(frozen=True)
class Quirk:
    variant: str
    shape: tuple[int, int]
    mutate: Callable[[Dataset], None]
    objects: tuple[str, ...] = ("coin", "wire", "necklace")


QUIRKS: dict[str, Quirk] = {
    "no_spacing_no_orientation": Quirk("cr_m1_12bit_explicit_window", (331, 287),
                                       _no_spacing_no_orientation),
    "zero_spacing": Quirk("cr_m2_10bit_implicit_none", (300, 360), _zero_spacing),
    "imager_spacing_only_cr": Quirk("cr_m1_12bit_explicit_window", (320, 300),
                                    _imager_spacing_only),
    "missing_study_attributes": Quirk("dx_m2_14bit_j2k_window", (300, 300),
                                      _missing_study_attributes),
    "latin1_long_names": Quirk("cr_m1_12bit_explicit_window", (300, 311), _latin1_long_names),
    "utf8_names": Quirk("dx_m1_16bit_rle_lut", (305, 300), _utf8_names),
    "private_tags": Quirk("cr_m2_12bit_j2k_lut_rescaled", (300, 302), _private_tags),
    "broken_dates_and_codes": Quirk("dx_processing_m2_12bit_explicit_none", (301, 300),
                                    _broken_dates_and_codes),
    "multi_letter_orientation": Quirk("cr_m2_10bit_implicit_none", (300, 300),
                                      _multi_letter_orientation),
    "name_without_caret": Quirk("sc_m2_8bit_explicit_none", (300, 300), _name_without_caret),
    "odd_size_wide": Quirk("cr_m1_12bit_explicit_window", (97, 611), lambda ds: None),
    "odd_size_tiny": Quirk("dx_m2_14bit_j2k_window", (64, 67), lambda ds: None, ("coin",)),
    "no_objects": Quirk("dx_m1_16bit_rle_lut", (300, 300), lambda ds: None, ()),
}

CASE_NAMES: tuple[str, ...] = tuple(v.name for v in VARIANTS) + tuple(QUIRKS)

#: Patient identity planted in the sources, which must never reach warnings or logs.
PLANTED_IDENTITY = ("MÜLLER", "LÜDENSCHEIDT", "FRANÇOIS", "山田", "やまだ", "Ñúñez", CARET_LESS_NAME,
                    "DOE", "MUSTERMANN", "CANARY", "NGUYEN", "O'BRIEN", "REFERRER", "GRÜNBERG",
                    BROKEN_BIRTH_DATE)


def _write_quirk(name: str, quirk: Quirk, folder: Path, index: int) -> Path:
    rng = np.random.default_rng(1000 + index)
    phantom = render_phantom(rng, *quirk.shape, object_kinds=list(quirk.objects))
    study = PatientStudy(
        patient_name="DOE^JANE", patient_id=f"XQQ{index:04d}", birth_date="19700101", sex="F",
        study_uid=fixture_uid("writer-quirk-study", name), study_date="20260101",
        study_time="101500", accession_number=f"ACCQ{index:04d}", study_id=str(index + 1))
    ds = build_instance(phantom.image, VARIANTS_BY_NAME[quirk.variant], study, series_number=1,
                        instance_number=1, uid_seed=("writer-quirk", name))
    # Quirks break VR rules on purpose; pydicom must let them through to the file.
    previous = config.settings.reading_validation_mode, config.settings.writing_validation_mode
    config.settings.reading_validation_mode = config.settings.writing_validation_mode = config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quirk.mutate(ds)
            path = folder / f"{name}.dcm"
            ds.save_as(path, enforce_file_format=True)
    finally:
        config.settings.reading_validation_mode, config.settings.writing_validation_mode = previous
    cv2.imwrite(str(folder / f"{name}_mask.png"), phantom.mask * 255)
    return path


# --- synthetic model outputs -----------------------------------------------------------------

def synthetic_maps(ground_truth: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A soft probability map (like a sigmoid output) and a saliency map on the 256 grid."""
    coverage = resize_image(ground_truth.astype(np.float32), GRID, GRID)
    probability = np.clip(cv2.GaussianBlur(coverage, (5, 5), 1.0) * 1.6, 0.0, 0.98)
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.random((GRID, GRID), dtype=np.float32), (0, 0), 12.0)
    saliency = 0.7 * cv2.GaussianBlur(probability, (0, 0), 6.0) + 0.3 * noise
    saliency = (saliency - saliency.min()) / max(float(np.ptp(saliency)), 1e-6)
    return probability.astype(np.float32), saliency.astype(np.float32)


@dataclass
class WriterCase:
    name: str
    source: SourceImage
    probability: np.ndarray
    saliency: np.ndarray
    quality: QualityResult
    mask: np.ndarray  # at source resolution, what the SEG must hold
    grid_mask: np.ndarray
    summary: str
    paths: dict[str, Path]
    messages: list[str]  # warnings and log records emitted while the outputs were built


class _Collect(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(level=logging.DEBUG)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(record.getMessage())


def writer_cases(fixture_dir: Path, work: Path) -> dict[str, WriterCase]:
    """All cases, written under ``work`` (the session fixture ``cases`` builds them once)."""
    sources: dict[str, tuple[Path, Path]] = {}
    for entry in json.loads((fixture_dir / "manifest.json").read_text()):
        sources.setdefault(entry["variant"], (fixture_dir / entry["dicom"],
                                              fixture_dir / entry["mask"]))
    quirk_folder = work / "quirk_sources"
    quirk_folder.mkdir(parents=True, exist_ok=True)
    for index, (name, quirk) in enumerate(QUIRKS.items()):
        path = _write_quirk(name, quirk, quirk_folder, index)
        sources[name] = (path, quirk_folder / f"{name}_mask.png")

    cases = {}
    for index, name in enumerate(CASE_NAMES):
        dicom_path, mask_path = sources[name]
        source = load_source_image(dicom_path)
        ground_truth = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE) > 0
        probability, saliency = synthetic_maps(ground_truth, seed=index)
        grid_mask = (probability > THRESHOLD).astype(np.uint8)
        quality = score_mask(grid_mask, saliency)
        summary = (f"{len(quality.objects)} object(s) found; image quality {quality.verdict.value} "
                   f"(Q_img {quality.q_img:.2f}). Remove them and repeat if needed.")
        messages: list[str] = []
        handler = _Collect(messages)
        root = logging.getLogger()
        old_level = root.level
        root.addHandler(handler)
        root.setLevel(logging.DEBUG)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                # re-install the writers' filter: simplefilter("always") above outranks it
                warnings.filterwarnings("ignore", message=r"The string .* is unlikely to "
                                        r"represent the intended person name")
                paths = write_outputs(source, probability, saliency, quality, summary, "template",
                                      ALGORITHM, work / "outputs" / name, threshold=THRESHOLD)
        finally:
            root.removeHandler(handler)
            root.setLevel(old_level)
        messages += [str(w.message) for w in caught]
        cases[name] = WriterCase(name, source, probability, saliency, quality,
                                 mask_at_source(probability, source.shape, THRESHOLD), grid_mask,
                                 summary, paths, messages)
    return cases


# --- tools ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ToolReport:
    errors: list[str]
    warnings: list[str]
    text: str


def dciodvfy(path: Path) -> ToolReport:
    """dciodvfy's errors and warnings for one file."""
    result = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True,
                            errors="replace", timeout=60, check=False)
    text = result.stdout + result.stderr
    lines = [line.strip() for line in text.splitlines()]
    return ToolReport([line for line in lines if line.startswith("Error")],
                   [line for line in lines if line.startswith("Warning")], text)



# --- PixelMed ---------------------------------------------------------------------------------

#: Errors of PixelMed 20220618 (Debian) that contradict the standard or dciodvfy, each with why.
#: Anything else PixelMed calls an error fails the tests.
PIXELMED_DEFECTS: dict[str, str] = {
    r"^Error: DerivationImageMacro/DerivationImageSequence/: (Shared|PerFrame)FunctionalGroupsSequence"
    r"/Item\[1\]/: Missing required sequence attribute \(Type 2\)$":
        "without Plane Position/Orientation (a projection radiograph) PixelMed asks for the "
        "Derivation Image functional group in the shared AND the per-frame groups, and errors "
        "when it is in both; PS3.3 C.7.6.16 puts a functional group in one of them",
    r"^Error: GeneralSeriesModule/Laterality/: : Missing conditional attribute$":
        "PixelMed asks for Laterality whenever Image/Frame Laterality is absent; PS3.3 C.7.3.1 "
        "asks for it only for paired body parts, and dciodvfy rejects it in a SEG of a chest",
    r"^Error: GeneralImageModule/PatientOrientation/: PatientOrientation: Incorrect value "
    r"multiplicity - got 2 but expected 1-1$":
        "PixelMed's General Image description gives Patient Orientation VM 1; PS3.6 gives VM 2 "
        "(row and column direction)",
    r"^Error: [A-Za-z/]+/: [A-Za-z/\[\]0-9]+/: Illegal character\(s\) '[^\x00-\x7f]+' in value of "
    r"(PN|LO|SH) VR - value is :.*:$":
        "PixelMed checks PN/LO/SH against the default repertoire whatever the Specific Character "
        "Set; it does not know ISO_IR 192 (UTF-8), in which these characters are valid",
}


def pixelmed(paths: list[Path]) -> dict[Path, ToolReport]:
    """PixelMed's reports for many files, from one JVM (its XSLT set-up costs seconds per start).

    SR files go through DicomSRValidator (TID 1500 template and IOD), others
    through DicomInstanceValidator (IOD).  The JDK's XPath limits are lifted, as
    the SR templates exceed them.  About a minute for the 63 writer outputs on
    2 idle cores (several on a loaded machine: hence the generous timeout).
    """
    limits = [f"-Djdk.xml.{name}=0" for name in ("xpathExprOpLimit", "xpathExprGrpLimit",
                                                  "xpathTotalOpLimit")]
    # the client compiler and one GC thread: a third less CPU for this short, XSLT-bound run
    speed = ["-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC"]
    result = subprocess.run([JAVA, *limits, *speed, "-cp", str(PIXELMED_JAR), str(PIXELMED_BATCH),
                             *map(str, paths)], capture_output=True, text=True, errors="replace",
                            timeout=1800, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    reports, current, lines = {}, None, []
    for line in result.stdout.splitlines():
        if line.startswith("=== ") and current is None:
            current, lines = Path(line[4:]), []
        elif line == "=== end":
            text = "\n".join(lines)
            reports[current] = ToolReport([x for x in lines if x.startswith("Error")],
                                          [x for x in lines if x.startswith("Warning")], text)
            current = None
        else:
            lines.append(line)
    assert set(reports) == set(paths), result.stderr[-2000:]
    return reports


def pixelmed_errors(report: ToolReport, dataset: Dataset) -> list[str]:
    """The report's errors less the known PixelMed defects (non-ASCII only under ISO_IR 192)."""
    utf8 = "ISO_IR 192" in (dataset.get("SpecificCharacterSet") or [])
    left = []
    for error in report.errors:
        known = [pattern for pattern in PIXELMED_DEFECTS if re.match(pattern, error)]
        if known and ("Illegal character" not in known[0] or utf8):
            continue
        left.append(error)
    return left


# --- a study for viewers ---------------------------------------------------------------------

#: Where the large object of :func:`write_viewer_study` lies: (top, left, bottom, right) fractions.
VIEWER_OBJECT_BOX = (0.22, 0.56, 0.42, 0.80)


def with_classes(quality: QualityResult, classes: list[str], categories: list[str | None] | None = None,
                 expected: list[bool] | None = None) -> QualityResult:
    """``quality`` as the object-class node would leave it: ``classes[i]`` ("removable" or "device"),
    the finer category and the ECG rule's "expected" of each object, Q and the verdict over the
    removable objects that count."""
    count = len(quality.objects)
    categories = categories or [None] * count
    expected = expected or [False] * count
    objects = tuple(replace(f, object_class=c, class_confidence=0.91, category=k,
                            category_confidence=None if k is None else 0.93, expected=e)
                    for f, c, k, e in zip(quality.objects, classes, categories, expected, strict=True))
    counted = [f for f in objects if f.object_class == "removable" and not f.expected]
    q_removable = float(np.prod([1 - f.severity for f in counted])) if counted else 1.0
    return replace(quality, objects=objects, q_removable=q_removable,
                   verdict_removable=verdict_for(q_removable), classifier_version="test")


@dataclass(frozen=True)
class ViewerStudy:
    source: Path
    paths: dict[str, Path]
    quality: QualityResult
    study_uid: str
    shape: tuple[int, int]  # rows, columns


def write_viewer_study(folder: Path) -> ViewerStudy:
    """A calibrated DX with one large object plus small ones, and its SEG, SC and SR.

    The large rectangle (:data:`VIEWER_OBJECT_BOX`) makes the SEG overlay easy to
    see and to find in a screenshot; maps are synthetic as in :func:`writer_cases`.
    The objects are classed: the wire (the most elongated object) is a medical device, a central
    line, the others removable, so the SEG has both segments filled.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rows, columns = 640, 512
    phantom = render_phantom(np.random.default_rng(20), rows, columns, object_kinds=["coin", "wire"])
    truth = phantom.mask > 0
    top, left, bottom, right = VIEWER_OBJECT_BOX
    truth[int(top * rows):int(bottom * rows), int(left * columns):int(right * columns)] = True
    study = PatientStudy(
        patient_name="CANARY^VIEWER", patient_id="XQV0001", birth_date="19650412", sex="O",
        study_uid=fixture_uid("viewer-study"), study_date="20260102", study_time="093000",
        accession_number="ACCV0001", study_id="77")
    ds = build_instance(phantom.image, VARIANTS_BY_NAME["dx_processing_m2_12bit_explicit_none"],
                        study, series_number=1, instance_number=1, uid_seed=("viewer-study",))
    # a calibrated DX: without a Pixel Spacing the SEG's Pixel Measures item is empty, and
    # Orthanc's DICOMweb JSON drops empty items, which OHIF cannot do without (seg_writer)
    ds.PixelSpacing = ds.ImagerPixelSpacing
    source_path = folder / "source.dcm"
    ds.save_as(source_path, enforce_file_format=True)
    source = load_source_image(source_path)
    probability, saliency = synthetic_maps(truth, seed=3)
    quality = score_mask((probability > THRESHOLD).astype(np.uint8), saliency)
    device = viewer_device_index(quality)
    indices = range(len(quality.objects))
    quality = with_classes(quality, ["device" if i == device else "removable" for i in indices],
                           ["central_line" if i == device else None for i in indices])
    summary = f"Viewer test summary: image quality {quality.default_verdict.value}."
    paths = write_outputs(source, probability, saliency, quality, summary, "template", ALGORITHM,
                          folder / "outputs", threshold=THRESHOLD)
    return ViewerStudy(source_path, paths, quality, str(ds.StudyInstanceUID), (rows, columns))


def viewer_device_index(quality: QualityResult) -> int:
    """The viewer study's device: its most elongated object (the wire), by bounding box."""
    def elongation(box: tuple[int, int, int, int]) -> float:
        height, width = box[2] - box[0], box[3] - box[1]
        return max(height, width) / max(min(height, width), 1)
    return max(range(len(quality.objects)), key=lambda i: elongation(quality.objects[i].bbox))


@dataclass(frozen=True)
class NotScoredStudy:
    source: Path
    sr: Path
    reason: str
    study_uid: str
    shape: tuple[int, int]  # rows, columns


def write_not_scored_study(folder: Path) -> NotScoredStudy:
    """The WG04 ankle CR (pydicom-data ``RG3_UNCR.dcm``), which the gate refuses, and its SR."""
    from pydicom.data import get_testdata_file
    from xiqa.operators.gate import judge_frontal_chest
    from xiqa.operators.preprocess import to_network_input
    from xiqa.operators.sr_writer import build_not_scored_report
    from xiqa.operators.summary import not_scored_summary

    folder.mkdir(parents=True, exist_ok=True)
    source_path = folder / "ankle.dcm"
    shutil.copy(get_testdata_file("RG3_UNCR.dcm"), source_path)
    source = load_source_image(source_path)
    decision = judge_frontal_chest(source.dataset, to_network_input(source.pixels)[0])
    assert not decision.frontal_chest
    sr = build_not_scored_report(source, decision.reason, not_scored_summary(decision.reason).text,
                                 ALGORITHM)
    sr_path = folder / "not_scored_sr.dcm"
    sr.save_as(sr_path, enforce_file_format=True)
    return NotScoredStudy(source_path, sr_path, decision.reason, str(source.dataset.StudyInstanceUID),
                          source.shape)
