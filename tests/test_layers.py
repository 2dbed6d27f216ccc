"""Tests for target-layer discovery and resolution (:mod:`gradcam_callback.layers`)."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import Tensor, nn

from gradcam_callback.engine import GradCAM
from gradcam_callback.layers import (
    LayerInfo,
    find_spatial_layers,
    resolve_target_layers,
    token_grid,
    unwrap_model,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> object:
    """Tiny models on a shared CPU: one intra-op thread is faster (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=3).eval()


class SmallCNN(nn.Module):
    """``features`` (conv-BN-ReLU blocks, in-place ReLUs) -> global pool -> linear head."""

    def __init__(self, in_ch: int = 3, classes: int = 2) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_ch, 8, 5, stride=2, padding=2),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=True),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(16, classes)

    def forward(self, x: Tensor) -> Tensor:
        """``[N, C, H, W] -> [N, K]``."""
        return self.head(self.pool(self.features(x)).flatten(1))


def flat_cnn() -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, stride=2, padding=1),
        nn.ReLU(),  # "3": the last spatial module
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 2),
    ).eval()


def reference_gradcam(model: nn.Module, layer: str, x: Tensor, target: int) -> Tensor:
    """Raw Grad-CAM ``[N, h, w]`` in float64: own hook (handing a copy on, since the block adds
    the residual in place), plain grad mode, ``torch.autograd.grad``."""
    ref = copy.deepcopy(model).double().eval()
    store: dict[str, Tensor] = {}

    def hook(_m: nn.Module, _i: object, out: Tensor) -> Tensor:
        store["a"] = out
        return out.clone()

    handle = dict(ref.named_modules())[layer].register_forward_hook(hook)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(ref(x.double())[:, target].sum(), store["a"])
    handle.remove()
    a = store["a"].detach()
    return torch.einsum("nk,nkhw->nhw", g.mean(dim=(2, 3)), a).clamp_min(0)


# ----------------------------------------------------------------------------- auto choice


