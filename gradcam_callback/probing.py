"""One run's explanation of the probe set: maps in chunks, sharded over ranks; the score function.

:func:`explain_probes` runs the engine over the probes in chunks of ``batch_size`` (through the
trainer's precision plugin) and returns everything a run needs: raw maps at layer resolution,
target scores, logits and targets. Under DDP each rank explains every ``world``-th probe and the
results are gathered (``gather``), so a run's cost per rank falls with the number of ranks while
every rank ends up with the same tensors, hence the same metrics and flags.

:func:`score_function` is the model as the causal checks and quality metrics see it: eval mode,
no grad, chunked, sharded the same way, logits as float32 ``[N, K]``.

No Lightning import: the callback passes the plugin, the shard and the gather function.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .alarms import Flag
from .engine import GradCAM
from .layers import eval_mode
from .quality import deletion_curve, occlusion_agreement, occlusion_map, randomization_check
from .rules import FlagKind

__all__ = [
    "Explained",
    "Shard",
    "explain_probes",
    "quality_metrics",
    "sanity_check",
    "score_function",
]

Gather = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Shard:
    """This process's share of the probes: every ``world``-th one, starting at ``rank``.

    Attributes:
        rank, world: the global rank and the world size.
        gather: ``tensor [*shape] -> [world, *shape]`` from every rank (the strategy's
            ``all_gather``); unused when ``world == 1``.
    """

    rank: int = 0
    world: int = 1
    gather: Gather | None = None

    def indices(self, n: int) -> tuple[Tensor, int]:
        """This rank's probe indices, padded (with its first index) to ``ceil(n / world)``."""
        per = math.ceil(n / self.world)
        idx = torch.arange(self.rank, n, self.world)
        if idx.numel() < per:
            pad = idx[:1] if idx.numel() else torch.zeros(1, dtype=torch.long)
            idx = torch.cat([idx, pad.expand(per - idx.numel())])
        return idx, per

    def assemble(self, local: Tensor, n: int) -> Tensor:
        """Gather every rank's ``[per, ...]`` results into the ``[n, ...]`` probe order."""
        if self.world == 1:
            return local[:n]
        assert self.gather is not None, "a sharded run needs a gather function"
        full = self.gather(local.contiguous())  # [world, per, ...]: rank r, slot j = r + j*world
        return full.transpose(0, 1).reshape(-1, *local.shape[1:])[:n]


@dataclass
class Explained:
    """A run's engine results for all ``N`` probes (on the model's device).

    Attributes:
        maps: float32 ``[N, h, w]`` raw maps at layer resolution (ReLU'd, not normalised).
        scores: float32 ``[N]`` target scores.
        logits: float32 ``[N, K]`` model outputs, or ``None`` (non-tensor outputs, ``target_fn``).
        targets: long ``[N]`` explained classes, or ``None`` (a ``target_fn``).
    """

    maps: Tensor
    scores: Tensor
    logits: Tensor | None
    targets: Tensor | None


def explain_probes(
    engine: GradCAM,
    images: Tensor,
    targets: Tensor | Callable[[Any], Tensor] | None,
    *,
    batch_size: int,
    convert: Callable[[Tensor], Tensor] = lambda x: x,
    context: Callable[[], Any] | None = None,
    shard: Shard = Shard(),
) -> Explained:
    """Explain ``images`` ``[N, C, H, W]`` (this rank's share, gathered) in chunks.

    Args:
        engine: the callback's engine (resolved).
        images: the probe images on the model's device.
        targets: long ``[N]`` classes, a ``target_fn`` callable, or ``None`` (predicted).
        batch_size: probes per forward.
        convert: the precision plugin's ``convert_input``.
        context: the precision plugin's ``forward_context`` factory.
        shard: this rank's share and the gather function.
    """
    n = images.shape[0]
    idx, _ = shard.indices(n)
    idx = idx.to(images.device)
    local_targets = targets[idx] if isinstance(targets, Tensor) else targets
    maps, scores, logits, found = [], [], [], []
    for start in range(0, idx.numel(), batch_size):
        sel = idx[start : start + batch_size]
        t = local_targets[start : start + batch_size] if isinstance(targets, Tensor) else targets
        with context() if context is not None else _null():
            res = engine.explain(convert(images[sel]), t, upsample=False, normalize=False)
        maps.append(res.maps)
        scores.append(res.scores)
        logits.append(res.output.float() if isinstance(res.output, Tensor) else None)
        found.append(res.targets)
    out_logits = None
    if all(isinstance(x, Tensor) and x.dim() == 2 for x in logits):
        out_logits = shard.assemble(torch.cat(logits), n)  # type: ignore[arg-type]
    out_targets = None
    if all(t is not None for t in found):
        out_targets = shard.assemble(torch.cat(found), n)  # type: ignore[arg-type]
    return Explained(
        maps=shard.assemble(torch.cat(maps), n),
        scores=shard.assemble(torch.cat(scores), n),
        logits=out_logits,
        targets=out_targets,
    )


