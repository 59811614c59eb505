"""Encode phantoms as DICOM CR / DX / SC instances in every variant the loader must read.

A variant fixes modality and SOP class, photometric interpretation, bits
stored, transfer syntax, Modality LUT and VOI (window or LUT).  The stored
values are chosen so that the loader, applying Modality LUT, VOI and the
MONOCHROME1 inversion, gets back the phantom's display image (up to
quantisation, and through the LUT's curve where the variant has one).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

CR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1")
DX_FOR_PRESENTATION = UID("1.2.840.10008.5.1.4.1.1.1.1")
DX_FOR_PROCESSING = UID("1.2.840.10008.5.1.4.1.1.1.1.1")
SECONDARY_CAPTURE = UID("1.2.840.10008.5.1.4.1.1.7")

#: Root under which the fixtures make their (deterministic) UIDs.
FIXTURE_UID_PREFIX = "1.2.826.0.1.3680043.10.1432."

#: Gamma of the VOI LUT that the "lut" variants carry (loader output = input ** gamma).
VOI_LUT_GAMMA = 0.8
VOI_LUT_BITS = 16  # DX allows 8 or 16 here


@dataclass(frozen=True)
class InstanceVariant:
    name: str
    modality: str
    sop_class_uid: UID
    photometric: str
    bits_stored: int
    transfer_syntax: UID
    voi: str  # "window", "lut" or "none"
    rescaled: bool = False


VARIANTS: tuple[InstanceVariant, ...] = (
    InstanceVariant("cr_m1_12bit_explicit_window", "CR", CR_IMAGE_STORAGE, "MONOCHROME1", 12,
                    ExplicitVRLittleEndian, "window"),
    InstanceVariant("dx_m2_14bit_j2k_window", "DX", DX_FOR_PRESENTATION, "MONOCHROME2", 14,
                    JPEG2000Lossless, "window"),
    InstanceVariant("cr_m2_10bit_implicit_none", "CR", CR_IMAGE_STORAGE, "MONOCHROME2", 10,
                    ImplicitVRLittleEndian, "none"),
    InstanceVariant("dx_m1_16bit_rle_lut", "DX", DX_FOR_PRESENTATION, "MONOCHROME1", 16,
                    RLELossless, "lut"),
    InstanceVariant("cr_m1_15bit_jpegls_window_rescaled", "CR", CR_IMAGE_STORAGE, "MONOCHROME1", 15,
                    JPEGLSLossless, "window", rescaled=True),
    InstanceVariant("dx_processing_m2_12bit_explicit_none", "DX", DX_FOR_PROCESSING, "MONOCHROME2",
                    12, ExplicitVRLittleEndian, "none"),
    InstanceVariant("cr_m2_12bit_j2k_lut_rescaled", "CR", CR_IMAGE_STORAGE, "MONOCHROME2", 12,
                    JPEG2000Lossless, "lut", rescaled=True),
    InstanceVariant("sc_m2_8bit_explicit_none", "OT", SECONDARY_CAPTURE, "MONOCHROME2", 8,
                    ExplicitVRLittleEndian, "none"),
)

VARIANTS_BY_NAME = {variant.name: variant for variant in VARIANTS}


@dataclass(frozen=True)
class PatientStudy:
    """Fake identity and study context shared by the instances of one study."""

    patient_name: str
    patient_id: str
    birth_date: str
    sex: str
    study_uid: str
    study_date: str
    study_time: str
    accession_number: str
    study_id: str


def fixture_uid(*parts: object) -> str:
    """A UID derived from ``parts`` alone, so a fixture set is reproducible."""
    return generate_uid(FIXTURE_UID_PREFIX, entropy_srcs=[str(part) for part in parts])


def expected_display(display: np.ndarray, variant: InstanceVariant) -> np.ndarray:
    """What a correct loader returns for ``display`` encoded with ``variant``.

    The VOI LUT acts on stored values, before the MONOCHROME1 inversion; without
    any VOI the loader stretches the image's own range.
    """
    max_value = 2**variant.bits_stored - 1
    quantised = np.round(np.clip(display, 0, 1) * max_value) / max_value
    if variant.voi == "lut":
        if variant.photometric == "MONOCHROME1":
            return 1 - (1 - quantised) ** VOI_LUT_GAMMA
        return quantised**VOI_LUT_GAMMA
    if variant.voi == "none":
        return (quantised - quantised.min()) / (quantised.max() - quantised.min())
    return quantised


def _pixel_module(ds: Dataset, display: np.ndarray, variant: InstanceVariant) -> np.ndarray:
    max_value = 2**variant.bits_stored - 1
    stored = np.round(np.clip(display, 0, 1) * max_value).astype(np.int64)
    if variant.photometric == "MONOCHROME1":
        stored = max_value - stored
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = variant.photometric
    ds.Rows, ds.Columns = display.shape
    ds.BitsAllocated = 8 if variant.bits_stored <= 8 else 16
    ds.BitsStored = variant.bits_stored
    ds.HighBit = variant.bits_stored - 1
    ds.PixelRepresentation = 0
    slope, intercept = (2.0, -1000.0) if variant.rescaled else (1.0, 0.0)
    if variant.rescaled or variant.modality != "OT":
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept, "US"
    if variant.voi == "window":
        ds.WindowCenter = slope * max_value / 2 + intercept
        ds.WindowWidth = slope * max_value
        ds.VOILUTFunction = "LINEAR_EXACT"
    elif variant.voi == "lut":
        # A LUT covering every stored value once the Modality LUT is applied.
        first = int(intercept)
        entries = int(slope * max_value) + 1
        positions = np.arange(entries) / (entries - 1)
        lut = Dataset()
        # US/SS and OW are the VRs the standard allows; a 64k-entry LUT only fits in OW.
        lut.add_new("LUTDescriptor", "SS" if first < 0 else "US",
                    [entries if entries < 65536 else 0, first, VOI_LUT_BITS])
        table = np.round((2**VOI_LUT_BITS - 1) * positions**VOI_LUT_GAMMA).astype("<u2")
        lut.add_new("LUTData", "OW", table.tobytes())
        lut.LUTExplanation = f"gamma {VOI_LUT_GAMMA}"
        ds.VOILUTSequence = [lut]
    if variant.modality != "OT":  # Secondary Capture has no Presentation LUT Shape
        ds.PresentationLUTShape = "INVERSE" if variant.photometric == "MONOCHROME1" else "IDENTITY"
    return stored.astype(np.uint8 if ds.BitsAllocated == 8 else np.uint16)


def build_instance(
    display: np.ndarray,
    variant: InstanceVariant,
    study: PatientStudy,
    series_number: int,
    instance_number: int,
    uid_seed: object,
) -> Dataset:
    """A complete DICOM instance for one phantom image (not yet written)."""
    ds = Dataset()
    sop_instance_uid = fixture_uid("sop", uid_seed)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = variant.sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = FIXTURE_UID_PREFIX.rstrip(".")
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = variant.sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = study.birth_date
    ds.PatientSex = study.sex
    ds.StudyInstanceUID = study.study_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study.study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = study.study_time
    ds.AccessionNumber = study.accession_number
    ds.StudyID = study.study_id
    ds.ReferringPhysicianName = "REFERRER^FAKE"
    ds.StudyDescription = "CHEST PA"
    ds.SeriesInstanceUID = fixture_uid("series", uid_seed)
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.Modality = variant.modality
    ds.SeriesDescription = f"Chest PA phantom ({variant.name})"
    ds.Manufacturer = "xiqa phantom generator"
    ds.BodyPartExamined = "CHEST"
    ds.PatientOrientation = ["L", "F"]
    ds.ImageType = ["ORIGINAL", "PRIMARY"] if variant.modality != "OT" else ["DERIVED", "SECONDARY"]
    spacing = round(430.0 / max(display.shape), 4)  # a 43 cm detector
    if variant.modality == "DX":
        ds.ViewPosition = "PA"
        ds.PresentationIntentType = (
            "FOR PROCESSING" if variant.sop_class_uid == DX_FOR_PROCESSING else "FOR PRESENTATION"
        )
        ds.ImagerPixelSpacing = [spacing, spacing]
        ds.DetectorType = "SCINTILLATOR"
        ds.ImageLaterality = "U"  # the chest is not a paired structure
        # high stored values are dense (less beam) on MONOCHROME2, so lower values mean more beam
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = -1 if variant.photometric == "MONOCHROME2" else 1
        chest = Dataset()
        chest.CodeValue, chest.CodingSchemeDesignator = codes.SCT.Chest.value, "SCT"
        chest.CodeMeaning = "Chest"
        ds.AnatomicRegionSequence = [chest]
        ds.PositionerType = "NONE"
        ds.AcquisitionContextSequence = []
        ds.BurnedInAnnotation = "NO"
        ds.LossyImageCompression = "00"
    elif variant.modality == "CR":
        ds.ViewPosition = "PA"
        ds.ImagerPixelSpacing = [spacing, spacing]
        ds.PixelSpacing = [spacing, spacing]
    else:
        ds.ConversionType = "WSD"
    stored = _pixel_module(ds, display, variant)
    ds.PixelData = stored.tobytes()
    if variant.transfer_syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        ds.file_meta.TransferSyntaxUID = variant.transfer_syntax
    else:
        ds.compress(variant.transfer_syntax, stored, generate_instance_uid=False)
    return ds