def test_resnet18_auto_choice_is_resolution_aware(resnet: nn.Module) -> None:
    """At 64 px layer4 has 2x2 maps: the deepest layer with >= 7x7 cells is layer2 (8x8)."""
    cam = GradCAM(resnet)
    assert "not resolved yet" in cam.describe()
    with pytest.raises(RuntimeError, match="resolve"):
        cam.target_layers  # noqa: B018
    with pytest.raises(RuntimeError, match="resolve"):
        cam.layer_info  # noqa: B018
    x = torch.randn(2, 3, 64, 64)
    maps = cam(x, 1)
    assert maps.shape == (2, 64, 64) and maps.dtype == torch.float32
    assert cam.target_layers == ["layer2"]
    info = cam.layer_info[0]
    assert info == LayerInfo("layer2", 128, (8, 8), (64, 64), (8.0, 8.0))
    assert not info.coarse and info.cells == 64 and info.has_gradient is True
    assert cam.describe() == (
        "layer2: 128 maps of 8x8 for a 64x64 input (stride 8); "
        "chosen: deepest layer with >= 7x7 cells (layer4 has 2x2)"
    )
    raw = cam(x, 1, upsample=False, normalize=False)
    want = reference_gradcam(resnet, "layer2", x, 1).float()
    torch.testing.assert_close(raw, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    # the threshold is an argument: 2 restores "the last spatial layer"
    low = GradCAM(resnet, min_map_size=2)
    low.resolve(x)
    assert low.target_layers == ["layer4"]
    assert low.layer_info[0] == LayerInfo("layer4", 512, (2, 2), (64, 64), (32.0, 32.0))
    # 224 px: layer4 is 7x7, the classic choice, and nothing deeper is left to mention
    big = GradCAM(resnet)
    big.resolve(torch.randn(1, 3, 224, 224))
    assert big.target_layers == ["layer4"]
    assert big.describe().endswith("(stride 32); chosen: deepest layer with >= 7x7 cells")
    # non-square input: non-square map and stride
    wide = GradCAM(resnet)
    infos = wide.resolve(torch.randn(1, 3, 64, 80))
    assert infos == [LayerInfo("layer2", 128, (8, 10), (64, 80), (8.0, 8.0))]
    # no layer reaches the threshold: the finest-resolution layer, the deepest of those (the
    # stem's ReLU: the blocks' ReLUs run twice per forward and are left out)
    fine = GradCAM(resnet, min_map_size=40)
    fine.resolve(x)
    assert fine.target_layers == ["relu"] and fine.layer_info[0].map_size == (32, 32)
    assert "no layer reaches 40x40 cells" in fine.describe()
    with pytest.raises(ValueError, match="min_map_size"):
        GradCAM(resnet, min_map_size=0)


def test_explicit_coarse_layer_is_kept_and_marked(resnet: nn.Module) -> None:
    cam = GradCAM(resnet, "layer4")
    info = cam.resolve(torch.randn(1, 3, 64, 64))[0]
    assert cam.target_layers == ["layer4"] and info.map_size == (2, 2)
    assert info.coarse and "coarse: fewer than 7x7 cells" in str(info)
    fine = GradCAM(resnet, "layer4").resolve(torch.randn(1, 3, 224, 224))[0]
    assert not fine.coarse and fine.reason == ""
    assert (
        GradCAM(resnet, "layer4", min_map_size=2).resolve(torch.randn(1, 3, 64, 64))[0].coarse
        is False
    )


def test_resnet18_inner_layer_before_inplace_residual_add(resnet: nn.Module) -> None:
    """``layer4.1.bn2`` is followed by ``out += identity`` (in place) and an in-place ReLU."""
    x = torch.randn(2, 3, 64, 64)
    cam = GradCAM(resnet, "layer4.1.bn2")
    raw = cam(x, 2, upsample=False, normalize=False)
    want = reference_gradcam(resnet, "layer4.1.bn2", x, 2).float()
    assert want.abs().max() > 0
    torch.testing.assert_close(raw, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    assert cam.layer_info[0].map_size == (2, 2) and cam.layer_info[0].channels == 512


def test_small_cnn_auto_layers() -> None:
    model = SmallCNN().eval()
    x = torch.randn(2, 3, 32, 48)
    cam = GradCAM(model)
    maps = cam(x, 0)
    assert cam.target_layers == ["features"]
    assert cam.layer_info == [LayerInfo("features", 16, (8, 12), (32, 48), (4.0, 4.0))]
    torch.testing.assert_close(maps, GradCAM(model, "features")(x, 0))
    torch.testing.assert_close(maps, GradCAM(model, model.features)(x, 0))
    flat = flat_cnn()
    cam = GradCAM(flat)
    cam(torch.randn(1, 3, 16, 16))
    assert cam.target_layers == ["3"]
    assert str(cam.layer_info[0]) == (
        "3: 6 maps of 8x8 for a 16x16 input (stride 2); chosen: deepest layer with >= 7x7 cells"
    )


def test_layer_info_of_several_layers() -> None:
    cam = GradCAM(flat_cnn(), ["0", "2"])
    infos = cam.resolve(torch.randn(1, 3, 12, 20))
    assert [(i.name, i.channels, i.map_size, i.stride) for i in infos] == [
        ("0", 4, (12, 20), (1.0, 1.0)),
        ("2", 6, (6, 10), (2.0, 2.0)),
    ]
    assert cam.describe().splitlines() == [str(i) for i in infos]


def test_find_spatial_layers_order_shared_modules_and_state() -> None:
    relu = nn.ReLU()
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        relu,  # "1", shared with "4": ran twice, left out
        nn.BatchNorm2d(4),
        nn.Dropout(0.5),
        relu,
        nn.Sequential(nn.Conv2d(4, 4, 3, stride=2), nn.ReLU()),  # "5": finishes after "5.1"
        nn.AdaptiveAvgPool2d(1),  # 1x1: not spatial
    )
    model.train()
    model[5].eval()
    modes = [m.training for m in model.modules()]
    stats = [b.clone() for b in model.buffers()]
    x = torch.randn(2, 3, 9, 9)
    rng = torch.get_rng_state()
    infos = find_spatial_layers(model, x)
    assert [i.name for i in infos] == ["0", "2", "3", "5.0", "5.1", "5"]
    assert infos[-1] == LayerInfo("5", 4, (4, 4), (9, 9), (2.25, 2.25))
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(a, b) for a, b in zip(stats, model.buffers()))
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(ValueError, match="batch dimension"):
        find_spatial_layers(model, torch.randn(3, 9, 9))


