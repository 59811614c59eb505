"""What the SEG, SC, SR (and KOS) writers share: identity of an output, and a clean copy of the source.

Placement of outputs
--------------------
Every output goes into the source's study.  Each kind (SEG, SC, SR, KOS) has its own
series per study, algorithm version and model: the series UID is derived from
the Study Instance UID and those, the SOP Instance UID from the source's SOP
Instance UID and those (see :func:`xiqa.operators.codes.derive_uid`), so
reprocessing a source replaces its outputs instead of duplicating them, and
all images of a study analysed by one model land in the same series per kind.
Series Date/Time are left out (Type 3): a series spans instances made at
different times.  The Instance Number is the source's, so outputs sort like
their sources.

The reference copy
------------------
highdicom copies patient, study and equipment attributes from the dataset it
is given.  Real CR/DX files break the rules in ways highdicom then faithfully
copies (a name over 64 characters, a date "2024-01-31", Pixel Spacing 0\\0, no
Accession Number at all), so the writers hand highdicom :func:`reference_dataset`
instead of the source: a header-only copy of a fixed list of attributes, each
checked and repaired or dropped.  Repairs never touch an identifier (Patient ID,
Issuer of Patient ID, Accession Number, Study ID, UIDs): a truncated identifier
could point at another patient, so an identifier that breaks its VR is copied
unchanged (and the output repeats the source's error) rather than altered.
Repairs are logged by attribute keyword only, never by value.
"""

from __future__ import annotations

import datetime
import logging
import re
import warnings
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import highdicom as hd
from monai.deploy.core import Fragment
from pydicom import Dataset
from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.multival import MultiValue
from pydicom.uid import UID
from xiqa.durable import write_atomically

from .case import Case, CaseOperator
from .codes import ALGORITHM_FAMILY, DEFAULT_UID_ROOT, check_uid_root, derive_uid

logger = logging.getLogger(__name__)

#: Manufacturer (General Equipment) of every output.
MANUFACTURER = "xiqa project"

#: Every output is written in UTF-8, which can hold any name the source decodes to.
OUTPUT_CHARACTER_SET = "ISO_IR 192"

# highdicom's check_person_name warns with the name in the message text; warnings end up in
# logs, and logs must never carry patient names.  The filter matches only that warning.
warnings.filterwarnings(
    "ignore", message=r"The string .* is unlikely to represent the intended person name",
    category=UserWarning,
)


class _DropPersonNames(logging.Filter):
    """Drops highdicom log records that would quote a person name."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "patient_name" not in str(record.msg) and "person name" not in str(record.msg)


logging.getLogger("highdicom").addFilter(_DropPersonNames())
logging.getLogger("highdicom.base").addFilter(_DropPersonNames())


class OutputKind(str, Enum):
    """The DICOM objects written per source image: SEG, SC and SR, and where a site asks for it, a
    Key Object Selection for a Poor image (``kos_writer``)."""

    SEG = "seg"
    SC = "sc"
    SR = "sr"
    KOS = "kos"

    @property
    def series_number(self) -> int:
        """Fixed per kind, high enough to sort after the modality's own series."""
        return {"seg": 9101, "sc": 9102, "sr": 9103, "kos": 9104}[self.value]

    @property
    def series_description(self) -> str:
        return {
            "seg": "xiqa foreign objects (SEG)",
            "sc": "xiqa saliency heatmap (SC)",
            "sr": "xiqa image quality report (SR)",
            "kos": "xiqa rejected for quality reasons (KOS)",
        }[self.value]


