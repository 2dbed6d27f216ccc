"""The README's supported-models table: the automatic target layer of torchvision families.

For each family (pytorch-grad-cam's README table of recommended layers, in torchvision's
module names), build the model with random weights, let :class:`gradcam_callback.GradCAM`
choose the layer on a 224x224 input, check that the chosen layer's activation *is* the
recommended layer's (the same tensor: ``features`` and ``features[-1]`` are one activation) and
that the maps are not all zero, and print a markdown table::

    python docs/make_layer_table.py            # all families at 224 px (about a minute on a CPU)
    python docs/make_layer_table.py --size 112 vgg11 resnet18

No weights are downloaded (``weights=None``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torchvision
from torch import Tensor, nn


@dataclass(frozen=True)
class Family:
    """A torchvision family, its smallest constructor and pytorch-grad-cam's recommended layer."""

    family: str
    constructor: str
    recommended: str  # dotted path with [-1] for the last child, in torchvision's names

    def build(self) -> nn.Module:
        torch.manual_seed(0)
        fn: Callable[..., nn.Module] = getattr(torchvision.models, self.constructor)
        return untrained_head(fn(weights=None, num_classes=10).eval())


def untrained_head(model: nn.Module) -> nn.Module:
    """torchvision zero-initialises the ViT head, so *no* gradient flows anywhere before the
    first training step; give it small random weights, as training would."""
    heads = getattr(model, "heads", None)
    head = getattr(heads, "head", None)
    if isinstance(head, nn.Linear) and not head.weight.any():
        with torch.no_grad():
            nn.init.normal_(head.weight, std=0.02)
    return model


FAMILIES: tuple[Family, ...] = (
    Family("VGG", "vgg11", "features[-1]"),
    Family("ResNet", "resnet18", "layer4[-1]"),
    Family("DenseNet", "densenet121", "features[-1]"),
    Family("MobileNet", "mobilenet_v3_small", "features[-1]"),
    Family("EfficientNet", "efficientnet_b0", "features[-1]"),
    Family("ConvNeXt", "convnext_tiny", "features[-1]"),
    Family("ViT", "vit_b_16", "encoder.layers[-1].ln_1"),
    Family("Swin", "swin_t", "features[-1][-1].norm1"),
)


def module_at(model: nn.Module, path: str) -> nn.Module:
    """``"features[-1][-1].norm1"`` -> that submodule (``[i]`` indexes the children)."""
    module = model
    for part in path.replace("[", ".[").split("."):
        if not part:
            continue
        if part.startswith("["):
            module = list(module.children())[int(part[1:-1])]
        else:
            module = getattr(module, part)
    return module


def activation(model: nn.Module, module: nn.Module, x: Tensor) -> Tensor:
    """The output of ``module`` when ``model`` runs on ``x`` (no grad)."""
    store: list[Tensor] = []
    handle = module.register_forward_hook(lambda _m, _i, out: store.append(out.detach()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return store[-1]


@dataclass
class Row:
    family: str
    constructor: str
    layer: str
    map_size: tuple[int, int]
    stride: float
    layout: str
    matches: bool
    nonzero: bool
    seconds: float


def check(family: Family, size: int = 224, model: nn.Module | None = None) -> Row:
    """Automatic choice on a ``size`` px input vs the recommended layer; maps non-zero."""
    from gradcam_callback import GradCAM

    start = time.perf_counter()
    model = family.build() if model is None else model
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    cam = GradCAM(model)
    maps = cam(x, upsample=False, normalize=False)
    info = cam.layer_info[0]
    chosen = dict(model.named_modules())[info.name]
    want = module_at(model, family.recommended)
    same = chosen is want or torch.equal(activation(model, chosen, x), activation(model, want, x))
    return Row(
        family.family,
        family.constructor,
        info.name,
        info.map_size,
        info.stride[0],
        info.layout,
        bool(same),
        bool((maps.flatten(1).amax(1) > 0).all()),
        time.perf_counter() - start,
    )


def markdown(rows: list[Row], size: int) -> str:
    lines = [
        f"| family | constructor | automatic layer | map at {size} px | stride | layout |",
        "|---|---|---|---|---:|---|",
    ]
    for r in rows:
        h, w = r.map_size
        lines.append(
            f"| {r.family} | `{r.constructor}` | `{r.layer}` | {h}x{w} | {r.stride:g} | "
            f"{r.layout} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("constructors", nargs="*", help="subset, e.g. resnet18 vit_b_16")
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    chosen = [f for f in FAMILIES if not args.constructors or f.constructor in args.constructors]
    rows = []
    for family in chosen:
        row = check(family, args.size)
        rows.append(row)
        print(
            f"{row.constructor}: {row.layer} {row.map_size} recommended={family.recommended} "
            f"same={row.matches} nonzero={row.nonzero} ({row.seconds:.1f} s)",
            file=sys.stderr,
        )
    print(markdown(rows, args.size))
    return 0 if all(r.matches and r.nonzero for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