# ----------------------------------------------------------------------------- errors


def test_unknown_layer_name_lists_closest(resnet: nn.Module) -> None:
    with pytest.raises(ValueError, match="Unknown target layer") as err:
        GradCAM(resnet, "layer5")
    assert "'layer4'" in str(err.value)
    with pytest.raises(ValueError) as err:
        GradCAM(resnet, "layer4.1.conv3")
    assert "'layer4.1.conv2'" in str(err.value)
    with pytest.raises(ValueError) as err:
        GradCAM(SmallCNN(), "feature.5")
    assert "'features.5'" in str(err.value)


def test_model_without_spatial_layer_raises() -> None:
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.ReLU(), nn.Linear(16, 2))
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"no layer with a 4-D spatial output") as err:
        GradCAM(mlp)(x)
    assert "reshape_transform" in str(err.value)
    with pytest.raises(ValueError, match=r"do not produce a 4-D spatial output"):
        GradCAM(mlp, "2")(x)
    assert find_spatial_layers(mlp, x) == []


def test_resolve_target_layers_specs() -> None:
    model = flat_cnn()
    assert resolve_target_layers(model, "2") == [("2", model[2])]
    assert resolve_target_layers(model, model[2]) == [("2", model[2])]
    assert resolve_target_layers(model, ["0", model[2]]) == [("0", model[0]), ("2", model[2])]
    assert resolve_target_layers(model, "_orig_mod.2") == [("2", model[2])]
    assert resolve_target_layers(model, "module.2") == [("2", model[2])]
    for bad, msg in (
        (["2", model[2]], "same layer twice"),
        ([], "empty"),
        (model, "whole model"),
        (nn.Conv2d(3, 4, 3), "not a submodule"),
        ("", "Unknown target layer"),
        (None, "find_spatial_layers"),
    ):
        with pytest.raises(ValueError, match=msg):
            resolve_target_layers(model, bad)
    with pytest.raises(TypeError, match=r"str or nn\.Module"):
        resolve_target_layers(model, [2])  # type: ignore[list-item]


class Holder(nn.Module):
    """A model with a real submodule called ``module`` (not a DataParallel wrapper)."""

    def __init__(self) -> None:
        super().__init__()
        self.module = flat_cnn()

    def forward(self, x: Tensor) -> Tensor:
        return self.module(x)


def test_real_submodule_named_module_is_not_stripped() -> None:
    holder = Holder()
    assert resolve_target_layers(holder, "module.2") == [("module.2", holder.module[2])]
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(GradCAM(holder, "module.2")(x, 1), GradCAM(holder.module, "2")(x, 1))


def test_unwrap_model_compile_and_data_parallel() -> None:
    model = flat_cnn()
    assert unwrap_model(torch.compile(model, backend="eager")) is model
    dp = nn.DataParallel(model)
    assert unwrap_model(dp) is model
    assert unwrap_model(nn.DataParallel(torch.compile(model, backend="eager"))) is model
    x = torch.randn(2, 3, 16, 16)
    cam = GradCAM(dp, "module.2")
    assert cam.model is model and cam.target_layers == ["2"]
    torch.testing.assert_close(cam(x, 0), GradCAM(model, "2")(x, 0))


# ----------------------------------------------------------------------------- token models


