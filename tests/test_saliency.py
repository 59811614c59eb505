"""The saliency engine against the per-layer reference (saliency_reference.py) and pytorch-grad-cam.

Small networks and inputs keep this fast: DeepLabV3+/ResNet18 (and
MobileNetV2) at 64 x 64 with a layer subset that still covers every kind of
layer (stem, maxpool, residual block with its re-used ReLU and in-place
``+=``, down-sampling branch, separable ASPP convolutions, the 1 x 1 ASPP
pooling branch whose maps are constant, decoder and head).  One thread:
oversubscribed threads on a shared machine are much slower, and a fixed thread
count keeps the float rounding, hence the comparisons, reproducible.
"""

from __future__ import annotations

import gc
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from xiqa.operators.saliency import (
    RESNET_LAYERS,
    SaliencyConfig,
    compute_saliencies,
    compute_saliency,
    default_layer_patterns,
    select_layers,
)
from xiqa.operators.segmentation import (
    DEFAULT_BUNDLE,
    NetworkSpec,
    SegmentationModel,
    build_network,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import saliency_reference as reference  # noqa: E402

# on min-max normalised maps in [0, 1]: float32 rounding only.  Other CPUs stayed within 1e-5; a
# Sapphire Rapids one (AVX-512 kernels) differs by 1.4e-5 on one MobileNetV2 Grad-CAM layer whose
# raw range is tiny, so normalising it magnifies the rounding
TOLERANCE = 2e-5
SIZE = 64
RESNET18_SUBSET = [
    "encoder.conv1", "encoder.bn1", "encoder.maxpool", "encoder.layer1.0", "encoder.layer1.0.relu",
    "encoder.layer1.1.bn2", "encoder.layer2.0.conv1", "encoder.layer2.0.downsample",
    "encoder.layer2.0.downsample.1", "encoder.layer3.1.conv2", "encoder.layer4.0.bn2",
    "decoder.aspp.0.convs.1.0.0", "decoder.aspp.0.convs.4.2", "decoder.aspp.0.project.0",
    "decoder.block1.1", "decoder.block2.0.1", "segmentation_head.0",
    "segmentation_head.2.activation",
]
MOBILENET_SUBSET = [
    "encoder.features.0.0", "encoder.features.1.conv.0.2", "encoder.features.2",
    "encoder.features.3.conv.1.0", "encoder.features.3.conv.3", "encoder.features.10",
    "encoder.features.16.conv.2", "encoder.features.18.1", "decoder.aspp.0.convs.2.0.0",
    "decoder.block2.2", "segmentation_head.0",
]


def patterns(names: list[str]) -> tuple[str, ...]:
    return tuple(re.escape(name) for name in names)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_network(encoder: str = "resnet18", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    import segmentation_models_pytorch as smp

    return smp.DeepLabV3Plus(encoder, encoder_weights=None, classes=1, decoder_channels=32).eval()


def quickly_trained(network: nn.Module, steps: int = 8, seed: int = 1) -> nn.Module:
    """A few Adam steps on bright-rectangle images, so the weights are no longer at init."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(4, 3, SIZE, SIZE, generator=generator) * 0.3
    masks = torch.zeros(4, 1, SIZE, SIZE)
    for index in range(4):
        top, left = (int(v) for v in torch.randint(0, SIZE - 16, (2,), generator=generator))
        images[index, :, top:top + 12, left:left + 16] += 0.6
        masks[index, :, top:top + 12, left:left + 16] = 1
    optimiser = torch.optim.Adam(network.parameters(), lr=1e-3)
    network.train()
    for _ in range(steps):
        optimiser.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(network(images), masks)
        loss.backward()
        optimiser.step()
    return network.eval()


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    return small_network()


@pytest.fixture(scope="module")
def trained_resnet18() -> nn.Module:
    return quickly_trained(small_network(seed=2))


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    generator = torch.Generator().manual_seed(3)
    pixels = torch.rand(3, SIZE, SIZE, generator=generator) * 0.3
    pixels[:, 20:34, 30:50] += 0.6
    return pixels.numpy()


def assert_matches_reference(network, image, names, method, how="mean", smooth=False,
                             epsilon=5e-4, batch=1):
    config = SaliencyConfig(method=method, layer_patterns=patterns(names), combine=how,
                            smooth=smooth, epsilon=epsilon, keep_layer_maps=True,
                            normgrad1_batch=batch)
    ours = compute_saliency(network, image, config)
    combined, normalised, _ = reference.reference_saliency(network, torch.from_numpy(image), names,
                                                           method, how, smooth, epsilon)
    assert ours.layer_names == names
    for index, name in enumerate(names):
        difference = np.abs(ours.layer_maps[index] - normalised[name]).max()
        assert difference <= TOLERANCE, f"{method} layer {name}: {difference:.2e}"
    assert np.abs(ours.combined - combined).max() <= TOLERANCE
    return ours


# --------------------------------------------------------------------------- equality


@pytest.mark.parametrize("method", ["gradcam", "normgrad0", "normgrad1"])
def test_equal_to_reference_random_weights(resnet18, image, method):
    assert_matches_reference(resnet18, image, RESNET18_SUBSET, method)


@pytest.mark.parametrize("method", ["gradcam", "normgrad0", "normgrad1"])
def test_equal_to_reference_trained_weights(trained_resnet18, image, method):
    assert_matches_reference(trained_resnet18, image, RESNET18_SUBSET, method)


def test_normgrad1_step_changes_the_maps(trained_resnet18, image):
    """The comparison above would be empty if order 1 equalled order 0 within the tolerance.

    Checked per layer, as the comparison is: how far the combined map moves depends on the CPU
    the few training steps ran on (over 1e-3 where this was written, 1.9e-4 on an AMD EPYC),
    while some layer's map moves by more than 1e-3 on both (2.1e-3 on the EPYC).
    """
    config = SaliencyConfig(layer_patterns=patterns(RESNET18_SUBSET), keep_layer_maps=True)
    both = compute_saliencies(trained_resnet18, image, config, methods=("normgrad0", "normgrad1"))
    moved = [np.abs(zero - one).max()
             for zero, one in zip(both["normgrad0"].layer_maps, both["normgrad1"].layer_maps, strict=True)]
    assert max(moved) > 1e-3
    assert np.abs(both["normgrad0"].combined - both["normgrad1"].combined).max() > 5 * TOLERANCE


def test_normgrad1_large_step_equal_to_reference(trained_resnet18, image):
    assert_matches_reference(trained_resnet18, image, RESNET18_SUBSET[::2], "normgrad1",
                             epsilon=0.05)


def test_normgrad1_batched_replays_equal_to_reference(trained_resnet18, image):
    """Several layers per replay batch: only float rounding differs from one layer per replay."""
    assert_matches_reference(trained_resnet18, image, RESNET18_SUBSET, "normgrad1", batch=4)


@pytest.mark.parametrize(("how", "smooth"), [("product", False), ("mean", True), ("product", True)])
def test_combinations_equal_to_reference(trained_resnet18, image, how, smooth):
    assert_matches_reference(trained_resnet18, image, RESNET18_SUBSET, "gradcam", how, smooth)


@pytest.mark.parametrize("method", ["gradcam", "normgrad1"])
def test_mobilenet_v2_equal_to_reference(image, method):
    """Depthwise convolutions, in-place ReLU6 and inverted residual blocks."""
    network = quickly_trained(small_network("mobilenet_v2", seed=4), steps=3)
    assert_matches_reference(network, image, MOBILENET_SUBSET, method)


@pytest.mark.skipif(not (DEFAULT_BUNDLE / "models" / "model.pt").is_file(),
                    reason="the shipped bundle is not trained yet")
def test_shipped_bundle_equal_to_reference(image):
    from xiqa.operators.segmentation import load_segmentation_model

    network = load_segmentation_model(DEFAULT_BUNDLE, device="cpu").networks[0]
    names = [name for name, _ in select_layers(network, default_layer_patterns(network))][::25]
    for method in ("gradcam", "normgrad0", "normgrad1"):
        assert_matches_reference(network, image, names, method)


@pytest.mark.slow
def test_resnet50_full_default_set_equal_to_reference():
    torch.manual_seed(0)
    network = build_network(NetworkSpec(encoder="resnet50")).eval()
    pixels = torch.rand(3, 128, 128, generator=torch.Generator().manual_seed(0)).numpy()
    names = [name for name, _ in select_layers(network, RESNET_LAYERS)]
    for method in ("gradcam", "normgrad0"):
        assert_matches_reference(network, pixels, names, method)
    assert_matches_reference(network, pixels, names[::9], "normgrad1")


# --------------------------------------------------------------------------- pytorch-grad-cam


class MeanSigmoid:
    """pytorch-grad-cam target: S = mean(sigmoid(logits)), times a constant.

    pytorch-grad-cam divides by (max + 1e-7); S's gradients are ~1e-5, so the
    constant (which scales a Grad-CAM map without changing its shape) keeps
    that 1e-7 negligible.
    """

    SCALE = 1e6

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(output).mean() * self.SCALE


def test_gradcam_equals_pytorch_grad_cam_single_layer(trained_resnet18, image):
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import scale_cam_image

    network = trained_resnet18
    for module in network.modules():  # pytorch-grad-cam needs the captured outputs intact
        if isinstance(getattr(module, "inplace", None), bool):
            module.inplace = False
    batch = torch.from_numpy(image)[None]
    for name in ("segmentation_head.1", "decoder.block1.2", "encoder.layer3.1.conv2"):
        layer = network.get_submodule(name)
        with GradCAM(model=network, target_layers=[layer]) as cam:
            theirs = cam(input_tensor=batch, targets=[MeanSigmoid()])[0]
        ours = compute_saliency(network, image, SaliencyConfig(layer_patterns=patterns([name]),
                                                               keep_layer_maps=True))
        raw = ours.raw_layer_maps[name]
        assert raw.max() > 0, name
        if raw.shape == image.shape[1:]:  # same grid: the maps themselves must agree
            assert np.abs(ours.combined - theirs).max() <= TOLERANCE, name
        # pytorch-grad-cam normalises, resizes with OpenCV and normalises again; do that to our
        # raw map, scaled like their target (Grad-CAM is positively homogeneous in the score)
        scaled = scale_cam_image(scale_cam_image(raw[None] * MeanSigmoid.SCALE, (SIZE, SIZE)))[0]
        assert np.abs(scaled - theirs).max() <= TOLERANCE, name


# --------------------------------------------------------------------------- API behaviour


def test_result_shapes_and_range(resnet18, image):
    config = SaliencyConfig(layer_patterns=patterns(RESNET18_SUBSET), keep_layer_maps=True)
    result = compute_saliency(resnet18, image, config)
    assert result.combined.shape == (SIZE, SIZE) and result.combined.dtype == np.float32
    assert result.combined.min() == 0.0 and result.combined.max() == 1.0
    assert result.layer_maps.shape == (len(RESNET18_SUBSET), SIZE, SIZE)
    assert result.raw_layer_maps["encoder.layer4.0.bn2"].shape == (4, 4)
    assert result.method == "gradcam"
    assert {"forward_backward", "total"} <= set(result.timings)
    # the 1x1 ASPP pooling branch gives a constant map, which normalises to 0
    assert not result.layer_maps[RESNET18_SUBSET.index("decoder.aspp.0.convs.4.2")].any()


@pytest.mark.parametrize("method", ["gradcam", "normgrad1"])
def test_batch_equals_single_images(resnet18, image, method):
    second = np.ascontiguousarray(image[:, ::-1])
    config = SaliencyConfig(method=method, layer_patterns=patterns(RESNET18_SUBSET[::3]))
    batch = compute_saliency(resnet18, np.stack([image, second]), config)
    assert batch.combined.shape == (2, SIZE, SIZE)
    for index, single in enumerate((image, second)):
        alone = compute_saliency(resnet18, torch.from_numpy(single), config)
        assert np.abs(batch.combined[index] - alone.combined).max() <= TOLERANCE


def test_ensemble_averages_the_networks(resnet18, trained_resnet18, image):
    config = SaliencyConfig(layer_patterns=patterns(RESNET18_SUBSET[::2]))
    model = SegmentationModel([resnet18, trained_resnet18], NetworkSpec(encoder="resnet18"), "test",
                              torch.device("cpu"))
    together = compute_saliency(model, image, config).combined
    mean = (compute_saliency(resnet18, image, config).combined
            + compute_saliency(trained_resnet18, image, config).combined) / 2
    expected = (mean - mean.min()) / (mean.max() - mean.min())
    assert np.abs(together - expected).max() <= TOLERANCE


def test_default_layer_set_of_resnet50_is_the_baseline_set():
    network = build_network(NetworkSpec(encoder="resnet50"))
    layers = select_layers(network, default_layer_patterns(network))
    kinds: dict[str, int] = {}
    for name, module in layers:
        kind = "downsample" if name.endswith("downsample") else type(module).__name__
        kinds[kind] = kinds.get(kind, 0) + 1
    assert len(layers) == 182
    assert kinds == {"Conv2d": 68, "BatchNorm2d": 62, "ReLU": 26, "Bottleneck": 16, "downsample": 4,
                     "Upsample": 2, "MaxPool2d": 1, "AdaptiveAvgPool2d": 1, "Dropout": 1,
                     "Identity": 1}


@pytest.mark.parametrize("encoder", ["resnet18", "mobilenet_v2"])
def test_default_patterns_follow_the_layer_rule(encoder):
    """Every leaf of encoder, decoder and head, plus residual blocks and down-sampling branches."""
    network = small_network(encoder)
    blocks = ("BasicBlock", "Bottleneck", "InvertedResidual")
    expected = [name for name, module in network.named_modules()
                if name and (not list(module.children()) or type(module).__name__ in blocks
                             or name.endswith(".downsample"))]
    chosen = [name for name, _ in select_layers(network, default_layer_patterns(network))]
    assert chosen == expected
    stages = select_layers(network, default_layer_patterns(network, "product"))
    assert 5 <= len(stages) <= 10


def test_default_set_runs_on_mobilenet_v2(image):
    network = small_network("mobilenet_v2")
    result = compute_saliency(network, image, SaliencyConfig(method="normgrad0"))
    assert len(result.layer_names) > 150
    assert result.combined.max() == 1.0


def test_unknown_architecture_needs_patterns(image):
    with pytest.raises(ValueError, match='pass "layer_patterns"'):
        compute_saliency(TinyNet(), image)
    with pytest.raises(ValueError, match="matches no module"):
        compute_saliency(TinyNet(), image, SaliencyConfig(layer_patterns=("nothing",)))


@pytest.mark.parametrize(("arguments", "message"), [
    ({"method": "scorecam"}, 'Argument "method"'),
    ({"combine": "max"}, 'Argument "combine"'),
    ({"epsilon": 0.0}, 'Argument "epsilon"'),
    ({"epsilon": float("nan")}, 'Argument "epsilon"'),
    ({"layer_patterns": "encoder"}, 'Argument "layer_patterns"'),
    ({"layer_patterns": ("(",)}, "invalid expression"),
    ({"normgrad1_batch": 0}, 'Argument "normgrad1_batch"'),
])
def test_config_is_validated(arguments, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        SaliencyConfig(**arguments)


def test_bad_inputs_are_rejected(image):
    config = SaliencyConfig(layer_patterns=TINY_LAYERS)
    with pytest.raises(ValueError, match="must be .C, H, W."):
        compute_saliency(TinyNet(), image[0], config)
    with pytest.raises(ValueError, match="NaN"):
        compute_saliency(TinyNet(), np.full_like(image, np.nan), config)
    with pytest.raises(TypeError, match='Argument "network_input"'):
        compute_saliency(TinyNet(), image.tolist(), config)
    with pytest.raises(TypeError, match='Argument "network"'):
        compute_saliency(object(), image, config)


# --------------------------------------------------------------------------- model state


class Counted(nn.Conv2d):
    """A convolution that counts how often its forward really runs."""

    runs = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        type(self).runs += 1
        return super().forward(x)


class TinyNet(nn.Module):
    """Stem, a block with an in-place residual add, and a head; in-place ReLUs."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.stem = nn.Sequential(Counted(3, 8, 3, padding=1), nn.BatchNorm2d(8),
                                  nn.ReLU(inplace=True))
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8),
                                   nn.ReLU(inplace=True))
        self.head = nn.Conv2d(8, 1, 1)
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        z = self.block[1](self.block[0](y))
        z += y
        return self.head(self.block[2](z))


