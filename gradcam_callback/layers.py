"""Target-layer discovery and resolution.

Turns what a user writes (``None``, ``"layer4"``, an ``nn.Module``, or a list of these) into the
concrete modules whose activations Grad-CAM reads, and reports each layer's resolution: the
spatial size of its feature map and the stride (input size over map size) that bounds how fine
an explanation can be.

No Lightning import: this module works on any :class:`torch.nn.Module`.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from torch import Tensor, nn

__all__ = [
    "LAYOUTS",
    "MIN_MAP_SIZE",
    "LayerInfo",
    "LayerSpec",
    "choose_layer",
    "coarse_note",
    "eval_mode",
    "find_spatial_layers",
    "resolve_target_layers",
    "token_grid",
    "unwrap_model",
]

LayerSpec = str | nn.Module | Sequence[str | nn.Module] | None


Layout = Literal["nchw", "tokens", "nhwc"]
LAYOUTS: tuple[str, ...] = ("nchw", "tokens", "nhwc")

#: Fewest cells per side of a map that can still localise: a map of ``m x m`` cells cannot tell
#: apart two places inside one cell, and Grad-CAM's usual setting (the last conv stage of an
#: ImageNet CNN at 224 px) is 7x7.
MIN_MAP_SIZE = 7


@dataclass(frozen=True)
class LayerInfo:
    """Where a Grad-CAM map comes from and how fine it is.

    Attributes:
        name: dotted name in ``model.named_modules()``.
        channels: number of feature maps ``K`` (after ``reshape_transform``, if any).
        map_size: ``(h, w)`` of the layer's feature map for the input it was measured on.
        input_size: ``(H, W)`` of that input.
        stride: ``(H / h, W / w)``: one map cell covers about ``stride`` input pixels per side.
        layout: how the layer's output holds the map: ``"nchw"`` (``[N, K, h, w]``, or whatever
            a user's ``reshape_transform`` returns), ``"tokens"`` (``[N, prefix + h*w, K]``, a
            vision transformer's patch tokens after class/register tokens) or ``"nhwc"``
            (channels-last ``[N, h, w, K]``, as in Swin).
        prefix_tokens: class / distillation / register tokens before the patch tokens
            (``"tokens"`` only); they are dropped from the map.
        has_gradient: whether the top logit of the measuring input had a non-zero gradient at
            the map's cells (``None``: not measured, or no gradient reached even the input, as
            with a zero-initialised head). A layer without one gives all-zero maps.
        fixed_size: the output size does not follow the input (an adaptive pooling layer, such
            as VGG's ``avgpool``, which resamples the last map to 7x7 whatever its real size).
        reason: why the layer was chosen (automatic choice) or a warning about it.
        min_map_size: the ``min_map_size`` the choice used (see :attr:`coarse`).
    """

    name: str
    channels: int
    map_size: tuple[int, int]
    input_size: tuple[int, int]
    stride: tuple[float, float]
    layout: str = "nchw"
    prefix_tokens: int = 0
    has_gradient: bool | None = field(default=None, compare=False)
    fixed_size: bool = field(default=False, compare=False)
    reason: str = field(default="", compare=False)
    min_map_size: int = field(default=MIN_MAP_SIZE, compare=False)

    @property
    def cells(self) -> int:
        """Number of cells of the map, ``h * w``."""
        return self.map_size[0] * self.map_size[1]

    @property
    def coarse(self) -> bool:
        """True when the map has fewer than ``min_map_size`` cells along a side: too coarse to
        localise a region smaller than a cell, so spatial rules (focus, artifact hot spots)
        should not be applied to it."""
        return min(self.map_size) < self.min_map_size

    def __str__(self) -> str:
        h, w = self.map_size
        sh, sw = self.stride
        stride = f"{sh:g}" if sh == sw else f"{sh:g}x{sw:g}"
        layout = ""
        if self.layout == "tokens":
            extra = f"{self.prefix_tokens}+" if self.prefix_tokens else ""
            layout = f"; tokens [N, {extra}{h * w}, {self.channels}] as a {h}x{w} grid"
        elif self.layout == "nhwc":
            layout = "; channels-last"
        reason = f"; {self.reason}" if self.reason else ""
        return (
            f"{self.name}: {self.channels} maps of {h}x{w} for a "
            f"{self.input_size[0]}x{self.input_size[1]} input (stride {stride}{layout}){reason}"
        )

    def to_maps(self, t: Tensor, input_size: tuple[int, int] | None = None) -> Tensor:
        """This layer's output (or its gradient) as ``[N, K, h, w]`` maps.

        ``"tokens"``: drops the prefix tokens and lays the patch tokens out on the grid of the
        input's aspect ratio (``input_size``, default the measured one); ``"nhwc"``: a permute;
        ``"nchw"``: unchanged.
        """
        size = self.input_size if input_size is None else input_size
        return _to_maps(t, self.layout, self.prefix_tokens, size)


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


# ----------------------------------------------------------------------------- layouts


def _aspect_fits(h: int, w: int, H: int, W: int) -> bool:
    """True when an ``h x w`` map can be the input ``H x W`` seen at one stride (within 1.5x:
    odd sizes and padding make the two strides differ a little)."""
    if h < 1 or w < 1 or h > H or w > W:
        return False
    ratio = (H / h) / (W / w)
    return 1 / 1.5 <= ratio <= 1.5


def token_grid(
    tokens: int, input_size: tuple[int, int], max_prefix: int = 8
) -> tuple[int, int, int] | None:
    """``(prefix, h, w)`` when ``tokens`` is ``prefix + h * w`` patch tokens of the input.

    The grid is *evident* when, for the fewest prefix tokens (class, distillation, register
    tokens: at most ``max_prefix``), ``h x w`` has the input's aspect ratio with one patch size
    for both sides (``H / h`` and ``W / w`` within half a pixel). Returns None otherwise.
    """
    H, W = input_size
    for prefix in range(0, min(max_prefix, tokens - 1) + 1):
        n = tokens - prefix
        if n < 2 or n > H * W:
            continue
        # the grid with the input's aspect ratio: h / w = H / W
        h0 = math.sqrt(n * H / W)
        for h in {math.floor(h0), math.ceil(h0)}:
            if h < 1 or n % h:
                continue
            w = n // h
            if abs(H / h - W / w) <= 0.5 and H / h >= 1 and W / w >= 1:
                return prefix, h, w
    return None


def _to_maps(t: Tensor, layout: str, prefix: int, input_size: tuple[int, int]) -> Tensor:
    if layout == "nchw":
        return t
    if layout == "nhwc":
        return t.permute(0, 3, 1, 2)
    if layout == "tokens":
        grid = token_grid(t.shape[1] - prefix, input_size, max_prefix=0)
        if grid is None:
            raise ValueError(
                f"{t.shape[1] - prefix} patch tokens do not form a grid for a "
                f"{input_size[0]}x{input_size[1]} input; pass a reshape_transform"
            )
        _, h, w = grid
        return t[:, prefix:].reshape(t.shape[0], h, w, t.shape[2]).permute(0, 3, 1, 2)
    raise ValueError(f"unknown layout {layout!r}; one of {LAYOUTS}")


def _layout_of(
    out: object,
    input_size: tuple[int, int],
    batch: int,
    reshape_transform: Callable[[Tensor], Tensor] | None,
    last_dim_channels: bool = False,
) -> tuple[str, int, int, tuple[int, int]] | None:
    """``(layout, prefix, channels, (h, w))`` of a module output that holds maps, else None.

    With a ``reshape_transform``: its result must be ``[N, K, h, w]`` (layout ``"nchw"``).
    Without: ``[N, K, h, w]`` (any such output, as before), channels-last ``[N, h, w, K]`` when
    only that reading has the input's aspect ratio (or both have and ``last_dim_channels``: a
    LayerNorm normalises the channels, its last dimension), or tokens ``[N, prefix + h*w, K]``
    when the grid is evident from the input size (:func:`token_grid`).
    """
    if not isinstance(out, Tensor) or out.shape[:1] != (batch,):
        return None
    if reshape_transform is not None:
        try:
            out = reshape_transform(out)
        except Exception:
            return None
        if not isinstance(out, Tensor) or out.dim() != 4 or out.shape[-1] * out.shape[-2] <= 1:
            return None
        return "nchw", 0, int(out.shape[1]), (int(out.shape[2]), int(out.shape[3]))
    H, W = input_size
    if out.dim() == 4:
        _, a, b, c = (int(d) for d in out.shape)
        nchw = _aspect_fits(b, c, H, W) and not last_dim_channels
        if a * b > 1 and not nchw and _aspect_fits(a, b, H, W):
            return "nhwc", 0, c, (a, b)
        if b * c > 1:
            return "nchw", 0, a, (b, c)
        return None
    if out.dim() == 3 and not out.is_complex():
        grid = token_grid(int(out.shape[1]), input_size)
        if grid is not None:
            prefix, h, w = grid
            return "tokens", prefix, int(out.shape[2]), (h, w)
    return None


def _is_fixed_size_pool(module: nn.Module) -> bool:
    """Adaptive pooling: the output size is set by the module, not by the input."""
    return isinstance(module, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d) or (
        "Adaptive" in type(module).__name__ and "Pool" in type(module).__name__
    )


def _auto_score(output: object) -> Tensor | None:
    """A differentiable scalar from a model output: the sum of each image's top score."""
    if isinstance(output, dict):
        output = next((v for v in output.values() if isinstance(v, Tensor)), None)
    elif isinstance(output, list | tuple):
        output = next((v for v in output if isinstance(v, Tensor)), None)
    if not isinstance(output, Tensor) or not output.requires_grad or output.numel() == 0:
        return None
    out = output.float()
    return out.flatten(1).amax(1).sum() if out.dim() >= 2 else out.sum()


