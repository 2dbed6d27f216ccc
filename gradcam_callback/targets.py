"""What is explained: the one target resolver of the library (no Lightning import).

Every explainer (the Grad-CAM engine, guided backpropagation, the quality checks) turns the
user's ``targets`` into one differentiable score per image with :func:`target_scores`:

* ``None``: the predicted class (``argmax`` of a ``[N, num_classes]`` output);
* an ``int``: that class for every image;
* a sequence of ints or an integer Tensor ``[N]``: a class per image;
* a callable ``output -> Tensor [N]``: any score (dict / tuple outputs, multi-label, regression).

:func:`class_indices` validates class targets without a model output (for checks that fix the
classes once and score many perturbed copies), :func:`freeze_targets` fixes ``None`` to the
predictions once. The messages say what was expected and how to fix it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "TargetScores",
    "TargetSpec",
    "class_indices",
    "freeze_targets",
    "is_score_fn",
    "target_scores",
]

#: What to explain: ``None`` (predicted class), an ``int`` (that class for all), a sequence or
#: integer Tensor ``[N]`` (a class per image), or a callable ``output -> Tensor [N]`` of scores.
TargetSpec = int | Sequence[int] | Tensor | Callable[[Any], Tensor] | None


@dataclass(frozen=True)
class TargetScores:
    """One score per image and, for class targets, the classes scored.

    Attributes:
        scores: float32 ``[N]``, differentiable when the output is (softmax probabilities with
            ``softmax=True``, else the output as is).
        indices: long ``[N]`` class indices on the output's device, or ``None`` for a callable.
    """

    scores: Tensor
    indices: Tensor | None


def is_score_fn(targets: TargetSpec) -> bool:
    """``True`` when ``targets`` is a score callable (a Tensor is callable-free data)."""
    return callable(targets) and not isinstance(targets, Tensor)


def class_indices(
    targets: int | Sequence[int] | Tensor,
    n: int,
    *,
    num_classes: int | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Class targets as a long Tensor ``[n]`` on ``device``.

    Args:
        targets: an ``int`` (that class for all ``n`` images), or a sequence / integer Tensor
            with one class per image.
        n: the number of images.
        num_classes: when given, every class must lie in ``[0, num_classes)``. The range check
            runs only where the indices are on the host (a list, or a CPU Tensor), so a device
            Tensor never causes a host synchronisation.
        device: where the result lives (default: the Tensor's own device, or the CPU).

    Raises:
        ValueError: not one class per image, non-integer classes, or classes out of range.
    """
    if isinstance(targets, int):
        if num_classes is not None and not 0 <= targets < num_classes:
            raise ValueError(f"target class {targets} is outside [0, {num_classes})")
        return torch.full((n,), targets, dtype=torch.long, device=device)
    idx = torch.as_tensor(targets, device=device)
    if idx.dim() != 1 or idx.shape[0] != n:
        raise ValueError(
            f"targets must have one class per image: expected shape [{n}], got {tuple(idx.shape)}"
        )
    if idx.is_floating_point() or idx.is_complex():
        raise ValueError(f"class targets must be integers, got dtype {idx.dtype}")
    idx = idx.long()
    on_host = not isinstance(targets, Tensor) or targets.device.type == "cpu"
    if num_classes is not None and on_host:
        host = torch.as_tensor(targets)
        if host.numel() and (host.min() < 0 or host.max() >= num_classes):
            raise ValueError(
                f"target classes must lie in [0, {num_classes}), got min {int(host.min())} "
                f"and max {int(host.max())}"
            )
    return idx


def target_scores(
    output: Any, targets: TargetSpec, n: int, *, softmax: bool = False
) -> TargetScores:
    """The score of each image's target in a model ``output`` (for a batch of ``n`` images).

    Args:
        output: the model's output: logits ``[N, num_classes]`` for class targets; anything a
            callable target reads otherwise.
        targets: see :data:`TargetSpec`.
        n: the batch size ``N``.
        softmax: score class targets by their softmax probability instead of the raw output
            (ignored for a callable, whose scores are used as returned).

    Returns:
        :class:`TargetScores`: float32 ``scores [N]`` and ``indices [N]`` (``None`` for a
        callable).

    Raises:
        ValueError: a callable that does not return a Tensor ``[N]``; class targets with an
            output that is not ``[N, num_classes]``; bad class targets (see
            :func:`class_indices`).
    """
    if is_score_fn(targets):
        scores = targets(output)
        if not isinstance(scores, Tensor) or scores.shape != (n,):
            got = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
            raise ValueError(
                f"a target callable must return a Tensor of shape [N] = [{n}] (one score per "
                f"image), got {got}"
            )
        return TargetScores(scores.float(), None)
    if not isinstance(output, Tensor) or output.dim() != 2:
        got = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise ValueError(
            f"class targets need a model output of shape [N, num_classes], got {got}; pass "
            "targets=callable(output) -> Tensor[N] for dict, tuple, multi-label or regression "
            "outputs"
        )
    if targets is None:
        idx = output.detach().argmax(dim=1)
    else:
        idx = class_indices(targets, n, num_classes=output.shape[1], device=output.device)
    values = output.float().softmax(1) if softmax else output
    return TargetScores(values.gather(1, idx[:, None])[:, 0].float(), idx)


def freeze_targets(
    targets: TargetSpec,
    n: int,
    predict: Callable[[], Any],
    device: torch.device | str | None = None,
) -> Tensor | Callable[[Any], Tensor]:
    """Fix the classes once, for checks that score many modified copies of the same images.

    Args:
        targets: see :data:`TargetSpec`.
        n: the number of images.
        predict: called (once, and only when ``targets`` is ``None``) for the unmodified
            images' output; its ``argmax`` gives the classes.
        device: where the class indices live.

    Returns:
        long ``[n]`` class indices on ``device`` (the predictions for ``None``), or the callable
        itself.
    """
    if is_score_fn(targets):
        return targets
    if targets is None:
        idx = target_scores(predict(), None, n).indices
        assert idx is not None
        return idx.to(device) if device is not None else idx
    return class_indices(targets, n, device=device)
