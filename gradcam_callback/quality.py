"""Is the explanation faithful? Sanity and faithfulness checks for saliency maps (no Lightning).

* :func:`randomization_check`: the model-parameter randomisation test of Adebayo et al. (2018),
  "Sanity Checks for Saliency Maps". The layers of a *copy* of the model are re-initialised in a
  cascade from the top (head first, then deeper and deeper blocks); after each stage the probes
  are explained again and compared with the trained model's maps (Spearman rank correlation and
  SSIM). A faithful explainer's maps change once the weights they should depend on are gone; an
  explainer that is really an edge detector of the input does not change at all.
* :func:`deletion_curve`: deletion / insertion curves (Petsiuk et al., 2018, "RISE"): remove (or
  insert) the most-attended pixels first in ``k`` steps and record the target score; the area
  under the curve is the metric (deletion: lower is better; insertion: higher is better).
* :func:`occlusion_map` and :func:`occlusion_agreement`: sliding-patch occlusion sensitivity
  (Zeiler & Fergus, 2014), a slow model-agnostic cross-check, and its rank agreement with
  Grad-CAM.

Everything is batched over the probes (and over steps / patch positions, in chunks), runs on the
images' device, draws random numbers only from local :class:`torch.Generator` objects, never
changes the model it is given (randomisation works on ``copy.deepcopy``), never touches a
parameter's ``.grad`` and restores every module's train/eval flag.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .engine import GradCAM, normalize_maps
from .layers import LayerSpec, eval_mode, resolve_target_layers, unwrap_model
from .metrics import spearman as _spearman
from .targets import TargetSpec, freeze_targets, target_scores

__all__ = [
    "DeletionReport",
    "RandomizationReport",
    "deletion_curve",
    "occlusion_agreement",
    "occlusion_map",
    "randomization_check",
    "spearman_maps",
    "ssim_maps",
]

Explainer = Callable[[nn.Module, Tensor, Any], Tensor]
Baseline = Literal["blur", "mean"] | float | Tensor


# --------------------------------------------------------------------------- map similarity
def spearman_maps(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation of each pair of maps over pixels (ties get average ranks).

    Same function as :func:`gradcam_callback.metrics.spearman`.

    Args:
        a, b: float ``[N, H, W]`` (any ``[N, ...]`` of equal shapes).

    Returns:
        float32 ``[N]`` in ``[-1, 1]``; ``NaN`` where either map is constant.
    """
    if a.shape != b.shape:
        raise ValueError(
            f"maps must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    return _spearman(a.float(), b.float())


def _gaussian_1d(size: int, sigma: float, device: torch.device) -> Tensor:
    x = torch.arange(size, device=device, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim_maps(
    a: Tensor,
    b: Tensor,
    *,
    window: int = 11,
    sigma: float = 1.5,
    data_range: float = 1.0,
) -> Tensor:
    """Structural similarity (Wang et al., 2004) of each pair of maps, batched.

    Gaussian window (``window`` x ``window``, ``sigma``; shrunk to the map size for small maps),
    ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2`` with ``L = data_range``, averaged over the valid
    (unpadded) window positions, as in scikit-image with ``gaussian_weights=True``.

    Args:
        a, b: float ``[N, H, W]``, values in ``[0, data_range]`` (normalised maps).

    Returns:
        float32 ``[N]``, 1 for identical maps, about 0 for unrelated ones, ``<= 1``.
    """
    if a.shape != b.shape or a.dim() != 3:
        raise ValueError(f"expected two [N, H, W] maps, got {tuple(a.shape)} and {tuple(b.shape)}")
    x, y = a.float()[:, None], b.float()[:, None]
    h, w = x.shape[-2:]
    size = min(window, h, w)
    if size % 2 == 0:
        size -= 1
    g = _gaussian_1d(max(size, 1), sigma, x.device)
    kh, kw = g.view(1, 1, -1, 1), g.view(1, 1, 1, -1)

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(t, kh), kw)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = blur(x), blur(y)
    # (co)variances from per-map centred values: less float32 cancellation, exact when constant
    xc = x - x.mean(dim=(2, 3), keepdim=True)
    yc = y - y.mean(dim=(2, 3), keepdim=True)
    mxc, myc = blur(xc), blur(yc)
    sxx = blur(xc * xc) - mxc * mxc
    syy = blur(yc * yc) - myc * myc
    sxy = blur(xc * yc) - mxc * myc
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1)