_Spec = tuple[str, int, int, tuple[int, int]]


@dataclass
class _Capture:
    """What the forward hooks of :func:`find_spatial_layers` record, in finishing order.

    Attributes:
        order: ``(name, layout spec or None, fixed-size)`` of each module call.
        kept: index in ``order`` -> the captured output (``gradients`` only).
        fixed: ``data_ptr`` of outputs of fixed-size pooling (and of their parents).
        calls: number of forward calls of each module.
    """

    input_size: tuple[int, int]
    batch: int
    reshape_transform: Callable[[Tensor], Tensor] | None
    gradients: bool
    order: list[tuple[str, _Spec | None, bool]] = field(default_factory=list)
    kept: dict[int, Tensor] = field(default_factory=dict)
    fixed: set[int] = field(default_factory=set)
    calls: dict[str, int] = field(default_factory=dict)

    def hook(self, name: str, module: nn.Module) -> Callable[..., object]:
        """A forward hook that records ``module`` (called ``name``) with :meth:`record`."""

        def hook(_m: nn.Module, _inp: object, out: object) -> object:
            return self.record(name, module, out)

        return hook

    def record(self, name: str, module: nn.Module, out: object) -> Tensor | None:
        """Record one call's output; return a clone to capture for gradients, else None."""
        self.calls[name] = self.calls.get(name, 0) + 1
        spec = _layout_of(
            out, self.input_size, self.batch, self.reshape_transform, _is_layer_norm(module)
        )
        is_fixed = isinstance(out, Tensor) and (
            _is_fixed_size_pool(module) or (out.numel() > 0 and out.data_ptr() in self.fixed)
        )
        self.order.append((name, spec, is_fixed))
        if not isinstance(out, Tensor) or spec is None:
            return None
        if not (self.gradients and out.requires_grad):
            if is_fixed:
                self.fixed.add(out.data_ptr())
            return None
        self.kept[len(self.order) - 1] = out
        copy = out.clone()  # an in-place op further on must not alter the captured tensor
        if is_fixed:
            self.fixed.add(copy.data_ptr())
        return copy