TINY_LAYERS = (r"stem\.\d", r"block\.\d", "stem", "head")


def state_of(network: nn.Module) -> dict:
    return {"training": [m.training for m in network.modules()],
            "inplace": [m.inplace for m in network.modules() if hasattr(m, "inplace")],
            "hooks": sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                         for m in network.modules()),
            "patched": [m for m in network.modules() if "forward" in m.__dict__],
            "parameters": [p.detach().clone() for p in network.parameters()],
            "requires_grad": [p.requires_grad for p in network.parameters()]}


def assert_same_state(before: dict, after: dict) -> None:
    for key in ("training", "inplace", "hooks", "patched", "requires_grad"):
        assert before[key] == after[key], key
    for old, new in zip(before["parameters"], after["parameters"], strict=True):
        assert torch.equal(old, new)


@pytest.mark.parametrize("method", ["gradcam", "normgrad0", "normgrad1"])
def test_model_state_is_restored(image, method):
    network = TinyNet().train()
    before = state_of(network)
    pixels = image.copy()
    compute_saliency(network, pixels, SaliencyConfig(method=method, layer_patterns=TINY_LAYERS))
    assert_same_state(before, state_of(network))
    assert np.array_equal(pixels, image)
    assert network.training


def test_thesis_style_reference_gives_the_same_order1_maps(image):
    """The benchmark times the thesis' two-copy order 1; it must compute the same maps."""
    batch = torch.from_numpy(image)[None]
    layers = ["stem.0", "block.1", "head"]
    thesis = reference.thesis_normgrad1_maps(TinyNet(), batch, layers)
    simple = reference.layer_maps(TinyNet(), batch, layers, "normgrad1")
    for layer in layers:
        assert torch.equal(thesis[layer], simple[layer])