@dataclass(frozen=True)
class AlgorithmInfo:
    """Who made an output: algorithm name and version, model id and run parameters.

    ``parameters`` (e.g. ``("saliency=gradcam",)``) are recorded in the outputs
    and take part in UID derivation, so another saliency method gives other UIDs.

    Raises
    ------
    TypeError
        A field has the wrong type.
    ValueError
        A field is empty, longer than DICOM allows (64 characters, LO), or
        contains a backslash.
    """

    name: str
    version: str
    model_id: str
    parameters: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        for key in ("name", "version", "model_id"):
            value = getattr(self, key)
            if not isinstance(value, str):
                raise TypeError(f'Argument "{key}" must be a str, got {type(value).__name__}')
            _check_long_string(key, value)
        if not isinstance(self.parameters, tuple) or \
                not all(isinstance(p, str) for p in self.parameters):
            raise TypeError('Argument "parameters" must be a tuple of str')
        for parameter in self.parameters:
            _check_long_string("parameters", parameter)

    @property
    def uid_parts(self) -> tuple[str, ...]:
        return (self.name, self.version, self.model_id, *self.parameters)

    def identification_sequence(self) -> hd.AlgorithmIdentificationSequence:
        """SEG Segment Algorithm Identification (name, family, version, model id)."""
        parameters = {"model_id": self.model_id}
        for index, parameter in enumerate(self.parameters, start=1):
            key, sep, value = parameter.partition("=")
            parameters[key if sep else f"parameter_{index}"] = value if sep else parameter
        return hd.AlgorithmIdentificationSequence(
            name=self.name, family=ALGORITHM_FAMILY, version=self.version, parameters=parameters,
        )

    def sr_identification(self) -> hd.sr.AlgorithmIdentification:
        """TID 4019 Algorithm Identification; the model id is the first parameter."""
        return hd.sr.AlgorithmIdentification(
            name=self.name, version=self.version,
            parameters=[f"model_id={self.model_id}", *self.parameters],
        )


def check_argument_type(name: str, value: object, expected: type, description: str) -> None:
    """TypeError naming the argument, what it must be (``description``) and what it got."""
    if not isinstance(value, expected):
        raise TypeError(f'Argument "{name}" must be {description}, got {type(value).__name__}')


def _check_long_string(key: str, value: str) -> None:
    if not value:
        raise ValueError(f'Argument "{key}" must not be empty')
    if len(value.encode("utf-8")) > 64 or "\\" in value:
        raise ValueError(f'Argument "{key}" must fit DICOM LO (at most 64 bytes, no backslash), '
                         f"got {value!r}")


@dataclass(frozen=True)
class OutputIdentity:
    """Where one output sits: study, its series, its own UID and numbers."""

    kind: OutputKind
    study_instance_uid: str
    series_instance_uid: UID
    sop_instance_uid: UID
    series_number: int
    instance_number: int

    @property
    def series_description(self) -> str:
        return self.kind.series_description


def document_arguments(identity: OutputIdentity, algorithm: AlgorithmInfo) -> dict:
    """The keyword arguments every highdicom constructor of an output takes alike: where the
    output sits (series, instance) and the device that made it (manufacturer, model, versions)."""
    return {
        "series_instance_uid": identity.series_instance_uid,
        "series_number": identity.series_number,
        "sop_instance_uid": identity.sop_instance_uid,
        "instance_number": identity.instance_number,
        "series_description": identity.series_description,
        "manufacturer": MANUFACTURER,
        "manufacturer_model_name": algorithm.name,
        "software_versions": algorithm.version,
        "device_serial_number": algorithm.model_id,
        "specific_character_set": OUTPUT_CHARACTER_SET,
    }


def output_identity(source: Dataset, kind: OutputKind | str, algorithm: AlgorithmInfo,
                    uid_root: str | None = DEFAULT_UID_ROOT) -> OutputIdentity:
    """Derived, reproducible UIDs and numbers of the ``kind`` output for ``source``.

    Raises
    ------
    ValueError
        ``kind`` is not an output kind, ``uid_root`` is invalid, or the source
        has no Study or SOP Instance UID (it cannot be placed in its study).
    """
    kind = OutputKind(kind)
    if uid_root is not None:
        uid_root = check_uid_root(uid_root)
    study_uid = str(source.get("StudyInstanceUID", "") or "")
    sop_uid = str(source.get("SOPInstanceUID", "") or "")
    if not study_uid or not sop_uid:
        raise ValueError('Argument "source" must have a Study Instance UID and a SOP Instance UID')
    return OutputIdentity(
        kind=kind,
        study_instance_uid=study_uid,
        series_instance_uid=derive_uid(("series", study_uid, kind.value, *algorithm.uid_parts),
                                       uid_root),
        sop_instance_uid=derive_uid(("instance", sop_uid, kind.value, *algorithm.uid_parts),
                                    uid_root),
        series_number=kind.series_number,
        instance_number=_instance_number(source),
    )


def _instance_number(source: Dataset) -> int:
    try:
        number = int(source.get("InstanceNumber", 1))
    except (TypeError, ValueError):
        return 1
    return number if 1 <= number <= 2**31 - 1 else 1


# --- files ------------------------------------------------------------------------

