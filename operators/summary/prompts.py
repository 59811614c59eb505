"""Chat prompts for the language model (three styles), placeholder filling and the fact grammar."""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence

from ..scoring import ObjectFinding, QualityResult, Verdict
from .config import PROMPT_STYLES, STYLE_PLACEHOLDER
from .facts import Facts, _findings_phrase, facts_block, summary_facts, template_summary

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
