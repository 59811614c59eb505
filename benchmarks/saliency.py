"""Benchmark the saliency engine against the per-layer reference (issue 7).

    .venv/bin/python benchmarks/saliency.py [--quick] [--full] [--threads 1]
        [--device cpu|cuda|auto] [--encoders resnet50 mobilenet_v2] [--size 256]
        [--repeats 5] [--sample 20] [--ng1-sample 10] [--ng1-batch 1]
        [--no-memory | --memory-only] [--floor] [--json OUT]

For DeepLabV3+ at ``--size`` x ``--size`` (ResNet50 with random weights, seed
0, as in shared/reference/saliency-baseline.md; MobileNetV2 is the shipped
bundle when it exists, random weights otherwise) it prints:

- one forward (no grad) and one forward + full ``backward()`` of S;
- ours: Grad-CAM, NormGrad 0, both from one pass, and NormGrad 1, over the
  full default layer set (measured, never extrapolated);
- the reference (``tests/saliency_reference.py``): one forward and full
  backward per layer, and for NormGrad 1 a deep copy per layer; also NormGrad
  1 the way the thesis costs it (two copies and two passes per layer).  The
  reference is extrapolated from ``--sample`` (``--ng1-sample``) evenly spaced
  layers, as the baseline did (fixed cost + per-layer cost x layer count);
  ``--full`` runs every layer instead;
- the ratios and the goals (GC + NG0 <= 1.5x fwd+bwd and >= 30x faster than
  the reference; NG1 >= 10x faster than its reference);
- peak memory: on the CPU, VmHWM of a fresh interpreter per measurement (its
  "idle" row is import + model); on a GPU, ``torch.cuda.max_memory_allocated``;
- the largest difference between our normalised layer maps and the
  reference's, on the sampled layers;
- with ``--floor``, the least time exact order 1 can take on this device one
  image at a time (its FLOPs in whole-network passes times the time of one
  pass), and so the best ratio against each reference.

Times are medians of ``--repeats`` runs after one warm-up (NormGrad 1: at
most 2 runs, no warm-up), as wall and as CPU (process) seconds.  On a shared
machine other jobs inflate wall time by a varying amount, but hardly the CPU
time of a single-threaded process, so the ratios are taken from CPU time
(wall ratios in brackets).  Use ``--threads 1`` there: oversubscribed threads
slow torch down several-fold.  ``--quick`` is a smoke test (128 px, 2 runs,
4 + 3 reference layers, no memory).
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
from torch.utils.flop_counter import FlopCounterMode
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
    run.add_argument("--repeats", type=int, default=5,
                     help="runs per timing (default: %(default)s)")
    run.add_argument("--sample", type=int, default=20,
                     help="reference layers timed for GC and NG0 (default: %(default)s)")
    run.add_argument("--ng1-sample", type=int, default=10,
                     help="reference layers timed for NG1 (default: %(default)s)")
    run.add_argument("--ng1-batch", type=int, default=1,
                     help="layers per order-1 replay batch (default: %(default)s)")
    run.add_argument("--full", action="store_true", help="run the whole reference loops")
    run.add_argument("--floor", action="store_true",
                     help="also count the FLOPs of exact order 1 (slow: one more NormGrad 1 run)")
    run.add_argument("--quick", action="store_true",
                     help="smoke test: 2 repeats, 4 + 3 reference layers, 128 px, no memory")
    run.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    run.add_argument("--memory-only", action="store_true", help="only the peak-memory subprocesses")
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


class Clock:
    """Wall and CPU (process) seconds of a block; CPU time is what other jobs cannot inflate."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.wall = self.cpu = 0.0

    def __enter__(self) -> Clock:
        synchronise(self.device)
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        synchronise(self.device)
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu


def timed(function, device: torch.device, repeats: int, warmup: int = 1) -> dict:
    """Medians of wall and CPU seconds over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        function()
    walls, cpus = [], []
    for _ in range(max(1, repeats)):
        with Clock(device) as clock:
            function()
        walls.append(clock.wall)
        cpus.append(clock.cpu)
    return {"wall": statistics.median(walls), "cpu": statistics.median(cpus), "walls": walls}


def evenly(items: list, count: int) -> list:
    if count >= len(items):
        return list(items)
    if count <= 1:
        return [items[len(items) // 2]]
    return [items[round(i * (len(items) - 1) / (count - 1))] for i in range(count)]


def reference_time(network, image, layers: list[str], chosen: list[str], method: str,
                   device: torch.device) -> tuple[dict, dict]:
    """Reference seconds for all ``layers`` (wall and CPU; extrapolated from ``chosen`` when
    it is a sample) and the raw maps of the timed layers.

    Fixed cost (copy; for order 1 also the one gradient of S w.r.t. all weights)
    plus per-layer cost times the layer count.
    """
    with Clock(device) as fixed:
        copy = reference.prepared_copy(network)
        if method == "normgrad1":
            copy.zero_grad(set_to_none=True)
            reference.score(copy, image).backward()
    with Clock(device) as loop:
        if method == "thesis_normgrad1":
            maps = reference.thesis_normgrad1_maps(network, image, chosen)
        else:
            maps = reference.layer_maps(network, image, chosen, method)
    figures = {}
    for kind in ("wall", "cpu"):
        base = 0.0 if method == "thesis_normgrad1" else getattr(fixed, kind)
        per_layer = max(getattr(loop, kind) - base, 0.0) / len(chosen)
        figures[kind] = base + per_layer * len(layers)
        figures[kind + "_per_layer"] = per_layer
    return figures, maps


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
    print(peak_of_this_process())
    return 0


def peak_of_this_process() -> float:
    """MiB of peak resident memory.  VmHWM belongs to the address space, which exec renews;
    ``ru_maxrss`` is kept across fork + exec, so a child of a big parent reports the parent's."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_encoder(encoder: str, args: argparse.Namespace, device: torch.device) -> dict:
    network, origin = load_network(encoder, device)
    image = torch.randn(1, 3, args.size, args.size,
                        generator=torch.Generator().manual_seed(0)).to(device)
    layers = [name for name, _ in select_layers(network, default_layer_patterns(network))]
    stepped = [name for name in layers
               if any(True for _ in network.get_submodule(name).parameters())]
    config = SaliencyConfig(normgrad1_batch=args.ng1_batch)
    figures: dict = {"encoder": encoder, "weights": origin, "layers": len(layers),
                     "layers_with_parameters": len(stepped), "size": args.size,
                     "parameters": sum(p.numel() for p in network.parameters())}
    print(f"\n## DeepLabV3+/{encoder} ({origin}), {args.size}x{args.size}, {len(layers)} layers "
          f"({len(stepped)} with parameters), device {device}", flush=True)
    print(f"{'':52s} {'wall s':>9s} {'CPU s':>9s}")

    def forward():
        with torch.no_grad():
            network(image)

    def forward_backward():
        network.zero_grad(set_to_none=True)
        target_score(network(image)).sum().backward()

    def forward_backward_to_input():  # what one order-1 replay needs per layer: no weight gradients
        inputs = image.detach().requires_grad_(True) * 1.0  # not a leaf: FlopCounterMode needs that
        torch.autograd.grad(target_score(network(inputs)).sum(), inputs)

    def ours(*methods):
        return lambda: compute_saliencies(network, image[0], config, methods=methods)

    rows = [("forward (no grad)", "forward", forward, args.repeats),
            ("forward + full backward", "fwd_bwd", forward_backward, args.repeats),
            ("forward + backward to the input only", "fwd_bwd_input", forward_backward_to_input,
             args.repeats),
            ("ours: Grad-CAM", "ours_gc", ours("gradcam"), args.repeats),
            ("ours: NormGrad 0", "ours_ng0", ours("normgrad0"), args.repeats),
            ("ours: Grad-CAM + NormGrad 0 (one pass)", "ours_gc_ng0", ours("gradcam", "normgrad0"),
             args.repeats),
            ("ours: NormGrad 1", "ours_ng1", ours("normgrad1"), max(1, min(args.repeats, 2)))]
    for label, key, function, repeats in rows:
        timing = timed(function, device, repeats, warmup=0 if key == "ours_ng1" else 1)
        figures[key] = timing
        print(f"{label:52s} {timing['wall']:9.3f} {timing['cpu']:9.3f}   "
              f"(wall runs {', '.join(f'{r:.3f}' for r in timing['walls'])})", flush=True)
    network.zero_grad(set_to_none=True)

    references = (("gradcam", args.sample, "ref_gc", layers),
                  ("normgrad0", args.sample, "ref_ng0", layers),
                  ("normgrad1", args.ng1_sample, "ref_ng1", layers),
                  ("thesis_normgrad1", args.ng1_sample, "ref_ng1_thesis", layers))
    for method, count, key, counted in references:
        chosen = counted if args.full else evenly(counted, count)
        timing, maps = reference_time(network, image, counted, chosen, method, device)
        checked = "normgrad1" if method == "thesis_normgrad1" else method
        timing["max_diff"] = max_difference(network, image, checked, maps, args)
        figures[key] = timing
        how = "all layers" if args.full else f"extrapolated from {len(chosen)}"
        label = {"thesis_normgrad1": "reference: NormGrad 1, thesis (2 copies + 2 passes)",
                 "normgrad1": "reference: NormGrad 1 (1 copy + 1 pass per layer)"}.get(
                     method, f"reference: {method}")
        print(f"{label:52s} {timing['wall']:9.1f} {timing['cpu']:9.1f}   "
              f"({timing['cpu_per_layer']:.3f} CPU s/layer, {how}; "
              f"max |ours - ref| {timing['max_diff']:.1e})", flush=True)

    def ratio(numerator: str, denominator: str, kind: str = "cpu") -> float:
        top = sum(figures[k][kind] for k in numerator.split("+"))
        return top / figures[denominator][kind]

    figures["ratios"] = {kind: {
        "gc_ng0_over_fwd_bwd": ratio("ours_gc_ng0", "fwd_bwd", kind),
        "ref_over_ours_gc_ng0": ratio("ref_gc+ref_ng0", "ours_gc_ng0", kind),
        "ref_over_ours_gc": ratio("ref_gc", "ours_gc", kind),
        "ref_over_ours_ng0": ratio("ref_ng0", "ours_ng0", kind),
        "ref_over_ours_ng1": ratio("ref_ng1", "ours_ng1", kind),
        "thesis_ref_over_ours_ng1": ratio("ref_ng1_thesis", "ours_ng1", kind),
        "ng1_over_fwd_bwd": ratio("ours_ng1", "fwd_bwd", kind)} for kind in ("cpu", "wall")}
    for key, label, goal in (
            ("gc_ng0_over_fwd_bwd", "ours GC + NG0 / fwd+bwd", "goal <= 1.5"),
            ("ref_over_ours_gc_ng0", "reference GC + NG0 loops / ours GC + NG0", "goal >= 30"),
            ("ref_over_ours_gc", "reference GC / ours GC", ""),
            ("ref_over_ours_ng0", "reference NG0 / ours NG0", ""),
            ("ref_over_ours_ng1", "reference NG1 (1 copy) / ours NG1", "goal >= 10"),
            ("thesis_ref_over_ours_ng1", "reference NG1 (thesis, 2 copies) / ours NG1",
             "goal >= 10"),
            ("ng1_over_fwd_bwd", "ours NG1 / fwd+bwd", "")):
        cpu, wall = figures["ratios"]["cpu"][key], figures["ratios"]["wall"][key]
        print(f"{label:52s} {wall:8.2f}x {cpu:8.2f}x   {goal}")

    if args.floor:
        figures["floor"] = order1_floor(figures, forward_backward_to_input, ours("normgrad1"))
    if device.type == "cuda":
        for key, function in (("fwd_bwd", forward_backward),
                              ("gc_ng0", ours("gradcam", "normgrad0")), ("ng1", ours("normgrad1"))):
            torch.cuda.reset_peak_memory_stats()
            function()
            figures[f"peak_gpu_{key}_mib"] = torch.cuda.max_memory_allocated() / 2**20
            print(f"peak GPU memory {key:10s} {figures[f'peak_gpu_{key}_mib']:8.0f} MiB")
    elif not args.no_memory:
        for probe in PROBES:
            figures[f"peak_rss_{probe}_mib"] = peak_rss(encoder, probe, args)
            peak = figures[f"peak_rss_{probe}_mib"]
            print(f"peak RSS, fresh process, {probe:10s} {peak:8.0f} MiB", flush=True)
    return figures


