"""Benchmark the saliency engine against the per-layer reference (issue 7).

    .venv/bin/python benchmarks/saliency.py [--quick] [--full] [--threads 1]
        [--device cpu|cuda|auto] [--encoders resnet50 mobilenet_v2] [--size 256]
        [--repeats 5] [--sample 20] [--ng1-sample 10] [--ng1-batch 1] [--no-memory] [--json OUT]

For DeepLabV3+ at ``--size`` x ``--size`` (ResNet50 with random weights, seed
0, as in shared/reference/saliency-baseline.md; MobileNetV2 is the shipped
bundle when it exists, random weights otherwise) it prints:

- one forward (no grad) and one forward + full ``backward()`` of S;
- ours: Grad-CAM, NormGrad 0, both from one pass, and NormGrad 1, over the
  full default layer set (measured, never extrapolated);
- the reference (``tests/saliency_reference.py``): one forward and full
  backward per layer, and a deep copy per layer for NormGrad 1.  Its time is
  extrapolated from ``--sample`` (``--ng1-sample``) evenly spaced layers, as
  the baseline did: fixed cost + per-layer cost x layer count; ``--full`` runs
  every layer instead;
- the ratios and the goals (GC + NG0 <= 1.5x fwd+bwd and >= 30x faster than
  the reference; NG1 >= 10x faster than its reference);
- peak memory: RSS of a fresh subprocess per measurement on the CPU (Linux
  ``ru_maxrss``), ``torch.cuda.max_memory_allocated`` on a GPU;
- the largest difference between our normalised layer maps and the
  reference's on the sampled layers.

Times are medians of ``--repeats`` runs after one warm-up (NormGrad 1 and the
reference loops: fewer).  On a shared machine other jobs compete for the
cores; use ``--threads 1`` there, since oversubscribed threads slow torch
down several-fold, and read the ratios (measured in one process, interleaved)
rather than the absolute seconds.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from xiqa.operators.saliency import (
    SaliencyConfig,
    compute_saliencies,
    default_layer_patterns,
    select_layers,
    target_score,
)
from xiqa.operators.segmentation import DEFAULT_BUNDLE, NetworkSpec, build_network

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import saliency_reference as reference  # noqa: E402  (test helper, kept beside the tests)

PROBES = ("idle", "fwd_bwd", "gc_ng0", "ng1", "ref_step")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="benchmarks/saliency.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    run = parser.add_argument_group("Run")
    run.add_argument("--encoders", nargs="+", default=["resnet50", "mobilenet_v2"],
                     help="DeepLabV3+ encoders (default: %(default)s)")
    run.add_argument("--size", type=int, default=256, help="input size (default: %(default)s)")
    run.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: %(default)s)")
    run.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    run.add_argument("--repeats", type=int, default=5, help="runs per timing (default: %(default)s)")
    run.add_argument("--sample", type=int, default=20,
                     help="reference layers timed for GC and NG0 (default: %(default)s)")
    run.add_argument("--ng1-sample", type=int, default=10,
                     help="reference layers timed for NG1 (default: %(default)s)")
    run.add_argument("--ng1-batch", type=int, default=1,
                     help="layers per order-1 replay batch (default: %(default)s)")
    run.add_argument("--full", action="store_true", help="run the whole reference loops")
    run.add_argument("--quick", action="store_true",
                     help="smoke test: 2 repeats, 4 + 3 reference layers, 128 px, no memory")
    run.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    output = parser.add_argument_group("Output")
    output.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--probe", choices=PROBES, help=argparse.SUPPRESS)
    parser.add_argument("--probe-encoder", help=argparse.SUPPRESS)
    return parser


def load_network(encoder: str, device: torch.device) -> tuple[torch.nn.Module, str]:
    """The shipped bundle for its encoder, else random weights (seed 0); ReLUs not in place."""
    weights = DEFAULT_BUNDLE / "models" / "model.pt"
    metadata = DEFAULT_BUNDLE / "configs" / "metadata.json"
    torch.manual_seed(0)
    network = build_network(NetworkSpec(encoder=encoder))
    origin = "random weights (seed 0)"
    if weights.is_file() and metadata.is_file():
        spec = json.loads(metadata.read_text()).get("xiqa", {}).get("network", {})
        if spec.get("encoder") == encoder:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            network.load_state_dict({k: v.float() for k, v in state.items()})
            origin = "shipped bundle"
    for module in network.modules():  # as in the baseline: every timing without in-place ReLU
        if isinstance(getattr(module, "inplace", None), bool):
            module.inplace = False
    return network.to(device).eval(), origin


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(function, device: torch.device, repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    for _ in range(warmup):
        function()
    runs = []
    for _ in range(max(1, repeats)):
        synchronise(device)
        started = time.perf_counter()
        function()
        synchronise(device)
        runs.append(time.perf_counter() - started)
    return statistics.median(runs), runs


def evenly(items: list, count: int) -> list:
    if count >= len(items):
        return list(items)
    return [items[round(i * (len(items) - 1) / (count - 1))] for i in range(count)] if count > 1 \
        else [items[len(items) // 2]]


def reference_time(network, image, layers: list[str], sample: list[str], method: str,
                   device: torch.device, full: bool) -> tuple[float, float, dict]:
    """(total seconds for all layers, per-layer seconds, raw maps of the timed layers)."""
    synchronise(device)
    started = time.perf_counter()
    reference.prepared_copy(network)
    synchronise(device)
    fixed = time.perf_counter() - started
    if method == "normgrad1":  # the copy and the one gradient of S w.r.t. all weights
        copy = reference.prepared_copy(network)
        started = time.perf_counter()
        copy.zero_grad(set_to_none=True)
        reference.score(copy, image).backward()
        synchronise(device)
        fixed += time.perf_counter() - started
    timed_layers = layers if full else sample
    synchronise(device)
    started = time.perf_counter()
    maps = reference.layer_maps(network, image, timed_layers, method)
    synchronise(device)
    loop = time.perf_counter() - started
    per_layer = max(loop - fixed, 0.0) / len(timed_layers)
    total = loop if full else fixed + per_layer * len(layers)
    return total, per_layer, maps


def max_difference(network, image, method: str, maps: dict, args: argparse.Namespace) -> float:
    """Largest difference of our normalised layer maps from the reference's, on ``maps``' layers."""
    names = list(maps)
    config = SaliencyConfig(method=method, layer_patterns=tuple(re.escape(n) for n in names),
                            keep_layer_maps=True, normgrad1_batch=args.ng1_batch)
    ours = compute_saliencies(network, image[0], config)[method]
    worst = 0.0
    for index, name in enumerate(names):
        normalised, _ = reference.upsample_normalise(maps[name].cpu(), (args.size, args.size))
        worst = max(worst, float(np.abs(ours.layer_maps[index] - normalised).max()))
    return worst


def peak_rss(encoder: str, probe: str, args: argparse.Namespace) -> float:
    """MiB of peak RSS of a fresh interpreter that runs one measurement."""
    command = [sys.executable, __file__, "--probe", probe, "--probe-encoder", encoder,
               "--size", str(args.size), "--threads", str(args.threads),
               "--ng1-batch", str(args.ng1_batch)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def run_probe(args: argparse.Namespace) -> int:
    device = torch.device("cpu")
    network, _ = load_network(args.probe_encoder, device)
    image = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    config = SaliencyConfig(normgrad1_batch=args.ng1_batch)
    if args.probe == "fwd_bwd":
        target_score(network(image)).sum().backward()
    elif args.probe == "gc_ng0":
        compute_saliencies(network, image[0], config, methods=("gradcam", "normgrad0"))
    elif args.probe == "ng1":
        compute_saliencies(network, image[0], config, methods=("normgrad1",))
    elif args.probe == "ref_step":  # one reference NG1 layer: a copy, a step, fwd + bwd
        layer = select_layers(network, default_layer_patterns(network))[-3][0]
        reference.layer_maps(network, image, [layer], "normgrad1")
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return 0


def bench_encoder(encoder: str, args: argparse.Namespace, device: torch.device) -> dict:
    network, origin = load_network(encoder, device)
    image = torch.randn(1, 3, args.size, args.size,
                        generator=torch.Generator().manual_seed(0)).to(device)
    layers = [name for name, _ in select_layers(network, default_layer_patterns(network))]
    with_parameters = [name for name in layers if any(True for _ in network.get_submodule(name).parameters())]
    config = SaliencyConfig(normgrad1_batch=args.ng1_batch)
    figures: dict = {"encoder": encoder, "weights": origin, "layers": len(layers),
                     "layers_with_parameters": len(with_parameters),
                     "parameters": sum(p.numel() for p in network.parameters())}
    print(f"\n## DeepLabV3+/{encoder} ({origin}), {args.size}x{args.size}, {len(layers)} layers "
          f"({len(with_parameters)} with parameters), device {device}", flush=True)

    def forward():
        with torch.no_grad():
            network(image)

    def forward_backward():
        network.zero_grad(set_to_none=True)
        target_score(network(image)).sum().backward()

    def ours(*methods):
        return lambda: compute_saliencies(network, image[0], config, methods=methods)

    rows = [("forward (no grad)", "forward", forward, args.repeats),
            ("forward + full backward", "fwd_bwd", forward_backward, args.repeats),
            ("ours: Grad-CAM", "ours_gc", ours("gradcam"), args.repeats),
            ("ours: NormGrad 0", "ours_ng0", ours("normgrad0"), args.repeats),
            ("ours: Grad-CAM + NormGrad 0, one pass", "ours_gc_ng0", ours("gradcam", "normgrad0"),
             args.repeats),
            ("ours: NormGrad 1", "ours_ng1", ours("normgrad1"), max(1, min(args.repeats, 2)))]
    for label, key, function, repeats in rows:
        median, runs = timed(function, device, repeats, warmup=0 if key == "ours_ng1" else 1)
        figures[key] = median
        print(f"{label:45s} {median:9.3f} s   (runs {', '.join(f'{r:.3f}' for r in runs)})", flush=True)
    network.zero_grad(set_to_none=True)

    for method, count, key in (("gradcam", args.sample, "ref_gc"), ("normgrad0", args.sample, "ref_ng0"),
                               ("normgrad1", args.ng1_sample, "ref_ng1")):
        chosen = evenly(layers, count)
        total, per_layer, maps = reference_time(network, image, layers, chosen, method, device, args.full)
        figures[key] = total
        figures[key + "_per_layer"] = per_layer
        figures[key + "_max_diff"] = max_difference(network, image, method, maps, args)
        how = "all layers" if args.full else f"extrapolated from {len(chosen)} layers"
        print(f"reference: {method:33s} {total:9.1f} s   ({per_layer:.3f} s/layer, {how}; "
              f"max |ours - ref| {figures[key + '_max_diff']:.1e})", flush=True)

    figures["ratio_gc_ng0_over_fwd_bwd"] = figures["ours_gc_ng0"] / figures["fwd_bwd"]
    figures["speedup_gc_ng0"] = (figures["ref_gc"] + figures["ref_ng0"]) / figures["ours_gc_ng0"]
    figures["speedup_gc"] = figures["ref_gc"] / figures["ours_gc"]
    figures["speedup_ng0"] = figures["ref_ng0"] / figures["ours_ng0"]
    figures["speedup_ng1"] = figures["ref_ng1"] / figures["ours_ng1"]
    figures["ratio_ng1_over_fwd_bwd"] = figures["ours_ng1"] / figures["fwd_bwd"]
    print(f"GC + NG0 one pass / fwd+bwd:                  {figures['ratio_gc_ng0_over_fwd_bwd']:6.2f}x"
          "   (goal <= 1.5x)")
    print(f"reference (GC + NG0 loops) / ours GC + NG0:   {figures['speedup_gc_ng0']:6.1f}x"
          "   (goal >= 30x)")
    print(f"reference GC / ours GC:                       {figures['speedup_gc']:6.1f}x")
    print(f"reference NG0 / ours NG0:                     {figures['speedup_ng0']:6.1f}x")
    print(f"reference NG1 / ours NG1:                     {figures['speedup_ng1']:6.1f}x"
          "   (goal >= 10x)")
    print(f"ours NG1 / fwd+bwd:                           {figures['ratio_ng1_over_fwd_bwd']:6.1f}x")

    if device.type == "cuda":
        for key, function in (("fwd_bwd", forward_backward), ("gc_ng0", ours("gradcam", "normgrad0")),
                              ("ng1", ours("normgrad1"))):
            torch.cuda.reset_peak_memory_stats()
            function()
            figures[f"peak_{key}_mib"] = torch.cuda.max_memory_allocated() / 2**20
            print(f"peak GPU memory {key:10s} {figures[f'peak_{key}_mib']:8.0f} MiB")
    elif not args.no_memory:
        for probe in PROBES:
            figures[f"peak_rss_{probe}_mib"] = peak_rss(encoder, probe, args)
            print(f"peak RSS, fresh process, {probe:10s} {figures[f'peak_rss_{probe}_mib']:8.0f} MiB",
                  flush=True)
    return figures


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.probe:
        return run_probe(args)
    if args.quick:
        args.repeats, args.sample, args.ng1_sample, args.no_memory = 2, 4, 3, True
        args.size = min(args.size, 128)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    everything = [bench_encoder(encoder, args, device) for encoder in args.encoders]
    print("\n| figure | " + " | ".join(f["encoder"] for f in everything) + " |")
    print("|---|" + "---|" * len(everything))
    keys = [("forward (no grad), s", "forward", "{:.3f}"), ("fwd + full bwd, s", "fwd_bwd", "{:.3f}"),
            ("ours GC, s", "ours_gc", "{:.3f}"), ("ours NG0, s", "ours_ng0", "{:.3f}"),
            ("ours GC + NG0 (one pass), s", "ours_gc_ng0", "{:.3f}"), ("ours NG1, s", "ours_ng1", "{:.2f}"),
            ("reference GC, s", "ref_gc", "{:.1f}"), ("reference NG0, s", "ref_ng0", "{:.1f}"),
            ("reference NG1, s", "ref_ng1", "{:.1f}"),
            ("GC+NG0 / fwd+bwd (goal <= 1.5)", "ratio_gc_ng0_over_fwd_bwd", "{:.2f}x"),
            ("ref GC+NG0 / ours (goal >= 30)", "speedup_gc_ng0", "{:.0f}x"),
            ("ref NG1 / ours NG1 (goal >= 10)", "speedup_ng1", "{:.1f}x"),
            ("max abs diff vs ref (GC/NG0/NG1)", None, None)]
    keys += [(f"peak RSS {p}, MiB", f"peak_rss_{p}_mib", "{:.0f}") for p in PROBES]
    for label, key, form in keys:
        if key is None:
            cells = [f"{f['ref_gc_max_diff']:.0e}/{f['ref_ng0_max_diff']:.0e}/{f['ref_ng1_max_diff']:.0e}"
                     for f in everything]
        elif all(key in f for f in everything):
            cells = [form.format(f[key]) for f in everything]
        else:
            continue
        print(f"| {label} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(everything, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
