"""Graph node 4: saliency maps that explain the segmentation (Grad-CAM, NormGrad order 0 and 1).

Definitions (DESIGN.md, "Saliency"; thesis section 3.3).  The target score of
one image is ``S = mean(sigmoid(logits))`` over its output pixels.  For a layer
with output ``A`` (channels x h x w) and ``G = dS/dA``:

- Grad-CAM: ``ReLU(sum_c w_c A_c)`` with ``w_c`` the spatial mean of ``G_c``.
- NormGrad order 0: ``||A(x, y)||_2 * ||G(x, y)||_2`` over channels.
- NormGrad order 1: order 0 of that layer on the network whose parameters *of
  that layer only* took one step ``theta' = theta - epsilon * dS/dtheta``
  (``epsilon`` 0.0005).  A layer's parameters are ``module.parameters()``, so a
  residual block steps all of its weights; a layer without parameters gets its
  order-0 map (the stepped network is the network itself).

Each layer map is bilinearly upsampled to the input size (``align_corners``
False) and min-max normalised; a constant map becomes 0.  ``combine="mean"``
(thesis) averages the layer maps, ``combine="product"`` takes their geometric
mean (seeds/002, which multiplies a few stage outputs) and leaves constant
maps out, because a single all-zero map would zero the product.  The result is
min-max normalised again, after the optional Gaussian smoothing (kernel 11,
sigma 1, reflected border; seeds/002).

A layer is a module whose name fully matches one of ``layer_patterns``.  A
module called several times contributes the output of its *last* call (a
torchvision bottleneck's shared ReLU therefore equals the block output), and
the map is taken from the output exactly as the module returned it: an
in-place operation of the parent module (``out += identity``) never leaks into
the map of the layer that produced ``out``.

How the engine is fast (the reference in ``tests/saliency_reference.py`` runs
one forward and backward per layer and deep-copies the model for order 1):

- Grad-CAM and order 0 of every layer come from one forward with hooks and one
  ``torch.autograd.grad`` to the captured activations (no weight gradients).
- Order 1 needs, per layer, the rest of the network evaluated at that layer's
  stepped output.  No single pass gives that exactly: a linearisation misses
  the ReLUs that the step switches, which the reference does see.  The engine
  records every module call of one forward (the same pass gives dS/dtheta);
  per layer it then replays only the *suffix*: modules that finished before
  the layer started return their recorded outputs, the layer runs with its
  stepped tensors through ``torch.func.functional_call`` (no copy of the
  model) and the gradient runs back only to that layer, with no weight
  gradients.  The cost is the sum of the suffixes, about 0.4 of one forward
  and backward per layer for DeepLabV3+/ResNet50, whose weights sit mostly in
  the late layers.  ``normgrad1_batch`` > 1 replays several layers in one
  batch (one element each), which pays off on a GPU; on a CPU it saves ~10 %
  and changes the float rounding, so a ReLU input within rounding of 0 may
  switch and the map then differs from the reference by more than 1e-5 (with
  1, the default, the replays match the reference to the last bit).  The
  replay assumes that batch elements do not interact (CNNs in eval mode) and
  that the control flow does not depend on the weights; a replay that
  diverges raises ``RuntimeError``.

The caller's model is left as it was: training flags and ``inplace`` flags
are restored, every hook and replay patch is removed and parameters are
never written.  One network must not be explained from two threads at once,
since hooks are installed on its modules for the duration of a call.
"""

from __future__ import annotations

import math
import re
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.deploy.core import Fragment
from torch import nn

from .case import Case, CaseOperator

if TYPE_CHECKING:
    from .segmentation import SegmentationModel

METHODS = ("gradcam", "normgrad0", "normgrad1")
COMBINATIONS = ("mean", "product")
NORMGRAD1_EPSILON = 5e-4
SMOOTH_KERNEL_SIZE = 11
SMOOTH_SIGMA = 1.0
#: A layer map whose range is below this fraction of its magnitude is treated as constant.
CONSTANT_MAP_TOLERANCE = 1e-6

