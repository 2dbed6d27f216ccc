"""Zero-config on real architectures: torchvision families, timm models, transformer fits.

The layer each family should get is pytorch-grad-cam's recommended one (its README table, in
torchvision's module names); "right" means the chosen layer's activation *is* that layer's
(``features`` and ``features[-1]`` are one tensor). Fast tests use the families' own classes
built small at 224 px; the full-size constructors (the README table) are a slow test.
"""

from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
import torchvision
from lit_helpers import loaders, trainer_kwargs
from torch import Tensor, nn
from torchvision.models import convnext, densenet, resnet, swin_transformer, vgg
from torchvision.models import vision_transformer as tv_vit

from gradcam_callback import GradCAM, GradCAMCallback

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _load_table_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_make_layer_table", DOCS / "make_layer_table.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


table = _load_table_script()
FAMILIES = {f.family: f for f in table.FAMILIES}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Any:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_vit(image_size: int = 224, patch: int = 16) -> nn.Module:
    model = tv_vit.VisionTransformer(
        image_size=image_size,
        patch_size=patch,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        mlp_dim=64,
        num_classes=2,
    )
    return table.untrained_head(model)


def tiny_swin(window: int = 7, depths: tuple[int, ...] = (1, 1, 1, 2)) -> nn.Module:
    return swin_transformer.SwinTransformer(
        patch_size=[4, 4],
        embed_dim=8,
        depths=list(depths),
        num_heads=[1] * len(depths),
        window_size=[window, window],
        num_classes=2,
    )


SMALL = {  # the families' own classes, built small (random weights)
    "VGG": lambda: vgg.VGG(vgg.make_layers([8, "M", 16, "M", 16, "M", 32, "M", 512, "M"]), 2),
    "ResNet": lambda: resnet.ResNet(resnet.BasicBlock, [1, 1, 1, 1], num_classes=2),
    "DenseNet": lambda: densenet.DenseNet(8, (1, 1, 1, 1), 8, bn_size=2, num_classes=2),
    "MobileNet": lambda: torchvision.models.mobilenet_v3_small(num_classes=2),
    "EfficientNet": lambda: torchvision.models.efficientnet_b0(num_classes=2),
    "ConvNeXt": lambda: convnext.ConvNeXt(
        [
            convnext.CNBlockConfig(8, 16, 1),
            convnext.CNBlockConfig(16, 32, 1),
            convnext.CNBlockConfig(32, 64, 1),
            convnext.CNBlockConfig(64, None, 1),
        ],
        num_classes=2,
    ),
    "ViT": tiny_vit,
    "Swin": tiny_swin,
}
LAYOUT = {"ViT": "tokens", "Swin": "nhwc"}


@pytest.mark.parametrize("family", list(SMALL))
def test_family_gets_the_recommended_layer_at_224(family: str) -> None:
    torch.manual_seed(0)
    row = table.check(FAMILIES[family], 224, model=SMALL[family]().eval())
    assert row.matches, f"{family}: chose {row.layer}, want {FAMILIES[family].recommended}"
    assert row.nonzero and row.map_size == ((14, 14) if family == "ViT" else (7, 7))
    assert row.layout == LAYOUT.get(family, "nchw")


@pytest.mark.parametrize("size", [32, 112])
def test_vgg_avgpool_is_not_chosen_and_maps_are_not_zero(size: int) -> None:
    """VGG's avgpool resamples the last map to 7x7 (a 1x1 map at 32 px: all-zero Grad-CAM)."""
    torch.manual_seed(0)
    model = SMALL["VGG"]().eval()
    cam = GradCAM(model)
    maps = cam(torch.randn(2, 3, size, size), upsample=False, normalize=False)
    info = cam.layer_info[0]
    assert info.name.startswith("features") and not info.fixed_size
    assert info.map_size == ((8, 8) if size == 32 else (7, 7))  # the deepest with >= 7x7
    assert maps.flatten(1).amax(1).gt(0).all()


@pytest.mark.slow
def test_torchvision_constructors_at_224_match_the_readme_table() -> None:
    """The full-size constructors (random weights): the README table, row by row."""
    rows = [table.check(f, 224) for f in table.FAMILIES]
    assert all(r.matches and r.nonzero for r in rows), [(r.constructor, r.layer) for r in rows]
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for line in table.markdown(rows, 224).splitlines()[2:]:
        assert line in readme, f"README table row out of date: {line}"


# ----------------------------------------------------------------------------- timm


def _timm_cases() -> list[Any]:
    vit = dict(img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2, num_classes=2)
    return [
        pytest.param("vit_tiny_patch16_224", vit, "blocks.1.norm1", 1, id="vit"),
        pytest.param("deit_tiny_distilled_patch16_224", vit, "blocks.1.norm1", 2, id="deit"),
        pytest.param(
            "vit_tiny_patch16_224", {**vit, "reg_tokens": 4}, "blocks.1.norm1", 5, id="registers"
        ),
        pytest.param(
            "swin_tiny_patch4_window7_224",
            dict(
                img_size=56,
                embed_dim=16,
                depths=(1, 2),
                num_heads=(1, 1),
                window_size=7,
                num_classes=2,
            ),
            "layers.1.blocks.1.norm1",
            0,
            id="swin",
        ),
    ]