def output_path(folder: Path, source: Dataset, kind: OutputKind | str) -> Path:
    """``folder / <source SOP Instance UID>_<kind>.dcm``; the UID is sanitised for file systems.

    Raises
    ------
    ValueError
        ``kind`` is not an output kind.
    """
    uid = str(source.get("SOPInstanceUID", "") or "")
    safe_uid = _UNSAFE_FILE_CHARACTERS.sub("_", uid)[:128] or "unknown"
    return Path(folder) / f"{safe_uid}_{OutputKind(kind).value}.dcm"


def save_atomically(dataset: Dataset, path: Path) -> Path:
    """Write ``dataset`` so that a reader never sees a partial file (``xiqa.durable``)."""
    return write_atomically(path, lambda stream: dataset.save_as(stream, enforce_file_format=True))


# --- the reference copy ---------------------------------------------------------

# Identifiers: copied unchanged whatever they hold (see the module docstring).
_IDENTIFIERS = ("PatientID", "IssuerOfPatientID", "AccessionNumber", "StudyID",
                "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
# Type 2 attributes of the Patient and General Study modules: present, maybe empty.
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
          "ReferringPhysicianName", "StudyID", "AccessionNumber")
_PERSON_NAMES = ("PatientName", "ReferringPhysicianName")
_DATES = ("PatientBirthDate", "StudyDate")
_TIMES = ("StudyTime",)
# Free text, with the VR's length in bytes (UTF-8 bytes: safe whether a checker counts
# characters or bytes).
_TEXTS = {"StudyDescription": 64, "Manufacturer": 64, "ManufacturerModelName": 64,
          "DeviceSerialNumber": 64, "InstitutionName": 64, "InstitutionalDepartmentName": 64,
          "StationName": 16}
_PIXEL_MODULE = ("Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation",
                 "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation")
_CODE_STRING = re.compile(r"^[A-Z0-9_ ]{0,16}$")
_ORIENTATION = re.compile(r"^[APRLHF]{1,3}$")
_AGE = re.compile(r"^[0-9]{3}[DWMY]$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_UNSAFE_FILE_CHARACTERS = re.compile(r"[^0-9A-Za-z.\-]")


def reference_dataset(source: Dataset) -> Dataset:
    """A header-only copy of ``source`` that highdicom can copy from without breaking VRs.

    Holds the source's SOP, study and series identity, pixel geometry, patient and
    study attributes (repaired where they break their VR) and acquisition
    equipment; no pixel data, no private tags, no sequences.

    Raises
    ------
    TypeError
        ``source`` is not a pydicom Dataset.
    ValueError
        ``source`` lacks an attribute without which no output can be placed
        (SOP Class/Instance UID, Study/Series Instance UID, Rows, Columns).
    """
    check_argument_type("source", source, Dataset, "a pydicom Dataset")
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
                    "Rows", "Columns"):
        if not source.get(keyword):
            raise ValueError(f'Argument "source" has no {keyword}; no output can reference it')
    ref = Dataset()
    ref.SpecificCharacterSet = OUTPUT_CHARACTER_SET
    repaired: list[str] = []
    for keyword in _IDENTIFIERS:
        raw = raw_text(source, keyword)
        if raw is not None:
            setattr(ref, keyword, raw.strip())
    for keyword in _TYPE2:
        if keyword not in ref:
            setattr(ref, keyword, "")
    fixers = {**dict.fromkeys(_PERSON_NAMES, _person_name), **dict.fromkeys(_DATES, _date),
              **dict.fromkeys(_TIMES, _time)}
    for keyword, fix in fixers.items():
        raw = (raw_text(source, keyword) or "").strip()
        if raw:
            value = fix(raw)
            repaired += [keyword] if value != raw else []
            setattr(ref, keyword, value)
    sex = (raw_text(source, "PatientSex") or "").strip().upper()
    ref.PatientSex = sex if sex in ("M", "F", "O") else ""
    age = (raw_text(source, "PatientAge") or "").strip()
    if _AGE.match(age):
        ref.PatientAge = age
    for keyword, limit in _TEXTS.items():
        text = _text(raw_text(source, keyword), limit)
        if text:
            setattr(ref, keyword, text)
    for keyword in _PIXEL_MODULE:
        if keyword in source:
            setattr(ref, keyword, source[keyword].value)
    modality = str(source.get("Modality", "") or "").strip()
    ref.Modality = modality if modality and _CODE_STRING.match(modality) else "OT"
    spacing = _positive_pair(source.get("PixelSpacing"))
    if spacing is not None:
        ref.PixelSpacing = spacing
    elif "PixelSpacing" in source:
        repaired.append("PixelSpacing")
    orientation = patient_orientation(source)
    if orientation is not None:
        ref.PatientOrientation = list(orientation)
    ref.InstanceNumber = _instance_number(source)
    if repaired:
        logger.info("source %s: repaired or dropped %s for the outputs",
                    source.SOPInstanceUID, ", ".join(sorted(set(repaired))))
    return ref


