"""Checks of a note against the facts: numbers, counts, places, words, verdict and action, form, sense."""

from __future__ import annotations

import collections
import re

from ..scoring import QualityResult, Verdict
from .classes import split_class_note
from .config import MAX_CHARACTERS, MAX_SENTENCES, MIN_SENTENCES
from .facts import _NUMBER_WORDS, Facts, ObjectFacts, summary_facts

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
    r"\d+)\s+(?:(?:foreign|removable|other|further|more|additional|separate|small|smaller|large|larger|"
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


def validate_summary(text: str, quality: QualityResult, sense: bool = True, acquisition=None) -> list[str]:
    """Problems of ``text`` as a note on ``quality``; an empty list means it may be used.

    Checks, against ``summary_facts(quality)``: every number (areas near their
    own location, Q_img, object counts), the stated object count, every
    location and effect word, each listed object's location, the verdict word
    (and no other), the action; and bans diagnoses, object types, patient data,
    first person or AI hedging, name-like capitalised words, prompt echo, and
    malformed text (not 2-5 sentences, repeats, non-ASCII).  With ``sense``
    (the default; False gives the facts checks alone, for the benchmark's
    before/after figures) also fluency and sense (:func:`_check_sense`).  ``acquisition``: the
    image's ``AcquisitionResult``; its sentences on failed checks close the note word for word.
    """
    from ..acquisition.sentences import split_acquisition_note

    facts = summary_facts(quality)
    text, problems = split_acquisition_note(text, acquisition)  # code's own sentences, after the rest
    text, class_problems = split_class_note(text, quality)  # code's own sentences, held to the findings
    problems += class_problems
    problems += _check_form(text)
    checks = [_check_numbers, _check_count, _check_locations, _check_words, _check_verdict_and_action]
    if sense:
        checks.append(_check_sense)
    for check in checks:
        problems += check(text, facts)
    return list(dict.fromkeys(problems))  # keep order, drop duplicates