# Layer sets.  The thesis combines "all 138 named layers" (conv, batch norm,
# ReLU, down-sampling, ASPP, decoder and head) of DeepLabV3+/ResNet50 without
# listing them.  The rule used here (as in the measured baseline): every leaf
# module of encoder, decoder and head, plus each residual block and its
# down-sampling branch -- 182 layers for ResNet50 (a separable convolution
# counts as its depthwise and pointwise leaves).
DEEPLABV3PLUS_DECODER_LAYERS = (
    r"decoder\.aspp\.0\.convs\.0\.[0-2]",
    r"decoder\.aspp\.0\.convs\.[1-3]\.(0\.[01]|[12])",
    r"decoder\.aspp\.0\.convs\.4\.[0-3]",
    r"decoder\.aspp\.0\.project\.[0-3]",
    r"decoder\.aspp\.(1\.[01]|[23])",
    r"decoder\.up",
    r"decoder\.block1\.[0-2]",
    r"decoder\.block2\.(0\.[01]|[12])",
    r"segmentation_head\.([01]|2\.activation)",
)
RESNET_LAYERS = (
    r"encoder\.(conv1|bn1|relu|maxpool)",
    r"encoder\.layer[1-4]\.\d+",
    r"encoder\.layer[1-4]\.\d+\.(conv[1-3]|bn[1-3]|relu)",
    r"encoder\.layer[1-4]\.\d+\.downsample(\.[01])?",
) + DEEPLABV3PLUS_DECODER_LAYERS
# MobileNetV2 (the shipped model's encoder): the same rule, with inverted
# residual blocks (features.1-17) in place of bottlenecks; it has no separate
# down-sampling branch.
MOBILENET_V2_LAYERS = (
    r"encoder\.features\.(0|18)\.[0-2]",
    r"encoder\.features\.([1-9]|1[0-7])",
    r"encoder\.features\.([1-9]|1[0-7])\.conv\.[01]\.[0-2]",
    r"encoder\.features\.1\.conv\.[12]",
    r"encoder\.features\.([2-9]|1[0-7])\.conv\.[23]",
) + DEEPLABV3PLUS_DECODER_LAYERS
# For combine="product": a few stage outputs, like seeds/002's ten.
DEEPLABV3PLUS_STAGE_LAYERS = (r"decoder\.aspp", r"decoder\.block[12]")
RESNET_STAGE_LAYERS = (r"encoder\.relu", r"encoder\.layer[1-4]") + DEEPLABV3PLUS_STAGE_LAYERS
MOBILENET_V2_STAGE_LAYERS = (r"encoder\.features\.(1|3|6|13|18)",) + DEEPLABV3PLUS_STAGE_LAYERS

_DEFAULT_LAYERS = {  # encoder class name -> (all layers, stage layers)
    "ResNetEncoder": (RESNET_LAYERS, RESNET_STAGE_LAYERS),
    "MobileNetV2Encoder": (MOBILENET_V2_LAYERS, MOBILENET_V2_STAGE_LAYERS),
}


@dataclass(frozen=True)
class SaliencyConfig:
    """How to explain one segmentation.

    Parameters
    ----------
    method : str
        ``"gradcam"``, ``"normgrad0"`` or ``"normgrad1"``.
    layer_patterns : tuple of str or None
        Regular expressions that must match a module name in full.  ``None``
        takes the default set of the architecture (``default_layer_patterns``).
    combine : str
        ``"mean"`` of the normalised layer maps (thesis) or ``"product"``
        (their geometric mean, seeds/002).
    smooth : bool
        Gaussian smoothing (kernel 11, sigma 1) of the combined map.
    epsilon : float
        Step size of NormGrad order 1.
    keep_layer_maps : bool
        Also return every layer's map (normalised at input size, and raw).
    normgrad1_batch : int
        Layers whose suffixes are replayed together in one batch (order 1);
        1 reproduces the reference bit for bit, more pays off on a GPU.

    Raises
    ------
    ValueError
        For an unknown method or combination, a bad pattern, or a
        non-positive epsilon or batch.
    """

    method: str = "gradcam"
    layer_patterns: tuple[str, ...] | None = None
    combine: str = "mean"
    smooth: bool = False
    epsilon: float = NORMGRAD1_EPSILON
    keep_layer_maps: bool = False
    normgrad1_batch: int = 1

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f'Argument "method" must be one of {METHODS}, got {self.method!r}')
        if self.combine not in COMBINATIONS:
            raise ValueError(f'Argument "combine" must be one of {COMBINATIONS}, '
                             f"got {self.combine!r}")
        if not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise ValueError(f'Argument "epsilon" must be a positive number, got {self.epsilon!r}')
        if not (isinstance(self.normgrad1_batch, int) and self.normgrad1_batch >= 1):
            raise ValueError(f'Argument "normgrad1_batch" must be a positive integer, '
                             f"got {self.normgrad1_batch!r}")
        if self.layer_patterns is not None:
            if isinstance(self.layer_patterns, str) or not self.layer_patterns:
                raise ValueError('Argument "layer_patterns" must be a non-empty tuple of regular '
                                 f"expressions, got {self.layer_patterns!r}")
            for pattern in self.layer_patterns:
                try:
                    re.compile(pattern)
                except re.error as error:
                    raise ValueError(f'Argument "layer_patterns" has an invalid expression '
                                     f"{pattern!r}: {error}") from error
            object.__setattr__(self, "layer_patterns", tuple(self.layer_patterns))


@dataclass
class SaliencyResult:
    """Saliency of one image (or of a batch) on the network's input grid.

    ``combined`` is float32 in [0, 1], shaped (H, W) for one image and
    (N, H, W) for a batch.  With ``keep_layer_maps``, ``layer_maps`` holds the
    normalised upsampled map of every layer in ``layer_names`` order, (L, H, W)
    or (N, L, H, W), and ``raw_layer_maps`` the unnormalised maps at each
    layer's own resolution, (h, w) or (N, h, w), per name (single network
    only).  ``timings`` are seconds per stage.
    """

    combined: np.ndarray
    method: str
    layer_names: list[str]
    layer_maps: np.ndarray | None = None
    raw_layer_maps: dict[str, np.ndarray] | None = None
    timings: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------- layer maps


