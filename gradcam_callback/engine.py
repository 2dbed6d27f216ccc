"""Batched Grad-CAM family on any :class:`torch.nn.Module` (no Lightning import).

One call runs **one** forward pass of the whole batch and **one** ``torch.autograd.grad`` from the
target scores down to the target layer(s), on the input's device:

* the layers *below* the (first) target layer run under ``torch.no_grad``: their autograd graph is
  never built, so memory stays near an inference-only forward;
* a forward hook on the target layer swaps its output for a detached leaf that requires grad,
  switches grad mode on for the rest of the forward and hands the next layer a copy (so in-place
  ops after the target layer, like ``ReLU(inplace=True)``, cannot modify the captured activation);
* ``torch.autograd.grad`` (never ``.backward()``) returns the gradients at that leaf without
  touching any parameter's ``.grad``.

Map math (weights, weighted sums, ReLU, upsampling, normalisation) runs in float32 whatever the
model's dtype or autocast state. There is no per-image Python loop, no numpy round trip and no host
synchronisation before the result is returned.

Methods, with ``A`` the activations ``[N, K, h, w]`` and ``G = dy^c/dA`` their gradients:

=============  ===============================================================================
``gradcam``    ``w_k = mean_ij G_kij``; ``L = ReLU(sum_k w_k A_k)`` (Selvaraju et al., 2017)
``gradcam++``  ``w_k = sum_ij a_kij ReLU(G_kij)`` with
               ``a = G^2 / (2 G^2 + sum_ij(A) G^3)`` (Chattopadhay et al., 2018)
``hirescam``   ``L = ReLU(sum_k G_k * A_k)`` elementwise, no pooling (Draelos & Carin, 2020)
``xgradcam``   ``w_k = sum_ij A_kij G_kij / sum_ij A_kij`` (Fu et al., 2020)
``layercam``   ``L = ReLU(sum_k ReLU(G_k) * A_k)`` elementwise (Jiang et al., 2021)
=============  ===============================================================================
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import (
    MIN_MAP_SIZE,
    LayerInfo,
    LayerSpec,
    choose_layer,
    coarse_note,
    eval_mode,
    find_spatial_layers,
    resolve_target_layers,
    unwrap_model,
)
from .targets import TargetSpec, target_scores

__all__ = ["METHODS", "CAMResult", "GradCAM", "Method", "TargetSpec", "normalize_maps"]

Method = Literal["gradcam", "gradcam++", "hirescam", "xgradcam", "layercam"]
METHODS: tuple[str, ...] = ("gradcam", "gradcam++", "hirescam", "xgradcam", "layercam")

_EPS = 1e-7
_REL_EPS = 1e-6


@dataclass
class CAMResult:
    """Everything one engine call produced.

    Attributes:
        maps: float32 ``[N, H, W]`` (or ``[N, h, w]`` with ``upsample=False``) on the input's device.
        output: the model's output for the batch, detached (logits ``[N, K]`` for a classifier).
        scores: float32 ``[N]``, the target score of each image (before any counterfactual sign).
        targets: long ``[N]`` class indices, or ``None`` when targets came from a callable.
    """

    maps: Tensor
    output: Any
    scores: Tensor
    targets: Tensor | None


def normalize_maps(maps: Tensor) -> Tensor:
    """Min-max normalise each map of ``[N, ...]`` to ``[0, 1]``; a constant map becomes all zeros.

    Scale-invariant: a map counts as constant when its range is below ``1e-6`` of its largest
    magnitude (float32 rounding), so raw maps with tiny values (small gradients) keep their shape.
    """
    flat = maps.flatten(1)
    lo = flat.amin(dim=1, keepdim=True)
    hi = flat.amax(dim=1, keepdim=True)
    span = hi - lo
    varies = span > _REL_EPS * torch.maximum(lo.abs(), hi.abs())  # False for an all-zero map
    out = torch.where(varies, (flat - lo) / torch.where(varies, span, 1.0), 0.0)
    return out.view_as(maps)


class _Capture:
    """Forward hooks that capture target activations and turn grad mode on above them."""

    def __init__(self, names: list[str], reshape_transform: Callable[[Tensor], Tensor] | None):
        self.names = names
        self.reshape_transform = reshape_transform
        self.acts: dict[str, Tensor] = {}
        self.calls: dict[str, int] = {}

    def hook(self, name: str) -> Callable[[nn.Module, Any, Any], Tensor]:
        def fn(_m: nn.Module, _inp: Any, out: Any) -> Tensor:
            if not isinstance(out, Tensor):
                raise TypeError(
                    f"target layer {name!r} returned {type(out).__name__}, not a Tensor; "
                    "choose a layer that outputs a feature map tensor"
                )
            self.calls[name] = self.calls.get(name, 0) + 1
            if self.calls[name] > 1:
                raise RuntimeError(
                    f"target layer {name!r} ran more than once in one forward (a shared module, "
                    "such as a reused nn.ReLU); choose a layer that runs once, e.g. its parent block"
                )
            if out.requires_grad and torch.is_grad_enabled():
                # Already inside the differentiable region (a later target layer): keep the graph
                # so gradients reach earlier targets through this one.
                leaf = out
            else:
                leaf = out.detach().requires_grad_(True)
            self.acts[name] = leaf
            torch.set_grad_enabled(True)  # restored by the caller's no_grad context on exit
            # Hand the next layer a copy: an in-place op there must not alter the captured tensor.
            return leaf.clone()

        return fn


class GradCAM:
    """Batched Grad-CAM and variants for any image model.

    Example::

        >>> import torch, torchvision
        >>> model = torchvision.models.resnet18(num_classes=10).eval()
        >>> cam = GradCAM(model)                       # auto: here "layer4" (7x7 at 224 px)
        >>> maps = cam(torch.randn(4, 3, 224, 224))    # explain the predicted classes
        >>> maps.shape, maps.dtype
        (torch.Size([4, 224, 224]), torch.float32)
        >>> print(cam.describe())
        layer4: 512 maps of 7x7 for a 224x224 input (stride 32); chosen: deepest layer with >= 7x7 cells

    Guided Grad-CAM is ``cam.guided(images, targets)``, float32 ``[N, C, H, W]``: the method is
    installed by :mod:`gradcam_callback.guided`, which builds on this module (never the reverse).

    Args:
        model: any module mapping ``[N, C, H, W]`` images to an output (logits ``[N, K]`` by
            default; dicts, tuples or other outputs with a callable target). ``torch.compile``,
            ``DataParallel`` and ``DistributedDataParallel`` wrappers are unwrapped.
        target_layer: ``None`` (automatic, on the first real input: the deepest layer before the
            head whose map has at least ``min_map_size`` cells per side and gets a gradient; for
            vision transformers the last block's first norm; see
            :func:`~gradcam_callback.layers.choose_layer`), a dotted name from
            ``model.named_modules()``, a submodule, or a list of these (maps upsampled to the
            input size and averaged).
        method: ``"gradcam"``, ``"gradcam++"``, ``"hirescam"``, ``"xgradcam"`` or ``"layercam"``.
        reshape_transform: maps a layer output to ``[N, K, h, w]``, e.g.
            ``lambda t: t[:, 1:].reshape(n, 14, 14, -1).permute(0, 3, 1, 2)``; applied to both
            activations and gradients. Not needed for token outputs ``[N, prefix + h*w, K]``
            whose grid is evident from the input size (ViT, DeiT) or channels-last outputs
            ``[N, h, w, K]`` (Swin): those are recognised and reshaped automatically.
        min_map_size: fewest cells per side for the automatic choice (default 7: a map of fewer
            cells cannot localise anything smaller than a cell); an explicit layer with a
            smaller map is kept, and its :attr:`LayerInfo.coarse` is True.

    Raises:
        ValueError: unknown method or layer name (with the closest names).
    """

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayerSpec = None,
        method: Method | str = "gradcam",
        reshape_transform: Callable[[Tensor], Tensor] | None = None,
        min_map_size: int = MIN_MAP_SIZE,
    ) -> None:
        if isinstance(min_map_size, bool) or not isinstance(min_map_size, int) or min_map_size < 1:
            raise ValueError(f"min_map_size must be an int >= 1, got {min_map_size!r}")
        if method not in METHODS:
            import difflib

            close = difflib.get_close_matches(str(method).lower(), METHODS, n=1, cutoff=0.4)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"Unknown method {method!r}; choose one of {', '.join(METHODS)}.{hint}"
            )
        self.model = unwrap_model(model)
        self.method = method
        self.reshape_transform = reshape_transform
        self.min_map_size = min_map_size
        self._spec = target_layer
        self._layers: list[tuple[str, nn.Module]] | None = (
            None if target_layer is None else resolve_target_layers(self.model, target_layer)
        )
        self._info: list[LayerInfo] | None = None

    # ------------------------------------------------------------------ layers
    @property
    def target_layers(self) -> list[str]:
        """Names of the target layers (resolved on the first call when automatic)."""
        if self._layers is None:
            raise RuntimeError("the target layer is chosen on the first input; call resolve(x)")
        return [n for n, _ in self._layers]

    def resolve(self, images: Tensor) -> list[LayerInfo]:
        """Choose (when automatic) and measure the target layers on ``images`` ``[N, C, H, W]``.

        Runs one forward with the model in eval mode (restored afterwards) and caches the
        result; the automatic choice also runs one backward of the top logit (on a copy of the
        input, with ``torch.autograd.grad``: no parameter's ``.grad`` is touched) to skip layers
        whose maps get no gradient. Call it at set-up to surface layer errors before training
        starts.

        Raises:
            ValueError: no module has maps (a 4-D spatial, channels-last or token output with
                an evident grid; other token models need ``target_layer`` and
                ``reshape_transform``), or a chosen layer does not produce them.
        """
        x = images[:1]
        auto = self._layers is None
        with eval_mode(self.model), torch.inference_mode(False):
            if x.is_inference():
                x = x.clone()
            try:
                infos = find_spatial_layers(self.model, x, self.reshape_transform, gradients=auto)
            except Exception:
                if not auto:
                    raise
                # The gradient pass failed (e.g. an in-place op on the input that autograd
                # refuses): choose without the gradient test; a real fault raises again here.
                infos = find_spatial_layers(self.model, x, self.reshape_transform)
        if self._layers is None:
            if not infos:
                raise ValueError(
                    f"{type(self.model).__name__} has no layer with a 4-D spatial output "
                    "[N, K, h, w] (h*w > 1) for this input; Grad-CAM needs one. For a vision "
                    "transformer or other token model whose token grid is not evident from the "
                    "input size, pass target_layer=<block name> and a reshape_transform that "
                    "maps tokens to [N, K, h, w]."
                )
            chosen = choose_layer(self.model, infos, self.min_map_size)
            self._layers = resolve_target_layers(self.model, chosen.name)
            self._info = [chosen]
        else:
            by_name = {i.name: i for i in infos}
            missing = [n for n, _ in self._layers if n not in by_name]
            if missing:
                spatial = [i.name for i in infos][-5:]
                raise ValueError(
                    f"target layer(s) {missing} do not produce a 4-D spatial output [N, K, h, w] "
                    f"exactly once per forward for an input of shape {tuple(images.shape)}. "
                    f"Layers that do (last five): {spatial}. For token layers, pass a "
                    "reshape_transform."
                )
            self._info = [coarse_note(by_name[n], self.min_map_size) for n, _ in self._layers]
        return list(self._info)

    def describe(self) -> str:
        """One line per target layer: name, channels, map size and stride (after ``resolve``)."""
        if self._info is None:
            return (
                f"GradCAM(method={self.method!r}, target_layer={self._spec!r}) (not resolved yet)"
            )
        return "\n".join(str(i) for i in self._info)

    @property
    def layer_info(self) -> list[LayerInfo]:
        """:class:`LayerInfo` of each target layer, measured on the first input."""
        if self._info is None:
            raise RuntimeError("call resolve(images) or the engine first")
        return list(self._info)

    # ------------------------------------------------------------------ compute
    def __call__(
        self,
        images: Tensor,
        targets: TargetSpec = None,
        *,
        upsample: bool = True,
        normalize: bool = True,
        relu: bool = True,
        counterfactual: bool = False,
    ) -> Tensor:
        """Maps for ``images`` ``[N, C, H, W]``: float32 ``[N, H, W]`` on ``images.device``.

        Args:
            targets: ``None`` (predicted class), an ``int`` (that class for all), a sequence or
                LongTensor ``[N]`` (a class per image), or a callable ``output -> Tensor [N]`` of
                scores (dict/tuple outputs, multi-label, regression).
            upsample: bilinear (``align_corners=False``) to the input's ``H x W``; otherwise the
                map stays at layer resolution ``[N, h, w]``.
            normalize: per-map min-max to ``[0, 1]`` (a constant map becomes all zeros).
            relu: ``False`` keeps the signed map (evidence against the class is negative).
            counterfactual: weights from the negated gradient: regions whose increase would
                lower the target score.
        """
        return self.explain(
            images,
            targets,
            upsample=upsample,
            normalize=normalize,
            relu=relu,
            counterfactual=counterfactual,
        ).maps

    def explain(
        self,
        images: Tensor,
        targets: TargetSpec = None,
        *,
        upsample: bool = True,
        normalize: bool = True,
        relu: bool = True,
        counterfactual: bool = False,
    ) -> CAMResult:
        """Like ``__call__`` but also returns the model output, target scores and targets."""
        if not isinstance(images, Tensor) or images.dim() != 4:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"expected images of shape [N, C, H, W], got {shape}")
        if self._layers is None or self._info is None:
            self.resolve(images)
        assert self._layers is not None and self._info is not None
        names = [n for n, _ in self._layers]
        capture = _Capture(names, self.reshape_transform)
        handles = [m.register_forward_hook(capture.hook(n)) for n, m in self._layers]
        try:
            with eval_mode(self.model), torch.inference_mode(False), torch.no_grad():
                x = images.clone() if images.is_inference() else images
                output = self.model(x)
                if len(capture.acts) != len(names):
                    missing = [n for n in names if n not in capture.acts]
                    raise RuntimeError(f"target layer(s) {missing} did not run in the forward")
                resolved = target_scores(output, targets, x.shape[0])
                scores, target_idx = resolved.scores, resolved.indices
                acts = [capture.acts[n] for n in names]
                if not scores.requires_grad:
                    raise RuntimeError(
                        f"the target scores do not depend on the target layer(s) {names} through "
                        "autograd, so there is no gradient to weight the maps with. Does the "
                        "model's forward run that part under torch.no_grad() (a frozen linear "
                        "probe), or detach it? Run it with grad enabled (freeze with "
                        "requires_grad_(False) instead), or pick a layer the output depends on."
                    )
                grads = torch.autograd.grad(scores.sum(), acts, allow_unused=True)
        finally:
            for h in handles:
                h.remove()
        # Map math in float32 even under the caller's autocast (einsum would run in bf16/fp16).
        with torch.inference_mode(False), _no_autocast(images.device.type):
            maps = self._combine(
                acts, grads, self._info, images.shape[-2:], upsample, relu, counterfactual
            )
            if normalize:
                maps = normalize_maps(maps)
        return CAMResult(maps, _detach(output), scores.detach().float(), target_idx)

    def _combine(
        self,
        acts: list[Tensor],
        grads: Sequence[Tensor | None],
        infos: Sequence[LayerInfo],
        size: torch.Size,
        upsample: bool,
        relu: bool,
        counterfactual: bool,
    ) -> Tensor:
        layer_maps = []
        hw = (int(size[0]), int(size[1]))
        for a, g, info in zip(acts, grads, infos):
            a = a.detach()
            g = torch.zeros_like(a) if g is None else g.detach()
            if self.reshape_transform is not None:
                a, g = self.reshape_transform(a), self.reshape_transform(g)
            else:  # token and channels-last layers as [N, K, h, w]
                a, g = info.to_maps(a, hw), info.to_maps(g, hw)
            a, g = a.float(), g.float()
            if counterfactual:
                g = -g
            cam = _cam(self.method, a, g)
            if relu:
                cam = cam.clamp_min(0)
            layer_maps.append(cam)
        if upsample:
            out_size = (int(size[0]), int(size[1]))
        else:  # several layers at layer resolution: bring all to the finest map
            out_size = max((m.shape[-2:] for m in layer_maps), key=lambda s: s[0] * s[1])
            out_size = (int(out_size[0]), int(out_size[1]))
        resized = [
            m
            if tuple(m.shape[-2:]) == out_size
            else F.interpolate(m[:, None], size=out_size, mode="bilinear", align_corners=False)[
                :, 0
            ]
            for m in layer_maps
        ]
        if len(resized) == 1:
            return resized[0].contiguous()
        return torch.stack(resized).mean(0)


def _cam(method: str, a: Tensor, g: Tensor) -> Tensor:
    """Un-rectified map ``[N, h, w]`` from activations and gradients ``[N, K, h, w]`` (float32)."""
    if method == "gradcam":
        w = g.mean(dim=(2, 3))
        return torch.einsum("nk,nkhw->nhw", w, a)
    if method == "hirescam":
        return (g * a).sum(1)
    if method == "layercam":
        return (g.clamp_min(0) * a).sum(1)
    if method == "xgradcam":
        denom = a.sum(dim=(2, 3))
        w = (a * g).sum(dim=(2, 3)) / torch.where(denom.abs() > _EPS, denom, torch.ones_like(denom))
        return torch.einsum("nk,nkhw->nhw", w, a)
    if method == "gradcam++":
        g2 = g.pow(2)
        g3 = g2 * g
        denom = 2 * g2 + a.sum(dim=(2, 3), keepdim=True) * g3
        alpha = g2 / torch.where(denom != 0, denom, torch.ones_like(denom))
        w = (alpha * g.clamp_min(0)).sum(dim=(2, 3))
        return torch.einsum("nk,nkhw->nhw", w, a)
    raise ValueError(f"unknown method {method!r}")  # pragma: no cover - checked in __init__


def _no_autocast(device_type: str) -> contextlib.AbstractContextManager[Any]:
    """Disable autocast for ``device_type`` (a no-op where autocast does not exist)."""
    available = getattr(torch.amp, "is_autocast_available", None)
    ok = available(device_type) if available is not None else device_type in ("cpu", "cuda")
    return torch.autocast(device_type, enabled=False) if ok else contextlib.nullcontext()


def _detach(output: Any) -> Any:
    if isinstance(output, Tensor):
        return output.detach()
    if isinstance(output, dict):
        return {k: _detach(v) for k, v in output.items()}
    if isinstance(output, tuple) and hasattr(output, "_fields"):  # namedtuple
        return type(output)(*(_detach(v) for v in output))
    if isinstance(output, list | tuple):
        return type(output)(_detach(v) for v in output)
    return output