@contextmanager
def _hooks_on(model: nn.Module, capture: _Capture) -> Iterator[None]:
    """Hook ``capture`` on every named submodule of ``model`` (not the model); unhook on exit."""
    handles = []
    try:
        for name, module in model.named_modules():
            if name:
                handles.append(module.register_forward_hook(capture.hook(name, module)))
        yield
    finally:
        for h in handles:
            h.remove()


def _captured_gradients(
    model: nn.Module, images: Tensor, kept: dict[int, Tensor]
) -> dict[int, Tensor | None] | None:
    """Run ``model`` on ``images`` ``[N, C, H, W]`` and differentiate its top logits at the
    outputs ``kept`` fills during the forward: index in order -> gradient (None: unused).

    Returns None when nothing can be told: no differentiable score, or no gradient reaches
    the input at all.
    """
    with torch.enable_grad():
        x = images.detach().clone().requires_grad_(True)
        score = _auto_score(model(x))
        idx = list(kept)
        grads: list[Tensor | None] = [None] * len(idx)
        if score is not None and idx:
            *grads, at_input = torch.autograd.grad(
                score, [*(kept[i] for i in idx), x], allow_unused=True
            )
            if at_input is None or not bool(at_input.ne(0).any()):
                # No gradient reaches the input at all (a zero-initialised head, as
                # torchvision's ViT has): the test tells nothing about the layers.
                score = None
    return None if score is None else dict(zip(idx, grads))