# --------------------------------------------------------------------------- randomisation
@dataclass
class RandomizationReport:
    """Result of :func:`randomization_check`.

    Attributes:
        stages: names of the cascade stages, top first; stage ``s`` has stages ``0..s`` randomised.
        spearman: float32 ``[S, N]``, rank correlation of each probe's map after stage ``s`` with
            its trained-model map (``NaN`` where a map is constant).
        ssim: float32 ``[S, N]``, SSIM of the same pairs (maps min-max normalised to ``[0, 1]``).
        passed: ``similarity < threshold``: the maps do change when the weights are randomised
            (``False`` too when every trained-model map is constant: nothing could be tested).
        similarity: the test statistic, the mean of :attr:`probe_similarity` over probes whose
            trained map is not constant (a ``NaN`` correlation of a constant randomised map
            counts as 0, "changed").
        threshold: the threshold used.
        probe_similarity: float32 ``[N]``, each probe's mean Spearman over the stages (``NaN`` for
            a probe whose trained-model map is constant): per-probe flags can use it.
        maps: float32 ``[S + 1, N, H, W]`` (trained first) when ``keep_maps=True``, else ``None``.
    """

    stages: list[str]
    spearman: Tensor
    ssim: Tensor
    passed: bool
    similarity: float
    threshold: float
    probe_similarity: Tensor
    maps: Tensor | None = field(default=None, repr=False)

    def summary(self) -> dict[str, float]:
        """Flat scalars for a logger: per-stage means, overall means, the verdict (host sync)."""
        out: dict[str, float] = {}
        rho = self.spearman.nan_to_num(0.0).mean(1).tolist()
        ss = self.ssim.mean(1).tolist()
        for name, r, s in zip(self.stages, rho, ss):
            out[f"spearman/{name}"] = float(r)
            out[f"ssim/{name}"] = float(s)
        out["spearman_mean"] = float(self.spearman.nan_to_num(0.0).mean())
        out["ssim_mean"] = float(self.ssim.mean())
        out["similarity"] = self.similarity
        out["threshold"] = self.threshold
        out["passed"] = float(self.passed)
        return out


def _param_modules_in_forward_order(
    model: nn.Module, images: Tensor
) -> list[tuple[str, nn.Module]]:
    """Modules owning parameters directly, in the order their forward first *starts*.

    Forward pre-hooks on one no-grad forward of one image: a module that owns parameters and
    children (a ViT's ``pos_embed`` on the root) counts at its entry, before its children.
    """
    owners = {
        name: m
        for name, m in model.named_modules()
        if any(True for _ in m.parameters(recurse=False))
    }
    order: list[str] = []
    handles = []

    def make_hook(name: str) -> Callable[..., None]:
        def hook(*_: object) -> None:
            if name not in order:
                order.append(name)

        return hook

    try:
        for name, m in owners.items():
            handles.append(m.register_forward_pre_hook(make_hook(name)))
        with eval_mode(model), torch.inference_mode(False), torch.no_grad():
            model(images[:1])
    finally:
        for h in handles:
            h.remove()
    return [(n, owners[n]) for n in order]