def score_function(
    model: nn.Module,
    *,
    batch_size: int,
    dtype: torch.dtype = torch.float32,
    target_fn: Callable[[Any], Tensor] | None = None,
    convert: Callable[[Tensor], Tensor] = lambda x: x,
    context: Callable[[], Any] | None = None,
    eager: Callable[[], Any] | None = None,
    shard: Shard = Shard(),
) -> Callable[[Tensor], Tensor]:
    """``images [N, C, H, W] -> float32 logits [N, K]`` for causal checks and quality metrics.

    The model runs in eval mode (restored), without grad, in chunks, each rank on its share.
    Images are rounded back to an integer input ``dtype`` first (uint8 probes: erased pixels are
    computed in float). With ``target_fn`` its score ``s [N]`` comes as binary logits ``[s, 0]``
    (class 0 is the target, and its log-odds are ``s``).
    """

    def score(images: Tensor) -> Tensor:
        n = images.shape[0]
        idx, _ = shard.indices(n)
        idx = idx.to(images.device)
        outs = []
        with eval_mode(model), torch.no_grad(), eager() if eager is not None else _null():
            for start in range(0, idx.numel(), batch_size):
                x = _as_dtype(images[idx[start : start + batch_size]], dtype)
                with context() if context is not None else _null():
                    out = model(convert(x))
                outs.append(_as_logits(out, target_fn))
        return shard.assemble(torch.cat(outs), n)

    return score


def quality_metrics(
    score_fn: Callable[[Tensor], Tensor],
    images: Tensor,
    maps: Tensor,
    targets: Tensor,
    *,
    softmax: bool,
    deletion_steps: int = 0,
    occlusion: bool = False,
) -> dict[str, float]:
    """The opt-in quality metrics of a run: deletion-curve AUC (``deletion_steps`` > 0) and the
    occlusion cross-check (patch = 1/8 of the image side, stride = half a patch).

    Returns:
        ``{"faithfulness/deletion_auc": ..., "attention/occlusion_agreement": ...}`` (those run).
    """
    out: dict[str, float] = {}
    if deletion_steps:
        report = deletion_curve(
            score_fn, images.float(), maps, targets, steps=deletion_steps, softmax=softmax
        )
        out["faithfulness/deletion_auc"] = float(report.auc.mean())
    if occlusion:
        patch = max(2, min(images.shape[-2:]) // 8)
        occ = occlusion_map(
            score_fn, images.float(), targets, patch=patch, stride=max(1, patch // 2)
        )
        out["attention/occlusion_agreement"] = float(occlusion_agreement(maps, occ).nanmean())
    return out


def sanity_check(
    model: nn.Module,
    probes: Any,
    target_layers: list[str],
    method: str,
    *,
    use_labels: bool,
    epoch: int,
    step: int,
    prefix: str,
) -> tuple[dict[str, float], Flag | None]:
    """The model-parameter randomisation test (Adebayo et al. 2018) on a copy of the model.

    Returns:
        ``(summary, flag)``: ``sanity/...`` values, and an ``"unfaithful"`` flag when the maps
        barely change as the weights are randomised (else ``None``).
    """
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    images = probes.images.to(device)
    labels = probes.labels
    targets = labels.to(device) if use_labels and labels is not None else None
    report = randomization_check(model, images, targets, target_layer=target_layers, method=method)
    summary = {f"sanity/{k}": float(v) for k, v in report.summary().items()}
    if report.passed:
        return summary, None
    return summary, Flag(
        kind=FlagKind.unfaithful,
        epoch=epoch,
        global_step=step,
        probe=None,
        value=float(report.similarity),
        threshold=float(report.threshold),
        metric="sanity/similarity",
        message=(
            f"the maps barely change when the model's weights are randomised (mean Spearman "
            f"{report.similarity:.2f} >= {report.threshold:.2f} over {len(report.stages)} "
            f"stages): they may explain the input, not the model; see '{prefix}/sanity/...'"
        ),
    )


def _null() -> Any:
    from contextlib import nullcontext

    return nullcontext()


def _as_dtype(x: Tensor, dtype: torch.dtype) -> Tensor:
    """Float images back to an integer input dtype (rounded, clamped); others as they are."""
    if x.dtype == dtype or dtype.is_floating_point or not x.is_floating_point():
        return x
    info = torch.iinfo(dtype)
    return x.round().clamp(info.min, info.max).to(dtype)


def _as_logits(out: Any, target_fn: Callable[[Any], Tensor] | None) -> Tensor:
    """Float32 ``[N, K]`` logits of a model output; ``[s, 0]`` of a ``target_fn`` score ``s``."""
    if target_fn is None:
        return out.float()
    s = target_fn(out).detach().float().reshape(-1)
    return torch.stack([s, torch.zeros_like(s)], dim=1)
