"""Every coded concept and every UID rule that xiqa's DICOM outputs use, in one place.

Standard concepts come from pydicom's code dictionaries (``codes.SCT``,
``codes.DCM``, ``codes.UCUM``); nothing here invents a SNOMED CT or DICOM code.
The one standard code that pydicom's dictionary lacks, the TID 1500
"Qualitative Evaluations" container, is spelled out with the row it comes from.

Where the standard has no concept for something the method defines (Q_img,
the size penalty, ...), the concept lives in our private coding scheme:

=================  ==========================================================
designator         ``99XIQA`` (the ``99`` prefix marks a private scheme, PS3.16 8.2)
name               xiqa chest X-ray image quality concepts
version            1 (bump when a meaning changes; never reuse a code value)
responsible        the xiqa project
=================  ==========================================================

==========  =========================================  ==========================
code value  meaning                                    used as
==========  =========================================  ==========================
XQ-0001     Image quality score Q_img                  NUM, unit 1, range [0, 1]
XQ-0002     Saliency-filtered image quality score      NUM, unit 1 (Q_filtered)
XQ-0003     Image quality verdict                      CODE, value XQ-0010..12
XQ-0004     Saliency-filtered image quality verdict    CODE, value XQ-0010..12
XQ-0005     Number of foreign objects                  NUM, unit 1
XQ-0010     Good image quality                         verdict Q > 0.8
XQ-0011     Acceptable image quality                   verdict 0.5 < Q <= 0.8
XQ-0012     Poor image quality                         verdict Q <= 0.5
XQ-0020     Object area fraction                       NUM, unit 1 (RelS)
XQ-0021     Object location weight                     NUM, unit 1 (ImpL)
XQ-0022     Object size penalty                        NUM, unit 1 (Pen_S)
XQ-0023     Object severity                            NUM, unit 1 (S_i)
XQ-0024     Total foreign object area fraction         NUM, unit 1 (sum of RelS)
XQ-0030     Summary source                             CODE, value XQ-0031/32
XQ-0031     Local language model                       the summary came from the LLM
XQ-0032     Deterministic template                     the summary came from the template
XQ-0040     Input gate decision                        CODE, value XQ-0041 (image-level group)
XQ-0041     Not a frontal chest radiograph             the gate stopped the image: no Q_img, no verdict
XQ-0042     Reason not scored                          TEXT, the gate's reason (with XQ-0041)
XQ-0043     Chest region estimated                     scored, lung fields not found (image-level group)
XQ-0044     Why the chest region was estimated         TEXT, the lung finder's problem (with XQ-0043)
XQ-0006     Image quality score over removable objects NUM, unit 1 (Q_removable)
XQ-0007     Removable-object image quality verdict     CODE, value XQ-0010..12
XQ-0008     Basis of the default verdict               CODE, value XQ-0052 or XQ-0053
XQ-0050     Medical device                             SEG segment type; object class value
XQ-0051     Object class                               CODE, value XQ-0050 or XQ-0052
XQ-0052     Removable object                           object class value
XQ-0053     All objects                                default verdict basis (site counts devices)
XQ-0054     Object class confidence                    NUM, unit 1, the classifier's probability
XQ-0055     Expected on this plate                     CODE qualifier: an ECG lead the view rule expects
XQ-0056     Object category                            CODE, the finer category (table below)
XQ-0057     Object category confidence                 NUM, unit 1, the classifier's probability of it
XQ-0060     ECG electrode                              object category value
XQ-0061     ECG lead wire                              object category value
XQ-0062     Button or snap                             object category value
XQ-0063     Bra hook or underwire                      object category value
XQ-0064     Sternal wire                               object category value
XQ-0070     Anatomy cut off                            CODE, SCT Yes / No / Indeterminate (check result)
XQ-0071     Patient rotated                            CODE, SCT Yes / No / Indeterminate
XQ-0072     Shallow inspiration                        CODE, SCT Yes / No / Indeterminate
XQ-0073     Exposure outside the accepted range        CODE, SCT Yes / No / Indeterminate
XQ-0074     Collimation too wide                       CODE, SCT Yes / No / Indeterminate
XQ-0075     Smallest lung margin to the exposed field  NUM, unit 1 (fraction of the image side)
XQ-0076     Mediastinum offset from the thorax midline NUM, unit 1 (of the half width; + patient left)
XQ-0077     Lung field width ratio                     NUM, unit 1 (narrower / wider, upper zones)
XQ-0078     Lung height to thorax width ratio          NUM, unit 1 (right apex to dome / thorax width)
XQ-0079     Clipped lung area fraction                 NUM, unit 1
XQ-0080     Exposed field to lung fields area ratio    NUM, unit 1
XQ-0081     Verdict with acquisition checks            CODE, value XQ-0010..12 (only under "poor")
XQ-0082     Anatomy cut off at                         TEXT, the cut-off landmarks, patient sides
==========  =========================================  ==========================

Acquisition checks (``operators/acquisition``): each check is a qualitative evaluation of the
image group whose concept names the problem (XQ-0070..74) and whose value says whether it is
there: SCT "Yes" (373066001, the check failed), "No" (373067005, passed) or "Indeterminate"
(82334004, cannot tell).  The IEC 62494-1 indices are standard DICOM concepts: (113845, DCM,
"Exposure Index"), (113846, DCM, "Target Exposure Index"), (113847, DCM, "Deviation Index").

Object classes (DESIGN "Beyond the thesis"): the SEG has one segment per class, both of
category CID 7150 "Physical object" (SCT 260787004).  Removable objects are CID 7193 "Foreign
body" (SCT 19227008).  CID 7193 names single devices (Endotracheal tube, Catheter, Cardiac
pacemaker, ...) but no term for medical devices as a class, and pydicom's dictionaries hold
none, so the device segment's type is XQ-0050.

Object categories (the finer category of ``object_classes.CATEGORY_CLASS``, coded in the SR as
"Object category" (XQ-0056), with its confidence (XQ-0057, unit 1), only where the classifier names
one). Values come from the standard where it has the concept, first from CID 6138 "Chest Non-lesion
Object Type" (the chest CAD objects: tubes, lines, pacemakers, jewelry, coin), then from CID 7193 /
CID 6401 (physical objects) and CID 1000; SNOMED CT 17102003 "Nasogastric tube" is in no DICOM
context group and not in pydicom's dictionary, and is spelled out (SNOMED CT International,
2025-02, as HL7's "DeliveryDeviceCode" value set expands it). No DICOM group or pydicom entry has
an ECG electrode, an ECG lead wire, a button, a bra hook or a sternal wire; those are private:

====================  ======================  ===================================
category              code                    from
====================  ======================  ===================================
ecg_electrode         XQ-0060 (99XIQA)        private
ecg_lead_wire         XQ-0061 (99XIQA)        private
jewellery_chain       80919006 (SCT)          CID 6138 "Jewelry"
button_snap           XQ-0062 (99XIQA)        private
bra_hook_underwire    XQ-0063 (99XIQA)        private
coin                  112178 (DCM)            CID 6138 "Coin"
endotracheal_tube     26412008 (SCT)          CID 6138 "Endotracheal tube"
nasogastric_tube      17102003 (SCT)          SNOMED CT "Nasogastric tube"
central_line          112174 (DCM)            CID 6138 "Central line"
chest_drain           112173 (DCM)            CID 6138 "Chest tube"
pacemaker_can         14106009 (SCT)          CID 6138 "Cardiac pacemaker"
pacing_lead           360129009 (SCT)         CID 6138 "Cardiac pacemaker lead"
sternal_wire          XQ-0064 (99XIQA)        private
surgical_clip         77720000 (SCT)          CID 6401 / CID 7193 "Clip"
orthopaedic_hardware  16349000 (SCT)          CID 1000 "Orthopedic device"
====================  ======================  ===================================

Mean saliency per object is standard: (130404, DCM, "Saliency") with the TID 300
derivation (373098007, SCT, "Mean").  All fractions are relative to the
analysis grid (256 x 256) on which the objects were scored.

UIDs
----
Outputs get UIDs derived from the source SOP Instance UID, the kind of output,
the algorithm name and version, the model id and any further parameters, so
processing the same source twice with the same model gives the same UIDs and a
PACS sees an update instead of a duplicate.  By default they are UUID-derived
``2.25.`` UIDs (ISO/IEC 9834-8, name-based UUID version 5), which need no
registered root; an organisation with its own root can pass it instead.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import UID, generate_uid

from .scoring import Verdict

# --- our private coding scheme ------------------------------------------------

PRIVATE_SCHEME_DESIGNATOR = "99XIQA"
PRIVATE_SCHEME_NAME = "xiqa chest X-ray image quality concepts"
PRIVATE_SCHEME_VERSION = "1"
PRIVATE_SCHEME_RESPONSIBLE_ORGANIZATION = "xiqa project"


def _private(value: str, meaning: str) -> Code:
    return Code(value, PRIVATE_SCHEME_DESIGNATOR, meaning)


Q_IMG = _private("XQ-0001", "Image quality score Q_img")
Q_FILTERED = _private("XQ-0002", "Saliency-filtered image quality score")
VERDICT = _private("XQ-0003", "Image quality verdict")
VERDICT_FILTERED = _private("XQ-0004", "Saliency-filtered image quality verdict")
OBJECT_COUNT = _private("XQ-0005", "Number of foreign objects")
VERDICT_GOOD = _private("XQ-0010", "Good image quality")
VERDICT_ACCEPTABLE = _private("XQ-0011", "Acceptable image quality")
VERDICT_POOR = _private("XQ-0012", "Poor image quality")
AREA_FRACTION = _private("XQ-0020", "Object area fraction")
LOCATION_WEIGHT = _private("XQ-0021", "Object location weight")
SIZE_PENALTY = _private("XQ-0022", "Object size penalty")
SEVERITY = _private("XQ-0023", "Object severity")
TOTAL_AREA_FRACTION = _private("XQ-0024", "Total foreign object area fraction")
SUMMARY_SOURCE = _private("XQ-0030", "Summary source")
SUMMARY_FROM_LLM = _private("XQ-0031", "Local language model")
SUMMARY_FROM_TEMPLATE = _private("XQ-0032", "Deterministic template")
INPUT_GATE = _private("XQ-0040", "Input gate decision")
NOT_FRONTAL_CHEST = _private("XQ-0041", "Not a frontal chest radiograph")
NOT_SCORED_REASON = _private("XQ-0042", "Reason not scored")
CHEST_REGION_ESTIMATED = _private("XQ-0043", "Chest region estimated")
CHEST_REGION_ESTIMATION_REASON = _private("XQ-0044", "Why the chest region was estimated")
Q_REMOVABLE = _private("XQ-0006", "Image quality score over removable objects")
VERDICT_REMOVABLE = _private("XQ-0007", "Removable-object image quality verdict")
VERDICT_BASIS = _private("XQ-0008", "Basis of the default verdict")
MEDICAL_DEVICE = _private("XQ-0050", "Medical device")
OBJECT_CLASS = _private("XQ-0051", "Object class")
REMOVABLE_OBJECT = _private("XQ-0052", "Removable object")
ALL_OBJECTS = _private("XQ-0053", "All objects")
CLASS_CONFIDENCE = _private("XQ-0054", "Object class confidence")
EXPECTED_ON_PLATE = _private("XQ-0055", "Expected on this plate")
OBJECT_CATEGORY = _private("XQ-0056", "Object category")
CATEGORY_CONFIDENCE = _private("XQ-0057", "Object category confidence")
ECG_ELECTRODE = _private("XQ-0060", "ECG electrode")
ECG_LEAD_WIRE = _private("XQ-0061", "ECG lead wire")
BUTTON_OR_SNAP = _private("XQ-0062", "Button or snap")
BRA_HOOK_OR_UNDERWIRE = _private("XQ-0063", "Bra hook or underwire")
STERNAL_WIRE = _private("XQ-0064", "Sternal wire")

CUT_OFF = _private("XQ-0070", "Anatomy cut off")
ROTATED = _private("XQ-0071", "Patient rotated")
SHALLOW_INSPIRATION = _private("XQ-0072", "Shallow inspiration")
EXPOSURE_OUT_OF_RANGE = _private("XQ-0073", "Exposure outside the accepted range")
COLLIMATION_TOO_WIDE = _private("XQ-0074", "Collimation too wide")
LUNG_MARGIN = _private("XQ-0075", "Smallest lung margin to the exposed field")
MEDIASTINUM_OFFSET = _private("XQ-0076", "Mediastinum offset from the thorax midline")
LUNG_WIDTH_RATIO = _private("XQ-0077", "Lung field width ratio")
LUNG_HEIGHT_RATIO = _private("XQ-0078", "Lung height to thorax width ratio")
CLIPPED_LUNG = _private("XQ-0079", "Clipped lung area fraction")
FIELD_RATIO = _private("XQ-0080", "Exposed field to lung fields area ratio")
VERDICT_WITH_ACQUISITION = _private("XQ-0081", "Verdict with acquisition checks")
CUT_OFF_AT = _private("XQ-0082", "Anatomy cut off at")

PRIVATE_CODES: tuple[Code, ...] = (
    Q_IMG, Q_FILTERED, VERDICT, VERDICT_FILTERED, OBJECT_COUNT,
    VERDICT_GOOD, VERDICT_ACCEPTABLE, VERDICT_POOR,
    AREA_FRACTION, LOCATION_WEIGHT, SIZE_PENALTY, SEVERITY, TOTAL_AREA_FRACTION,
    SUMMARY_SOURCE, SUMMARY_FROM_LLM, SUMMARY_FROM_TEMPLATE, INPUT_GATE, NOT_FRONTAL_CHEST,
    NOT_SCORED_REASON, CHEST_REGION_ESTIMATED, CHEST_REGION_ESTIMATION_REASON,
    Q_REMOVABLE, VERDICT_REMOVABLE, VERDICT_BASIS, MEDICAL_DEVICE, OBJECT_CLASS, REMOVABLE_OBJECT,
    ALL_OBJECTS, CLASS_CONFIDENCE, EXPECTED_ON_PLATE, OBJECT_CATEGORY, CATEGORY_CONFIDENCE,
    ECG_ELECTRODE, ECG_LEAD_WIRE, BUTTON_OR_SNAP, BRA_HOOK_OR_UNDERWIRE, STERNAL_WIRE,
    CUT_OFF, ROTATED, SHALLOW_INSPIRATION, EXPOSURE_OUT_OF_RANGE, COLLIMATION_TOO_WIDE, LUNG_MARGIN,
    MEDIASTINUM_OFFSET, LUNG_WIDTH_RATIO, LUNG_HEIGHT_RATIO, CLIPPED_LUNG, FIELD_RATIO,
    VERDICT_WITH_ACQUISITION, CUT_OFF_AT,
)

#: the evaluation concept of each acquisition check (``acquisition.common.CHECKS``)
ACQUISITION_CHECK_CODES: dict[str, Code] = {
    "anatomy_cut_off": CUT_OFF, "rotation": ROTATED, "inspiration": SHALLOW_INSPIRATION,
    "exposure": EXPOSURE_OUT_OF_RANGE, "collimation": COLLIMATION_TOO_WIDE,
}
#: the value of a check's evaluation by its status: the problem is there (Yes), not (No), or unknown
CHECK_STATUS_CODES: dict[str, Code] = {"fail": codes.SCT.Yes, "pass": codes.SCT.No,
                                       "cannot_tell": codes.SCT.Indeterminate}
#: IEC 62494-1 exposure indices (standard DICOM concepts)
EXPOSURE_INDEX = codes.DCM.ExposureIndex
TARGET_EXPOSURE_INDEX = codes.DCM.TargetExposureIndex
DEVIATION_INDEX = codes.DCM.DeviationIndex

#: the coded value of each object class (report.json's "object_class")
OBJECT_CLASS_CODES: dict[str, Code] = {"removable": REMOVABLE_OBJECT, "device": MEDICAL_DEVICE}

#: SNOMED CT 17102003: a standard code that no DICOM context group (nor pydicom) lists; see above
NASOGASTRIC_TUBE = Code("17102003", "SCT", "Nasogastric tube")

#: the coded value of each finer category (report.json's "category"); see the table above
CATEGORY_CODES: dict[str, Code] = {
    "ecg_electrode": ECG_ELECTRODE,
    "ecg_lead_wire": ECG_LEAD_WIRE,
    "jewellery_chain": codes.SCT.Jewelry,
    "button_snap": BUTTON_OR_SNAP,
    "bra_hook_underwire": BRA_HOOK_OR_UNDERWIRE,
    "coin": codes.DCM.Coin,
    "endotracheal_tube": codes.SCT.EndotrachealTube,
    "nasogastric_tube": NASOGASTRIC_TUBE,
    "central_line": codes.DCM.CentralLine,
    "chest_drain": codes.DCM.ChestTube,
    "pacemaker_can": codes.SCT.CardiacPacemaker,
    "pacing_lead": codes.SCT.CardiacPacemakerLead,
    "sternal_wire": STERNAL_WIRE,
    "surgical_clip": codes.SCT.Clip,
    "orthopaedic_hardware": codes.SCT.OrthopedicDevice,
}

VERDICT_CODES: dict[Verdict, Code] = {
    Verdict.GOOD: VERDICT_GOOD,
    Verdict.ACCEPTABLE: VERDICT_ACCEPTABLE,
    Verdict.POOR: VERDICT_POOR,
}


def private_coding_scheme() -> CodingSchemeIdentificationItem:
    """The Coding Scheme Identification item that documents ``99XIQA`` inside an SR or a SEG."""
    return CodingSchemeIdentificationItem(
        designator=PRIVATE_SCHEME_DESIGNATOR,
        name=PRIVATE_SCHEME_NAME,
        version=PRIVATE_SCHEME_VERSION,
        responsible_organization=PRIVATE_SCHEME_RESPONSIBLE_ORGANIZATION,
    )


# --- standard concepts ---------------------------------------------------------

#: SEG segment: CID 7150 category "Physical object" and CID 7193 type "Foreign body".
#: Our objects (jewellery, buttons, wires, clips, devices) are things on or in the
#: patient, not tissue, so "Morphologically abnormal structure" would be wrong.
SEGMENT_CATEGORY = codes.SCT.PhysicalObject
SEGMENT_TYPE = codes.SCT.ForeignBody
SEGMENT_LABEL = "Foreign body"

#: One SEG segment per object class: (number, class, label, category, type); see the scheme notes.
CLASS_SEGMENTS: tuple[tuple[int, str, str, Code, Code], ...] = (
    (1, "removable", "Removable object", codes.SCT.PhysicalObject, codes.SCT.ForeignBody),
    (2, "device", "Medical device", codes.SCT.PhysicalObject, MEDICAL_DEVICE),
)

#: Algorithm family (CID 7162) of the SEG's algorithm identification.
ALGORITHM_FAMILY = codes.DCM.ArtificialIntelligence

#: TID 1500 "Procedure reported" from CID 100 (a defined context group): "Imaging procedure".
#: No CID 100 term is closer to a chest radiograph; "Image quality analysis" (SCT 133887000)
#: says better what xiqa does but is no CID 100 term, and PixelMed reports it as an error.
PROCEDURE_REPORTED = codes.SCT.ImagingProcedure

#: TID 1501/1410 finding type and category of a detected object.
FINDING_TYPE = codes.SCT.ForeignBody
FINDING_CATEGORY = codes.SCT.PhysicalObject

#: Per-object mean saliency: TID 300 measurement "Saliency", derivation "Mean".
SALIENCY = codes.DCM.Saliency
MEAN = codes.SCT.Mean

#: The value of a yes/no qualitative evaluation (the ECG rule's "expected on this plate").
YES = codes.SCT.Yes

#: UCUM unit of every dimensionless number we report (scores, fractions, counts).
UNITLESS = codes.UCUM.NoUnits

#: TID 2010 document title (CID 7010) of the optional rejection note (``kos_writer``).
REJECTED_FOR_QUALITY_REASONS = codes.DCM.RejectedForQualityReasons

#: The summary text (TEXT item) and the SR observer type (TID 1002).
NARRATIVE_SUMMARY = codes.DCM.NarrativeSummary
DEVICE_OBSERVER = codes.DCM.Device

#: PS3.16 TID 1500 row 12, "Qualitative Evaluations" container; missing from pydicom's
#: dictionary, so written out here (a standard code, not an invented one).
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")

#: Purpose of reference (CID 7202) from the SC to its source image.
SOURCE_IMAGE_PURPOSE = codes.DCM.SourceImageForImageProcessingOperation

#: TID 1600 Image Library, TID 1601 entry and TID 1602/1603 descriptors.  Written by us
#: because highdicom's descriptors for CR/DX demand Patient Orientation and Imager Pixel
#: Spacing, which TID 1603 only asks for when the image has them.
IMAGE_LIBRARY = codes.DCM.ImageLibrary
IMAGE_LIBRARY_GROUP = codes.DCM.ImageLibraryGroup
IMAGE_LIBRARY_ENTRY = codes.SCT.Source
MODALITY = codes.DCM.Modality
PIXEL_DATA_ROWS = codes.DCM.PixelDataRows
PIXEL_DATA_COLUMNS = codes.DCM.PixelDataColumns
PATIENT_ORIENTATION_ROW = codes.DCM.PatientOrientationRow
PATIENT_ORIENTATION_COLUMN = codes.DCM.PatientOrientationColumn
HORIZONTAL_PIXEL_SPACING = codes.DCM.HorizontalPixelSpacing
VERTICAL_PIXEL_SPACING = codes.DCM.VerticalPixelSpacing
MILLIMETRE = codes.UCUM.Millimeter
#: UCUM annotation unit for pixel counts (the unit highdicom writes for TID 1602 rows/columns).
PIXELS = Code("{pixels}", "UCUM", "Pixels")

#: CID 29 acquisition modality of each source SOP class the loader accepts; None for
#: Secondary Capture, whose own Modality attribute says it (see :func:`acquisition_modality`).
MODALITY_BY_SOP_CLASS: dict[str, Code | None] = {
    "1.2.840.10008.5.1.4.1.1.1": codes.DCM.ComputedRadiography,
    "1.2.840.10008.5.1.4.1.1.1.1": codes.DCM.DigitalRadiography,
    "1.2.840.10008.5.1.4.1.1.1.1.1": codes.DCM.DigitalRadiography,
    "1.2.840.10008.5.1.4.1.1.7": None,
}

#: CID 29 codes of the radiographic Modality values a Secondary Capture source may carry.
RADIOGRAPHIC_MODALITIES: dict[str, Code] = {
    "CR": codes.DCM.ComputedRadiography,
    "DX": codes.DCM.DigitalRadiography,
    "RG": codes.DCM.RadiographicImaging,
}


def acquisition_modality(sop_class_uid: str, modality: str) -> Code | None:
    """The CID 29 code of a source image; None when unknown (e.g. a Secondary Capture, OT).

    CID 29 (Acquisition Modality) has no code for OT, which only says "other".
    """
    known = MODALITY_BY_SOP_CLASS.get(sop_class_uid)
    return known if known is not None else RADIOGRAPHIC_MODALITIES.get(modality.strip().upper())


# --- UIDs ------------------------------------------------------------------------

#: Default root for output UIDs: ``None`` means UUID-derived ``2.25.`` UIDs.
DEFAULT_UID_ROOT: str | None = None

# Namespace of our name-based UUIDs; derived from a fixed name so it never changes.
_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:xiqa:dicom-outputs")
_UID_ROOT_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*\.$")
_MAX_ROOT_LENGTH = 54  # leaves at least ten digits for the derived part of a 64-char UID


def check_uid_root(root: str) -> str:
    """A UID root as ``generate_uid`` expects it: digits and dots, ending in a dot.

    Raises
    ------
    TypeError
        ``root`` is not a string.
    ValueError
        ``root`` is not a valid UID prefix or longer than 54 characters.
    """
    if not isinstance(root, str):
        raise TypeError(f'Argument "root" must be a str, got {type(root).__name__}')
    candidate = root if root.endswith(".") else root + "."
    if len(candidate) > _MAX_ROOT_LENGTH or not _UID_ROOT_PATTERN.match(candidate):
        raise ValueError(f'Argument "root" must be a UID prefix of digits and dots of at most '
                         f'{_MAX_ROOT_LENGTH} characters, got {root!r}')
    return candidate


def derive_uid(parts: Iterable[object], root: str | None = DEFAULT_UID_ROOT) -> UID:
    """A UID that depends only on ``parts`` (and ``root``): the same parts, the same UID.

    Parts are joined with a separator that cannot occur in UIDs or ids, so
    ``("ab", "c")`` and ``("a", "bc")`` give different UIDs.

    Raises
    ------
    ValueError
        ``parts`` is empty, or ``root`` is not a valid UID prefix.
    """
    text = "\x1f".join(str(part) for part in parts)
    if not text:
        raise ValueError('Argument "parts" must not be empty')
    if root is None:
        return UID(f"2.25.{uuid.uuid5(_UID_NAMESPACE, text).int}")
    return generate_uid(check_uid_root(root), entropy_srcs=[text])