@pytest.mark.parametrize(("name", "kwargs", "layer", "prefix"), _timm_cases())
def test_timm_models(name: str, kwargs: dict[str, Any], layer: str, prefix: int) -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    size = kwargs["img_size"]
    cam = GradCAM(model)
    maps = cam(torch.randn(2, 3, size, size), upsample=False, normalize=False)
    info = cam.layer_info[0]
    assert info.name == layer and info.prefix_tokens == prefix
    assert info.layout == ("nhwc" if "swin" in name else "tokens")
    assert maps.shape == (2, *info.map_size) and maps.flatten(1).amax(1).gt(0).all()


# ----------------------------------------------------------------------------- fits


def _module_class() -> type:
    import pytorch_lightning as pl

    class Wrap(pl.LightningModule):
        def __init__(self, model: nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: Tensor) -> Tensor:
            return self.model(x)

        def training_step(self, batch: Any, _i: int) -> Tensor:
            x, y = batch
            return nn.functional.cross_entropy(self(x), y)

        def validation_step(self, batch: Any, _i: int) -> None:
            x, y = batch
            self.log("val_loss", nn.functional.cross_entropy(self(x), y))

        def configure_optimizers(self) -> Any:
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    return Wrap


@pytest.mark.parametrize(
    ("kind", "layer", "layout"),
    [
        ("vit", "model.encoder.layers.encoder_layer_1.ln_1", "tokens"),
        ("swin", "model.features.1.1.norm1", "nhwc"),
    ],
)
def test_callback_trains_and_logs_a_transformer_without_layer_argument(
    tmp_path: Path, kind: str, layer: str, layout: str
) -> None:
    import pytorch_lightning as pl

    torch.manual_seed(0)
    if kind == "vit":  # torchvision's own zero-initialised head: no gradient before training
        net = tv_vit.VisionTransformer(
            image_size=32,
            patch_size=8,
            num_layers=2,
            num_heads=2,
            hidden_dim=32,
            mlp_dim=64,
            num_classes=2,
        )
    else:
        net = tiny_swin(window=4, depths=(2, 2))
    cb = GradCAMCallback(num_probes=4, verbose=False, confirm=False)
    train, val = loaders(n_train=32, n_val=8)
    trainer = pl.Trainer(callbacks=[cb], **trainer_kwargs(tmp_path, logger=False))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(_module_class()(net), train, val)
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "map is zero" in m or "run at step" in m], messages
    info = cb.layer_info[0]
    assert (info.name, info.layout, info.map_size) == (
        layer,
        layout,
        (8, 8) if kind == "swin" else (4, 4),
    )
    assert len(cb.history) == 3
    overlays = sorted((tmp_path / "gradcam").glob("step=*/gradcam_overlays.jpg"))
    assert len(overlays) == 3
    assert cb.probes is not None and cb._engine is not None
    images, labels = cb.probes.images, cb.probes.labels
    signed = cb._engine(images, labels, relu=False, normalize=False)
    assert signed.flatten(1).abs().amax(1).gt(0).all()  # every probe gets a gradient there
    assert cb._engine(images, labels, normalize=False).gt(0).any()  # and the maps show evidence


def _vit_tokens_to_maps(t: Tensor) -> Tensor:
    """``[N, 1 + 16, D] -> [N, D, 4, 4]`` (a user's transform, as for pytorch-grad-cam)."""
    return t[:, 1:].reshape(t.shape[0], 4, 4, t.shape[2]).permute(0, 3, 1, 2)


def test_callback_reshape_transform_and_all_zero_map_warning(tmp_path: Path) -> None:
    """``encoder``'s patch tokens get no gradient (only the class token reaches the head): every
    map is zero, and the callback says why; the last block's norm with a user transform works."""
    import pytorch_lightning as pl

    def fit(**kw: Any) -> tuple[GradCAMCallback, list[str]]:
        torch.manual_seed(0)
        net = tv_vit.VisionTransformer(
            image_size=32,
            patch_size=8,
            num_layers=2,
            num_heads=2,
            hidden_dim=32,
            mlp_dim=64,
            num_classes=2,
        )
        cb = GradCAMCallback(num_probes=4, verbose=False, confirm=False, **kw)
        train, val = loaders(n_train=32, n_val=8)
        trainer = pl.Trainer(callbacks=[cb], **trainer_kwargs(tmp_path, logger=False))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.fit(_module_class()(net), train, val)
        return cb, [str(w.message) for w in caught if "GradCAMCallback" in str(w.message)]

    cb, messages = fit(target_layer="model.encoder", reshape_transform=_vit_tokens_to_maps)
    zero = [m for m in messages if "every probe's Grad-CAM map is zero" in m]
    assert len(zero) == 1 and "'model.encoder'" in zero[0] and "no gradient" in zero[0]
    assert len(cb.history) == 3  # a warning, not a stop
    layer = "model.encoder.layers.encoder_layer_1.ln_1"
    cb, messages = fit(target_layer=layer, reshape_transform=_vit_tokens_to_maps)
    assert cb.layer_info[0].name == layer and cb.layer_info[0].layout == "nchw"
    assert not [m for m in messages if "map is zero" in m], messages
    with pytest.raises(ValueError, match="min_map_size"):
        GradCAMCallback(min_map_size=0)