def raw_text(source: Dataset, keyword: str) -> str | None:
    """An attribute as text, decoded without pydicom's value validation; None when absent.

    pydicom validates an element the first time it is decoded, and its warning
    (also logged) may quote the value, e.g. "Invalid value for VR DA:
    '1980-02-30'".  For patient attributes that would put identity in the logs,
    so the writers decode the raw bytes themselves.  Multiple values come back
    joined by backslashes, as stored.
    """
    tag = tag_for_keyword(keyword)
    if tag is None or tag not in source:
        return None
    element = source.get_item(tag)
    if not isinstance(element, RawDataElement):
        value = element.value
        if value is None:
            return ""
        if isinstance(value, (list, tuple, MultiValue)):
            return "\\".join(str(v) for v in value)
        return str(value)
    if not element.value:
        return ""
    vr = element.VR or dictionary_VR(tag)
    # PN keeps its component separators; other text VRs only split on backslash
    delimiters = {0x5C, 0x3D, 0x5E} if vr == "PN" else {0x5C}
    character_set = source.get("SpecificCharacterSet") or "ISO_IR 6"
    text = decode_bytes(element.value, convert_encodings(character_set), delimiters)
    return text.rstrip(" \x00")


def patient_orientation(source: Dataset) -> tuple[str, str] | None:
    """The source's Patient Orientation when it is two valid values (e.g. ``L``, ``FH``)."""
    value = source.get("PatientOrientation")
    values = list(value) if isinstance(value, (list, tuple, MultiValue)) else \
        ([value] if value else [])
    values = [str(v).strip().upper() for v in values]
    if len(values) == 2 and all(_ORIENTATION.match(v) for v in values):
        return values[0], values[1]
    return None


def pixel_spacing(source: Dataset) -> tuple[float, float] | None:
    """Pixel Spacing when present and two positive numbers; Imager Pixel Spacing is not used.

    Imager Pixel Spacing is measured at the detector, not in the patient, so
    writing it as Pixel Spacing would claim a calibration the source never made.
    """
    pair = _positive_pair(source.get("PixelSpacing"))
    return (float(pair[0]), float(pair[1])) if pair else None


def body_part_examined(source: Dataset) -> str | None:
    """Body Part Examined when it is a valid code string (e.g. ``CHEST``)."""
    value = str(source.get("BodyPartExamined", "") or "").strip().upper()
    return value if value and _CODE_STRING.match(value) else None


def describe_body_part(output: Dataset, source: Dataset) -> bool:
    """Copy a valid Body Part Examined of ``source`` to ``output``; whether there was one.

    General Series Laterality is Type 2C, required for paired body parts.  A
    chest is not paired, and naming the body part lets a checker see that.
    """
    body_part = body_part_examined(source)
    if body_part:
        output.BodyPartExamined = body_part
    return body_part is not None


def imager_pixel_spacing(source: Dataset) -> tuple[float, float] | None:
    """Imager Pixel Spacing (row, column spacing at the detector) when two positive numbers."""
    pair = _positive_pair(source.get("ImagerPixelSpacing"))
    return (float(pair[0]), float(pair[1])) if pair else None