def test_in_place_add_does_not_leak_into_the_layer_map(image):
    """block.1's map comes from its own output, not from the ``z += y`` that follows."""
    config = SaliencyConfig(method="normgrad0", layer_patterns=(r"block\.1",), keep_layer_maps=True)
    ours = compute_saliency(TinyNet(), image, config).raw_layer_maps["block.1"]
    raw = reference.layer_maps(TinyNet(), torch.from_numpy(image)[None], ["block.1"], "normgrad0")
    assert np.allclose(ours, raw["block.1"].numpy(), rtol=1e-6, atol=0)


def test_normgrad1_replays_only_the_suffix(image):
    """The stem ran before every stepped layer but the stem itself: it is never recomputed."""
    network = TinyNet()
    # the first call on a network finds that block.1's output is changed in place (z += y)
    # and captures it again through a clone: one more forward, once per network
    compute_saliency(network, image, SaliencyConfig(layer_patterns=TINY_LAYERS))
    Counted.runs = 0
    compute_saliency(network, image, SaliencyConfig(method="normgrad1",
                                                    layer_patterns=(r"block\.\d", "head")))
    assert Counted.runs == 1  # the recording pass only
    # stem.1 is stepped inside stem, which therefore runs, but stem.0 inside it is replayed
    Counted.runs = 0
    compute_saliency(network, image, SaliencyConfig(method="normgrad1",
                                                    layer_patterns=(r"stem\.1", r"block\.0")))
    assert Counted.runs == 1