def flops(function) -> float:
    with FlopCounterMode(display=False) as counter:
        function()
    return float(counter.get_total_flops())


def order1_floor(figures: dict, forward_backward_to_input, ours_ng1) -> dict:
    """How much work exact order 1 is, and what that work alone costs at whole-network speed.

    Exact order 1 must evaluate, per stepped layer, the rest of the network at
    that layer's new output and the gradient back to it: work that no caching
    removes.  Our order-1 FLOPs in units of one forward + input-gradient
    backward of the whole network, times the measured time of such a pass, is
    the time that work takes on a device where a batch of replays costs the
    sum of its parts (a CPU).  When ours is at or below it, only hardware that
    runs replays in parallel (a GPU, ``normgrad1_batch``) can go faster.
    """
    passes = flops(ours_ng1) / flops(forward_backward_to_input)
    floor = {kind: passes * figures["fwd_bwd_input"][kind] for kind in ("cpu", "wall")}
    result = {"network_passes": passes, "seconds": floor,
              "best_ref_ratio": figures["ref_ng1"]["cpu"] / floor["cpu"],
              "best_thesis_ratio": figures["ref_ng1_thesis"]["cpu"] / floor["cpu"]}
    print(f"{'order-1 work: ' + f'{passes:.1f} x (fwd + input bwd), at that speed':52s} "
          f"{floor['wall']:9.1f} {floor['cpu']:9.1f}   reference / it "
          f"{result['best_ref_ratio']:.1f}x, thesis / it {result['best_thesis_ratio']:.1f}x")
    return result


