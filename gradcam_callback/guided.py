"""Guided backpropagation and Guided Grad-CAM, batched (no Lightning import).

Guided backpropagation (Springenberg et al., 2015) is the gradient of the target score with
respect to the input in which every ReLU passes back only *positive* gradients, and only where its
input was positive: ``dL/dx = ReLU(dL/dy) * [x > 0]``. Guided Grad-CAM (Selvaraju et al., 2017)
multiplies it by the upsampled Grad-CAM map to get a class-discriminative, pixel-sharp map.

How the ReLUs are modified: a :class:`torch.overrides.TorchFunctionMode` is active during the one
forward pass. Every ReLU call (``nn.ReLU`` modules, in-place or not, ``F.relu``, ``F.relu_``,
``torch.relu``, ``Tensor.relu`` / ``relu_``) on a tensor that requires grad is replaced by one
custom autograd function computing the same ``max(x, 0)`` (in place when the call was in place,
via ``ctx.mark_dirty``, so code that calls ``x.relu_()`` and keeps using ``x`` is covered too) with
the backward ``ReLU(g) * [y > 0]``. The forward values are bit-identical to the plain model's.
Nothing is registered on the model: no module swap, no backward hook, so there is nothing to
restore beyond module train/eval flags, and the mode is gone when the ``with`` block exits, even
on error. Gradients come from ``torch.autograd.grad`` with respect to the input only; no
parameter's ``.grad`` is touched. ReLU6, LeakyReLU, GELU and clamps are left unguided.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .engine import GradCAM
from .layers import eval_mode, unwrap_model
from .targets import TargetSpec, target_scores

__all__ = ["guided_backprop", "guided_gradcam"]


class _GuidedReLU(torch.autograd.Function):
    """``y = max(x, 0)`` (in place when asked) whose backward is ``ReLU(g) * [y > 0]``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, inplace: bool) -> Tensor:
        if inplace:
            ctx.mark_dirty(x)
            y = x.clamp_min_(0)
        else:
            y = x.clamp_min(0)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (y,) = ctx.saved_tensors
        return grad.clamp_min(0) * (y > 0).to(grad.dtype), None


_INPLACE_RELUS: tuple[Callable[..., Any], ...] = (torch.relu_, Tensor.relu_)
_RELUS: tuple[Callable[..., Any], ...] = (F.relu, torch.relu, Tensor.relu, *_INPLACE_RELUS)


def _one_of(func: Callable[..., Any], funcs: tuple[Callable[..., Any], ...]) -> bool:
    return any(func is f for f in funcs)  # identity: some torch callables are not hashable


class _GuidedReLUMode(TorchFunctionMode):
    """Runs every ReLU call as :class:`_GuidedReLU` while active (see the module docstring)."""

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if _one_of(func, _RELUS) and torch.is_grad_enabled():
            x = args[0] if args else kwargs.get("input")
            if isinstance(x, Tensor) and x.requires_grad:
                inplace = _one_of(func, _INPLACE_RELUS) or bool(
                    args[1] if len(args) > 1 else kwargs.get("inplace", False)
                )
                return _GuidedReLU.apply(x, inplace)
        return func(*args, **kwargs)


def guided_backprop(model: nn.Module, images: Tensor, targets: TargetSpec = None) -> Tensor:
    """Guided-backpropagation gradients of the target scores with respect to the images.

    Cost: one forward and one backward pass of the batch. The model runs in eval mode (every
    module's own flag is restored afterwards); images are independent, so the batch result equals
    the per-image results.

    Args:
        model: any image model (``torch.compile`` / DDP wrappers are unwrapped). Not modified.
        images: ``[N, C, H, W]``.
        targets: ``None`` (predicted class), an ``int``, a LongTensor / sequence ``[N]``, or a
            callable ``output -> Tensor [N]`` of scores.

    Returns:
        float32 ``[N, C, H, W]`` on ``images.device``, unnormalised (signed, any range).
    """
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise ValueError("expected images of shape [N, C, H, W]")
    model = unwrap_model(model)
    with eval_mode(model), torch.inference_mode(False), torch.enable_grad():
        x = images.detach().clone().requires_grad_(True)
        with _GuidedReLUMode():
            output = model(x)
        scores = target_scores(output, targets, x.shape[0]).scores
        (grad,) = torch.autograd.grad(scores.sum(), x, allow_unused=True)
    if grad is None:
        return torch.zeros_like(images, dtype=torch.float32)
    return grad.float()


def guided_gradcam(engine: GradCAM, images: Tensor, targets: TargetSpec = None) -> Tensor:
    """Guided Grad-CAM: guided backprop times the upsampled, normalised map of ``engine``.

    Cost: two forward and two backward passes of the batch (one for the engine's map, one for
    guided backpropagation); the class explained is the engine's (the predicted class when
    ``targets`` is ``None``), so both factors explain the same class.

    Args:
        engine: a :class:`~gradcam_callback.engine.GradCAM` (any method, any target layers).
        images: ``[N, C, H, W]``.
        targets: as for :meth:`GradCAM.explain`.

    Returns:
        float32 ``[N, C, H, W]`` on ``images.device``: ``guided[n, c] * cam[n]`` with ``cam`` in
        ``[0, 1]``; signed and unnormalised (normalise for display).
    """
    res = engine.explain(images, targets, upsample=True, normalize=True)
    tgt: TargetSpec = res.targets if res.targets is not None else targets
    gb = guided_backprop(engine.model, images, tgt)
    return gb * res.maps[:, None].to(gb.dtype)


def _guided_method(self: GradCAM, images: Tensor, targets: TargetSpec = None) -> Tensor:
    """Guided Grad-CAM: guided backpropagation times the upsampled, normalised map.

    Returns float32 ``[N, C, H, W]`` (fine-grained and class-discriminative); costs two
    forward + backward passes. Same as :func:`gradcam_callback.guided.guided_gradcam`.
    """
    return guided_gradcam(self, images, targets)


# ``GradCAM.guided`` is installed from here, so the engine never imports this module (the import
# graph runs one way: guided -> engine). The package's ``__init__`` imports this module, so the
# method exists whenever any part of gradcam_callback is imported.
GradCAM.guided = _guided_method  # type: ignore[attr-defined]