def _has_gradient(
    grad: Tensor | None,
    spec: _Spec,
    input_size: tuple[int, int],
    reshape_transform: Callable[[Tensor], Tensor] | None,
) -> bool:
    """Whether a layer's output gradient ``grad`` (None: unused) is non-zero at its map cells."""
    if grad is None:
        return False
    layout, prefix, _, _ = spec
    grad = reshape_transform(grad) if reshape_transform is not None else grad
    return bool(_to_maps(grad, layout, prefix, input_size).ne(0).any())


def _layer_infos(capture: _Capture, grad_at: dict[int, Tensor | None] | None) -> list[LayerInfo]:
    """The :class:`LayerInfo` of each module called once whose output holds maps, in order
    (``grad_at``: gradients by index in order, None when not measured)."""
    H, W = capture.input_size
    found: list[LayerInfo] = []
    for i, (name, spec, is_fixed) in enumerate(capture.order):
        if spec is None or capture.calls[name] != 1:
            continue
        layout, prefix, channels, (h, w) = spec
        has_grad: bool | None = None
        if grad_at is not None:
            has_grad = _has_gradient(
                grad_at.get(i), spec, capture.input_size, capture.reshape_transform
            )
        found.append(
            LayerInfo(
                name,
                channels,
                (h, w),
                (H, W),
                (H / h, W / w),
                layout=layout,
                prefix_tokens=prefix,
                has_gradient=has_grad,
                fixed_size=is_fixed,
            )
        )
    return found


def find_spatial_layers(
    model: nn.Module,
    images: Tensor,
    reshape_transform: Callable[[Tensor], Tensor] | None = None,
    *,
    gradients: bool = False,
) -> list[LayerInfo]:
    """Run ``model`` once on ``images`` and list the modules whose output holds maps.

    The list is in the order the modules *finished* their forward, so the last entry is the
    last module with maps before the head: for a torchvision ResNet, ``layer4``; for the
    project's SmallCNN, ``features``. Maps are ``[N, K, h, w]`` outputs (``h * w > 1``) and,
    without a ``reshape_transform``, channels-last ``[N, h, w, K]`` outputs (Swin) and token
    outputs ``[N, prefix + h*w, K]`` whose grid is evident from the input size (ViT, DeiT; see
    :attr:`LayerInfo.layout`). Modules called more than once per forward (a shared ``nn.ReLU``)
    and the model itself are left out, since their activation is ambiguous.

    Args:
        model: the (unwrapped) model; run in eval mode (every module's ``training`` flag is
            restored afterwards, so BatchNorm statistics and RNGs are untouched).
        images: ``[N, C, H, W]`` input, a small batch is enough.
        reshape_transform: maps a token layer's output to ``[N, K, h, w]``; when given, it is
            the only reading of a layer's output (no automatic layouts).
        gradients: also measure :attr:`LayerInfo.has_gradient` with one backward pass of the
            top logits (``torch.autograd.grad`` on a copy of the input: parameters' ``.grad``
            stay untouched); otherwise the forward runs under ``torch.no_grad``.
    """
    if images.dim() != 4:
        raise ValueError(
            f"expected images of shape [N, C, H, W], got {tuple(images.shape)}; "
            "add a batch dimension with images.unsqueeze(0)"
        )
    H, W = (int(d) for d in images.shape[-2:])
    capture = _Capture((H, W), int(images.shape[0]), reshape_transform, gradients)
    grad_at: dict[int, Tensor | None] | None = None
    with _hooks_on(model, capture), eval_mode(model):
        if gradients:
            grad_at = _captured_gradients(model, images, capture.kept)
        else:
            with torch.no_grad():
                model(images)
    return _layer_infos(capture, grad_at)


