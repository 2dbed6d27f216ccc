"""The evidence of one run: the analysis grid, the measures, and the causal checks.

The steps of :meth:`~gradcam_callback.alarms.ShortcutMonitor.analyze` that measure (the rules
then decide on what they return): :func:`prepare` brings maps, images and masks to one bounded
analysis grid; :func:`measure` computes the per-probe measures and the class hot spots
(:mod:`gradcam_callback.metrics`); :func:`class_stats` turns them into per-class statistics;
:func:`confirm` erases, for the classes whose rule is near its threshold, the rule's region in one
batched forward; :func:`summarize` gathers the values a run logs. Each takes the monitor (``mon``)
for its settings and drift references; none keeps state of its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from . import metrics as M
from .render import resize
from .rules import RuleDecision

__all__ = [
    "ImageCache",
    "Inputs",
    "StatsCache",
    "causal_class_stats",
    "class_stats",
    "confirm",
    "group_mean",
    "label_presence",
    "learned_classes",
    "measure",
    "nanmean",
    "patch_dependence",
    "patches",
    "prepare",
    "resize_maps",
    "summarize",
]

_REGIONS = (
    "artifact",
    "hotspot",
    "mark",
    "object",
    "focus",
    "border",
    "remembered",
    "backdrop",
    "surround",
    "patches",
)
#: the region whose erasure is each patch of a :data:`PATCH_GRID` x :data:`PATCH_GRID` grid of
#: the image in turn, each by its mean colour over the run's probes; a probe's reading is the
#: evidence the patch that matters most takes (:func:`patch_dependence`: is the evidence spread
#: over the image, or in one place?)
SPREAD = "patches"
#: patches per side of :data:`SPREAD`: a quarter of the image side, about an object's size
PATCH_GRID = 4
#: regions erased by a flat colour (:func:`~.metrics.flat_fill`): the background around a kept
#: object, too large to inpaint from its surroundings (the object) without painting it in
FLAT_REGIONS = frozenset({"backdrop", "surround"})
#: the margin kept around the objects (``backdrop``) or the focus region (``surround``), as a
#: fraction of the image side: the faint edge of an object, or the part of it just outside the
#: map's hottest cells, stays; only the background goes
KEEP_MARGIN = 0.05


@dataclass
class Inputs:
    """One run's tensors at the analysis grid (``g``) and at image size (for erasure)."""

    maps: Tensor  # [N, gh, gw] float32 >= 0
    images: Tensor  # [N, C, H, W] as fed to the model
    images_grid: Tensor  # [N, C, gh, gw] float32
    targets: Tensor  # [N] long
    groups: Tensor  # [N] long in [0, G)
    classes: list[int]  # class id of each group
    onehot: Tensor  # [N, G] float
    object_masks: Tensor | None  # [N, gh, gw] bool
    artifact_masks: Tensor | None
    object_full: Tensor | None  # [N, H, W] bool
    artifact_full: Tensor | None
    logits: Tensor | None
    can_localise: bool
    cells: tuple[int, int] = (0, 0)  # the layer map's own grid (h, w)
    # long [N]: the probe each row explains (multi-label rows; None: found from the images)
    probe_index: Tensor | None = None
    # [N, gh, gw] bool: the artifact masks as the map sees them (the cells they touch)
    artifact_cells: Tensor | None = None
    # [N, gh, gw] bool: each probe's class's fixed-place mark (:func:`~.metrics.class_marks`),
    # found from the probe images where no artifact masks are given (None: not looked for)
    mark_masks: Tensor | None = None

    @property
    def stride(self) -> float:
        """Analysis-grid pixels per map cell (``1`` for maps at the grid's resolution or finer)."""
        gh, gw = self.maps.shape[-2:]
        if min(self.cells) <= 0:
            return 1.0
        return max(1.0, gh / self.cells[0], gw / self.cells[1])

    @property
    def shift(self) -> int:
        """The hot spot's shift tolerance: half a map cell, in analysis-grid pixels."""
        return int(self.stride // 2)


class StatsCache:
    """:class:`~.metrics.MapStats` of the last few map tensors, by identity.

    A run's maps become the next run's reference (the monitor keeps the same tensor), and the
    baseline stays one, so each run computes the drift measures' per-map pieces (ranks, top
    regions, distributions, centres) for its own maps only, instead of for both sides of every
    comparison. The cache holds the tensors it read, so an identity is never reused for
    another tensor.
    """

    def __init__(self, size: int = 3) -> None:
        self.size = size
        self.items: list[M.MapStats] = []

    def of(self, maps: Tensor) -> M.MapStats:
        """The :class:`~.metrics.MapStats` of ``maps`` ``[N, H, W]`` (one per tensor)."""
        for stats in self.items:
            if stats.maps is maps:
                return stats
        stats = M.MapStats(maps)
        self.items = [stats, *self.items][: self.size]
        return stats


class ImageCache:
    """The probe images as the analysis reads them, kept from run to run.

    A probe set's images are the same tensor at every run (on their device), so their analysis
    grid and their local extremes (the hot spot's shift-tolerant stability,
    :func:`~.metrics.local_extremes`) are computed once, not at every run. Keyed by the
    tensor's identity and its in-place version counter: other or modified images are read
    afresh. Holds the tensor it read, so an identity is never reused for another tensor.
    """

    def __init__(self) -> None:
        self._key: tuple[Tensor, int, tuple[int, int]] | None = None
        self._grid: Tensor | None = None
        self._extremes: dict[int, tuple[Tensor, Tensor]] = {}
        self._marks: tuple[Tensor, tuple[float, float, int], Tensor] | None = None

    def grid(self, images: Tensor, size: tuple[int, int]) -> Tensor:
        """Float32 ``images`` ``[N, C, H, W]`` average-pooled to ``size`` (as they are at it)."""
        if images.is_inference():  # no version counter to notice a change by: read afresh
            self._key, self._grid, self._extremes, self._marks = None, None, {}, None
            return _grid_images(images, size)
        key = self._key
        if key is None or key[0] is not images or key[1:] != (images._version, size):
            g = _grid_images(images, size)
            self._key, self._grid, self._extremes = (images, images._version, size), g, {}
            self._marks = None
        assert self._grid is not None
        return self._grid

    def extremes(self, grid: Tensor, shift: int) -> tuple[Tensor, Tensor] | None:
        """:func:`~.metrics.local_extremes` of ``grid`` (the tensor :meth:`grid` returned;
        ``None`` for another tensor or ``shift`` 0: the caller computes what it needs)."""
        if shift <= 0 or grid is not self._grid:
            return None
        if shift not in self._extremes:
            self._extremes[shift] = M.local_extremes(grid, shift)
        return self._extremes[shift]

    def marks(
        self, grid: Tensor, groups: Tensor, num_groups: int, params: tuple[float, float, int]
    ) -> Tensor:
        """:func:`~.metrics.class_marks` of ``grid`` (the tensor :meth:`grid` returned, else
        computed afresh) for the group ids ``groups`` (long ``[N]``) and ``params`` =
        ``(tolerance, contrast, min_group)``: bool ``[G, h, w]``, kept while the images, the
        groups and the parameters stay the same (a probe set's classes do not change)."""
        cached = self._marks
        if (
            cached is not None
            and grid is self._grid
            and cached[1] == params
            and cached[2].shape[0] == num_groups
            and torch.equal(cached[0], groups)  # False for another shape too
        ):
            return cached[2]
        tolerance, contrast, min_group = params
        out = M.class_marks(grid, groups, num_groups, tolerance, contrast, min_group)
        if grid is self._grid:
            self._marks = (groups.clone(), params, out)
        return out


def _grid_images(images: Tensor, size: tuple[int, int]) -> Tensor:
    g = images.detach().float()
    return F.adaptive_avg_pool2d(g, size) if tuple(images.shape[-2:]) != size else g


def nanmean(x: Tensor) -> Tensor:
    """``nanmean`` that stays NaN (without a warning) for an all-NaN or empty input."""
    ok = ~torch.isnan(x)
    return torch.where(ok.any(), torch.nan_to_num(x).sum() / ok.sum().clamp_min(1), torch.nan)


def group_mean(values: Tensor, onehot: Tensor) -> tuple[Tensor, Tensor]:
    """Per-group ``nanmean`` and count of non-NaN values: ``[M, N] @ [N, G] -> [M, G]`` twice."""
    ok = (~torch.isnan(values)).float()
    cnt = ok @ onehot
    mean = (torch.nan_to_num(values) @ onehot) / cnt.clamp_min(1)
    return torch.where(cnt > 0, mean, torch.nan), cnt


def prepare(
    mon: Any,
    maps: Tensor,
    images: Tensor,
    targets: Tensor,
    logits: Tensor | None,
    object_masks: Tensor | None,
    artifact_masks: Tensor | None,
    map_size: tuple[int, int] | None,
    probe_index: Tensor | None = None,
) -> Inputs:
    if maps.dim() != 3 or images.dim() != 4 or maps.shape[0] != images.shape[0]:
        raise ValueError(
            f"expected maps [N, h, w] and images [N, C, H, W] with the same N, got "
            f"{tuple(maps.shape)} and {tuple(images.shape)}"
        )
    _, _, height, width = images.shape
    dev = maps.device
    grid = mon.grid_size(int(height), int(width))
    if map_size is None:
        small = maps.shape[-2] < height or maps.shape[-1] < width
        map_size = tuple(maps.shape[-2:]) if small else (height, width)
    can_localise = min(map_size) >= mon.min_map_cells
    g_maps = resize_maps(maps.detach().float(), grid).clamp_min(0)
    g_images = mon.image_cache.grid(images, grid)
    images = images.detach()
    targets = targets.detach().to(dev, torch.long)
    uniq, inv = torch.unique(targets, return_inverse=True)
    onehot = F.one_hot(inv, int(uniq.numel())).float()

    def full(m: Tensor | None) -> Tensor | None:
        return None if m is None else m.to(dev, torch.bool)

    obj, art = full(object_masks), full(artifact_masks)
    cells = (int(map_size[0]), int(map_size[1]))
    return Inputs(
        maps=g_maps,
        images=images.to(dev),
        images_grid=g_images.to(dev),
        targets=targets,
        groups=inv,
        classes=[int(c) for c in uniq.tolist()],
        onehot=onehot,
        object_masks=None if obj is None else _resize_mask(obj, grid),
        artifact_masks=None if art is None else _resize_mask(art, grid),
        object_full=obj,
        artifact_full=art,
        logits=None if logits is None else logits.detach().float().to(dev),
        can_localise=can_localise,
        cells=cells,
        artifact_cells=None if art is None else M.cell_mask(art, cells, grid),
        probe_index=None if probe_index is None else probe_index.to(dev, torch.long),
    )


def measure(
    mon: Any, x: Inputs, drift_vs_baseline: bool
) -> tuple[dict[str, Tensor], dict[str, Tensor], M.Hotspot]:
    maps, dev = x.maps, x.maps.device
    per: dict[str, Tensor] = {}
    refs = (("baseline", mon.baseline_maps if drift_vs_baseline else None),)
    refs += (("previous", mon.previous_maps),)
    now = mon.map_cache.of(maps)
    for name, ref in refs:
        if ref is not None:
            for k, v in M.drift(now, mon.map_cache.of(ref.to(dev))).items():
                per[f"drift/{k}_{name}"] = v
    entropy = now.entropy
    per["attention/entropy"] = entropy
    per["attention/focus"] = 1.0 - entropy
    per["attention/border_enrichment"] = M.border_enrichment(maps, mon.border_width)
    per["attention/corner_enrichment"] = M.corner_enrichment(maps)
    for name, mask in (("object", x.object_masks), ("artifact", x.artifact_masks)):
        if mask is None:
            continue
        has = mask.flatten(1).any(1)
        per[f"attention/{name}_share"] = torch.where(has, M.mass_share(maps, mask), torch.nan)
        per[f"attention/{name}_enrichment"] = M.enrichment(maps, mask)
        if name == "object":
            per["attention/object_pointing"] = torch.where(
                has, M.pointing_game(maps, mask), torch.nan
            )
    if x.artifact_cells is not None:
        # the masks as the map sees them: the cells they touch (a line thinner than a cell gets
        # the cell's attention); the rule reads the larger of the pixel and the cell reading
        pixel = per["attention/artifact_enrichment"]
        cell = M.enrichment(maps, x.artifact_cells)
        per["attention/artifact_pixel_enrichment"] = pixel
        per["attention/artifact_cell_enrichment"] = cell
        per["attention/artifact_enrichment"] = torch.fmax(pixel, cell)
    offsets: dict[str, Tensor] = {}
    if x.artifact_masks is None and mon.mark_contrast is not None:
        # no artifact masks: look for fixed-place marks tied to a class in the probe images
        params = (mon.mark_tolerance, mon.mark_contrast, mon.min_probes)
        marks = mon.image_cache.marks(x.images_grid, x.groups, len(x.classes), params)
        x.mark_masks = marks[x.groups]
        pixel = M.enrichment(maps, x.mark_masks)
        cell = M.enrichment(maps, M.cell_mask(x.mark_masks, x.cells, tuple(maps.shape[-2:])))
        per["attention/mark_pixel_enrichment"] = pixel
        per["attention/mark_cell_enrichment"] = cell
        per["attention/mark_enrichment"] = torch.fmax(pixel, cell)
        per["attention/mark_area"] = x.mark_masks.flatten(1).float().mean(1)
        offsets["attention/mark_offset"] = M.centre_offset(marks)
    hot = M.anchored_hotspot(
        maps,
        x.images_grid,
        x.groups,
        num_groups=len(x.classes),
        frac=mon.hotspot_frac,
        min_group=min(mon.min_probes, 2),  # smaller groups: weak evidence (a few_probes note)
        shift=x.shift,
        extremes=mon.image_cache.extremes(x.images_grid, x.shift),
    )
    per["attention/hotspot_share"] = hot.share
    per["attention/hotspot_enrichment"] = hot.enrichment
    group = {
        "attention/hotspot_consistency": hot.consistency,
        "attention/hotspot_offset": hot.offset,
        "attention/hotspot_stability": hot.stability,
        "attention/hotspot_pixel_stability": hot.pixel_stability,
        "attention/hotspot_shift_stability": hot.shift_stability,
        "attention/hotspot_area": hot.group_footprint.flatten(1).float().mean(1),
        **offsets,
    }
    return per, group, hot


def learned_classes(x: Inputs, share: float | None, multilabel: bool = False) -> Tensor:
    """Bool ``[G]``: the classes the model has learned on the probes.

    A class is learned when its Youden index on the probes, the share of its probes predicted
    as the class minus the share of the other probes predicted as it, is at least ``share``.
    A model that predicts one class for everything, or is still at chance, scores 0: it has
    learned nothing a rule could call a shortcut. All ``True`` without logits (``target_fn``) or
    with ``share=None``.

    Multi-label (sigmoid outputs): the same index per label, over the probe *images* (see
    :func:`label_presence`): the share of the images that carry the label whose label logit is
    positive, minus the share of the images without it whose logit is positive too (0 when
    every image carries it). A label the model predicts everywhere, or nowhere, is not judged.
    """
    g = len(x.classes)
    if share is None or x.logits is None or x.logits.dim() != 2:
        return torch.ones(g, dtype=torch.bool, device=x.maps.device)
    cls = torch.tensor(x.classes, device=x.maps.device)
    if multilabel:
        present, weight = label_presence(x)  # [N, G] bool, [N] (each image counts once)
        predicted = (x.logits[:, cls] > 0).float()  # [N, G]
        own, other = present.float() * weight[:, None], (~present).float() * weight[:, None]
    else:
        predicted = (x.logits.argmax(1)[:, None] == cls[None, :]).float()  # [N, G]
        own, other = x.onehot, 1.0 - x.onehot
    recall = (predicted * own).sum(0) / own.sum(0).clamp_min(1e-9)
    false_rate = (predicted * other).sum(0) / other.sum(0).clamp_min(1e-9)
    return recall - false_rate >= share


def label_presence(x: Inputs) -> tuple[Tensor, Tensor]:
    """Which explained labels each row's image carries, for multi-label probes.

    A multi-label probe is explained once per positive label, each row a copy of its image
    (:func:`~gradcam_callback.multilabel.expand_positive_labels`): the rows of one probe
    (``x.probe_index``, the callback's ``explained_index``; without it, rows with identical
    images) share a label set, the rows' targets. Probes with no positive label are not
    explained, so the images without a label are those of the other labels.

    Returns:
        ``(present, weight)``: bool ``[N, G]``, row ``i``'s image carries ``classes[g]``; float
        ``[N]``, ``1 / (rows of that image)``, so that sums over rows count each image once.
    """
    if x.probe_index is not None:
        _, probe = torch.unique(x.probe_index, return_inverse=True)  # [N]
    else:
        _, probe = torch.unique(x.images.flatten(1), dim=0, return_inverse=True)
    rows = F.one_hot(probe).float()  # [N, U]
    sets = (rows.T @ x.onehot) > 0  # [U, G]: the labels explained on each probe image
    return sets[probe], 1.0 / rows.sum(0)[probe]


def class_stats(
    x: Inputs, per: dict[str, Tensor], group: dict[str, Tensor], size: Tensor
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Class statistics ``[G]`` (and ``"@set"`` values ``[1]``) with their usable counts."""
    names = list(per)
    stacked = torch.stack([per[k] for k in names])  # [M, N]
    means, cnt = group_mean(stacked, x.onehot)
    whole = torch.ones(x.onehot.shape[0], 1, device=x.onehot.device)
    smeans, scnt = group_mean(stacked, whole)
    stats, counts = {}, {}
    for i, k in enumerate(names):
        stats[k], counts[k] = means[i], cnt[i]
        stats[k + "@set"], counts[k + "@set"] = smeans[i], scnt[i]
    for k, v in group.items():
        stats[k], counts[k] = v, size
    return stats, counts


def regions(
    mon: Any, x: Inputs, hot: M.Hotspot, remembered: Callable[[], Tensor] | None = None
) -> dict[str, Callable[[], Tensor]]:
    """Region name -> a function building its bool ``[N, H, W]`` erasure masks at image size.

    ``remembered``: builds bool ``[N, h, w]`` at the analysis grid, each probe's class's
    hot-spot footprint remembered from an earlier confirmed finding (the ``"remembered"``
    region of a finding held while measured; none without it)."""
    height, width = x.images.shape[-2:]
    size = (int(height), int(width))

    def up(mask: Tensor) -> Tensor:
        return M.dilate(_upsample_mask(mask, size), 1)

    margin = max(1, round(KEEP_MARGIN * max(size)))

    def focus() -> Tensor:
        return up(
            M.top_region(x.maps, mon.focus_frac)
            if mon.focus_mass is None
            else M.mass_region(x.maps, mon.focus_mass)
        )

    return {
        "artifact": lambda: M.dilate(x.artifact_full, 1),  # type: ignore[arg-type]
        "object": lambda: M.dilate(x.object_full, 1),  # type: ignore[arg-type]
        "hotspot": lambda: up(hot.footprint),
        "mark": lambda: up(
            x.mark_masks if x.mark_masks is not None else torch.zeros_like(hot.footprint)
        ),
        "focus": focus,
        "border": lambda: M.border_mask(*size, mon.border_width, x.images.device).expand(
            x.images.shape[0], *size
        ),
        "remembered": lambda: up(
            remembered() if remembered is not None else torch.zeros_like(hot.footprint)
        ),
        # the background's own effect: everything but the objects, or without object masks
        # everything but each map's focus region (the region the map itself points at), both
        # grown by the margin
        "backdrop": lambda: _outside(x.object_full, margin),  # type: ignore[arg-type]
        "surround": lambda: _outside(focus(), margin),
    }


def patches(size: tuple[int, int], device: torch.device, grid: int = PATCH_GRID) -> Tensor:
    """Bool ``[grid * grid, H, W]``: the patches of a ``grid`` x ``grid`` tiling of an image of
    ``size``, row by row (every pixel in exactly one patch; sides that ``grid`` does not divide
    get patches one pixel apart in size)."""
    h, w = size
    rows = torch.arange(h, device=device) * grid // h  # the patch row of each pixel row
    cols = torch.arange(w, device=device) * grid // w
    cell = rows[:, None] * grid + cols[None, :]  # [H, W]
    return cell[None] == torch.arange(grid * grid, device=device)[:, None, None]


def confirm(
    mon: Any,
    x: Inputs,
    wanted: dict[str, Tensor],
    hot: M.Hotspot,
    per: dict[str, Tensor],
    score_fn: Callable[[Tensor], Tensor],
    multilabel: bool,
    remembered: Callable[[], Tensor] | None = None,
) -> dict[str, int]:
    """Erase each region in the probes ``wanted[region]`` (bool ``[N]``) that have some of it,
    all in one inpainting pass at the analysis grid (the background regions ``backdrop`` and
    ``surround`` by one flat colour, the region's mean over every probe of the run, so that no
    image keeps a tint or texture of its own: :func:`~.metrics.flat_fill`; :data:`SPREAD` as
    one image a probe per patch, each patch by its own mean colour) and one batched forward
    (``remembered``: see :func:`regions`).

    Fills ``per["causal/<region>_{flip,drop,evidence,depends}"]`` (``[N]``, NaN where a probe was
    not tested; for :data:`SPREAD` see :func:`patch_dependence`) and returns region -> number of
    probes tested.
    """
    n = x.maps.shape[0]
    nan = torch.full((n,), torch.nan, device=x.maps.device)
    for region in _REGIONS:
        for part in ("flip", "drop", "evidence", "depends"):
            per[f"causal/{region}_{part}"] = nan.clone()
    builders = regions(mon, x, hot, remembered)
    batches: list[tuple[str, Tensor, Tensor]] = []  # region, probe index, region masks
    colours: dict[str, Tensor] = {}  # a background region's fill: its mean over every probe
    for region, sel in wanted.items():
        if region == SPREAD:
            continue  # one image a probe per patch: after the others (below)
        masks = builders[region]()
        idx = torch.nonzero(sel & masks.flatten(1).any(1)).flatten()
        if idx.numel():
            batches.append((region, idx, masks[idx]))
            if region in FLAT_REGIONS:
                w = masks[:, None].to(x.images.dtype)
                colours[region] = (x.images * w).sum((0, 2, 3)) / w.sum((0, 2, 3)).clamp_min(1)
    none = torch.zeros(n, dtype=torch.bool, device=x.maps.device)
    spread = torch.nonzero(wanted.get(SPREAD, none)).flatten()
    if not batches and not spread.numel():
        return {}
    with torch.no_grad():
        base = x.logits if x.logits is not None else score_fn(x.images).detach().float()
        inpainted = [b for b in batches if b[0] not in FLAT_REGIONS]
        flat = [b for b in batches if b[0] in FLAT_REGIONS]
        batches = inpainted + flat  # the rows of `erased`, in order
        parts = []
        if inpainted:  # every inpainted region in one inpainting pass
            parts.append(
                M.erase(
                    torch.cat([x.images[idx] for _, idx, _ in inpainted]),
                    torch.cat([reg for _, _, reg in inpainted]),
                    fill_size=tuple(x.maps.shape[-2:]),
                )
            )
        if flat:  # the background regions, filled by their mean colour over the probes
            parts.append(
                M.flat_fill(
                    torch.cat([x.images[idx] for _, idx, _ in flat]),
                    torch.cat([reg for _, _, reg in flat]),
                    torch.cat([colours[r].expand(idx.numel(), -1) for r, idx, _ in flat]),
                )
            )
        if spread.numel():  # each patch by its own mean colour, P rows a probe
            tiles = patches(tuple(x.images.shape[-2:]), x.images.device)  # [P, H, W]
            w = tiles.to(x.images.dtype)
            area = w.sum((1, 2))[:, None] * x.images.shape[0]
            fill = torch.einsum("nchw,phw->pc", x.images, w) / area.clamp_min(1)  # [P, C]
            k, p = spread.numel(), tiles.shape[0]
            parts.append(
                M.flat_fill(
                    x.images[spread].repeat_interleave(p, 0),
                    tiles.repeat(k, 1, 1),
                    fill.repeat(k, 1),
                )
            )
        erased = torch.cat(parts)
        after = score_fn(erased).detach().float().to(base.device)  # one forward
    start = 0
    for region, idx, _ in batches:
        stop = start + idx.numel()
        eff = M.erasure_effect_from_logits(
            base[idx], after[start:stop], x.targets[idx], multilabel=multilabel
        )
        start = stop
        _store(per, region, idx, eff, mon.evidence_drop)
    tested = {region: int(idx.numel()) for region, idx, _ in batches}
    if spread.numel():
        rows = spread.repeat_interleave(p)  # the patches' rows, probe by probe
        eff = M.erasure_effect_from_logits(
            base[rows], after[start:], x.targets[rows], multilabel=multilabel
        )
        _store(per, SPREAD, spread, patch_dependence(eff, spread.numel()), mon.evidence_drop)
        tested[SPREAD] = int(spread.numel())
    return tested


def patch_dependence(eff: M.Erasure, probes: int) -> M.Erasure:
    """Whether each probe's evidence sits in one place: from the erasures of the patches of its
    image (``eff``: ``probes`` groups of consecutive rows, one row per patch), the patch that
    takes the most of the evidence.

    Evidence spread over the image (a texture, a colour cast, an exposure) is shared by many
    patches, so each one alone takes little of it; evidence in one place (an object the maps do
    not localise) is taken by the patch that holds it (or its most telling part).

    Returns:
        :class:`~.metrics.Erasure` ``[probes]`` of that patch (``NaN`` where the probe had no
        evidence to lose).
    """
    rows = [t.view(probes, -1) for t in eff]
    pick = torch.nan_to_num(rows[2], nan=-math.inf).argmax(1, keepdim=True)
    return M.Erasure(*(t.gather(1, pick)[:, 0] for t in rows))


def _store(
    per: dict[str, Tensor], region: str, idx: Tensor, eff: M.Erasure, evidence_drop: float
) -> None:
    """Write one region's erasure effect into the per-probe ``causal/<region>_*`` rows."""
    drop = eff.evidence_drop
    depends = torch.where(torch.isnan(drop), drop, (drop >= evidence_drop).float())
    for part, value in (
        ("flip", eff.flipped),
        ("drop", eff.score_drop),
        ("evidence", drop),
        ("depends", depends),
    ):
        row = per[f"causal/{region}_{part}"]
        row[idx] = value.to(row.dtype)


def causal_class_stats(
    x: Inputs, per: dict[str, Tensor]
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    names = [k for k in per if k.startswith("causal/")]
    if not names:
        return {}, {}
    means, cnt = group_mean(torch.stack([per[k] for k in names]), x.onehot)
    return dict(zip(names, means)), dict(zip(names, cnt))


def summarize(
    mon: Any,
    x: Inputs,
    per: dict[str, Tensor],
    stats: dict[str, Tensor],
    group: dict[str, Tensor],
    decisions: list[RuleDecision],
) -> tuple[dict[str, Tensor], dict[str, float]]:
    """What a run logs: ``(per_probe, summary)`` on the host (see
    :class:`~gradcam_callback.alarms.Analysis`), in one transfer."""
    if "causal/hotspot_depends" in per:
        for key, src in (
            ("flip_rate", "flip"),
            ("score_drop", "drop"),
            ("evidence_drop", "evidence"),
            ("dependence", "depends"),
        ):
            group[f"causal/hotspot_{key}"] = stats[f"causal/hotspot_{src}"]
        src = "artifact" if x.artifact_masks is not None else "hotspot"
        for alias, part in (
            ("flip", "flip"),
            ("score_drop", "drop"),
            ("evidence_drop", "evidence"),
            ("dependence", "depends"),
        ):
            per[f"causal/{alias}"] = per[f"causal/{src}_{part}"]
    names = list(per)
    stacked = torch.stack([per[k].float() for k in names])  # [M, N]
    means = torch.stack([nanmean(row) for row in stacked])
    cmeans, _ = group_mean(stacked, x.onehot)
    gnames = list(group)
    gstack = torch.stack([group[k].float() for k in gnames])  # [K, G]
    # the hot-spot group reported at set level: one that fired, else the most anchored-looking
    hs = next((d for d in decisions if d.rule.name == "artifact_hotspot"), None)
    cons = torch.nan_to_num(group["attention/hotspot_consistency"], nan=-1.0)
    off_ok = (group["attention/hotspot_offset"] >= mon.hotspot_offset).float()
    score = cons + 1e6 * off_ok
    if hs is not None and hs.attention is not None:
        score = score + 1e12 * hs.attention.float()
    best = score.argmax()
    host = {
        "stacked": stacked,
        "means": means,
        "cmeans": cmeans,
        "gstack": gstack,
        "best": best,
    }
    host = {k: v.cpu() for k, v in host.items()}
    per_probe = {k: host["stacked"][i] for i, k in enumerate(names)}
    summary = {k: float(host["means"][i]) for i, k in enumerate(names)}
    b = int(host["best"])
    for i, k in enumerate(gnames):
        summary[k] = float(host["gstack"][i, b])
    if len(x.classes) <= mon.max_classes:
        for j, c in enumerate(x.classes):
            for i, k in enumerate(names):
                summary[f"{k}/class_{c}"] = float(host["cmeans"][i, j])
            for i, k in enumerate(gnames):
                summary[f"{k}/class_{c}"] = float(host["gstack"][i, j])
    return per_probe, summary


# ---------------------------------------------------------------------- grid helpers
def resize_maps(maps: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear resize of float ``[N, h, w]`` to ``size`` (antialiased when shrinking)."""
    return resize(maps[:, None].float(), (int(size[0]), int(size[1])))[:, 0]


def _resize_mask(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """Bool ``[N, H, W]`` -> ``[N, *size]``: cells at least half covered, and for masks that
    would vanish, their best-covered cells."""
    if tuple(mask.shape[-2:]) == size:
        return mask
    frac = F.adaptive_avg_pool2d(mask[:, None].float(), size)[:, 0]
    top = frac.flatten(1).amax(1).view(-1, 1, 1)
    return (frac >= 0.5) | ((frac >= top) & (frac > 0))


def _upsample_mask(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest-neighbour resize of bool ``[N, h, w]`` to ``size``."""
    if tuple(mask.shape[-2:]) == size:
        return mask
    return F.interpolate(mask[:, None].float(), size=size, mode="nearest")[:, 0] > 0


def _outside(mask: Tensor, px: int) -> Tensor:
    """Bool ``[N, H, W]``: everything outside ``mask`` grown by ``px`` pixels; all ``False``
    where a mask is empty (no kept region: nothing to call its background)."""
    has = mask.flatten(1).any(1)[:, None, None]
    return ~M.dilate(mask, px) & has