def print_table(everything: list[dict]) -> None:
    """The summary as a Markdown table: CPU seconds (wall in brackets), ratios from CPU time."""
    names = " | ".join(f"{f['encoder']} ({f['size']} px)" for f in everything)
    print(f"\n| figure | {names} |\n|---|" + "---|" * len(everything))
    rows = [("layers (with parameters)",
             [f"{f['layers']} ({f['layers_with_parameters']})" for f in everything])]
    for label, key, digits in (
            ("forward, no grad", "forward", 3), ("forward + full backward", "fwd_bwd", 3),
            ("forward + backward to the input", "fwd_bwd_input", 3),
            ("ours GC", "ours_gc", 3), ("ours NG0", "ours_ng0", 3),
            ("ours GC + NG0, one pass", "ours_gc_ng0", 3), ("ours NG1", "ours_ng1", 1),
            ("reference GC", "ref_gc", 1), ("reference NG0", "ref_ng0", 1),
            ("reference NG1, 1 copy/layer", "ref_ng1", 1),
            ("reference NG1, thesis: 2 copies/layer", "ref_ng1_thesis", 1)):
        cells = [f"{f[key]['cpu']:.{digits}f} ({f[key]['wall']:.{digits}f})" for f in everything]
        rows.append((f"{label}, CPU s (wall s)", cells))
    for label, key in (("GC+NG0 / fwd+bwd (goal <= 1.5)", "gc_ng0_over_fwd_bwd"),
                       ("ref GC+NG0 / ours GC+NG0 (goal >= 30)", "ref_over_ours_gc_ng0"),
                       ("ref NG1 (1 copy) / ours NG1 (goal >= 10)", "ref_over_ours_ng1"),
                       ("ref NG1 (thesis) / ours NG1 (goal >= 10)", "thesis_ref_over_ours_ng1"),
                       ("ours NG1 / fwd+bwd", "ng1_over_fwd_bwd")):
        cells = [f"{f['ratios']['cpu'][key]:.1f}x ({f['ratios']['wall'][key]:.1f}x)"
                 for f in everything]
        rows.append((label + ", CPU (wall)", cells))
    if all("floor" in f for f in everything):
        rows.append(("exact NG1 work at whole-network speed (passes), CPU s",
                     [f"{f['floor']['seconds']['cpu']:.1f} ({f['floor']['network_passes']:.0f})"
                      for f in everything]))
        rows.append(("ref NG1 / that time (1 copy; thesis)",
                     [f"{f['floor']['best_ref_ratio']:.1f}x; {f['floor']['best_thesis_ratio']:.1f}x"
                      for f in everything]))
    rows.append(("max abs diff vs reference, GC / NG0 / NG1",
                 [" / ".join(f"{f[k]['max_diff']:.0e}" for k in ("ref_gc", "ref_ng0", "ref_ng1"))
                  for f in everything]))
    for probe in PROBES:
        key = f"peak_rss_{probe}_mib"
        if all(key in f for f in everything):
            rows.append((f"peak RSS {probe}, MiB", [f"{f[key]:.0f}" for f in everything]))
    for label, cells in rows:
        print(f"| {label} | " + " | ".join(cells) + " |")


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
    if args.memory_only:
        for encoder in args.encoders:
            for probe in PROBES:
                print(f"{encoder:14s} peak RSS, fresh process, {probe:10s} "
                      f"{peak_rss(encoder, probe, args):8.0f} MiB", flush=True)
        return 0
    everything = [bench_encoder(encoder, args, device) for encoder in args.encoders]
    print_table(everything)
    if args.json:
        args.json.write_text(json.dumps(everything, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
