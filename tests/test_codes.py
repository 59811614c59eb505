"""codes.py: standard codes exist in pydicom's dictionaries, the private scheme is sound, UIDs."""

from __future__ import annotations

import pytest
from pydicom.sr import _cid_dict, _concepts_dict
from pydicom.sr.coding import Code
from pydicom.uid import UID
from xiqa.operators import codes as xc


def _module_codes() -> dict[str, Code]:
    found = {name: value for name, value in vars(xc).items() if isinstance(value, Code)}
    found.update({f"MODALITY_BY_SOP_CLASS[{k}]": v for k, v in xc.MODALITY_BY_SOP_CLASS.items() if v})
    found.update({f"RADIOGRAPHIC_MODALITIES[{k}]": v for k, v in xc.RADIOGRAPHIC_MODALITIES.items()})
    return found


#: standard codes that pydicom's dictionary lacks, each documented in codes.py with its source
NOT_IN_PYDICOM = {"NASOGASTRIC_TUBE"}


@pytest.mark.parametrize("scheme", ["SCT", "DCM"])
def test_every_standard_code_is_in_pydicoms_dictionary(scheme: str) -> None:
    known = {(value, meaning) for by_value in _concepts_dict.concepts[scheme].values()
             for value, (meaning, _) in by_value.items()}
    used = {name: code for name, code in _module_codes().items()
            if code.scheme_designator == scheme and name not in NOT_IN_PYDICOM}
    assert used, f"no {scheme} code found"
    for name, code in used.items():
        assert (code.value, code.meaning) in known, f"{name} = {code} is not a pydicom {scheme} code"


def test_segment_codes_come_from_the_segmentation_context_groups() -> None:
    category = [k for k, v in _concepts_dict.concepts["SCT"].items() if xc.SEGMENT_CATEGORY.value in v]
    kind = [k for k, v in _concepts_dict.concepts["SCT"].items() if xc.SEGMENT_TYPE.value in v]
    assert set(category) & set(_cid_dict.cid_concepts[7150]["SCT"])  # Segmentation Property Category
    assert set(kind) & set(_cid_dict.cid_concepts[7193]["SCT"])  # Physical Object Property Type


def test_every_category_has_a_code_standard_ones_from_the_documented_context_groups() -> None:
    from xiqa.operators.object_classes import CATEGORY_CLASS

    assert set(xc.CATEGORY_CODES) == set(CATEGORY_CLASS)
    values = [(c.scheme_designator, c.value) for c in xc.CATEGORY_CODES.values()]
    assert len(values) == len(set(values))
    groups = {**{k: 6138 for k in ("jewellery_chain", "coin", "endotracheal_tube", "central_line",
                                   "chest_drain", "pacemaker_can", "pacing_lead")},
              "surgical_clip": 6401, "orthopaedic_hardware": 1000}
    for category, cid in groups.items():
        code = xc.CATEGORY_CODES[category]
        assert _keywords(code) & set(_cid_dict.cid_concepts[cid][code.scheme_designator]), category
    private = {k for k, c in xc.CATEGORY_CODES.items() if c.scheme_designator == "99XIQA"}
    assert private == {"ecg_electrode", "ecg_lead_wire", "button_snap", "bra_hook_underwire", "sternal_wire"}
    assert xc.CATEGORY_CODES["nasogastric_tube"] == Code("17102003", "SCT", "Nasogastric tube")
    for category, code in xc.CATEGORY_CODES.items():
        assert category in xc.__doc__ and code.value in xc.__doc__  # the documented mapping


def test_private_scheme_codes_are_unique_and_fit_their_vrs() -> None:
    values = [code.value for code in xc.PRIVATE_CODES]
    assert len(values) == len(set(values))
    for code in xc.PRIVATE_CODES:
        assert code.scheme_designator == "99XIQA"
        assert len(code.value) <= 16 and len(code.meaning) <= 64  # SH and LO
        assert code.value in xc.__doc__  # documented in the module's table
    private = [c for c in _module_codes().values() if c.scheme_designator == "99XIQA"]
    assert set(private) <= set(xc.PRIVATE_CODES)
    item = xc.private_coding_scheme()
    assert item.CodingSchemeDesignator == "99XIQA" and item.CodingSchemeVersion == "1"


def test_derived_uids_are_valid_and_reproducible() -> None:
    uid = xc.derive_uid(("instance", "1.2.3", "seg", "xiqa", "0.1.0", "model"))
    assert isinstance(uid, UID) and uid.is_valid and uid.startswith("2.25.") and len(uid) <= 64
    assert uid == xc.derive_uid(("instance", "1.2.3", "seg", "xiqa", "0.1.0", "model"))
    assert uid != xc.derive_uid(("instance", "1.2.3", "sc", "xiqa", "0.1.0", "model"))
    assert xc.derive_uid(("ab", "c")) != xc.derive_uid(("a", "bc"))
    rooted = xc.derive_uid(("instance", "1.2.3"), root="1.2.826.0.1.3680043.10.1432")
    assert rooted.startswith("1.2.826.0.1.3680043.10.1432.") and rooted.is_valid


def test_bad_uid_roots_and_parts_are_refused() -> None:
    with pytest.raises(ValueError, match=r'Argument "root" must be a UID prefix'):
        xc.check_uid_root("1.2.03.4")
    with pytest.raises(ValueError, match=r'Argument "root" must be a UID prefix'):
        xc.check_uid_root("1." * 30)
    with pytest.raises(TypeError, match=r'Argument "root" must be a str'):
        xc.check_uid_root(1.2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r'Argument "parts" must not be empty'):
        xc.derive_uid(())


def _keywords(code: Code) -> set[str]:
    return {keyword for keyword, by_value in _concepts_dict.concepts[code.scheme_designator].items()
            if code.value in by_value}


def test_sr_descriptors_come_from_the_context_groups_tid_1500_names() -> None:
    # TID 1500 row 4: Procedure reported from CID 100; TID 1602 row 1: Modality from CID 29
    assert _keywords(xc.PROCEDURE_REPORTED) & set(_cid_dict.cid_concepts[100]["SCT"])
    modalities = [*filter(None, xc.MODALITY_BY_SOP_CLASS.values()), *xc.RADIOGRAPHIC_MODALITIES.values()]
    for code in modalities:
        assert _keywords(code) & set(_cid_dict.cid_concepts[29]["DCM"]), code
    assert xc.acquisition_modality("1.2.840.10008.5.1.4.1.1.7", " dx ") == xc.RADIOGRAPHIC_MODALITIES["DX"]
    assert xc.acquisition_modality("1.2.840.10008.5.1.4.1.1.7", "OT") is None
    assert xc.acquisition_modality("1.2.840.10008.5.1.4.1.1.1", "OT").value == "CR"

