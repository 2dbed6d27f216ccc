"""Pure, batched tensor measures of Grad-CAM maps: drift, focus, mask and mask-free attention.

Every function works on a whole probe batch at once, on the maps' device, with no Python loop over
images, no numpy round trip and no host synchronisation (no ``.item()``) unless its docstring says
so. None of them touches a random number generator.

Conventions:

* ``maps`` are float ``[N, H, W]``, ``>= 0``: the **raw** ReLU'd Grad-CAM maps upsampled to the image
  size (``engine(images, targets, normalize=False)``). Do not min-max them per map first: that
  throws away the magnitudes (a flat map of tiny values would look like a confident one).
* ``mask`` / ``region`` are bool ``[N, H, W]`` or ``[H, W]`` (broadcast to every map); ``True``
  marks object / artifact / region pixels.
* Results are float32 ``[N]`` (one value per probe) unless stated otherwise.
* Degenerate inputs never raise. An all-zero map (the usual map of an untrained model, whose
  gradients vanish at the ReLU) has no spatial information: every measure that needs the map as a
  distribution returns ``NaN`` for it. Correlations of a constant map are ``NaN`` as well. ``NaN``
  means "undefined", so callers average with ``nanmean`` and never raise an alarm on it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "Erasure",
    "Hotspot",
    "MapStats",
    "anchored_hotspot",
    "border_enrichment",
    "border_mask",
    "cell_mask",
    "center_of_mass",
    "centre_offset",
    "class_marks",
    "com_shift",
    "corner_enrichment",
    "corner_masks",
    "dilate",
    "drift",
    "enrichment",
    "erase",
    "erasure_effect",
    "erasure_effect_from_logits",
    "evidence_drop",
    "focus_entropy",
    "grow_region",
    "js_divergence",
    "local_extremes",
    "log_odds",
    "mass_region",
    "mass_share",
    "pearson",
    "pointing_game",
    "shift_tolerant_std",
    "spearman",
    "top_region",
    "topk_iou",
]

_LN2 = math.log(2.0)


# ----------------------------------------------------------------------------- helpers
def _flat(maps: Tensor) -> Tensor:
    """``[N, H, W]`` -> float32 ``[N, H*W]``."""
    if maps.dim() != 3:
        raise ValueError(f"expected maps of shape [N, H, W], got {tuple(maps.shape)}")
    return maps.flatten(1).float()


def _nan(like: Tensor) -> Tensor:
    return torch.full_like(like, float("nan"))


def _mass(flat: Tensor) -> tuple[Tensor, Tensor]:
    """Total mass ``[N]`` of non-negative flat maps and whether it is usable (``> 0``)."""
    total = flat.clamp_min(0).sum(1)
    return total, total > torch.finfo(flat.dtype).tiny


def _dist(flat: Tensor) -> tuple[Tensor, Tensor]:
    """Maps as probability distributions ``[N, P]`` (zero-mass rows all zero) and validity ``[N]``."""
    total, ok = _mass(flat)
    p = flat.clamp_min(0) / torch.where(ok, total, torch.ones_like(total))[:, None]
    return p, ok


def _mask(mask: Tensor, maps: Tensor) -> Tensor:
    """Broadcast a bool ``[H, W]`` or ``[N, H, W]`` mask to the maps and flatten it: ``[N, H*W]``."""
    if mask.shape[-2:] != maps.shape[-2:]:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not match maps of shape {tuple(maps.shape)}"
        )
    return mask.to(torch.bool).expand(maps.shape).flatten(1)


# ----------------------------------------------------------------------------- drift
class MapStats:
    """What the drift and focus measures read of one set of maps, each piece computed once,
    on first use: compare a run's maps with several references (and a reference with several
    runs) without recomputing either side.

    Args:
        maps: float ``[N, H, W]``.

    Attributes (lazy): ``flat`` float32 ``[N, H * W]``; ``dist`` the maps as distributions
    ``[N, P]`` and their validity ``[N]``; ``plogp`` ``p log p`` ``[N, P]``; ``centred`` and
    ``ranks_centred`` (:func:`_centred` of the values and of their :func:`ranks`); ``com``
    :func:`center_of_mass` ``[N, 2]``; ``entropy`` :func:`focus_entropy` ``[N]``; :meth:`top` the
    hottest ``frac`` (bool ``[N, P]``).
    """

    def __init__(self, maps: Tensor) -> None:
        self.maps = maps
        self.flat = _flat(maps)
        self._top: dict[float, Tensor] = {}

    @cached_property
    def dist(self) -> tuple[Tensor, Tensor]:
        return _dist(self.flat)

    @cached_property
    def plogp(self) -> Tensor:
        p = self.dist[0]
        return torch.xlogy(p, p)

    @cached_property
    def centred(self) -> tuple[Tensor, Tensor]:
        return _centred(self.flat)

    @cached_property
    def ranks(self) -> Tensor:
        return _rank(self.flat)

    @cached_property
    def ranks_centred(self) -> tuple[Tensor, Tensor]:
        return _centred(self.ranks)

    @cached_property
    def com(self) -> Tensor:
        return _com(self)

    @cached_property
    def entropy(self) -> Tensor:
        return _entropy(self)

    def top(self, frac: float = 0.1) -> Tensor:
        if frac not in self._top:
            self._top[frac] = _top_region(self.flat, frac)
        return self._top[frac]


def drift(a: MapStats, b: MapStats, frac: float = 0.1) -> dict[str, Tensor]:
    """Every drift measure of the pairs of maps in ``a`` and ``b`` (:class:`MapStats`), float32
    ``[N]`` each: ``pearson``, ``spearman``, ``js``, ``iou`` (hottest ``frac``) and
    ``com_shift``, equal to :func:`pearson`, :func:`spearman`, :func:`js_divergence`,
    :func:`topk_iou` and :func:`com_shift` of ``a.maps`` and ``b.maps``."""
    return {
        "pearson": _pearson(a.centred, b.centred),
        "spearman": _pearson(a.ranks_centred, b.ranks_centred),
        "js": _js(a, b),
        "iou": _iou(a.top(frac), b.top(frac)),
        "com_shift": _com_shift(a, b),
    }


def pearson(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of each pair of maps over pixels.

    Args:
        a, b: float ``[N, H, W]``.

    Returns:
        float32 ``[N]`` in ``[-1, 1]``: 1 = same spatial pattern up to scale and offset, 0 =
        unrelated. ``NaN`` when either map is constant (all-zero maps included).
    """
    return _pearson(_centred(_flat(a)), _centred(_flat(b)))