def test_works_without_grad_mode_and_with_frozen_weights(image):
    network = TinyNet()
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    config = SaliencyConfig(layer_patterns=TINY_LAYERS)
    expected = {method: compute_saliency(network, image,
                                         SaliencyConfig(method=method, layer_patterns=TINY_LAYERS))
                for method in ("gradcam", "normgrad1")}
    with torch.no_grad():
        assert np.array_equal(compute_saliency(network, image, config).combined,
                              expected["gradcam"].combined)
    with torch.inference_mode():
        result = compute_saliency(network, image, SaliencyConfig(method="normgrad1",
                                                                 layer_patterns=TINY_LAYERS))
    assert np.array_equal(result.combined, expected["normgrad1"].combined)
    assert not any(p.requires_grad for p in network.parameters())


class Exploding(nn.Module):
    """Raises on its n-th call, to test that failures propagate and leave nothing behind."""

    def __init__(self, fail_on: int) -> None:
        super().__init__()
        self.calls = 0
        self.fail_on = fail_on

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("boom")
        return x


@pytest.mark.parametrize(("method", "fail_on"),
                         [("gradcam", 1), ("normgrad1", 1), ("normgrad1", 2)])
def test_errors_propagate_and_leave_no_trace(image, method, fail_on):
    network = TinyNet()
    network.block[2] = nn.Sequential(nn.ReLU(inplace=True), Exploding(fail_on))
    before = state_of(network)
    with pytest.raises(RuntimeError, match="boom"):
        compute_saliency(network, image, SaliencyConfig(method=method, layer_patterns=TINY_LAYERS))
    assert_same_state(before, state_of(network))