def _auto_stages(
    model: nn.Module, images: Tensor, max_stages: int
) -> list[tuple[str, list[nn.Module]]]:
    """Group parametrised modules into at most ``max_stages`` stages, top first.

    Modules are grouped by the first ``d`` components of their dotted names, with the largest
    ``d`` that gives at most ``max_stages`` groups (per layer for a small model; ``fc``,
    ``layer4``, ... ``conv1`` for a ResNet). If even the top level has more groups, consecutive
    groups are merged.
    """
    mods = _param_modules_in_forward_order(model, images)
    if not mods:
        raise ValueError("the model has no parameters that take part in its forward")
    depth = max(len(n.split(".")) for n, _ in mods)

    def groups_at(d: int) -> list[tuple[str, list[nn.Module]]]:
        keyed: dict[str, list[nn.Module]] = {}
        last: dict[str, int] = {}
        for i, (n, m) in enumerate(mods):
            key = ".".join(n.split(".")[:d]) if n else "<root>"
            keyed.setdefault(key, []).append(m)
            last[key] = i
        return sorted(keyed.items(), key=lambda kv: -last[kv[0]])

    chosen = groups_at(1)
    for d in range(2, depth + 1):
        g = groups_at(d)
        if len(g) > max_stages:
            break
        chosen = g
    if len(chosen) > max_stages:  # merge consecutive groups
        bounds = torch.linspace(0, len(chosen), max_stages + 1).round().long().tolist()
        merged = []
        for lo, hi in itertools.pairwise(bounds):
            part = chosen[lo:hi]
            name = part[0][0] if len(part) == 1 else f"{part[0][0]}..{part[-1][0]}"
            merged.append((name, [m for _, ms in part for m in ms]))
        chosen = merged
    return chosen


def _explicit_stages(
    model: nn.Module, stages: Sequence[str | Sequence[str]]
) -> list[tuple[str, list[nn.Module]]]:
    out = []
    for entry in stages:
        names = [entry] if isinstance(entry, str) else list(entry)
        mods = [m for _, m in resolve_target_layers(model, names)]
        # every parameter under the named modules, each module once
        owners = {id(s): s for m in mods for s in m.modules()}
        out.append(("+".join(names), list(owners.values())))
    return out


@torch.no_grad()
def _reinit_(modules: Sequence[nn.Module], seed: int) -> None:
    """Redraw the direct parameters of ``modules`` from PyTorch's default-init distributions.

    Tensors with >= 2 dims: ``U(+-1/sqrt(fan_in))`` (``kaiming_uniform_(a=sqrt(5))``, the
    ``nn.Linear`` / ``nn.ConvNd`` default); 1-D tensors of a module with a weight matrix (biases):
    ``U(+-1/sqrt(fan_in))`` of that matrix; other 1-D tensors (norm-layer scales and shifts):
    ``N(0, 1)``. Buffers (BatchNorm running statistics) are kept.
    """
    gens: dict[torch.device, torch.Generator] = {}
    for m in modules:
        params = list(m.parameters(recurse=False))
        mats = [p for p in params if p.dim() >= 2]
        fan_in = mats[0][0].numel() if mats else 0
        for p in params:
            g = gens.get(p.device)
            if g is None:
                g = gens[p.device] = torch.Generator(device=p.device)
                g.manual_seed(seed)
            if p.dim() >= 2:
                nn.init.kaiming_uniform_(p, a=math.sqrt(5), generator=g)
            elif fan_in > 0:
                bound = 1 / math.sqrt(fan_in)
                nn.init.uniform_(p, -bound, bound, generator=g)
            else:
                nn.init.normal_(p, 0.0, 1.0, generator=g)


def _reference(
    base: nn.Module,
    images: Tensor,
    targets: TargetSpec,
    target_layer: LayerSpec,
    method: str,
    explainer: Explainer | None,
) -> tuple[Tensor, Callable[[nn.Module], Tensor]]:
    """The trained model's maps ``[N, H, W]`` and the function that explains a (randomised)
    copy the same way: the same classes, and for Grad-CAM the same target layers."""
    if explainer is None:
        engine = GradCAM(base, target_layer=target_layer, method=method)
        res = engine.explain(images, targets)
        tgt: TargetSpec = res.targets if res.targets is not None else targets
        layer_names = engine.target_layers

        def explain(m: nn.Module) -> Tensor:
            return GradCAM(m, target_layer=layer_names, method=method)(images, tgt)

        return res.maps, explain
    with eval_mode(base), torch.inference_mode(False), torch.no_grad():
        fixed = _fixed_targets(base, images, targets)

    def explain_with(m: nn.Module) -> Tensor:
        return normalize_maps(explainer(m, images, fixed).float())

    return explain_with(base), explain_with


