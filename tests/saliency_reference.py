"""Reference saliency, written the straightforward way: the judge of ``xiqa.operators.saliency``.

One fresh forward and one full ``backward()`` per layer, with a hook on that
layer only; NormGrad order 1 deep-copies the network for every layer and steps
the copy's parameters in place.  Nothing here is shared with the engine: the
formulas, upsampling, normalisation, combination and smoothing (OpenCV) are
written again so that a mistake in one is not hidden by the other.

Conventions that both follow (operators/saliency.py docstring): eval mode,
in-place activations off, a layer's map comes from its last call's output as
it was returned (the hook hands the network a clone, so a later ``+=`` cannot
change it), a constant map normalises to 0, ``product`` is the geometric mean
of the non-constant maps.
"""

from __future__ import annotations

import copy

import cv2
import numpy as np
import torch
import torch.nn.functional as F

CONSTANT_TOLERANCE = 1e-6


def prepared_copy(network: torch.nn.Module) -> torch.nn.Module:
    """A deep copy in eval mode with every ``inplace`` flag off (the caller's stays untouched)."""
    clone = copy.deepcopy(network).eval()
    for module in clone.modules():
        if isinstance(getattr(module, "inplace", None), bool):
            module.inplace = False
    for parameter in clone.parameters():
        parameter.requires_grad_(True)
    return clone


def score(network: torch.nn.Module, image: torch.Tensor) -> torch.Tensor:
    output = network(image)
    if isinstance(output, (tuple, list)):
        output = output[0]
    return torch.sigmoid(output).mean()


def activation_and_gradient(network: torch.nn.Module, image: torch.Tensor,
                            layer: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's output (last call) and dS/d(output): one forward, one full backward."""
    module = network.get_submodule(layer)
    kept = {}

    def hook(mod, args, output):
        output.retain_grad()
        kept["output"] = output
        return output.clone()

    handle = module.register_forward_hook(hook)
    try:
        network.zero_grad(set_to_none=True)
        score(network, image).backward()
    finally:
        handle.remove()
    output = kept["output"]
    gradient = output.grad if output.grad is not None else torch.zeros_like(output)
    return output.detach()[0], gradient[0]


def gradcam(activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    weights = gradient.mean(dim=(1, 2))
    cam = torch.zeros(activation.shape[1:], dtype=activation.dtype)
    for channel in range(activation.shape[0]):
        cam += weights[channel] * activation[channel]
    return torch.relu(cam)


def normgrad(activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    return activation.norm(dim=0) * gradient.norm(dim=0)


def layer_maps(network: torch.nn.Module, image: torch.Tensor, layers: list[str], method: str,
               epsilon: float = 5e-4) -> dict[str, torch.Tensor]:
    """Raw (h, w) map per layer for one (1, C, H, W) image."""
    base = prepared_copy(network)
    image = image.detach().clone()
    maps = {}
    if method in ("gradcam", "normgrad0"):
        formula = gradcam if method == "gradcam" else normgrad
        for layer in layers:
            maps[layer] = formula(*activation_and_gradient(base, image, layer))
        return maps
    if method != "normgrad1":
        raise ValueError(method)
    base.zero_grad(set_to_none=True)
    score(base, image).backward()
    gradients = {name: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
                 for name, p in base.named_parameters()}
    for layer in layers:
        stepped = copy.deepcopy(base)
        with torch.no_grad():
            for name, parameter in stepped.get_submodule(layer).named_parameters():
                parameter -= epsilon * gradients[f"{layer}.{name}"]
        maps[layer] = normgrad(*activation_and_gradient(stepped, image, layer))
    return maps


def thesis_normgrad1_maps(network: torch.nn.Module, image: torch.Tensor, layers: list[str],
                          epsilon: float = 5e-4) -> dict[str, torch.Tensor]:
    """Order 1 the way the thesis costs it (its table 4.10): per layer two model copies and two
    forward/backward passes -- dS/dtheta on the first copy, order 0 on the stepped second one.
    Same maps as ``layer_maps(..., "normgrad1")``; kept for the benchmark's comparison."""
    base = prepared_copy(network)
    image = image.detach().clone()
    maps = {}
    for layer in layers:
        first = copy.deepcopy(base)
        first.zero_grad(set_to_none=True)
        score(first, image).backward()
        stepped = copy.deepcopy(first)
        with torch.no_grad():
            for name, parameter in stepped.get_submodule(layer).named_parameters():
                gradient = first.get_parameter(f"{layer}.{name}").grad
                if gradient is not None:
                    parameter -= epsilon * gradient
        maps[layer] = normgrad(*activation_and_gradient(stepped, image, layer))
    return maps


def upsample_normalise(raw: torch.Tensor, size: tuple[int, int]) -> tuple[np.ndarray, bool]:
    """Bilinear (align_corners=False) to ``size``, then min-max; (map, was constant)."""
    up = F.interpolate(raw[None, None].float(), size=size, mode="bilinear",
                       align_corners=False)[0, 0]
    up = up.double().numpy()
    low, high = up.min(), up.max()
    if high - low <= CONSTANT_TOLERANCE * max(abs(high), abs(low)):
        return np.zeros_like(up), True
    return (up - low) / (high - low), False


def minmax(values: np.ndarray) -> np.ndarray:
    low, high = values.min(), values.max()
    if high - low <= CONSTANT_TOLERANCE * max(abs(high), abs(low)):
        return np.zeros_like(values)
    return (values - low) / (high - low)


def combine(raw_maps: dict[str, torch.Tensor], size: tuple[int, int], how: str = "mean",
            smooth: bool = False) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    normalised = {layer: upsample_normalise(raw, size) for layer, raw in raw_maps.items()}
    if how == "mean":
        combined = np.mean([m for m, _ in normalised.values()], axis=0)
    else:
        kept = [m for m, constant in normalised.values() if not constant]
        combined = np.prod(kept, axis=0) ** (1 / len(kept)) if kept else np.zeros(size)
    if smooth:
        combined = cv2.GaussianBlur(combined, (11, 11), 1.0, borderType=cv2.BORDER_REFLECT_101)
    return minmax(combined), {layer: m for layer, (m, _) in normalised.items()}


def reference_saliency(network: torch.nn.Module, image: torch.Tensor, layers: list[str],
                       method: str, how: str = "mean", smooth: bool = False,
                       epsilon: float = 5e-4) -> tuple[np.ndarray, dict[str, np.ndarray],
                                                       dict[str, torch.Tensor]]:
    """(combined map, normalised layer maps, raw layer maps) of one (C, H, W) image."""
    batch = torch.as_tensor(image, dtype=torch.float32)[None]
    raw = layer_maps(network, batch, layers, method, epsilon)
    combined, normalised = combine(raw, tuple(batch.shape[-2:]), how, smooth)
    return combined, normalised, raw
