"""The facts a note may state, already worded, and the deterministic template note built from them."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..scoring import ObjectFinding, QualityResult, Verdict
from .classes import class_sentences
from .config import MAX_LISTED_OBJECTS


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
    kind: str = "foreign"  # "removable" once objects are classed and the verdict counts those only

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


def action_text(verdict: Verdict, count: int, classed: bool = False) -> str:
    """What to do: repeat when Poor, otherwise accept (removing the object next time).

    Before objects are classed the method cannot tell a pacemaker from a necklace, so the advice
    to remove an object leaves implants out: telling a radiographer to remove a pacemaker would
    discredit the note.  Once ``classed``, only removable objects are counted, so they are simply
    removed (the class sentences name them, and list the devices apart).
    """
    if classed:
        removable = "the object" if count == 1 else "the objects"
    else:
        removable = "the object unless it is implanted" if count == 1 else \
            "the objects that are not implanted"
    if verdict is Verdict.POOR:
        return f"Remove {removable}, and repeat the exposure." if count else \
            "Check the image and repeat the exposure."
    if verdict is Verdict.ACCEPTABLE and count:
        return f"The image can be accepted; before any further exposure, remove {removable}."
    return "The image can be accepted as it is."


def summary_facts(quality: QualityResult) -> Facts:
    """The worded facts of ``quality``; the only input of prompts, template and validator.

    They are about the objects the default verdict counts, with its score and verdict: every
    object before classes are set (Q_img), the removable ones after (Q_removable), unless the
    site counts medical devices too.
    """
    counted = quality.objects if quality.count_devices else quality.removable_objects
    ordered = sorted(counted, key=lambda finding: finding.severity, reverse=True)
    facts = tuple(object_facts(finding) for finding in ordered)
    score = f"{quality.default_quality:.2f}"
    verdict = Verdict(quality.default_verdict)
    classed = quality.classified and not quality.count_devices
    return Facts(count=len(facts), objects=facts, score=score, score_value=float(score), verdict=verdict,
                 action=action_text(verdict, len(facts), classed), kind="removable" if classed else "foreign")


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
    """'One foreign object was found at ...' / 'Three foreign objects were found: one ..., ...'
    ("removable" instead of "foreign" once the objects are classed)."""
    if facts.count == 0:
        return f"No {facts.kind} objects were found"
    if facts.count == 1:
        return f"One {facts.kind} object was found {facts.objects[0].clause}"
    clauses = [f"one {item.clause}" for item in facts.listed]
    if facts.unlisted:
        clauses.append(f"{count_words(facts.unlisted).lower()} further "
                       f"{'object' if facts.unlisted == 1 else 'objects'} with a lesser effect")
    listed = ", ".join(clauses[:-1]) + " and " + clauses[-1]
    return f"{count_words(facts.count)} {facts.kind} objects were found: {listed}"


def _score_phrase(facts: Facts) -> str:
    if facts.count == 0:
        return f"The image quality score is {facts.score}, so the image is rated " \
               f"{facts.verdict.value}."
    lowers = "it lowers" if facts.count == 1 else "together they lower"
    return f"{lowers.capitalize()} the image quality score to {facts.score}, so the image is " \
           f"rated {facts.verdict.value}."


def core_template(quality: QualityResult) -> str:
    """The deterministic note on the counted objects, without the class sentences."""
    facts = summary_facts(quality)
    return f"{_findings_phrase(facts)}. {_score_phrase(facts)} {facts.action}"


def template_summary(quality: QualityResult) -> str:
    """The deterministic note with its class sentences; it always passes ``validate_summary``."""
    return " ".join([core_template(quality), *class_sentences(quality)])