def _cascade(
    base: nn.Module,
    plan: Sequence[tuple[str, Sequence[nn.Module]]],
    ref: Tensor,
    explain: Callable[[nn.Module], Tensor],
    seed: int,
    keep_maps: bool,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Re-initialise a copy of ``base`` stage by stage (cumulative) and compare its maps with
    ``ref`` ``[N, H, W]``: Spearman and SSIM ``[S, N]``, and ``[S + 1, N, H, W]`` maps if kept."""
    clone = copy.deepcopy(base)
    clone.requires_grad_(False)
    # the same modules in the copy, found by identity through the name map
    names = {id(m): n for n, m in base.named_modules()}
    clone_mods = dict(clone.named_modules())
    rho, ssim, kept = [], [], [ref] if keep_maps else []
    for s, (_, mods) in enumerate(plan):
        _reinit_([clone_mods[names[id(m)]] for m in mods], seed * 1_000_003 + s)
        maps = explain(clone)
        rho.append(spearman_maps(ref, maps))
        ssim.append(ssim_maps(ref, maps))
        if keep_maps:
            kept.append(maps)
    return torch.stack(rho), torch.stack(ssim), torch.stack(kept) if keep_maps else None


def _randomization_report(
    stages: list[str],
    ref: Tensor,
    spear: Tensor,
    ss: Tensor,
    maps: Tensor | None,
    threshold: float,
) -> RandomizationReport:
    """The verdict on the cascade's correlations ``spear`` ``[S, N]``: per-probe similarity (NaN
    for a constant reference map ``ref[i]``), its mean, and ``passed`` below ``threshold``."""
    ref_ok = ref.flatten(1).amax(1) > ref.flatten(1).amin(1)
    probe_sim = torch.where(
        ref_ok, spear.nan_to_num(0.0).mean(0), torch.full_like(spear[0], math.nan)
    )
    similarity = float(probe_sim.nanmean()) if bool(ref_ok.any()) else math.nan
    passed = bool(similarity < threshold) if not math.isnan(similarity) else False
    return RandomizationReport(
        stages=stages,
        spearman=spear,
        ssim=ss,
        passed=passed,
        similarity=similarity,
        threshold=threshold,
        probe_similarity=probe_sim,
        maps=maps,
    )


@torch.inference_mode(False)  # the copy's weights and the probes must be normal tensors
def randomization_check(
    model: nn.Module,
    images: Tensor,
    targets: TargetSpec = None,
    *,
    target_layer: LayerSpec = None,
    method: str = "gradcam",
    explainer: Explainer | None = None,
    stages: Sequence[str | Sequence[str]] | None = None,
    max_stages: int = 8,
    seed: int = 0,
    threshold: float = 0.5,
    keep_maps: bool = False,
) -> RandomizationReport:
    """Model-parameter randomisation test (Adebayo et al., 2018), cascading from the top.

    The trained model's maps are compared with the maps of a ``copy.deepcopy`` of it whose
    layers are re-initialised stage by stage, head first (cumulative: stage ``s`` has stages
    ``0..s`` random). The same classes are explained at every stage (the trained model's
    predictions when ``targets`` is ``None``). The verdict: ``passed`` when the mean Spearman
    correlation over stages and probes is below ``threshold``, i.e. the maps do depend on the
    learned weights; otherwise the explainer is "unfaithful" (kind ``"unfaithful"``).

    Cost: ``S + 1`` forward + gradient passes of the probes (``S`` = number of stages; the
    default explainer is one Grad-CAM call each), plus two no-grad forwards of one probe (layer
    order and target-layer measurement) and one more no-grad forward of the probes with a
    custom ``explainer`` and ``targets=None``. Memory: one extra copy of the model (everything
    the module references is deep-copied; a ``LightningModule`` drops its trainer when copied).

    Args:
        model: the trained model; never modified (its maps are computed on it as is, the
            randomisation happens on a deep copy whose parameters do not require grad).
        images: probes ``[N, C, H, W]``.
        targets: as for :meth:`GradCAM.explain` (``None``: trained model's predictions).
        target_layer, method: for the default explainer, :class:`GradCAM`'s arguments.
        explainer: ``(model, images, targets) -> [N, H, W]`` maps instead of Grad-CAM; ``targets``
            is a LongTensor ``[N]`` (or the callable given). Its maps are min-max normalised here.
        stages: module names, top first, each a stage (a list of names makes one stage of
            several); ``None``: automatic (see ``max_stages``).
        max_stages: automatic stages group parametrised modules by name prefix, as finely as
            possible within this many stages (per layer for a small CNN; ``fc``, ``layer4``,
            ..., ``conv1`` for a ResNet).
        seed: seed of the local generator that draws the random weights.
        threshold: the verdict's threshold on the mean Spearman correlation.
        keep_maps: keep every stage's maps in the report (``[S + 1, N, H, W]``).
    """
    base = unwrap_model(model)
    if images.is_inference():  # e.g. probes captured in a Lightning validation hook
        images = images.clone()
    ref, explain = _reference(base, images, targets, target_layer, method, explainer)
    plan = (
        _auto_stages(base, images, max_stages) if stages is None else _explicit_stages(base, stages)
    )
    spear, ss, maps = _cascade(base, plan, ref, explain, seed, keep_maps)
    return _randomization_report([n for n, _ in plan], ref, spear, ss, maps, threshold)


# --------------------------------------------------------------------------- perturbation helpers
@contextmanager
def _maybe_eval(fn: Callable[[Tensor], Any]) -> Iterator[None]:
    """:func:`~gradcam_callback.layers.eval_mode` for an ``nn.Module`` model function, a no-op
    for other callables."""
    if isinstance(fn, nn.Module):
        with eval_mode(fn):
            yield
    else:
        yield


def _blur(images: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``[N, C, H, W]`` (replicate padding), same shape and dtype."""
    radius = max(1, math.ceil(3 * sigma))
    g = _gaussian_1d(2 * radius + 1, sigma, images.device).to(images.dtype)
    c = images.shape[1]
    x = F.pad(images, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return F.conv2d(x, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)


def _fill_images(images: Tensor, fill: Baseline) -> Tensor:
    """What removed pixels become: ``[N, C, H, W]`` (an expanded view for constants)."""
    if isinstance(fill, Tensor):
        return fill.to(device=images.device, dtype=images.dtype).expand_as(images)
    if isinstance(fill, str):
        if fill == "mean":
            return images.mean(dim=(2, 3), keepdim=True).expand_as(images)
        if fill == "blur":
            return _blur(images, max(1.0, max(images.shape[-2:]) / 32))
        raise ValueError(f"unknown baseline {fill!r}; use 'blur', 'mean' or a number")
    return torch.full_like(images, float(fill))


def _scores(
    model_fn: Callable[[Tensor], Any], x: Tensor, targets: TargetSpec, softmax: bool
) -> Tensor:
    """Float32 target scores ``[B]`` of a batch (probabilities when ``softmax``)."""
    return target_scores(model_fn(x), targets, x.shape[0], softmax=softmax).scores


def _fixed_targets(
    model_fn: Callable[[Tensor], Any], images: Tensor, targets: TargetSpec
) -> TargetSpec:
    """Class indices ``[N]`` on the images' device (predictions for ``None``), or the callable."""
    return freeze_targets(targets, images.shape[0], lambda: model_fn(images), images.device)


def _take(targets: TargetSpec, idx: Tensor) -> TargetSpec:
    return targets[idx] if isinstance(targets, Tensor) else targets


def _check(images: Tensor, batch_size: int) -> None:
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise ValueError("expected images of shape [N, C, H, W]")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def _perturbed_scores(
    model_fn: Callable[[Tensor], Any],
    hit: Callable[[Tensor, Tensor], Tensor],
    gone: Tensor,
    kept: Tensor,
    targets: TargetSpec,
    steps: int,
    softmax: bool,
    batch_size: int,
) -> Tensor:
    """Scores ``[steps, N]`` of every (step ``j``, probe ``i``) image, ``gone`` ``[N, C, H, W]``
    where ``hit(j, i)`` (bool ``[B, 1, H, W]``) is set and ``kept`` elsewhere, in chunks."""
    n = kept.shape[0]
    total = steps * n
    out = []
    for lo in range(0, total, batch_size):
        b = torch.arange(lo, min(lo + batch_size, total), device=kept.device)
        j, i = b // n, b % n
        x = torch.where(hit(j, i), gone[i], kept[i])
        out.append(_scores(model_fn, x, _take(targets, i), softmax))
    return torch.cat(out).view(steps, n)


# --------------------------------------------------------------------------- deletion / insertion
@dataclass
class DeletionReport:
    """Result of :func:`deletion_curve`.

    Attributes:
        fractions: float32 ``[k + 1]``, the fraction of pixels removed (deletion) or inserted
            (insertion) at each step, ``0 .. 1``.
        scores: float32 ``[k + 1, N]``, the target score of each probe at each step.
        auc: float32 ``[N]``, trapezoidal area under each probe's curve over ``fractions``
            (deletion: lower = more faithful; insertion: higher = more faithful).
        mode: ``"deletion"`` or ``"insertion"``.
    """

    fractions: Tensor
    scores: Tensor
    auc: Tensor
    mode: str

    def summary(self) -> dict[str, float]:
        """``{"<mode>_auc": mean AUC, "<mode>_start": mean first score, ...}`` (host sync)."""
        return {
            f"{self.mode}_auc": float(self.auc.mean()),
            f"{self.mode}_start": float(self.scores[0].mean()),
            f"{self.mode}_end": float(self.scores[-1].mean()),
        }


def _check_deletion(images: Tensor, maps: Tensor, steps: int, mode: str, batch_size: int) -> None:
    """Validate :func:`deletion_curve`'s arguments (images ``[N, C, H, W]``, maps ``[N, h, w]``)."""
    _check(images, batch_size)
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be 'deletion' or 'insertion', got {mode!r}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    n = images.shape[0]
    if maps.dim() != 3 or maps.shape[0] != n:
        raise ValueError(f"maps must be [N, h, w] with N = {n}, got {tuple(maps.shape)}")


def _resized_maps(maps: Tensor, images: Tensor) -> Tensor:
    """``maps`` ``[N, h, w]`` as float32 ``[N, H, W]`` on the images' device (bilinear)."""
    h, w = images.shape[-2:]
    m = maps.detach().to(images.device, torch.float32)
    if m.shape[-2:] != (h, w):
        m = F.interpolate(m[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
    return m


def _pixel_ranks(m: Tensor, seed: int) -> Tensor:
    """Rank ``[N, H * W]`` of each pixel of ``m`` ``[N, H, W]``, 0 = most important (ties
    broken at random by a generator seeded with ``seed``)."""
    dev = m.device
    n, p = m.shape[0], m.shape[1] * m.shape[2]
    gen = torch.Generator(device=dev)
    gen.manual_seed(seed)
    flat = m.flatten(1)
    perm = torch.rand(n, p, generator=gen, device=dev).argsort(1)
    order = perm.gather(1, flat.gather(1, perm).argsort(dim=1, descending=True, stable=True))
    return torch.empty_like(order).scatter_(1, order, torch.arange(p, device=dev).expand(n, p))


def _deletion_scores(
    model_fn: Callable[[Tensor], Any],
    images: Tensor,
    targets: TargetSpec,
    rank: Tensor,
    counts: Tensor,
    mode: str,
    baseline: Baseline | None,
    softmax: bool,
    batch_size: int,
) -> Tensor:
    """Scores ``[k + 1, N]`` with the top ``counts[j]`` pixels by ``rank`` ``[N, H * W]`` removed
    (deletion) or inserted (insertion) at step ``j``, under ``torch.no_grad`` in eval mode."""
    h, w = images.shape[-2:]
    if baseline is None:
        baseline = 0.0 if mode == "deletion" else "blur"
    with _maybe_eval(model_fn), torch.inference_mode(False), torch.no_grad():
        tgt = _fixed_targets(model_fn, images, targets)
        fill = _fill_images(images, baseline)
        gone, kept = (fill, images) if mode == "deletion" else (images, fill)
        return _perturbed_scores(
            model_fn,
            lambda j, i: (rank[i] < counts[j][:, None]).view(-1, 1, h, w),
            gone,
            kept,
            tgt,
            counts.shape[0],
            softmax,
            batch_size,
        )


def deletion_curve(
    model_fn: Callable[[Tensor], Any],
    images: Tensor,
    maps: Tensor,
    targets: TargetSpec = None,
    *,
    steps: int = 10,
    mode: Literal["deletion", "insertion"] = "deletion",
    baseline: Baseline | None = None,
    softmax: bool = True,
    batch_size: int = 256,
    seed: int = 0,
) -> DeletionReport:
    """Deletion or insertion curve of each probe, most-attended pixels first (RISE metrics).

    Pixels are ordered by ``maps`` (ties broken at random by a local generator seeded with
    ``seed``). At step ``j`` of ``k = steps`` the top ``round(j / k * H * W)`` pixels (all
    channels) are replaced by the baseline (deletion) or copied onto the baseline (insertion).
    All ``(k + 1) x N`` perturbed images are scored under ``torch.no_grad`` in chunks of
    ``batch_size`` images: cost ``(k + 1) * N`` image forwards (``+ N`` when ``targets`` is
    ``None``), in ``ceil((k + 1) N / batch_size)`` calls. An ``nn.Module`` ``model_fn`` runs in
    eval mode (its flags are restored).

    Args:
        model_fn: images ``[B, C, H, W]`` -> logits ``[B, K]`` (or whatever a callable target reads).
        images: probes ``[N, C, H, W]``.
        maps: ``[N, h, w]`` importance, higher = more important (bilinearly resized to ``H x W``).
        targets: ``None`` (predicted class), an ``int``, LongTensor ``[N]``, or a callable
            ``output -> Tensor [B]`` (then scores are used as returned).
        steps: ``k``, the number of removal steps.
        mode: ``"deletion"`` (start from the image) or ``"insertion"`` (start from the baseline).
        baseline: what removed pixels become: a number (``0.0``: the dataset mean for
            normalised inputs), ``"mean"`` (each image's channel means; leaks the image's mean
            colour), ``"blur"`` (a Gaussian blur of the image, sigma ``max(H, W) / 32``), or a
            tensor broadcastable to the images; ``None``: ``0.0`` for deletion, ``"blur"`` for
            insertion (as in RISE).
        softmax: score = softmax probability of the class (else the raw logit).
        batch_size: images per forward call.
        seed: seed of the tie-breaking generator.
    """
    _check_deletion(images, maps, steps, mode, batch_size)
    rank = _pixel_ranks(_resized_maps(maps, images), seed)  # [N, H * W]
    fractions = torch.linspace(0, 1, steps + 1, device=images.device)
    counts = (fractions * rank.shape[1]).round().long()
    scores = _deletion_scores(
        model_fn, images, targets, rank, counts, mode, baseline, softmax, batch_size
    )
    auc = torch.trapezoid(scores, fractions[:, None], dim=0)
    return DeletionReport(fractions=fractions, scores=scores, auc=auc, mode=mode)


# --------------------------------------------------------------------------- occlusion
def _starts(size: int, patch: int, stride: int) -> list[int]:
    patch = min(patch, size)
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def _patch_masks(h: int, w: int, patch: int, stride: int, device: torch.device) -> Tensor:
    """Bool ``[P, H, W]``: the pixels each occluder position covers (row-major positions)."""
    ys = torch.tensor(_starts(h, patch, stride), device=device)
    xs = torch.tensor(_starts(w, patch, stride), device=device)
    ar_h, ar_w = torch.arange(h, device=device), torch.arange(w, device=device)
    rows = (ar_h >= ys[:, None]) & (ar_h < ys[:, None] + patch)  # [Py, H]
    cols = (ar_w >= xs[:, None]) & (ar_w < xs[:, None] + patch)  # [Px, W]
    return (rows[:, None, :, None] & cols[None, :, None, :]).view(-1, h, w)


def occlusion_map(
    model_fn: Callable[[Tensor], Any],
    images: Tensor,
    targets: TargetSpec = None,
    *,
    patch: int = 8,
    stride: int | None = None,
    fill: Baseline = 0.0,
    softmax: bool = False,
    batch_size: int = 256,
) -> Tensor:
    """Occlusion sensitivity (Zeiler & Fergus, 2014): score drop when a patch is covered.

    A ``patch x patch`` square slides with ``stride`` (the last row / column of positions is
    aligned with the border so every pixel is covered); each pixel's value is the mean score
    drop ``score(image) - score(occluded)`` over the positions that cover it. All ``P x N``
    occluded images are scored under ``torch.no_grad`` in chunks of ``batch_size``: cost
    ``(P + 1) * N`` image forwards, ``P = ceil((H - patch) / stride + 1) * ceil((W - patch) /
    stride + 1)`` (e.g. 49 positions for 32x32 images, patch 8, stride 4). This is the slow,
    model-agnostic cross-check for Grad-CAM.

    Args:
        model_fn: images ``[B, C, H, W]`` -> logits ``[B, K]``; an ``nn.Module`` runs in eval mode.
        images: probes ``[N, C, H, W]``.
        targets: ``None`` (predicted class), ``int``, LongTensor ``[N]`` or a callable.
        patch, stride: square patch side and step in pixels (``stride`` default ``patch // 2``).
        fill: occluder: a number (default ``0.0``), ``"mean"`` (each image's channel means),
            ``"blur"``, or a tensor broadcastable to the images.
        softmax: score = probability (default: the raw logit, which does not saturate).
        batch_size: images per forward call.

    Returns:
        float32 ``[N, H, W]`` on ``images.device``; positive = covering it lowers the score.
    """
    stride = max(1, patch // 2) if stride is None else stride
    _check(images, batch_size)
    if patch < 1 or stride < 1:
        raise ValueError(f"patch and stride must be >= 1, got {patch} and {stride}")
    masks = _patch_masks(*images.shape[-2:], patch, stride, images.device)  # [P, H, W]
    with _maybe_eval(model_fn), torch.inference_mode(False), torch.no_grad():
        tgt = _fixed_targets(model_fn, images, targets)
        clean = _scores(model_fn, images, tgt, softmax)
        occluder = _fill_images(images, fill)
        occluded = _perturbed_scores(
            model_fn,
            lambda q, i: masks[q][:, None],
            occluder,
            images,
            tgt,
            masks.shape[0],
            softmax,
            batch_size,
        )
    drop = clean[None] - occluded  # [P, N]
    mf = masks.float()
    return torch.einsum("pn,phw->nhw", drop, mf) / mf.sum(0).clamp_min(1)


def occlusion_agreement(cam_maps: Tensor, occ_maps: Tensor) -> Tensor:
    """Spearman rank correlation between Grad-CAM and occlusion maps, per probe.

    Args:
        cam_maps: ``[N, H, W]``.
        occ_maps: ``[N, h, w]`` (bilinearly resized to ``H x W`` when different).

    Returns:
        float32 ``[N]`` in ``[-1, 1]``; ``NaN`` where a map is constant.
    """
    if occ_maps.shape[-2:] != cam_maps.shape[-2:]:
        occ_maps = F.interpolate(
            occ_maps.float()[:, None],
            size=tuple(cam_maps.shape[-2:]),
            mode="bilinear",
            align_corners=False,
        )[:, 0]
    return spearman_maps(cam_maps, occ_maps)