class TinyViT(nn.Module):
    """Patch-embed conv (8 px patches) -> tokens ``[N, 16, D]`` -> encoder layer -> mean -> linear.

    Embedding channel 0 measures the red content of a patch; the head reads channel 0.
    """

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.embed = nn.Conv2d(3, dim, 8, stride=8)
        self.block = nn.TransformerEncoderLayer(
            dim, nhead=2, dim_feedforward=32, dropout=0.0, batch_first=True, norm_first=True
        )
        self.head = nn.Linear(dim, 2)
        with torch.no_grad():
            self.embed.weight.zero_()
            self.embed.bias.zero_()
            self.embed.weight[0, 0] = 10.0 / 64
            self.head.weight.zero_()
            self.head.weight[1, 0] = 1.0

    def forward(self, x: Tensor) -> Tensor:
        """``[N, 3, H, W] -> [N, 2]``."""
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        return self.head(self.block(tokens).mean(1))


def tokens_to_maps(t: Tensor) -> Tensor:
    """``[N, 16, D] -> [N, D, 4, 4]``."""
    return t.reshape(t.shape[0], 4, 4, t.shape[2]).permute(0, 3, 1, 2)


def test_vit_like_token_model_with_and_without_reshape_transform() -> None:
    """Tokens ``[N, 16, D]`` of a 32x32 input: a 4x4 grid, evident without a transform."""
    model = TinyViT().eval()
    x = torch.zeros(2, 3, 32, 32)
    x[0, 0, 8:16, 16:24] = 1.0  # informative patch (1, 2)
    x[1, 0, 24:32, 0:8] = 1.0  # informative patch (3, 0)
    runs = [
        ("block", tokens_to_maps, "block", "nchw"),
        (None, tokens_to_maps, "block.norm1", "nchw"),  # a transformer block: its first norm
        ("block", None, "block", "tokens"),
        (None, None, "block.norm1", "tokens"),
    ]
    raws = {}
    for spec, transform, name, layout in runs:
        cam = GradCAM(model, spec, reshape_transform=transform)
        raw = cam(x, 1, upsample=False, normalize=False)
        assert cam.target_layers == [name]
        info = cam.layer_info[0]
        assert info == LayerInfo(name, 16, (4, 4), (32, 32), (8.0, 8.0), layout=layout)
        assert info.coarse  # 4x4 < 7x7: the monitor can skip its spatial rules
        assert raw.shape == (2, 4, 4)
        assert [divmod(int(i), 4) for i in raw.flatten(1).argmax(1)] == [(1, 2), (3, 0)]
        maps = cam(x, 1)
        r, c = divmod(int(maps[0].argmax()), 32)
        assert 8 <= r < 16 and 16 <= c < 24
        raws[(spec, transform is None)] = raw
    # the automatic token layout is the user's transform
    torch.testing.assert_close(raws[("block", True)], raws[("block", False)])
    torch.testing.assert_close(raws[(None, True)], raws[(None, False)])
    auto = GradCAM(model)
    auto.resolve(x)
    assert "tokens [N, 16, 16] as a 4x4 grid" in auto.describe()
    assert "no transformer block's first norm reaches 7x7 cells" in auto.describe()


def test_token_grid() -> None:
    assert token_grid(197, (224, 224)) == (1, 14, 14)  # class token + 14x14 patches
    assert token_grid(198, (224, 224)) == (2, 14, 14)  # DeiT: class + distillation token
    assert token_grid(1 + 4 + 196, (224, 224)) == (5, 14, 14)  # class + 4 register tokens
    assert token_grid(16, (32, 32)) == (0, 4, 4)  # no class token
    assert token_grid(1 + 20, (64, 80)) == (1, 4, 5)  # non-square input
    assert token_grid(1 + 20, (64, 80), max_prefix=0) is None
    assert token_grid(3, (224, 224)) is None and token_grid(1, (8, 8)) is None