# ----------------------------------------------------------------------------- choice


def _is_layer_norm(module: nn.Module) -> bool:
    name = type(module).__name__
    return isinstance(module, nn.LayerNorm) or "LayerNorm" in name or "RMSNorm" in name


def _block_first_norms(model: nn.Module) -> list[str]:
    """Names of the first norm of every transformer-like block (a module with two or more
    LayerNorm children: ``norm1``/``norm2`` of timm and Swin, ``ln_1``/``ln_2`` of torchvision's
    ViT, ``norm1``/``norm2`` of ``nn.TransformerEncoderLayer``)."""
    names = []
    for name, module in model.named_modules():
        norms = [n for n, c in module.named_children() if _is_layer_norm(c)]
        if len(norms) >= 2:
            names.append(f"{name}.{norms[0]}" if name else norms[0])
    return names


def _size(info: LayerInfo) -> str:
    return f"{info.map_size[0]}x{info.map_size[1]}"


def choose_layer(
    model: nn.Module, infos: Sequence[LayerInfo], min_map_size: int = MIN_MAP_SIZE
) -> LayerInfo:
    """The layer a practitioner would explain, with the reason in :attr:`LayerInfo.reason`.

    Candidates are the layers of ``infos`` (from :func:`find_spatial_layers`, best with
    ``gradients=True``) that are not fixed-size pooling (VGG's ``avgpool``), whose map has the
    input's aspect ratio and whose cells get a gradient. For a model of transformer blocks
    (ViT, DeiT, Swin) only each block's first norm is a candidate: the last block's ``norm1``
    / ``ln_1`` is the last place where the patch tokens still reach the class token (through
    attention), as pytorch-grad-cam recommends. Among the candidates, the deepest whose map
    has at least ``min_map_size`` cells per side wins; when none has, the finest-resolution
    one (the deepest of those).

    Raises:
        ValueError: no candidate (the message says what was found).
    """
    if min_map_size < 1:
        raise ValueError(f"min_map_size must be >= 1, got {min_map_size}")
    pool = [
        i
        for i in infos
        if not i.fixed_size
        and i.has_gradient is not False
        and _aspect_fits(*i.map_size, *i.input_size)
    ]
    norms = set(_block_first_norms(model))
    blocks = [i for i in pool if i.name in norms]
    kind = "layer"
    if blocks:
        pool, kind = blocks, "transformer block's first norm"
    if not pool:
        found = ", ".join(f"{i.name} ({_size(i)})" for i in list(infos)[-5:]) or "none"
        raise ValueError(
            f"{type(model).__name__} has no layer whose maps get a gradient and follow the "
            f"input's size (last layers with maps: {found}); pass target_layer=<name> (and a "
            "reshape_transform for token layers)"
        )
    eligible = [k for k, i in enumerate(pool) if min(i.map_size) >= min_map_size]
    if eligible:
        chosen_idx = eligible[-1]
    else:
        finest = max(i.cells for i in pool)
        chosen_idx = max(k for k, i in enumerate(pool) if i.cells == finest)
    chosen = pool[chosen_idx]
    deeper = [i for i in pool[chosen_idx + 1 :] if i.map_size != chosen.map_size]
    m = f"{min_map_size}x{min_map_size}"
    if eligible:
        reason = f"chosen: deepest {kind} with >= {m} cells"
        if deeper:
            reason += f" ({deeper[-1].name} has {_size(deeper[-1])})"
    else:
        reason = f"chosen: no {kind} reaches {m} cells, so the finest-resolution deepest one"
    return replace(chosen, reason=reason, min_map_size=min_map_size)


def coarse_note(info: LayerInfo, min_map_size: int = MIN_MAP_SIZE) -> LayerInfo:
    """``info`` with ``min_map_size`` set and, when its map is coarse, a reason that says so."""
    info = replace(info, min_map_size=min_map_size)
    if info.coarse and not info.reason:
        m = f"{min_map_size}x{min_map_size}"
        info = replace(
            info,
            reason=f"coarse: fewer than {m} cells, too few to localise a small region",
        )
    return info