def _positive_pair(value: object) -> list[str] | None:
    if not isinstance(value, (list, tuple, MultiValue)) or len(value) != 2:
        return None
    try:
        numbers = [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    if not all(0 < n < 1e6 for n in numbers):
        return None
    return [_decimal_string(n) for n in numbers]


def _decimal_string(number: float) -> str:
    """At most 16 characters, as DS demands."""
    for digits in range(10, 0, -1):
        text = f"{number:.{digits}g}"
        if len(text) <= 16:
            return text
    return f"{number:.1e}"


def _truncate_bytes(text: str, limit: int) -> str:
    encoded = text.encode("utf-8")
    if len(encoded) <= limit:
        return text
    return encoded[:limit].decode("utf-8", errors="ignore")


def _text(value: object, limit: int) -> str:
    """Single-line LO/SH text: control characters and backslashes removed, fitted to ``limit``."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple, MultiValue)):
        value = value[0] if len(value) else ""
    text = _CONTROL.sub(" ", str(value)).replace("\\", "/").strip()
    return _truncate_bytes(text, limit).strip()


def _person_name(value: object) -> str:
    """PN: at most three component groups, each of at most five components and 64 bytes.

    An over-long group keeps all its components: the longest one is shortened
    until the group fits, so "VERY-LONG-FAMILY-NAME^GIVEN" loses letters of the
    family name, not the given name or the separators.
    """
    text = _CONTROL.sub("", str(value)).replace("\\", " ")
    groups = []
    for group in text.split("=")[:3]:
        components = group.split("^")[:5]
        while len("^".join(components).encode("utf-8")) > 64:
            longest = max(range(len(components)), key=lambda i: len(components[i]))
            excess = len("^".join(components).encode("utf-8")) - 64
            # a character is 1 to 4 bytes in UTF-8: cutting excess/4 never cuts too much
            keep = max(0, len(components[longest]) - max(1, -(-excess // 4)))
            components[longest] = components[longest][:keep].rstrip()
        groups.append("^".join(components))
    return "=".join(groups).rstrip("=")


def _date(value: object) -> str:
    """DA as YYYYMMDD; the old ``YYYY.MM.DD`` and ISO ``YYYY-MM-DD`` forms are converted."""
    text = re.sub(r"[.\-]", "", str(value).strip()) if re.match(
        r"^\d{4}([.\-])\d{2}\1\d{2}$", str(value).strip()) else str(value).strip()
    try:
        datetime.datetime.strptime(text, "%Y%m%d")
    except ValueError:
        return ""
    return text if len(text) == 8 else ""


def _time(value: object) -> str:
    """TM as HH[MM[SS[.F{1,6}]]]; the old ``HH:MM:SS`` form is converted."""
    text = str(value).strip()
    if re.match(r"^\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?$", text):
        text = text.replace(":", "")
    match = re.match(r"^(\d{2})(\d{2})?(\d{2})?(\.\d{1,6})?$", text)
    if not match or (match.group(4) and not match.group(3)):
        return ""
    hours, minutes, seconds = (int(g) if g else 0 for g in match.groups()[:3])
    if hours > 23 or minutes > 59 or seconds > 60:
        return ""
    return text


def algorithm_for_case(case: Case) -> AlgorithmInfo:
    """Name ``xiqa``, the package version, the case's model id and saliency method.

    Raises
    ------
    ValueError
        The case has no segmentation result (no model id to record).
    """
    from xiqa import __version__

    if not case.frontal_chest:  # the gate stopped it: no model ran on this image
        return AlgorithmInfo(name="xiqa", version=__version__, model_id=GATE_MODEL_ID)
    if case.segmentation is None or not getattr(case.segmentation, "model_id", None):
        raise ValueError('Argument "case" has no segmentation result with a model id')
    method = getattr(case.saliency, "method", None)
    return AlgorithmInfo(name="xiqa", version=__version__, model_id=case.segmentation.model_id,
                         parameters=(f"saliency={method}",) if method else ())


GATE_MODEL_ID = "xiqa-input-gate"


class DicomWriterOperator(CaseOperator):
    """Base of the writer nodes: build one dataset for the case, save it atomically in its folder.

    The file is ``<output>/<source SOP Instance UID>/<source SOP Instance UID>_<kind>.dcm``
    and its path is recorded as ``case.outputs[kind]``.
    """

    kind: OutputKind

    def __init__(self, fragment: Fragment, *args, output: Path, uid_root: str | None = DEFAULT_UID_ROOT,
                 **kwargs) -> None:
        self.output, self.uid_root = Path(output), uid_root
        super().__init__(fragment, *args, **kwargs)

    @property
    def stage(self) -> str:
        return f"{self.kind.value}_writer"

    def build(self, case: Case) -> Dataset:
        raise NotImplementedError(f"{type(self).__name__} must implement build()")

    def step(self, case: Case) -> None:
        target = output_path(case.folder(self.output), case.source.dataset, self.kind)
        case.outputs[self.kind.value] = save_atomically(self.build(case), target)