def _centred(flat: Tensor) -> tuple[Tensor, Tensor]:
    """Rows minus their mean ``[N, P]``, and the rows' norms after centring ``[N]``."""
    x = flat - flat.mean(1, keepdim=True)
    return x, x.norm(dim=1)


def _pearson(a: tuple[Tensor, Tensor], b: tuple[Tensor, Tensor]) -> Tensor:
    """Pearson correlation ``[N]`` of :func:`_centred` rows."""
    (x, nx), (y, ny) = a, b
    den = nx * ny
    r = (x * y).sum(1) / den.clamp_min(torch.finfo(x.dtype).tiny)
    return torch.where(den > 0, r.clamp(-1.0, 1.0), _nan(r))


def _rank(flat: Tensor) -> Tensor:
    """Average ranks (ties share their mean rank, as in scipy's ``rankdata``) along dim 1, 0-based."""
    n, p = flat.shape
    vals, order = flat.sort(dim=1)
    pos = torch.arange(p, device=flat.device).expand(n, p)
    start = torch.ones_like(vals, dtype=torch.bool)
    start[:, 1:] = vals[:, 1:] != vals[:, :-1]
    end = torch.ones_like(start)
    end[:, :-1] = start[:, 1:]
    first = torch.where(start, pos, torch.zeros_like(pos)).cummax(1).values
    last = torch.where(end, pos, torch.full_like(pos, p)).flip(1).cummin(1).values.flip(1)
    avg = (first + last).float() * 0.5
    return torch.empty_like(avg).scatter_(1, order, avg)


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation of each pair of maps over pixels (ties get average ranks).

    Robust to monotone rescaling, so it compares *where* the attention is ranked, not how strong
    it is. Raw ReLU'd maps have large zero plateaus; those tie and share one rank.

    Args:
        a, b: float ``[N, H, W]``.

    Returns:
        float32 ``[N]`` in ``[-1, 1]``; ``NaN`` when either map is constant.
    """
    return spearman_from_ranks(ranks(a), ranks(b))


def ranks(maps: Tensor) -> Tensor:
    """Average pixel ranks of each map (ties share their mean rank), 0-based.

    Args:
        maps: float ``[N, H, W]``.

    Returns:
        float32 ``[N, H * W]``: what :func:`spearman` correlates (compute once, reuse for a map
        compared with several references).
    """
    return _rank(_flat(maps))


def spearman_from_ranks(ra: Tensor, rb: Tensor) -> Tensor:
    """:func:`spearman` from :func:`ranks` ``[N, P]`` of both sides: float32 ``[N]``."""
    return pearson(ra[:, None], rb[:, None])


def js_divergence(a: Tensor, b: Tensor) -> Tensor:
    """Jensen-Shannon divergence (base 2) between the maps taken as distributions over pixels.

    Args:
        a, b: float ``[N, H, W]``, ``>= 0``.

    Returns:
        float32 ``[N]`` in ``[0, 1]``: 0 = identical shapes (scale is ignored), 1 = disjoint
        supports. ``NaN`` when either map has no mass (all zeros).
    """
    return _js(MapStats(a), MapStats(b))


def _js(a: MapStats, b: MapStats) -> Tensor:
    (p, ok_p), (q, ok_q) = a.dist, b.dist
    m = 0.5 * (p + q)
    kl_pm = (a.plogp - torch.xlogy(p, m)).sum(1)
    kl_qm = (b.plogp - torch.xlogy(q, m)).sum(1)
    js = (0.5 * (kl_pm + kl_qm) / _LN2).clamp(0.0, 1.0)
    return torch.where(ok_p & ok_q, js, _nan(js))


def _top_region(flat: Tensor, frac: float) -> Tensor:
    """Bool ``[N, P]``: pixels at least as hot as the ``ceil(frac * P)``-th hottest and ``> 0``."""
    p = flat.shape[1]
    k = min(p, max(1, math.ceil(frac * p)))
    kth = flat.topk(k, dim=1).values[:, -1:]
    return (flat >= kth) & (flat > 0)


def top_region(maps: Tensor, frac: float = 0.1) -> Tensor:
    """Bool ``[N, H, W]``: each map's hottest ``frac`` of pixels (ties included, zeros never).

    Args:
        maps: float ``[N, H, W]``.
        frac: area fraction in ``(0, 1]``; the region holds the pixels at least as hot as the
            ``ceil(frac * H * W)``-th hottest one, and ``> 0``.
    """
    return _top_region(_flat(maps), frac).view(maps.shape)


def mass_region(maps: Tensor, share: float = 0.5) -> Tensor:
    """Bool ``[N, H, W]``: each map's hottest pixels that together hold ``share`` of its mass.

    Where :func:`top_region` takes a fixed area, this takes the area the map itself says the
    evidence lies in: a compact map gives a small region, a diffuse map a large one.

    Args:
        maps: float ``[N, H, W]``, ``>= 0``.
        share: mass fraction in ``(0, 1]``.

    Returns:
        bool ``[N, H, W]`` (ties at the threshold included, zeros never; empty for a map
        without mass).
    """
    flat = _flat(maps).clamp_min(0)
    vals, _ = flat.sort(dim=1, descending=True)
    total = vals.sum(1, keepdim=True)
    cum = vals.cumsum(1) / total.clamp_min(torch.finfo(vals.dtype).tiny)
    k = (cum < share).sum(1, keepdim=True).clamp_max(flat.shape[1] - 1)
    kth = vals.gather(1, k)
    return ((flat >= kth) & (flat > 0) & (total > 0)).view(maps.shape)


def topk_iou(a: Tensor, b: Tensor, frac: float = 0.1) -> Tensor:
    """Intersection over union of the two maps' hottest ``frac`` of pixels.

    The top region of a map is every pixel at least as hot as its ``ceil(frac * H * W)``-th
    hottest pixel and strictly positive (ties may enlarge it; zero pixels never belong to it).

    Args:
        a, b: float ``[N, H, W]``.
        frac: area fraction in ``(0, 1]``.

    Returns:
        float32 ``[N]`` in ``[0, 1]``: 1 = same hot region. ``NaN`` when both regions are empty
        (both maps all zero); 0 when exactly one is.
    """
    return _iou(MapStats(a).top(frac), MapStats(b).top(frac))


def _iou(ra: Tensor, rb: Tensor) -> Tensor:
    inter = (ra & rb).sum(1).float()
    union = (ra | rb).sum(1).float()
    iou = inter / union.clamp_min(1.0)
    return torch.where(union > 0, iou, _nan(iou))


def center_of_mass(maps: Tensor) -> Tensor:
    """Attention-weighted centre of each map in pixel coordinates.

    Args:
        maps: float ``[N, H, W]``, ``>= 0``.

    Returns:
        float32 ``[N, 2]``: ``(y, x)`` with ``y`` in ``[0, H-1]`` (row) and ``x`` in
        ``[0, W-1]`` (column). ``NaN`` rows for maps without mass.
    """
    return _com(MapStats(maps))


def _com(stats: MapStats) -> Tensor:
    n, h, w = stats.maps.shape
    p, ok = stats.dist
    p = p.view(n, h, w)
    ys = torch.arange(h, device=p.device, dtype=p.dtype)
    xs = torch.arange(w, device=p.device, dtype=p.dtype)
    com = torch.stack([(p.sum(2) * ys).sum(1), (p.sum(1) * xs).sum(1)], dim=1)
    return torch.where(ok[:, None], com, _nan(com))


def com_shift(a: Tensor, b: Tensor) -> Tensor:
    """Distance between the two maps' centres of mass over the image diagonal.

    Args:
        a, b: float ``[N, H, W]``, ``>= 0``.

    Returns:
        float32 ``[N]`` in ``[0, 1]``: 0 = same centre, 1 = opposite corners. ``NaN`` when either
        map has no mass.
    """
    return _com_shift(MapStats(a), MapStats(b))


def _com_shift(a: MapStats, b: MapStats) -> Tensor:
    _, h, w = a.maps.shape
    diag = max(math.hypot(h - 1, w - 1), 1.0)
    return (a.com - b.com).norm(dim=1) / diag


# ----------------------------------------------------------------------------- focus
def focus_entropy(maps: Tensor) -> Tensor:
    """Normalised Shannon entropy of each map as a distribution over its pixels.

    Args:
        maps: float ``[N, H, W]``, ``>= 0``.

    Returns:
        float32 ``[N]`` in ``[0, 1]``: 0 = all mass on one pixel (sharp focus), 1 = uniform
        (no focus). ``NaN`` for maps without mass. ``1 - focus_entropy`` is a focus score.
    """
    return _entropy(MapStats(maps))


def _entropy(stats: MapStats) -> Tensor:
    flat, (_, ok) = stats.flat, stats.dist
    ent = -stats.plogp.sum(1)
    norm = math.log(flat.shape[1]) if flat.shape[1] > 1 else 1.0
    ent = (ent / norm).clamp(0.0, 1.0)
    return torch.where(ok, ent, _nan(ent))


# ----------------------------------------------------------------------------- masks
def mass_share(maps: Tensor, mask: Tensor) -> Tensor:
    """Share of each map's mass inside the mask (the energy-based pointing game).

    Args:
        maps: float ``[N, H, W]``, ``>= 0``.
        mask: bool ``[N, H, W]`` or ``[H, W]``.

    Returns:
        float32 ``[N]`` in ``[0, 1]``; 0 for an empty mask, ``NaN`` for maps without mass.
        Mind the area: a uniform map gives the mask's area share. See :func:`enrichment`.
    """
    p, ok = _dist(_flat(maps))
    share = (p * _mask(mask, maps)).sum(1).clamp(0.0, 1.0)
    return torch.where(ok, share, _nan(share))


def enrichment(maps: Tensor, mask: Tensor) -> Tensor:
    """Mass share inside the mask over the mask's area share.

    Args:
        maps: float ``[N, H, W]``, ``>= 0``.
        mask: bool ``[N, H, W]`` or ``[H, W]``.

    Returns:
        float32 ``[N]`` in ``[0, H*W / area]``: 1 = as much attention as a uniform map would put
        there, > 1 = concentrated on the mask, < 1 = avoids it. ``NaN`` for an empty mask or a
        map without mass.
    """
    m = _mask(mask, maps)
    area = m.float().mean(1)
    share = mass_share(maps, mask)
    out = share / area.clamp_min(torch.finfo(area.dtype).tiny)
    return torch.where(area > 0, out, _nan(out))


def pointing_game(maps: Tensor, mask: Tensor, tolerance: int = 0) -> Tensor:
    """Whether each map's peak lies inside the mask (Zhang et al., 2018).

    With several pixels tied at the maximum, a hit is any of them inside the mask.

    Args:
        maps: float ``[N, H, W]``.
        mask: bool ``[N, H, W]`` or ``[H, W]``.
        tolerance: grow the mask by this many pixels first (the original game uses 15 px at
            ImageNet resolution).

    Returns:
        float32 ``[N]`` of ``1.0`` (hit) / ``0.0`` (miss; always for an empty mask), ``NaN`` for
        a constant map (all-zero maps included), which has no peak.
    """
    m = mask.to(torch.bool).expand(maps.shape)
    if tolerance > 0:
        m = dilate(m, tolerance)
    flat = _flat(maps)
    hi = flat.amax(1, keepdim=True)
    lo = flat.amin(1, keepdim=True)
    hit = ((flat == hi) & m.flatten(1)).any(1).float()
    return torch.where((hi > lo)[:, 0], hit, _nan(hit))


def cell_mask(mask: Tensor, cells: tuple[int, int], size: tuple[int, int] | None = None) -> Tensor:
    """A mask as a map of ``cells`` cells sees it: every cell the mask touches, whole.

    A Grad-CAM map of stride ``s`` has one value per ``s x s`` cell; upsampled, it spreads the
    evidence of a line thinner than a cell over the whole cell and ramps it between cells, so the
    pixels of a thin mask (above all one off a cell's centre) can get less than the map puts on
    the cells around it. Compared with the cells the mask touches, a map that reads the line
    scores what it puts there.

    Args:
        mask: bool ``[N, H, W]`` (or ``[H, W]``) at any resolution.
        cells: ``(h, w)`` of the map's own grid (the layer's feature map).
        size: ``(H', W')`` of the returned mask (``None``: the mask's own size).

    Returns:
        bool ``[N, H', W']`` (or ``[H', W']``): the cells the mask touches, at ``size``.
        Equals ``mask`` when the map has a cell per pixel (``cells`` at least the mask's size
        and ``size`` the mask's size); a map finer than ``size`` is read at ``size``; empty
        masks stay empty.
    """
    squeeze = mask.dim() == 2
    m = mask[None] if squeeze else mask
    out_size = tuple(m.shape[-2:]) if size is None else (int(size[0]), int(size[1]))
    # never finer than the mask or the output: a map finer than the output grid is read at it
    h = min(int(cells[0]), m.shape[-2], out_size[0])
    w = min(int(cells[1]), m.shape[-1], out_size[1])
    touched = F.adaptive_max_pool2d(m[:, None].float(), (h, w))
    out = F.interpolate(touched, size=out_size, mode="nearest")[:, 0] > 0
    return out[0] if squeeze else out


# ----------------------------------------------------------------------------- mask-free
def border_mask(
    height: int, width: int, frac: float = 0.125, device: torch.device | str | None = None
) -> Tensor:
    """Bool ``[H, W]`` band along all four image edges, ``round(frac * side)`` pixels (>= 1) wide."""
    bh = max(1, round(frac * height))
    bw = max(1, round(frac * width))
    m = torch.ones(height, width, dtype=torch.bool, device=device)
    m[bh : height - bh, bw : width - bw] = False
    return m


def corner_masks(
    height: int, width: int, size: float = 0.25, device: torch.device | str | None = None
) -> Tensor:
    """Bool ``[4, H, W]``: top-left, top-right, bottom-left, bottom-right squares of ``size``."""
    ch = max(1, round(size * height))
    cw = max(1, round(size * width))
    m = torch.zeros(4, height, width, dtype=torch.bool, device=device)
    m[0, :ch, :cw] = True
    m[1, :ch, width - cw :] = True
    m[2, height - ch :, :cw] = True
    m[3, height - ch :, width - cw :] = True
    return m


def border_enrichment(maps: Tensor, width: float = 0.125) -> Tensor:
    """:func:`enrichment` of the band along the image edges (``width`` of each side).

    Objects of interest rarely sit on the image frame, while watermarks, tags, rulers, borders
    and background do. Clean models score well below 1; attention on the frame scores above 1.

    Returns:
        float32 ``[N]`` in ``[0, 1 / band area share]``; ``NaN`` for maps without mass.
    """
    _, h, w = maps.shape
    return enrichment(maps, border_mask(h, w, width, maps.device))


def corner_enrichment(maps: Tensor, size: float = 0.25) -> Tensor:
    """Largest :func:`enrichment` over the four corner squares (``size`` of each side).

    Returns:
        float32 ``[N]`` in ``[0, 1 / size**2]``: how strongly the map favours its hottest corner
        (1 = as a uniform map). ``NaN`` for maps without mass.
    """
    _, h, w = maps.shape
    corners = corner_masks(h, w, size, maps.device).flatten(1).float()  # [4, P]
    p, ok = _dist(_flat(maps))
    share = p @ corners.T  # [N, 4]
    area = corners.mean(1)  # [4]
    best = (share / area).amax(1)
    return torch.where(ok, best, _nan(best))


@dataclass
class Hotspot:
    """Result of :func:`anchored_hotspot`; ``G`` groups, ``N`` probes.

    Attributes:
        region: bool ``[N, H, W]``, the hot spot of each probe's group (all False for probes
            whose group is too small or whose map has no mass).
        group_region: bool ``[G, H, W]``, the hot spot of each group.
        share: float32 ``[N]`` in ``[0, 1]``, each probe's mass share inside its group's hot
            spot (``NaN`` when undefined).
        enrichment: float32 ``[N]``, ``share`` over the hot spot's area share (1 = chance).
        consistency: float32 ``[G]``, mean ``enrichment`` of the group's probes: high when the
            maps of *different* images pile up at the same place. ``NaN`` for groups with fewer
            than ``min_group`` usable maps.
        offset: float32 ``[G]`` in ``[0, 1]``, distance of the hot spot's centre from the image
            centre over half the diagonal (0 = centred, 1 = in a corner).
        stability: float32 ``[G]`` in ``[0, 1]``, how constant the image pixels under the hot
            spot are across the group's images, relative to the whole image: ``1 - std_region /
            std_image`` of the per-pixel standard deviation across images (images weighted by
            each probe's share, hot-spot pixels by the group's mean attention). Near 1 for pasted
            watermarks, tags and tokens; near 0 (clamped) for moving objects or random texture.
            The larger of ``pixel_stability`` and ``shift_stability``.
        pixel_stability: float32 ``[G]``, the same from the pixels as they are.
        shift_stability: float32 ``[G]``, the same from the images' local maxima and minima over
            ``shift`` pixels each way (:func:`shift_tolerant_std`): a token that moves by up to
            ``shift`` pixels from image to image is stable here (equals ``pixel_stability``
            when ``shift`` is 0).
        size: float32 ``[G]``, number of usable maps in each group.
        footprint: bool ``[N, H, W]``, the group's hot spot grown over stable pixels (see
            :func:`grow_region`): the likely extent of a pasted artifact, e.g. a whole border
            band whose middle alone is hot. This is the region to erase in a causal check.
        group_footprint: bool ``[G, H, W]``, the same per group.
    """

    region: Tensor
    group_region: Tensor
    footprint: Tensor
    group_footprint: Tensor
    share: Tensor
    enrichment: Tensor
    consistency: Tensor
    offset: Tensor
    stability: Tensor
    size: Tensor
    pixel_stability: Tensor | None = None
    shift_stability: Tensor | None = None


def anchored_hotspot(
    maps: Tensor,
    images: Tensor,
    groups: Tensor | None = None,
    num_groups: int | None = None,
    frac: float = 0.05,
    min_group: int = 4,
    stable_ratio: float = 0.5,
    max_area: float = 0.25,
    shift: int = 0,
    extremes: tuple[Tensor, Tensor] | None = None,
) -> Hotspot:
    """Attention piled up at one place across *different* probe images.

    The maps of a group (the probes explained as one class: a class-tied watermark only appears
    in its class's images), as distributions, are averaged; the group's hot spot is the hottest
    ``frac`` of that mean. Objects move, so a model that looks at them gives a spread-out mean
    and little mass on the hot spot; a model that reads a fixed-position artifact (watermark,
    tag, token, ruler, border band) piles every probe's mass onto the same off-centre pixels.

    Args:
        maps: float ``[N, H, W]``, ``>= 0``, raw maps at image size.
        images: float ``[N, C, H, W]``, the probe images (any normalisation).
        groups: long ``[N]`` group ids in ``[0, num_groups)``; ``None`` = one group.
        num_groups: number of groups; ``None`` reads ``groups.max() + 1`` (one host sync).
        frac: hot-spot area as a fraction of the image.
        min_group: smallest number of usable maps for a group's statistics (else ``NaN``).
        stable_ratio: a pixel is *stable* when its standard deviation across the group's images
            is below this fraction of the image-wide mean; the footprint grows over those.
        max_area: the footprint stops growing before it covers more than this image fraction.
        shift: shift tolerance in pixels (e.g. half the map's stride): stability is also
            measured on the images' local extremes over ``shift`` pixels each way, so that a
            mark that moves by a few pixels from image to image (burned-in text, a token pasted
            by another device) counts as stable; where that reading is the higher one, the
            footprint is dilated by ``shift`` (the mark is erased wherever it went).
        extremes: :func:`local_extremes` of ``images`` for ``shift``, where the caller keeps
            them (a probe set's images do not change from run to run); ``None``: computed here.

    Returns:
        :class:`Hotspot`.
    """
    n, h, w = maps.shape
    groups, num_groups = _hotspot_groups(maps, images, groups, num_groups)
    p, ok = _dist(_flat(maps))  # [N, P]
    onehot, mean, greg = _group_spots(p, ok, groups, num_groups, frac)
    size, area = onehot.sum(0), greg.float().mean(1)  # [G], [G]
    region = greg[groups] & ok[:, None]  # [N, P]
    share = (p * region).sum(1)
    share = torch.where(ok, share, _nan(share))
    enr = share / area[groups].clamp_min(torch.finfo(area.dtype).tiny)
    enr = torch.where(ok & (area[groups] > 0), enr, _nan(enr))
    enough = (size >= min_group) & (area > 0)
    consistency = (onehot.T @ torch.nan_to_num(enr)) / size.clamp_min(1.0)
    wreg = (mean * greg).view(num_groups, h, w)
    wts = onehot * torch.nan_to_num(share)[:, None]
    std, pixel_stab = _pixel_stability(images, wts, wreg)
    # the artifact's likely extent: the hot spot grown over pixels that barely change
    stable = (std < stable_ratio * std.mean(1)[:, None]).view(num_groups, h, w)
    foot = grow_region(greg.view(num_groups, h, w), stable, max_area=max_area)
    shift_stab = pixel_stab
    if shift > 0:
        _, shift_stab = _pixel_stability(images, wts, wreg, shift, extremes)
        shifted = torch.nan_to_num(shift_stab, nan=-1.0) > torch.nan_to_num(pixel_stab, nan=-1.0)
        foot = torch.where(shifted[:, None, None], dilate(foot, shift), foot)
    stability = torch.fmax(pixel_stab, shift_stab)
    return Hotspot(
        region=region.view(n, h, w),
        group_region=greg.view(num_groups, h, w),
        footprint=foot[groups] & ok[:, None, None],
        group_footprint=foot,
        share=share,
        enrichment=enr,
        consistency=torch.where(enough, consistency, _nan(consistency)),
        offset=torch.where(area > 0, _offset(wreg), _nan(area)),
        stability=torch.where(enough, stability, _nan(stability)),
        size=size,
        pixel_stability=torch.where(enough, pixel_stab, _nan(pixel_stab)),
        shift_stability=torch.where(enough, shift_stab, _nan(shift_stab)),
    )


def _hotspot_groups(
    maps: Tensor, images: Tensor, groups: Tensor | None, num_groups: int | None
) -> tuple[Tensor, int]:
    """Check ``images`` against ``maps`` and resolve the group ids (long ``[N]``) and count."""
    n = maps.shape[0]
    if images.shape[0] != n or images.shape[-2:] != maps.shape[-2:]:
        raise ValueError(
            f"images {tuple(images.shape)} do not match maps {tuple(maps.shape)} ([N, C, H, W])"
        )
    if groups is None:
        return torch.zeros(n, dtype=torch.long, device=maps.device), 1
    groups = groups.to(device=maps.device, dtype=torch.long)
    if num_groups is None:
        num_groups = int(groups.max()) + 1 if n else 1
    return groups, num_groups


def _group_spots(
    p: Tensor, ok: Tensor, groups: Tensor, num_groups: int, frac: float
) -> tuple[Tensor, Tensor, Tensor]:
    """``(onehot [N, G], mean [G, P], spot [G, P])``: the usable probes of each group, their mean
    attention distribution (``p``: ``[N, P]``), and its hottest ``frac`` (bool)."""
    onehot = F.one_hot(groups, num_groups).float() * ok[:, None].float()
    mean = (onehot.T @ p) / onehot.sum(0).clamp_min(1.0)[:, None]
    return onehot, mean, _top_region(mean, frac)


def centre_offset(weights: Tensor) -> Tensor:
    """How far each region lies from the image centre.

    Args:
        weights: float or bool ``[G, H, W]``, ``>= 0`` (a region, or weights over one).

    Returns:
        float32 ``[G]`` in ``[0, 1]``: the distance of the weighted centre from the image
        centre over half the diagonal (0 = centred, 1 = in a corner); ``NaN`` for an empty
        region.
    """
    return _offset(weights.float())


def _offset(wreg: Tensor) -> Tensor:
    """Distance of each ``[G, H, W]`` hot spot's weighted centre from the image centre, as a
    fraction of half the diagonal: float ``[G]`` in ``[0, 1]``."""
    _, h, w = wreg.shape
    com = center_of_mass(wreg)  # [G, 2]
    centre = torch.tensor([(h - 1) / 2, (w - 1) / 2], device=wreg.device)
    half_diag = max(math.hypot(h - 1, w - 1) / 2, 0.5)
    return ((com - centre).norm(dim=1) / half_diag).clamp(0.0, 1.0)


def _weighted_std(x: Tensor, wts: Tensor) -> Tensor:
    """Per-group, per-pixel weighted standard deviation across images: ``x`` ``[N, C, P]``,
    ``wts`` ``[N, G]`` -> float ``[G, C, P]``."""
    tiny = torch.finfo(wts.dtype).tiny
    wsum = wts.sum(0).clamp_min(tiny)  # [G]
    mu = torch.einsum("ng,ncp->gcp", wts, x) / wsum[:, None, None]
    ex2 = torch.einsum("ng,ncp->gcp", wts, x * x) / wsum[:, None, None]
    return (ex2 - mu * mu).clamp_min(0).sqrt()


def local_extremes(images: Tensor, shift: int) -> tuple[Tensor, Tensor]:
    """Each image's local maximum and minimum over a ``2 * shift + 1`` square window.

    Args:
        images: float ``[N, C, H, W]``.
        shift: pixels each way (``>= 1``).

    Returns:
        ``(hi, lo)``, float ``[N, C, H, W]`` each (the window clipped at the borders).
    """
    x = images.float()
    return _local_max(x, shift), -_local_max(-x, shift)


def shift_tolerant_std(
    images: Tensor, wts: Tensor, shift: int, extremes: tuple[Tensor, Tensor] | None = None
) -> Tensor:
    """Per-pixel standard deviation across images that a shift of up to ``shift`` px ignores.

    Each image is replaced by its local maximum and its local minimum over a ``2 * shift + 1``
    square window; a bright (or dark) mark that moves by at most ``shift`` pixels between images
    gives the same local maximum (minimum) over its middle in every image. Per pixel and channel
    the smaller of the two deviations counts (a mark brighter than its surroundings in one
    channel may be darker in another), then the mean over channels.

    Args:
        images: float ``[N, C, H, W]``.
        wts: float ``[N, G]``, the weight of each image in each group (``0``: not in it).
        shift: pixels each way (``0``: the plain per-pixel deviation).
        extremes: :func:`local_extremes` of ``images`` for ``shift``, where the caller keeps
            them (a probe set's images are the same at every run); ``None``: computed here.

    Returns:
        float ``[G, H * W]``.
    """
    x = images.float()
    if shift <= 0:
        return _weighted_std(x.flatten(2), wts).mean(1)
    hi, lo = extremes if extremes is not None else local_extremes(x, shift)
    std_hi = _weighted_std(hi.flatten(2), wts)
    std_lo = _weighted_std(lo.flatten(2), wts)
    return torch.minimum(std_hi, std_lo).mean(1)


def dilate(mask: Tensor, px: int) -> Tensor:
    """Grow bool masks by ``px`` pixels each way (a ``(2 px + 1)`` square window).

    Args:
        mask: bool ``[N, H, W]``.
        px: pixels; ``<= 0`` returns ``mask`` itself.

    Returns:
        bool ``[N, H, W]``, a superset of ``mask``: equal to a stride-1 ``max_pool2d`` with
        ``px`` padding, at a fraction of its cost on a CPU (:func:`_local_max`).
    """
    if px <= 0:
        return mask
    return _local_max(mask[:, None].float(), px)[:, 0] > 0


def _local_max(x: Tensor, r: int) -> Tensor:
    """Max over a ``(2r + 1)`` square window of ``[N, C, H, W]`` (same size; the window is
    clipped at the borders), as two separable passes of shifted maxima: equal to a stride-1
    ``max_pool2d`` with padding ``r``, which is 5-20x slower on a CPU ([16, 1, 64, 64]:
    1.4-4.7 ms against 0.07-0.28 ms for ``r`` = 1-4, one thread)."""
    h, w = x.shape[-2:]
    p = F.pad(x, (r, r, r, r), mode="replicate")  # a replicated border never wins a max wrongly
    rows = p[..., :, 0:w]
    for d in range(1, 2 * r + 1):
        rows = torch.maximum(rows, p[..., :, d : d + w])
    out = rows[..., 0:h, :]
    for d in range(1, 2 * r + 1):
        out = torch.maximum(out, rows[..., d : d + h, :])
    return out


def _pixel_stability(
    images: Tensor,
    wts: Tensor,
    wreg: Tensor,
    shift: int = 0,
    extremes: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """How little the image pixels under each group's hot spot change across its images.

    Args:
        images: ``[N, C, H, W]``; ``wts``: float ``[N, G]`` probe weights per group (the
            probe's share on the hot spot); ``wreg``: float ``[G, H, W]`` hot-spot weights.
        shift, extremes: read the images shift-tolerantly (:func:`shift_tolerant_std`).

    Returns:
        ``(std [G, P], stability [G])``: the weighted per-pixel standard deviation (mean over
        channels), and ``1 - std under the hot spot / image-wide std`` in ``[0, 1]`` (``NaN``
        where the images do not vary at all).
    """
    tiny = torch.finfo(wts.dtype).tiny
    std = shift_tolerant_std(images, wts, shift, extremes)  # [G, P]
    std_all = std.mean(1)
    wflat = wreg.flatten(1)
    std_reg = (std * wflat).sum(1) / wflat.sum(1).clamp_min(tiny)
    stability = (1.0 - std_reg / std_all.clamp_min(tiny)).clamp(0.0, 1.0)
    return std, torch.where(std_all > 0, stability, _nan(stability))


def grow_region(
    seed: Tensor, allowed: Tensor, max_area: float = 0.25, iters: int | None = None
) -> Tensor:
    """Grow ``seed`` into 8-connected ``allowed`` pixels (batched constrained dilation).

    Each step adds the ``allowed`` neighbours of the current region; a region stops growing
    (keeps its last size) before its area would exceed ``max_area`` of the image, so a region
    that would flood a stable background stays near its seed. A fixed number of steps, no host
    synchronisation.

    Args:
        seed: bool ``[G, H, W]``.
        allowed: bool ``[G, H, W]`` (or ``[H, W]``).
        max_area: largest area fraction in ``(0, 1]`` the grown region may reach.
        iters: dilation steps; ``None``: ``ceil(max(H, W) / 2)`` (enough to span the image from
            its middle).

    Returns:
        bool ``[G, H, W]``, a superset of ``seed``.
    """
    g, h, w = seed.shape
    if iters is None:
        iters = math.ceil(max(h, w) / 2)
    allowed = allowed.expand(g, h, w)[:, None]
    region = seed[:, None].float()
    limit = max_area * h * w
    for step in range(iters):
        grown = torch.maximum(_local_max(region, 1) * allowed, region)
        fits = grown.sum((1, 2, 3), keepdim=True) <= limit
        before, region = region, torch.where(fits, grown, region)
        # a step that changes nothing is a fixed point: stop (checked on the CPU only, where
        # it costs no device synchronisation; the result is the same either way)
        if region.device.type == "cpu" and step % 4 == 3 and torch.equal(region, before):
            break
    return region[:, 0] > 0


def class_marks(
    images: Tensor,
    groups: Tensor,
    num_groups: int,
    tolerance: float = 0.25,
    contrast: float = 0.5,
    min_group: int = 4,
    min_pixels: int = 9,
) -> Tensor:
    """Fixed-place marks tied to a class: pixels most of a class's images share and few of the
    others' do.

    A label artifact pasted at a fixed place (a watermark, tag, token, ruler, stamp, or a mark
    shared by a group of classes) gives the images of its class (or classes) the same pixel
    values there, and the other images do not have them. Objects that move and varying
    backgrounds agree nowhere. Per group ``g`` and pixel, the images *carry* the group's value
    when every channel lies within ``tolerance`` times the typical pixel spread (the median over
    pixels of the per-pixel standard deviation across all images, averaged over channels) of
    the group's per-pixel median. The pixel is a mark of ``g`` when the share of ``g``'s images
    that carry it, minus the median of that share over the other groups, is at least
    ``contrast``: a mark on 95 % of two classes' images of five, and 5 % of the rest, scores
    about 0.9 for both, while a mark independent of the label scores about 0 (a chance majority
    in a few images rarely reaches ``contrast``). Uses no map and no model: the marks are
    candidates that the attention and a causal test then judge.

    One pass per group (a median over its images, a comparison with every image): about
    ``G * N * C * H * W`` operations, computed once per probe set by the caller.

    Args:
        images: float ``[N, C, H, W]`` (any normalisation; e.g. the analysis grid).
        groups: long ``[N]`` group ids in ``[0, num_groups)`` (the explained class).
        num_groups: ``G``.
        tolerance: the largest difference from the group's median, as a fraction of the typical
            pixel spread, for an image to carry the value.
        contrast: the least share difference (in ``(0, 1]``) for a mark pixel.
        min_group: groups with fewer images get no marks (their shares are too coarse).
        min_pixels: a group's mark needs at least this many pixels (the default: a 3x3 patch's
            worth), else it has none: a few agreeing pixels are chance, or a sliver of a
            class-tied tint, too small for a map to point at or for its erasure to matter.

    Returns:
        bool ``[G, H, W]``: each group's mark pixels (all ``False`` for a group without one, for
        groups under ``min_group`` images, and for images that do not vary at all). A lone
        pixel, with no mark pixel among its eight neighbours, is dropped as chance agreement,
        and a mark of fewer than ``min_pixels`` pixels as a whole.
    """
    n, _, h, w = images.shape
    groups = groups.to(device=images.device, dtype=torch.long)
    out = torch.zeros(num_groups, h * w, dtype=torch.bool, device=images.device)
    if n == 0 or num_groups < 2:  # a mark tells a class from the others: none to compare with
        return out.view(num_groups, h, w)
    x = images.detach().float().flatten(2)  # [N, C, P]
    # the typical pixel spread across images: the median over pixels (objects, which cover a
    # minority of the pixels and vary most, do not widen the tolerance)
    spread = x.std(0, unbiased=False).mean(0).median()
    onehot = F.one_hot(groups, num_groups).float()  # [N, G]
    size = onehot.sum(0)  # [G]
    ok = (size >= min_group) & (spread > 0)
    present = size > 0
    for g in torch.nonzero(ok).flatten().tolist():
        median = x[groups == g].median(0).values  # [C, P]
        carry = ((x - median).abs() <= tolerance * spread).all(1).float()  # [N, P]
        share = (onehot.T @ carry) / size.clamp_min(1.0)[:, None]  # [G, P]
        others = present.clone()
        others[g] = False
        out[g] = share[g] - share[others].median(0).values >= contrast
    marks = out.view(num_groups, h, w)
    # a mark is a shape: a lone pixel (no mark pixel among its 8 neighbours) is chance agreement
    near = F.avg_pool2d(marks[:, None].float(), 3, stride=1, padding=1)[:, 0] * 9.0
    marks = marks & (near >= 2.0)
    return marks & (marks.flatten(1).sum(1) >= min_pixels)[:, None, None]


# ----------------------------------------------------------------------------- causal
def erase(
    images: Tensor,
    region: Tensor,
    smooth_iters: int = 8,
    fill_size: tuple[int, int] | None = None,
) -> Tensor:
    """Fill ``region`` in each image from the surrounding pixels (push-pull inpainting).

    The known pixels are averaged down an image pyramid (pull) and the coarse averages are
    interpolated back up into the holes (push), so a hole of any size is filled in a fixed
    ``log2(max(H, W))`` steps, batched, on the device; ``smooth_iters`` Jacobi steps of 3x3
    diffusion inside the hole then smooth the result. Pixels outside the region are unchanged.

    Args:
        images: float ``[N, C, H, W]``.
        region: bool ``[N, H, W]`` or ``[H, W]``; ``True`` = erase.
        smooth_iters: diffusion steps after the push-pull fill.
        fill_size: ``(h, w)`` smaller than the images: compute the (smooth) fill on that grid,
            from the grid cells the region does not touch, and upsample it bilinearly into the
            region; the cost no longer grows with the image size. ``None``: at full size.

    Returns:
        ``[N, C, H, W]`` like ``images``. An empty region returns the images unchanged; an image
        whose region covers everything is filled with zeros (nothing to fill from).
    """
    n, _, h, w = images.shape
    reg = region.to(device=images.device, dtype=torch.bool).expand(n, h, w)[:, None]
    x = images.float()
    if fill_size is not None and (fill_size[0] < h or fill_size[1] < w):
        size = (int(fill_size[0]), int(fill_size[1]))
        small_reg = F.adaptive_max_pool2d(reg.float(), size) > 0  # cells the region touches
        small = erase(F.adaptive_avg_pool2d(x, size), small_reg[:, 0], smooth_iters)
        fill = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
        return torch.where(reg, fill, x).to(images.dtype)
    known = (~reg).float()  # [N, 1, H, W]
    levels: list[tuple[Tensor, Tensor]] = [(x * known, known)]
    while max(levels[-1][0].shape[-2:]) > 1:
        v, k = levels[-1]
        levels.append((F.avg_pool2d(v, 2, ceil_mode=True), F.avg_pool2d(k, 2, ceil_mode=True)))
    v, k = levels[-1]
    est = v / k.clamp_min(1e-12) * (k > 0)
    for v, k in reversed(levels[:-1]):
        up = F.interpolate(est, size=v.shape[-2:], mode="bilinear", align_corners=False)
        est = v + (1.0 - k) * up  # v = k * (mean of the known pixels of the cell)
    out = torch.where(reg, est, x)
    for _ in range(smooth_iters):
        out = torch.where(reg, _box3(out), x)
    return out.to(images.dtype)


def _box3(x: Tensor) -> Tensor:
    """3x3 box mean of ``[N, C, H, W]`` with replicated edges, as two shifted sums (several times
    faster on a CPU than a depthwise convolution, and equal to it)."""
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    rows = p[..., :-2] + p[..., 1:-1] + p[..., 2:]
    return (rows[..., :-2, :] + rows[..., 1:-1, :] + rows[..., 2:, :]) * (1.0 / 9.0)


def log_odds(logits: Tensor, targets: Tensor, *, multilabel: bool = False) -> Tensor:
    """Log-odds of the target class: ``logit_t - logsumexp(other logits)`` under the softmax.

    Args:
        logits: float ``[N, K]`` (``K >= 2`` for the softmax).
        targets: long ``[N]``.
        multilabel: the outputs are independent sigmoid logits: the log-odds of the target
            label is its logit itself.

    Returns:
        float32 ``[N]``: ``log(p_t / (1 - p_t))``; ``> 0`` where the target is the more likely
        outcome (for ``K = 2``: where it is predicted).
    """
    x = logits.float()
    t = targets.to(device=x.device, dtype=torch.long)[:, None]
    if multilabel:
        return x.gather(1, t)[:, 0]
    other = x.scatter(1, t, float("-inf"))
    return x.gather(1, t)[:, 0] - other.logsumexp(1)


def evidence_drop(
    base_logits: Tensor, after_logits: Tensor, targets: Tensor, *, multilabel: bool = False
) -> Tensor:
    """Share of the target's evidence (log-odds) lost between two forwards.

    ``(m0 - m1) / m0`` with ``m`` the :func:`log_odds` of the target, clamped to ``[-1, 1]``.
    Unlike the probability drop it does not saturate: a confident model (``p = 0.9999``) that
    loses 60 % of its evidence still shows 0.6, and a hesitant one (``p = 0.7``) that loses all
    of it shows 1.

    Args:
        base_logits, after_logits: float ``[N, K]``.
        targets: long ``[N]``.
        multilabel: sigmoid outputs (see :func:`log_odds`).

    Returns:
        float32 ``[N]`` in ``[-1, 1]``: 1 = the evidence is gone (at or past even odds), 0 =
        unchanged, < 0 = the target gained. ``NaN`` where the base log-odds are not positive
        (nothing to lose).
    """
    m0 = log_odds(base_logits, targets, multilabel=multilabel)
    m1 = log_odds(after_logits, targets, multilabel=multilabel)
    rel = ((m0 - m1) / m0.clamp_min(torch.finfo(m0.dtype).tiny)).clamp(-1.0, 1.0)
    return torch.where(m0 > 0, rel, _nan(rel))


class Erasure(NamedTuple):
    """Result of :func:`erasure_effect`, float32 ``[N]`` each (see there)."""

    flipped: Tensor
    score_drop: Tensor
    evidence_drop: Tensor


@torch.no_grad()
def erasure_effect(
    score_fn: Callable[[Tensor], Tensor],
    images: Tensor,
    region: Tensor,
    targets: Tensor,
    base_logits: Tensor | None = None,
) -> Erasure:
    """Causal check: erase ``region`` (see :func:`erase`) and measure what the model loses.

    Turns "the map looks at the corner" into "the model depends on the corner". One batched
    forward of the erased probes (two when ``base_logits`` is not given).

    Args:
        score_fn: ``images [N, C, H, W] -> logits [N, K]``; run the model in eval mode.
        images: float ``[N, C, H, W]``, as fed to the model.
        region: bool ``[N, H, W]`` or ``[H, W]``.
        targets: long ``[N]``, the class whose score is watched.
        base_logits: float ``[N, K]``, the logits of the unchanged images (computed if ``None``).

    Returns:
        :class:`Erasure` ``(flipped, score_drop, evidence_drop)``: ``flipped`` is 1.0 where the
        predicted class (argmax) changed, else 0.0 (its mean is the flip rate); ``score_drop`` is
        the fall of the target's softmax probability, in ``[-1, 1]``; ``evidence_drop`` the share
        of the target's log-odds lost (:func:`evidence_drop`), in ``[-1, 1]`` or ``NaN``. Probes
        with an empty region give 0 for all three (up to the model's numerical noise).
    """
    if base_logits is None:
        base_logits = score_fn(images)
    after = score_fn(erase(images, region)).float()
    return erasure_effect_from_logits(base_logits, after, targets)


def erasure_effect_from_logits(
    base_logits: Tensor, after_logits: Tensor, targets: Tensor, *, multilabel: bool = False
) -> Erasure:
    """:class:`Erasure` from the logits before and after an erasure (see :func:`erasure_effect`).

    Args:
        base_logits, after_logits: float ``[N, K]``.
        targets: long ``[N]``.
        multilabel: sigmoid outputs: the probability is the target's sigmoid, and a flip is a
            change of the target logit's sign (label on / off).
    """
    after = after_logits.float()
    base = base_logits.float().to(after.device)
    t = targets.to(device=after.device, dtype=torch.long)
    if multilabel:
        z0, z1 = base.gather(1, t[:, None])[:, 0], after.gather(1, t[:, None])[:, 0]
        flipped = ((z0 > 0) != (z1 > 0)).float()
        p0, p1 = z0.sigmoid(), z1.sigmoid()
    else:
        flipped = (after.argmax(1) != base.argmax(1)).float()
        p0 = base.softmax(1).gather(1, t[:, None])[:, 0]
        p1 = after.softmax(1).gather(1, t[:, None])[:, 0]
    return Erasure(flipped, p0 - p1, evidence_drop(base, after, t, multilabel=multilabel))


def flat_fill(images: Tensor, region: Tensor, colour: Tensor | None = None) -> Tensor:
    """Replace ``region`` in each image by one flat colour.

    The erasure of a *large* region (the whole background around an object): inpainting it from
    its surroundings would paint the object's colours over the image, while a flat colour takes
    away every texture, mark, blob and tint the region holds, and leaves the object as it is.

    Args:
        images: float ``[N, C, H, W]``.
        region: bool ``[N, H, W]`` or ``[H, W]``; ``True`` = replace.
        colour: float ``[C]`` or ``[N, C]``, the fill (e.g. the mean colour of the region over a
            whole probe set, so that no image keeps a tint of its own); ``None``: each image's
            own mean colour inside its region.

    Returns:
        ``[N, C, H, W]`` like ``images``, unchanged outside the region (and wholly unchanged
        where the region is empty).
    """
    n, c, h, w = images.shape
    reg = region.to(device=images.device, dtype=torch.bool).expand(n, h, w)[:, None]
    x = images.float()
    if colour is None:
        weight = reg.float()
        fill = (x * weight).sum((2, 3)) / weight.sum((2, 3)).clamp_min(1)  # [N, C]
    else:
        fill = colour.to(device=x.device, dtype=x.dtype).expand(n, c)
    return torch.where(reg, fill[:, :, None, None].expand(n, c, h, w), x).to(images.dtype)