def test_layer_with_a_non_image_output_is_rejected(image):
    network = TinyNet()
    network.head = nn.Sequential(nn.Conv2d(8, 1, 1), nn.Flatten(2))
    with pytest.raises(ValueError, match=r'layer "head.1" must return an \(N, C, h, w\) tensor'):
        compute_saliency(network, image, SaliencyConfig(layer_patterns=(r"head\.1",)))
    assert state_of(network)["hooks"] == 0


def test_hooks_and_memory_are_released_in_a_loop(image):
    network = TinyNet()
    config = SaliencyConfig(method="normgrad1", layer_patterns=TINY_LAYERS)

    def live_tensors() -> int:
        gc.collect()
        with warnings.catch_warnings():  # isinstance() touches deprecated torch proxies
            warnings.simplefilter("ignore")
            return sum(1 for obj in gc.get_objects() if isinstance(obj, torch.Tensor))

    compute_saliency(network, image, config)
    baseline = live_tensors()
    for _ in range(10):
        compute_saliency(network, image, config)
        compute_saliency(network, image, SaliencyConfig(layer_patterns=TINY_LAYERS))
    assert live_tensors() <= baseline
    assert state_of(network)["hooks"] == 0


def test_operator_sets_the_case_saliency(resnet18, image, tmp_path):
    from monai.deploy.core import Fragment
    from xiqa.operators.case import Case
    from xiqa.operators.saliency import SaliencyOperator

    config = SaliencyConfig(layer_patterns=patterns(RESNET18_SUBSET[:4]))
    operator = SaliencyOperator(Fragment(), model=resnet18, config=config, name="saliency")
    case = Case(path=tmp_path / "x.dcm", network_input=image)
    operator.step(case)
    assert case.saliency.combined.shape == (SIZE, SIZE)
    expected = compute_saliency(resnet18, image, config).combined
    assert np.array_equal(case.saliency.combined, expected)
