"""Target-layer discovery and resolution.

Turns what a user writes (``None``, ``"layer4"``, an ``nn.Module``, or a list of these) into the
concrete modules whose activations Grad-CAM reads, and reports each layer's resolution: the
spatial size of its feature map and the stride (input size over map size) that bounds how fine
an explanation can be.

No Lightning import: this module works on any :class:`torch.nn.Module`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = [
    "LayerInfo",
    "LayerSpec",
    "eval_mode",
    "find_spatial_layers",
    "resolve_target_layers",
    "unwrap_model",
]

LayerSpec = str | nn.Module | Sequence[str | nn.Module] | None


@dataclass(frozen=True)
class LayerInfo:
    """Where a Grad-CAM map comes from and how fine it is.

    Attributes:
        name: dotted name in ``model.named_modules()``.
        channels: number of feature maps ``K`` (after ``reshape_transform``, if any).
        map_size: ``(h, w)`` of the layer's feature map for the input it was measured on.
        input_size: ``(H, W)`` of that input.
        stride: ``(H / h, W / w)``: one map cell covers about ``stride`` input pixels per side.
    """

    name: str
    channels: int
    map_size: tuple[int, int]
    input_size: tuple[int, int]
    stride: tuple[float, float]

    def __str__(self) -> str:
        h, w = self.map_size
        sh, sw = self.stride
        stride = f"{sh:g}" if sh == sw else f"{sh:g}x{sw:g}"
        return (
            f"{self.name}: {self.channels} maps of {h}x{w} for a "
            f"{self.input_size[0]}x{self.input_size[1]} input (stride {stride})"
        )


def unwrap_model(model: nn.Module) -> nn.Module:
    """Return the module whose forward runs eagerly and whose hooks fire.

    Unwraps ``torch.compile`` (``OptimizedModule._orig_mod``: hooks do not fire inside a compiled
    graph) and ``DistributedDataParallel`` / ``DataParallel`` (``.module``).
    """
    seen = 0
    while seen < 8:
        seen += 1
        if hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        elif isinstance(model, nn.DataParallel | nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            break
    return model


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every module of ``model`` in eval mode; restore each module's own flag on exit.

    Each module's ``training`` flag is restored individually (not ``model.train(mode)``), so a
    model with some submodules deliberately left in eval mode (frozen BatchNorm) comes back
    exactly as it was, also when the body raises.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode


#: Former private name of :func:`eval_mode`, kept while other modules move to the public one.
_eval_mode = eval_mode


def _strip_wrapper_prefix(name: str) -> str:
    for prefix in ("_orig_mod.", "module."):
        while name.startswith(prefix):
            name = name[len(prefix) :]
    return name


def resolve_target_layers(model: nn.Module, spec: LayerSpec) -> list[tuple[str, nn.Module]]:
    """Resolve a user's layer specification to ``(name, module)`` pairs.

    Args:
        model: the (unwrapped) model.
        spec: a dotted name from ``model.named_modules()``, a submodule, or a list of these.
            ``None`` is not accepted here: automatic choice needs an input, see
            :func:`find_spatial_layers`.

    Raises:
        ValueError: an unknown name (the message lists the closest names), a module that is not
            part of ``model``, the model itself, an empty list, or the same layer twice.
    """
    if spec is None:
        raise ValueError("resolve_target_layers needs a layer; use find_spatial_layers for None")
    items = [spec] if isinstance(spec, str | nn.Module) else list(spec)
    if not items:
        raise ValueError("target_layer is an empty list; give at least one layer name or module")
    by_name = dict(model.named_modules())
    by_id = {id(m): n for n, m in by_name.items()}
    resolved: list[tuple[str, nn.Module]] = []
    for item in items:
        if isinstance(item, str):
            # A wrapper's prefix ("_orig_mod.", "module.") is stripped only when the name is not a
            # real module path: a model may have its own submodule called "module".
            name = item if item in by_name else _strip_wrapper_prefix(item)
            if name not in by_name or name == "":
                raise ValueError(_unknown_layer_message(item, [n for n in by_name if n]))
            resolved.append((name, by_name[name]))
        elif isinstance(item, nn.Module):
            if id(item) not in by_id:
                raise ValueError(
                    f"target layer {type(item).__name__} is not a submodule of "
                    f"{type(model).__name__}; pass a module from model.named_modules() or its name"
                )
            resolved.append((by_id[id(item)], item))
        else:
            raise TypeError(
                f"target_layer entries must be str or nn.Module, got {type(item).__name__}"
            )
    names = [n for n, _ in resolved]
    if "" in names:
        raise ValueError(
            "target_layer is the whole model; Grad-CAM needs an inner layer with spatial maps"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"target_layer lists the same layer twice: {names}")
    return resolved


def _unknown_layer_message(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    if not close:  # fall back to names sharing the last component or a prefix
        tail = name.rsplit(".", 1)[-1]
        close = [n for n in names if n.rsplit(".", 1)[-1].startswith(tail[:3])][:5]
    hint = f" Closest names: {', '.join(repr(c) for c in close)}." if close else ""
    top = [n for n in names if "." not in n]
    return (
        f"Unknown target layer {name!r}: no such module in model.named_modules().{hint} "
        f"Top-level modules: {', '.join(top[:12])}{' ...' if len(top) > 12 else ''}."
    )


def _as_spatial(
    out: object, reshape_transform: Callable[[Tensor], Tensor] | None
) -> torch.Size | None:
    if not isinstance(out, Tensor):
        return None
    if reshape_transform is not None:
        try:
            out = reshape_transform(out)
        except Exception:
            return None
        if not isinstance(out, Tensor):
            return None
    if out.dim() == 4 and out.shape[-1] * out.shape[-2] > 1:
        return out.shape
    return None


def find_spatial_layers(
    model: nn.Module,
    images: Tensor,
    reshape_transform: Callable[[Tensor], Tensor] | None = None,
) -> list[LayerInfo]:
    """Run ``model`` once on ``images`` and list modules with a 4-D spatial output.

    The list is in the order the modules *finished* their forward, so the last entry is the
    last module with an ``[N, K, h, w]`` output (``h * w > 1``) before the head: for a torchvision
    ResNet, ``layer4``; for the project's SmallCNN, ``features``. Modules called more than once
    per forward (a shared ``nn.ReLU``) and the model itself are left out, since their activation
    is ambiguous.

    Args:
        model: the (unwrapped) model; run under ``torch.no_grad`` in eval mode (every module's
            ``training`` flag is restored afterwards, so BatchNorm statistics and RNGs are
            untouched).
        images: ``[N, C, H, W]`` input, a small batch is enough.
        reshape_transform: maps a token layer's output to ``[N, K, h, w]``; when given, layers
            whose transformed output is spatial are listed too.
    """
    if images.dim() != 4:
        raise ValueError(
            f"expected images of shape [N, C, H, W], got {tuple(images.shape)}; "
            "add a batch dimension with images.unsqueeze(0)"
        )
    order: list[tuple[str, torch.Size | None]] = []
    calls: dict[str, int] = {}
    handles = []

    def make_hook(name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, _inp: object, out: object) -> None:
            calls[name] = calls.get(name, 0) + 1
            order.append((name, _as_spatial(out, reshape_transform)))

        return hook

    try:
        for name, module in model.named_modules():
            if name:
                handles.append(module.register_forward_hook(make_hook(name)))
        with eval_mode(model), torch.no_grad():
            model(images)
    finally:
        for h in handles:
            h.remove()
    H, W = images.shape[-2:]
    found: list[LayerInfo] = []
    for name, shape in order:
        if shape is None or calls[name] != 1:
            continue
        h, w = int(shape[-2]), int(shape[-1])
        found.append(LayerInfo(name, int(shape[1]), (h, w), (int(H), int(W)), (H / h, W / w)))
    return found