class ChannelsLast(nn.Module):
    """conv -> permute to ``[N, h, w, C]`` -> LayerNorm (channels-last) -> mean -> linear."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.conv = nn.Conv2d(3, 24, 4, stride=4)
        self.norm = nn.LayerNorm(24)
        self.head = nn.Linear(24, 2)

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm(self.conv(x).permute(0, 2, 3, 1))  # [N, 8, 8, 24] for 32x32
        return self.head(y.mean(dim=(1, 2)))


def test_channels_last_layer_is_recognised_and_reshaped() -> None:
    model = ChannelsLast().eval()
    x = torch.randn(2, 3, 32, 32)
    infos = find_spatial_layers(model, x)
    assert [(i.name, i.layout, i.channels, i.map_size) for i in infos] == [
        ("conv", "nchw", 24, (8, 8)),
        ("norm", "nhwc", 24, (8, 8)),
    ]
    cam = GradCAM(model)
    raw = cam(x, 0, upsample=False, normalize=False)
    assert cam.target_layers == ["norm"] and "channels-last" in cam.describe()
    want = GradCAM(model, "norm", reshape_transform=lambda t: t.permute(0, 3, 1, 2))
    torch.testing.assert_close(raw, want(x, 0, upsample=False, normalize=False))
    assert raw.flatten(1).amax(1).gt(0).all()


class MiniVGG(nn.Module):
    """VGG's layout: features -> AdaptiveAvgPool2d(7) (wrapped) -> linear."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        self.avgpool = nn.Sequential(nn.AdaptiveAvgPool2d(7))
        self.classifier = nn.Linear(8 * 49, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


def test_fixed_size_pooling_is_never_chosen() -> None:
    model = MiniVGG().eval()
    x = torch.randn(1, 3, 32, 32)
    infos = {i.name: i for i in find_spatial_layers(model, x, gradients=True)}
    assert infos["avgpool.0"].fixed_size and infos["avgpool"].fixed_size  # the wrapper too
    assert not infos["features"].fixed_size and infos["avgpool"].map_size == (7, 7)
    cam = GradCAM(model)
    cam.resolve(x)
    assert cam.target_layers == ["features"] and cam.layer_info[0].map_size == (8, 8)
    # 8 px: features is 2x2, avgpool copies it to 7x7; the finest real maps are chosen instead
    small = GradCAM(model)
    maps = small(torch.randn(2, 3, 8, 8), upsample=False, normalize=False)
    assert small.target_layers == ["features.1"] and maps.shape == (2, 8, 8)


class DeadBranch(nn.Module):
    """The last spatial module (``aux``) is computed but never reaches the output."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(6)
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.aux = nn.Conv2d(4, 4, 1)
        self.head = nn.Linear(4, 2)
        self.last_aux: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        f = self.features(x)
        self.last_aux = self.aux(f)  # e.g. an auxiliary output kept for a loss elsewhere
        return self.head(f.mean(dim=(2, 3)))


def test_layer_without_gradient_is_skipped_and_state_kept() -> None:
    model = DeadBranch().eval()
    model.features.train()
    modes = [m.training for m in model.modules()]
    x = torch.randn(2, 3, 8, 8)
    rng = torch.get_rng_state()
    infos = {i.name: i for i in find_spatial_layers(model, x, gradients=True)}
    assert infos["aux"].has_gradient is False and infos["features"].has_gradient is True
    assert all(i.has_gradient is None for i in find_spatial_layers(model, x))
    assert all(p.grad is None for p in model.parameters())
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(not m._forward_hooks for m in model.modules())
    cam = GradCAM(model)
    cam.resolve(x)
    assert cam.target_layers == ["features"]
    # a zero head: no gradient reaches even the input, so the test says nothing (None)
    with torch.no_grad():
        model.head.weight.zero_()
    assert all(i.has_gradient is None for i in find_spatial_layers(model, x, gradients=True))


class InplaceInput(nn.Module):
    """Normalises its input in place: autograd refuses a leaf that requires grad there."""

    def __init__(self) -> None:
        super().__init__()
        self.net = flat_cnn()

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.sub_(0.5))


def test_gradient_pass_failure_falls_back_to_plain_choice() -> None:
    model = InplaceInput().eval()
    with pytest.raises(RuntimeError, match="in-place"):
        find_spatial_layers(model, torch.randn(1, 3, 16, 16), gradients=True)
    cam = GradCAM(model)
    cam.resolve(torch.randn(1, 3, 16, 16))
    assert cam.target_layers == ["net.3"] and cam.layer_info[0].has_gradient is None
