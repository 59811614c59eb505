"""The note once objects are classed: what to take off, which devices are expected, which ECG rule applied."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
from xiqa.operators.scoring import QualityResult, Verdict, score_mask, verdict_for
from xiqa.operators.summary import (
    Summarizer,
    SummaryConfig,
    summary_facts,
    template_summary,
    validate_summary,
)
from xiqa.operators.summary.model import Generation


def _classed(classes: list[tuple[str, str | None, bool]], ecg_rule: str | None = None,
             count_devices: bool = False) -> QualityResult:
    """Circles down the middle, one per (class, category, expected), classed by hand."""
    mask = np.zeros((256, 256), np.uint8)
    for index in range(len(classes)):
        cv2.circle(mask, (60 + 60 * index, 128), 6, 1, -1)
    quality = score_mask(mask)
    objects = tuple(
        dataclasses.replace(finding, object_class=object_class, category=category, expected=expected,
                            class_confidence=0.9)
        for finding, (object_class, category, expected) in zip(quality.objects, classes, strict=True))
    counted = [f for f in objects if f.object_class == "removable" and not f.expected]
    q_removable = float(np.prod([1 - f.severity for f in counted])) if counted else 1.0
    return dataclasses.replace(quality, objects=objects, q_removable=q_removable,
                               verdict_removable=verdict_for(q_removable), ecg_rule=ecg_rule,
                               count_devices=count_devices, classifier_version="test")


ICU = _classed([("device", "endotracheal_tube", False), ("device", "central_line", False),
                ("removable", "ecg_lead_wire", True), ("removable", "ecg_lead_wire", True)],
               "ECG leads expected: View Position AP (bedside plate)")
OUTPATIENT = _classed([("removable", "jewellery_chain", False), ("device", "pacemaker_can", False)],
                      "")


def test_an_icu_plate_with_devices_and_expected_leads_is_good_and_lists_them():
    text = template_summary(ICU)
    assert ICU.default_verdict == Verdict.GOOD and ICU.q_img < ICU.q_removable == 1.0
    assert text.endswith("An endotracheal tube, a central line and two ECG leads seen; these are expected "
                         "and do not lower the score. ECG leads expected: View Position AP (bedside plate).")
    assert "No removable objects were found" in text and "rated Good" in text
    assert "Remove" not in text and "take off" not in text.lower()  # nothing to take off
    assert validate_summary(text, ICU) == []


def test_an_outpatient_plate_says_to_take_off_the_chain_and_keeps_the_pacemaker():
    text = template_summary(OUTPATIENT)
    facts = summary_facts(OUTPATIENT)
    assert facts.count == 1 and facts.score == f"{OUTPATIENT.q_removable:.2f}"
    assert "To take off: a necklace or chain." in text
    assert "A pacemaker seen; it is expected and does not lower the score." in text
    assert "unless it is implanted" not in text  # the classes tell implants apart now
    assert validate_summary(text, OUTPATIENT) == []


def test_a_note_that_drops_or_changes_the_class_sentences_is_refused():
    text = template_summary(OUTPATIENT)
    changed = text.replace("To take off: a necklace or chain.", "To take off: a pacemaker.")
    assert "the sentences on object classes are missing or changed" in validate_summary(changed, OUTPATIENT)
    core = text.split(" To take off:")[0]
    assert validate_summary(core, OUTPATIENT) != []


def test_a_site_that_counts_devices_gets_a_note_over_all_objects():
    quality = dataclasses.replace(OUTPATIENT, count_devices=True)
    text = template_summary(quality)
    assert summary_facts(quality).count == 2 and summary_facts(quality).score == f"{quality.q_img:.2f}"
    assert "it is expected and counts too; the site counts medical devices." in text
    assert validate_summary(text, quality) == []


def test_the_language_model_writes_only_the_core_and_code_adds_the_class_sentences(monkeypatch):
    summarizer = Summarizer(SummaryConfig(use_llm=True, prompt_style="fewshot"))
    monkeypatch.setattr(summarizer, "load", lambda: True)
    core = template_summary(dataclasses.replace(ICU, ecg_rule=None)).split(" An endotracheal")[0]
    monkeypatch.setattr(summarizer, "generate", lambda *args, **kwargs: Generation(core, 20, 0.1, False))
    summary = summarizer.summarize(ICU)
    assert summary.source == "llm", summary.rejected_reason
    assert summary.text == template_summary(ICU)