def target_score(logits: torch.Tensor) -> torch.Tensor:
    """Per-image target ``S = mean(sigmoid(logits))``, shape (N,)."""
    return torch.sigmoid(logits).flatten(1).mean(dim=1)


def gradcam_map(activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """Grad-CAM of (N, C, h, w) activations and gradients: (N, h, w)."""
    weights = gradient.mean(dim=(2, 3))
    return torch.relu(torch.einsum("nchw,nc->nhw", activation, weights))


def normgrad_map(activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """NormGrad order 0 of (N, C, h, w) activations and gradients: (N, h, w)."""
    # square-sum-sqrt: ``linalg.vector_norm(dim=1)`` is ~10x slower on CPU (strided reduction)
    return activation.square().sum(dim=1).sqrt_() * gradient.square().sum(dim=1).sqrt_()


_MAP_FUNCTIONS = {"gradcam": gradcam_map, "normgrad0": normgrad_map}


def normalise_maps(maps: torch.Tensor, inplace: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Min-max normalise each (H, W) map of a (..., H, W) stack; constant maps become 0.

    Returns the normalised stack (``maps`` itself when ``inplace``) and a boolean
    (...) tensor that marks the constant maps.
    """
    low = maps.amin(dim=(-2, -1), keepdim=True)
    high = maps.amax(dim=(-2, -1), keepdim=True)
    span = high - low
    constant = span <= CONSTANT_MAP_TOLERANCE * torch.maximum(high.abs(), low.abs())
    normalised = maps if inplace else maps.clone()
    # a division (not a multiplication by 1/span) so that the maximum becomes exactly 1
    normalised.sub_(low).div_(torch.where(constant, 1, span)).mul_(~constant)
    return normalised, constant[..., 0, 0]


def gaussian_smooth(maps: torch.Tensor, size: int = SMOOTH_KERNEL_SIZE,
                    sigma: float = SMOOTH_SIGMA) -> torch.Tensor:
    """Separable Gaussian blur of (N, H, W) maps with a reflected border (OpenCV's default)."""
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    kernel = torch.exp(-offsets.square() / (2 * sigma * sigma))
    kernel = (kernel / kernel.sum()).to(maps.dtype).to(maps.device)
    pad = size // 2
    stack = maps[:, None]
    stack = F.conv2d(F.pad(stack, (pad, pad, 0, 0), mode="reflect"), kernel.view(1, 1, 1, size))
    stack = F.conv2d(F.pad(stack, (0, 0, pad, pad), mode="reflect"), kernel.view(1, 1, size, 1))
    return stack[:, 0]


def combine_layer_maps(raw_maps: Sequence[torch.Tensor], size: tuple[int, int], combine: str,
                       smooth: bool, keep: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The combined map (N, H, W) of raw (N, h, w) layer maps, and the normalised layer maps.

    Maps of one resolution are upsampled together in one call, which is the
    same arithmetic as one call per map.
    """
    if combine not in COMBINATIONS:
        raise ValueError(f'Argument "combine" must be one of {COMBINATIONS}, got {combine!r}')
    count = len(raw_maps)
    first = raw_maps[0]
    batch = first.shape[0]
    total = torch.zeros((batch, *size), dtype=torch.float32, device=first.device)
    used = torch.zeros((batch, 1, 1), dtype=torch.float32, device=first.device)
    kept = (torch.empty((batch, count, *size), dtype=torch.float32, device=first.device)
            if keep else None)
    groups: dict[tuple[int, int], list[int]] = {}
    for index, raw in enumerate(raw_maps):
        groups.setdefault(tuple(raw.shape[-2:]), []).append(index)
    for shape, indices in groups.items():
        stack = torch.stack([raw_maps[i].float() for i in indices], dim=1)
        if shape != tuple(size):
            stack = F.interpolate(stack, size=size, mode="bilinear", align_corners=False)
        stack, constant = normalise_maps(stack, inplace=True)
        if combine == "mean":
            total += stack.sum(dim=1)
        else:
            logs = torch.where(constant[..., None, None], torch.zeros_like(stack), torch.log(stack))
            total += logs.sum(dim=1)
            used += (~constant).sum(dim=1, dtype=torch.float32)[:, None, None]
        if kept is not None:
            kept[:, indices] = stack
    if combine == "mean":
        combined = total / count
    else:
        combined = torch.where(used > 0, torch.exp(total / used.clamp(min=1)),
                               torch.zeros_like(total))
    if smooth:
        combined = gaussian_smooth(combined)
    return normalise_maps(combined)[0], kept


# --------------------------------------------------------------------------- layer selection


def default_layer_patterns(network: nn.Module, combine: str = "mean") -> tuple[str, ...]:
    """The default layer set of a segmentation-models-pytorch DeepLabV3+ network.

    All layers (thesis rule) for ``combine="mean"``, a few stage outputs for
    ``"product"``.

    Raises
    ------
    ValueError
        When no default is known for the architecture or encoder.
    """
    encoder = getattr(network, "encoder", None)
    key = type(encoder).__name__
    if type(network).__name__ != "DeepLabV3Plus" or key not in _DEFAULT_LAYERS:
        raise ValueError(f"no default layer set for {type(network).__name__} with encoder {key}; "
                         'pass "layer_patterns"')
    every, stages = _DEFAULT_LAYERS[key]
    return stages if combine == "product" else every


def select_layers(network: nn.Module, patterns: Sequence[str]) -> list[tuple[str, nn.Module]]:
    """Modules whose name fully matches one of ``patterns``, in ``named_modules`` order.

    Raises
    ------
    ValueError
        When nothing matches.
    """
    compiled = [re.compile(pattern) for pattern in patterns]
    layers = [(name, module) for name, module in network.named_modules()
              if name and any(regex.fullmatch(name) for regex in compiled)]
    if not layers:
        raise ValueError(f'Argument "layer_patterns" matches no module of '
                         f"{type(network).__name__}: {list(patterns)}")
    return layers


# --------------------------------------------------------------------------- model state


@contextmanager
def _prepared(network: nn.Module) -> Iterator[None]:
    """Eval mode and no in-place activations for the duration; both restored afterwards.

    In-place activations would overwrite a captured output (torchvision's
    ReLU(inplace=True) after batch norm).
    """
    modules = list(network.modules())
    training = [module.training for module in modules]
    inplace = [(module, module.inplace) for module in modules
               if isinstance(getattr(module, "inplace", None), bool)]
    try:
        for module in modules:
            module.training = False
        for module, _ in inplace:
            module.inplace = False
        yield
    finally:
        for module, flag in zip(modules, training, strict=True):
            module.training = flag
        for module, flag in inplace:
            module.inplace = flag


class _Hooks:
    """Hook handles that are all removed on exit, whatever happened."""

    def __init__(self) -> None:
        self.handles: list[Any] = []

    def add(self, handle: Any) -> None:
        self.handles.append(handle)

    def release(self) -> None:
        while self.handles:
            self.handles.pop().remove()

    def __enter__(self) -> _Hooks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class _Guard:
    """Set while a layer is re-evaluated functionally, so that hooks stay out of the way."""

    def __init__(self) -> None:
        self.depth = 0

    @contextmanager
    def active(self) -> Iterator[None]:
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1


# Layers whose outputs the network later modifies in place (e.g. ``out += identity``
# after bn3), per network.  They are captured through a clone; the set only grows,
# and cloning a layer that did not need it is merely slower.
_CLONED_LAYERS: weakref.WeakKeyDictionary[nn.Module, set[str]] = weakref.WeakKeyDictionary()


class _Capture:
    """Forward hooks that keep each selected layer's last output (cloned where needed)."""

    def __init__(self, layers: Sequence[tuple[str, nn.Module]], clone: set[str],
                 hooks: _Hooks) -> None:
        self.outputs: dict[str, torch.Tensor] = {}
        self.versions: dict[str, int] = {}
        self.clone = clone
        for name, module in layers:
            hooks.add(module.register_forward_hook(self._hook(name)))

    def _hook(self, name: str) -> Callable:
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            if not isinstance(output, torch.Tensor) or output.dim() != 4:
                got = (tuple(output.shape) if isinstance(output, torch.Tensor)
                       else type(output).__name__)
                raise ValueError(f'layer "{name}" must return an (N, C, h, w) tensor, got {got}')
            self.outputs[name] = output
            self.versions[name] = output._version
            return output.clone() if name in self.clone else None
        return hook

    def modified(self) -> set[str]:
        """Layers whose captured output was changed in place after the layer returned."""
        return {name for name, tensor in self.outputs.items()
                if tensor._version != self.versions[name]}


# --------------------------------------------------------------------------- one pass


def _as_batch(network_input: np.ndarray | torch.Tensor,
              device: torch.device) -> tuple[torch.Tensor, bool]:
    """A float32 (N, C, H, W) copy on ``device`` and whether the input was one image."""
    if isinstance(network_input, np.ndarray):
        batch = torch.tensor(network_input, dtype=torch.float32)
    elif isinstance(network_input, torch.Tensor):
        batch = network_input.detach().to(dtype=torch.float32).clone()
    else:
        raise TypeError(f'Argument "network_input" must be a numpy array or a torch tensor, '
                        f"got {type(network_input).__name__}")
    if batch.dim() not in (3, 4):
        raise ValueError(f'Argument "network_input" must be (C, H, W) or (N, C, H, W), '
                         f"got shape {tuple(batch.shape)}")
    if not torch.isfinite(batch).all():
        raise ValueError('Argument "network_input" contains NaN or infinite values')
    single = batch.dim() == 3
    return (batch[None] if single else batch).to(device), single


def _logits(output: Any) -> torch.Tensor:
    # segmentation-models-pytorch returns (masks, labels) when it has a classification head
    return output[0] if isinstance(output, (tuple, list)) else output


def _unique(tensors: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[int]]:
    """Distinct tensors (by identity) and, per input, its index among them."""
    seen: dict[int, int] = {}
    distinct: list[torch.Tensor] = []
    index = []
    for tensor in tensors:
        if id(tensor) not in seen:
            seen[id(tensor)] = len(distinct)
            distinct.append(tensor)
        index.append(seen[id(tensor)])
    return distinct, index


@dataclass
class _Pass:
    """Activations and gradients of every layer from one forward and backward."""

    activations: list[torch.Tensor]
    gradients: list[torch.Tensor]
    parameter_gradients: dict[int, torch.Tensor]
    recorder: _Recorder | None


def _forward_backward(network: nn.Module, batch: torch.Tensor,
                      layers: Sequence[tuple[str, nn.Module]],
                      parameters: Sequence[torch.Tensor] = (), record: bool = False) -> _Pass:
    """One forward with capture hooks and one ``autograd.grad`` to the activations.

    ``parameters`` (tensors of the network) also get ``dS/dtheta``, keyed by id;
    ``record`` keeps the module call tree for the order-1 replays.  A layer whose
    output turns out to be modified in place is re-captured through a clone,
    which costs one more forward the first time a network is seen.
    """
    clone = set(_CLONED_LAYERS.get(network, set()))
    for _ in range(2):
        with _Hooks() as hooks:
            capture = _Capture(layers, clone, hooks)
            # registered after the capture hooks, so it records what consumers received
            recorder = _Recorder(network, hooks) if record else None
            leaves = {id(p): p.detach().requires_grad_(True) for p in parameters}
            names = _parameter_names(network, parameters)
            # the input requires grad so that every activation does, even with frozen weights
            inputs = batch.detach().requires_grad_(True)
            if leaves:
                output = torch.func.functional_call(
                    network, {name: leaves[id(p)] for name, p in names.items()}, (inputs,))
            else:
                output = network(inputs)
            scores = target_score(_logits(output))
        modified = capture.modified() - clone
        if not modified:
            break
        clone |= modified
        _CLONED_LAYERS.setdefault(network, set()).update(modified)
    else:
        raise RuntimeError("layer outputs keep changing in place after capture: "
                           f"{sorted(modified)}")
    missing = [name for name, _ in layers if name not in capture.outputs]
    if missing:
        raise ValueError(f"layers not called in the forward pass: {missing[:5]}")
    activations = [capture.outputs[name] for name, _ in layers]
    distinct, index = _unique(activations)
    targets = distinct + list(leaves.values())
    gradients = torch.autograd.grad(scores.sum(), targets, allow_unused=True)
    gradients = [torch.zeros_like(t) if g is None else g
                 for t, g in zip(targets, gradients, strict=True)]
    layer_gradients = [gradients[i] for i in index]
    parameter_gradients = dict(zip(leaves, gradients[len(distinct):], strict=True))
    return _Pass([a.detach() for a in activations], layer_gradients, parameter_gradients, recorder)


def _parameter_names(network: nn.Module,
                     parameters: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every name under which the network holds one of ``parameters``."""
    wanted = {id(p) for p in parameters}
    return {name: p for name, p in network.named_parameters(remove_duplicate=False)
            if id(p) in wanted}


# --------------------------------------------------------------------------- order 1


@dataclass
class _Call:
    module: nn.Module
    start: int
    parent: _Call | None
    end: int = -1
    output: Any = None
    tensors: tuple[torch.Tensor, ...] = ()
    versions: tuple[int, ...] = ()

    def cacheable(self) -> bool:
        """The recorded output is tensors only and nothing modified them in place."""
        return self.end >= 0 and self.output is not None and all(
            t._version == v for t, v in zip(self.tensors, self.versions, strict=True))


def _flatten(value: Any) -> tuple[Any, list[torch.Tensor]] | None:
    """(structure with detached tensors, its tensors), or None unless tensors/lists/tuples."""
    if isinstance(value, torch.Tensor):
        detached = value.detach()
        return detached, [detached]
    if isinstance(value, (list, tuple)):
        items, tensors = [], []
        for item in value:
            flat = _flatten(item)
            if flat is None:
                return None
            items.append(flat[0])
            tensors += flat[1]
        return type(value)(items) if isinstance(value, tuple) else items, tensors
    return None


def _expand(value: Any, batch: int) -> Any:
    if isinstance(value, torch.Tensor):
        if batch == 1 or value.dim() == 0 or value.shape[0] != 1:
            return value
        return value.expand(batch, *value.shape[1:])
    if isinstance(value, tuple):
        return tuple(_expand(item, batch) for item in value)
    return [_expand(item, batch) for item in value]


class _Recorder:
    """Records every module call of one forward: order, nesting and (detached) output."""

    def __init__(self, network: nn.Module, hooks: _Hooks) -> None:
        self.calls: list[_Call] = []
        self.by_module: dict[int, list[_Call]] = {}
        self._stack: list[_Call] = []
        self._clock = 0
        for name, module in network.named_modules():
            if name:
                hooks.add(module.register_forward_pre_hook(self._enter))
                hooks.add(module.register_forward_hook(self._leave, always_call=True))

    def _enter(self, module: nn.Module, args: Any) -> None:
        self._clock += 1
        call = _Call(module, self._clock, self._stack[-1] if self._stack else None)
        self._stack.append(call)
        self.calls.append(call)
        self.by_module.setdefault(id(module), []).append(call)

    def _leave(self, module: nn.Module, args: Any, output: Any) -> None:
        call = self._stack.pop()
        self._clock += 1
        call.end = self._clock
        flat = _flatten(output)
        if flat is not None:
            call.output, tensors = flat
            call.tensors = tuple(tensors)
            call.versions = tuple(t._version for t in tensors)

    def first_start(self, modules: Sequence[nn.Module]) -> int:
        starts = [self.by_module[id(m)][0].start for m in modules if id(m) in self.by_module]
        if not starts:
            raise ValueError("a NormGrad order 1 layer was not called in the forward pass")
        return min(starts)

    def plans(self, boundary: int) -> dict[int, list[_Call | None]]:
        """Per module id, its calls that happen in a replay: the recorded call to return
        for a call that finished before ``boundary``, None for a call that must run."""
        served: set[int] = set()
        covered: set[int] = set()
        plans: dict[int, list[_Call | None]] = {}
        for call in self.calls:  # in start order, so parents come first
            parent = call.parent
            if parent is not None and (id(parent) in served or id(parent) in covered):
                covered.add(id(call))
                continue
            serve = call.end < boundary and call.cacheable()
            if serve:
                served.add(id(call))
            plans.setdefault(id(call.module), []).append(call if serve else None)
        return {key: plan for key, plan in plans.items() if any(c is not None for c in plan)}


@contextmanager
def _replaying(network: nn.Module, recorder: _Recorder, boundary: int, batch: int,
               guard: _Guard) -> Iterator[None]:
    """Modules that finished before ``boundary`` return their recorded outputs, not running."""
    modules = {id(m): m for m in network.modules()}
    plans = recorder.plans(boundary)
    saved: list[tuple[nn.Module, Any]] = []
    positions: dict[int, int] = {}

    def make_forward(module: nn.Module, original: Callable, plan: list[_Call | None]) -> Callable:
        key = id(module)

        def forward(*args: Any, **kwargs: Any) -> Any:
            if guard.depth:  # a functional re-evaluation of a stepped layer: not in the plan
                return original(*args, **kwargs)
            position = positions.get(key, 0)
            if position >= len(plan):
                raise RuntimeError(f"{type(module).__name__} was called more often than in the "
                                   "recorded forward; the NormGrad order 1 replay needs the same "
                                   "control flow")
            positions[key] = position + 1
            call = plan[position]
            return original(*args, **kwargs) if call is None else _expand(call.output, batch)
        return forward

    try:
        for key, plan in plans.items():
            module = modules[key]
            saved.append((module, module.__dict__.get("forward")))
            module.forward = make_forward(module, module.forward, plan)
        yield
        served = [call for plan in plans.values() for call in plan if call is not None]
        if not all(call.cacheable() for call in served):
            raise RuntimeError("a recorded module output was modified in place during a "
                               "NormGrad order 1 replay")
        unfinished = [type(modules[k]).__name__ for k, plan in plans.items()
                      if positions.get(k, 0) != len(plan)]
        if unfinished:
            raise RuntimeError("the NormGrad order 1 replay skipped recorded calls of "
                               f"{unfinished[:3]}")
    finally:
        for module, previous in saved:
            if previous is None:
                del module.forward
            else:
                module.forward = previous


def _slice(value: Any, index: int, batch: int) -> Any:
    if isinstance(value, torch.Tensor):
        return value[index:index + 1] if value.dim() and value.shape[0] == batch else value
    if isinstance(value, (list, tuple)):
        return type(value)(_slice(item, index, batch) for item in value)
    if isinstance(value, dict):
        return {key: _slice(item, index, batch) for key, item in value.items()}
    return value


def _normgrad1_maps(network: nn.Module, image: torch.Tensor,
                    layers: Sequence[tuple[str, nn.Module]], epsilon: float,
                    group_size: int) -> list[torch.Tensor]:
    """Order-1 maps (1, h, w) of every layer for one (1, C, H, W) image."""
    stepped_layers = [i for i, (_, module) in enumerate(layers)
                      if any(True for _ in module.parameters())]
    parameters = list({id(p): p for i in stepped_layers
                       for p in layers[i][1].parameters()}.values())
    first = _forward_backward(network, image, layers, parameters, record=True)
    # a layer without parameters keeps its order-0 map: stepping it changes nothing
    maps: list[torch.Tensor | None] = [
        None if i in stepped_layers else normgrad_map(a, g)
        for i, (a, g) in enumerate(zip(first.activations, first.gradients, strict=True))]
    recorder = first.recorder
    assert recorder is not None
    owners: dict[int, list[nn.Module]] = {}
    for module in network.modules():
        for p in module.parameters(recurse=False):
            owners.setdefault(id(p), []).append(module)
    boundaries = {}
    for i in stepped_layers:
        # the replay starts where the first module that uses a stepped tensor starts
        users = [layers[i][1]] + [m for p in layers[i][1].parameters() for m in owners[id(p)]]
        boundaries[i] = recorder.first_start(users)
    detached = {name: p.detach() for name, p in network.named_parameters(remove_duplicate=False)}
    order = sorted(stepped_layers, key=boundaries.__getitem__)
    for begin in range(0, len(order), group_size):
        group = order[begin:begin + group_size]
        steps = {i: {name: p.detach() - epsilon * first.parameter_gradients[id(p)]
                     for name, p in layers[i][1].named_parameters()} for i in group}
        boundary = min(boundaries[i] for i in group)
        replayed = _replay(network, image, recorder, layers, group, steps, boundary, detached)
        for i, (activation, gradient) in replayed.items():
            maps[i] = normgrad_map(activation, gradient)
    unset = [layers[i][0] for i, layer_map in enumerate(maps) if layer_map is None]
    if unset:
        raise RuntimeError(f"NormGrad order 1 produced no map for {unset[:3]}")
    return maps


def _replay(network: nn.Module, image: torch.Tensor, recorder: _Recorder,
            layers: Sequence[tuple[str, nn.Module]], group: list[int],
            steps: dict[int, dict[str, torch.Tensor]], boundary: int,
            detached: dict[str, torch.Tensor]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Replay the suffix from ``boundary`` with one batch element per layer of ``group``.

    Element k differs from the recorded forward only in that layer ``group[k]``
    runs with its stepped parameters; its output is where the gradient stops.
    """
    batch = len(group)
    guard = _Guard()
    captured: dict[int, torch.Tensor] = {}

    def make_hook(element: int, layer: int) -> Callable:
        module = layers[layer][1]

        def hook(mod: nn.Module, args: Any, kwargs: Any, output: torch.Tensor) -> Any:
            if guard.depth:
                return None
            with guard.active():
                stepped = torch.func.functional_call(module, steps[layer],
                                                     _slice(args, element, batch),
                                                     _slice(kwargs, element, batch))
            replaced = torch.cat([output[:element], stepped, output[element + 1:]])
            if not replaced.requires_grad:
                replaced.requires_grad_(True)
            captured[layer] = replaced
            # a clone goes on, so that in-place operations downstream leave ``replaced`` intact
            return replaced.clone()
        return hook

    with ExitStack() as stack:
        hooks = stack.enter_context(_Hooks())
        for element, layer in enumerate(group):
            hook = make_hook(element, layer)
            hooks.add(layers[layer][1].register_forward_hook(hook, with_kwargs=True))
        stack.enter_context(_replaying(network, recorder, boundary, batch, guard))
        inputs = image.detach().expand(batch, *image.shape[1:])
        output = torch.func.functional_call(network, detached, (inputs,))
        scores = target_score(_logits(output))
    missing = [layers[i][0] for i in group if i not in captured]
    if missing:
        raise RuntimeError(f"NormGrad order 1 replay did not reach layers {missing}")
    targets = [captured[i] for i in group]
    gradients = torch.autograd.grad(scores.sum(), targets, allow_unused=True)
    return {i: (captured[i][k:k + 1].detach(),
                torch.zeros_like(captured[i][k:k + 1]) if g is None else g[k:k + 1])
            for k, (i, g) in enumerate(zip(group, gradients, strict=True))}


# --------------------------------------------------------------------------- public API


def _networks(model: nn.Module | SegmentationModel) -> list[nn.Module]:
    networks = getattr(model, "networks", None)
    if networks is not None:
        if not networks:
            raise ValueError('Argument "network" is an ensemble without networks')
        return list(networks)
    if not isinstance(model, nn.Module):
        raise TypeError(f'Argument "network" must be a torch.nn.Module or a SegmentationModel, '
                        f"got {type(model).__name__}")
    return [model]


def _device(network: nn.Module) -> torch.device:
    parameter = next(network.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _add_time(timings: dict[str, float], stage: str, started: float) -> None:
    timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - started


def _raw_maps(network: nn.Module, batch: torch.Tensor, layers: Sequence[tuple[str, nn.Module]],
              methods: Sequence[str], config: SaliencyConfig,
              timings: dict[str, float]) -> dict[str, list[torch.Tensor]]:
    """Raw (N, h, w) layer maps for each method, on a prepared network."""
    raw: dict[str, list[torch.Tensor]] = {}
    one_pass = [m for m in methods if m in _MAP_FUNCTIONS]
    if one_pass:
        started = time.perf_counter()
        result = _forward_backward(network, batch, layers)
        _add_time(timings, "forward_backward", started)
        started = time.perf_counter()
        for method in one_pass:
            function = _MAP_FUNCTIONS[method]
            maps: dict[int, torch.Tensor] = {}
            raw[method] = []
            for activation, gradient in zip(result.activations, result.gradients, strict=True):
                key = id(activation)  # a tensor captured by several layers is mapped once
                if key not in maps:
                    maps[key] = function(activation, gradient)
                raw[method].append(maps[key])
        _add_time(timings, "layer_maps", started)
    if "normgrad1" in methods:
        started = time.perf_counter()
        per_image = [_normgrad1_maps(network, batch[n:n + 1], layers, config.epsilon,
                                     config.normgrad1_batch) for n in range(batch.shape[0])]
        raw["normgrad1"] = [torch.cat(maps) for maps in zip(*per_image, strict=True)]
        _add_time(timings, "normgrad1", started)
    return raw


def compute_saliencies(network: nn.Module | SegmentationModel,
                       network_input: np.ndarray | torch.Tensor,
                       config: SaliencyConfig = SaliencyConfig(),
                       methods: Sequence[str] | None = None) -> dict[str, SaliencyResult]:
    """Several methods from shared passes (Grad-CAM and order 0 from the same one).

    ``methods`` defaults to ``(config.method,)``; everything else comes from
    ``config``.  See ``compute_saliency``.
    """
    methods = tuple(methods) if methods is not None else (config.method,)
    for method in methods:
        if method not in METHODS:
            raise ValueError(f'Argument "methods" must hold values of {METHODS}, got {method!r}')
    started = time.perf_counter()
    networks = _networks(network)
    patterns = config.layer_patterns or default_layer_patterns(networks[0], config.combine)
    combined: dict[str, list[torch.Tensor]] = {m: [] for m in methods}
    kept: dict[str, list[torch.Tensor]] = {m: [] for m in methods}
    raw_kept: dict[str, dict[str, np.ndarray]] = {}
    timings: dict[str, float] = {}
    names: list[str] = []
    single = True
    with torch.inference_mode(False), torch.enable_grad():
        for net in networks:
            layers = select_layers(net, patterns)
            names = [name for name, _ in layers]
            batch, single = _as_batch(network_input, _device(net))
            with _prepared(net):
                raw = _raw_maps(net, batch, layers, methods, config, timings)
            begun = time.perf_counter()
            for method in methods:
                total, layer_maps = combine_layer_maps(raw[method], tuple(batch.shape[-2:]),
                                                       config.combine, config.smooth,
                                                       config.keep_layer_maps)
                combined[method].append(total)
                if layer_maps is not None:
                    kept[method].append(layer_maps)
                    if len(networks) == 1:
                        raw_kept[method] = {name: _numpy(m, single)
                                            for name, m in zip(names, raw[method], strict=True)}
            _add_time(timings, "combine", begun)
    timings["total"] = time.perf_counter() - started
    results = {}
    for method in methods:
        total = torch.stack(combined[method]).mean(dim=0)
        if len(networks) > 1:  # the mean of [0, 1] maps need not span [0, 1]
            total = normalise_maps(total)[0]
        layer_maps = torch.stack(kept[method]).mean(dim=0) if kept[method] else None
        results[method] = SaliencyResult(
            combined=_numpy(total, single), method=method, layer_names=names,
            layer_maps=None if layer_maps is None else _numpy(layer_maps, single),
            raw_layer_maps=raw_kept.get(method),
            timings={key: round(value, 4) for key, value in timings.items()})
    return results


def compute_saliency(network: nn.Module | SegmentationModel,
                     network_input: np.ndarray | torch.Tensor,
                     config: SaliencyConfig = SaliencyConfig()) -> SaliencyResult:
    """Combined saliency map of one (C, H, W) image or of a (N, C, H, W) batch.

    Parameters
    ----------
    network : torch.nn.Module or SegmentationModel
        One network, or an ensemble (``.networks``) whose combined maps are
        averaged and normalised again.
    network_input : numpy.ndarray or torch.Tensor
        What the network takes, e.g. the preprocess node's (3, 256, 256) float32.
    config : SaliencyConfig
        Method, layers, combination, smoothing.

    Returns
    -------
    SaliencyResult
        ``combined`` is (H, W) for one image and (N, H, W) for a batch.

    Raises
    ------
    TypeError
        For an input that is neither an array nor a tensor, or a model that is
        neither a module nor an ensemble.
    ValueError
        For a bad input shape or non-finite values, patterns that match no
        module, a layer that does not return an (N, C, h, w) tensor or is not
        called, or no default layer set for the architecture.
    RuntimeError
        When the order-1 replay cannot follow the recorded forward.
    """
    return compute_saliencies(network, network_input, config)[config.method]


def _numpy(tensor: torch.Tensor, single: bool) -> np.ndarray:
    array = tensor.detach().float().cpu().numpy()
    return array[0] if single else array


# --------------------------------------------------------------------------- graph node


class SaliencyOperator(CaseOperator):
    """Sets ``case.saliency`` (a ``SaliencyResult``) from ``case.network_input``."""

    stage = "saliency"
    chest_only = True

    def __init__(self, fragment: Fragment, *args, model: nn.Module | SegmentationModel,
                 config: SaliencyConfig = SaliencyConfig(), **kwargs) -> None:
        self.model = model
        self.config = config
        super().__init__(fragment, *args, **kwargs)

    def step(self, case: Case) -> None:
        case.saliency = compute_saliency(self.model, case.network_input, self.config)
