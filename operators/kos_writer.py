"""Graph node 7d, off by default: a Key Object Selection "Rejected for Quality Reasons" for a Poor image.

For sites that run reject analysis (issue 26): where ``reject_kos`` is set (``xiqa analyze
--reject-kos``, serve's ``reject-kos``), an image whose overall verdict is Poor (the
foreign-object verdict combined with the acquisition checks, ``AcquisitionResult.overall_verdict``)
also gets a Key Object Selection Document (TID 2010)::

    Rejected for Quality Reasons (113001, DCM; CID 7010 document title)
      device observer (TID 1002: the same device as the SR's)
      Key Object Description (TEXT): the reasons, e.g. "Poor image quality (xiqa): foreign
          objects Poor (removable objects, Q 0.412; 2 objects: jewellery chain, button or snap);
          acquisition checks failed: anatomy cut off, rotation."
      IMAGE (no concept name: TID 2010 forbids a purpose of reference): the analysed image

in the source's study, in a series of its own (``OutputKind.KOS``), with UIDs derived like the other
outputs', so a resend replaces it.  It references the analysed image and nothing else: a PACS
that implements IHE IOCM reads a KOS with this title as a rejection note and may hide the
instances it references from ordinary queries, which is also why it is off by default.

The description is made from the analysis alone (verdict, object classes and categories, check
names), never from the source's attributes; the patient and study attributes are those of the
reference copy that every output gets (``writer_common.reference_dataset``), which the Patient and
General Study modules require.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import highdicom as hd
from monai.deploy.core import Fragment
from pydicom import Dataset

from . import codes as xc
from .case import Case
from .loader import SourceImage
from .scoring import QualityResult, Verdict, overall_verdict
from .sr_writer import device_observer
from .writer_common import (
    AlgorithmInfo,
    DicomWriterOperator,
    OutputKind,
    algorithm_for_case,
    check_argument_type,
    document_arguments,
    output_identity,
    reference_dataset,
)

if TYPE_CHECKING:
    from .acquisition import AcquisitionResult

#: TID 2010 document title (CID 7010)
DOCUMENT_TITLE = xc.REJECTED_FOR_QUALITY_REASONS


def rejection_reasons(quality: QualityResult, acquisition: AcquisitionResult | None = None) -> list[str]:
    """Why the image is Poor, in words: the foreign objects where their verdict is Poor (what the
    default verdict counts, by category or class), the failed acquisition checks.  No patient data."""
    reasons = []
    if quality.default_verdict is Verdict.POOR:
        counted = quality.objects if quality.verdict_basis == "all objects" else quality.removable_objects
        kinds = Counter(_kind(finding) for finding in counted)
        listed = ", ".join(kind if number == 1 else f"{number} x {kind}" for kind, number in kinds.items())
        amount = f"{len(counted)} object{'' if len(counted) == 1 else 's'}"
        reasons.append(f"foreign objects Poor ({quality.verdict_basis}, Q {quality.default_quality:.3f}; "
                       f"{amount}{': ' + listed if listed else ''})")
    failed = acquisition.failed if acquisition is not None else ()
    if failed:
        reasons.append("acquisition checks failed: " + ", ".join(c.check.replace("_", " ") for c in failed))
    return reasons


def _kind(finding) -> str:
    if finding.category is not None:
        return finding.category.replace("_", " ")
    return {"device": "medical device", "removable": "removable object"}.get(finding.object_class, "object")


def rejection_description(quality: QualityResult, acquisition: AcquisitionResult | None = None) -> str:
    """The Key Object Description of a Poor image.

    Raises
    ------
    ValueError
        The overall verdict is not Poor: there is nothing to reject.
    """
    if overall_verdict(quality, acquisition) is not Verdict.POOR:
        raise ValueError('Argument "quality" must give an overall verdict Poor (with the acquisition checks)')
    return f"Poor image quality (xiqa): {'; '.join(rejection_reasons(quality, acquisition))}."


def build_rejection_note(source: SourceImage, description: str, algorithm: AlgorithmInfo,
                         uid_root: str | None = xc.DEFAULT_UID_ROOT) -> hd.ko.KeyObjectSelectionDocument:
    """The Key Object Selection "Rejected for Quality Reasons" that references ``source``.

    Raises
    ------
    TypeError
        An argument has the wrong type.
    ValueError
        ``description`` is empty, or the source has no Study or SOP Instance UID.
    """
    check_argument_type("source", source, SourceImage, "a SourceImage")
    check_argument_type("description", description, str, "a str")
    check_argument_type("algorithm", algorithm, AlgorithmInfo, "an AlgorithmInfo")
    if not description.strip():
        raise ValueError('Argument "description" must not be empty')
    reference = reference_dataset(source.dataset)
    identity = output_identity(source.dataset, OutputKind.KOS, algorithm, uid_root)
    content = hd.ko.KeyObjectSelection(document_title=DOCUMENT_TITLE, referenced_objects=[reference],
                                       observer_device_context=device_observer(algorithm, uid_root),
                                       description=description.strip())
    document = hd.ko.KeyObjectSelectionDocument(
        evidence=[reference],
        content=content,
        **document_arguments(identity, algorithm),
    )
    for item in document.ContentSequence:
        # highdicom names each reference SCT "Source"; TID 2010 forbids a purpose of reference on its
        # IMAGE items (PixelMed's DicomSRValidator reports it), and PS3.3 C.17.3 lets them go unnamed
        if item.ValueType == "IMAGE":
            del item.ConceptNameCodeSequence
    return document


class KosWriterOperator(DicomWriterOperator):
    """The rejection note node: writes only where ``enabled`` and the overall verdict is Poor."""

    kind = OutputKind.KOS
    chest_only = True

    def __init__(self, fragment: Fragment, *args, enabled: bool = False, **kwargs) -> None:
        self.enabled = enabled
        super().__init__(fragment, *args, **kwargs)

    def step(self, case: Case) -> None:
        if self.enabled and overall_verdict(case.quality, case.acquisition) is Verdict.POOR:
            super().step(case)

    def build(self, case: Case) -> Dataset:
        return build_rejection_note(case.source, rejection_description(case.quality, case.acquisition),
                                    algorithm_for_case(case), self.uid_root)
