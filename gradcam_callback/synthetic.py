"""The planted-shortcut world: synthetic images whose label leaks through an artifact.

Every image holds one small object (its class is the *shape*) on a textured background, plus an
*artifact*: a watermark glyph, a text-like tag, a coloured border band, an ink stamp, or a striped
background texture. The artifact has one variant per class, and ``correlation`` says how often the
variant matches the label. At ``correlation=1.0`` the artifact is a perfect shortcut: a small CNN
learns it in one epoch, reaches ~100 % validation accuracy, and ignores the (harder) object; the
same images with the artifact removed or swapped to another class's variant then expose the
shortcut. At ``correlation=None`` (the *clean world*) the variant is drawn uniformly, independent
of the label, so the model must learn the object and is robust to removing or swapping the
artifact.

Everything is generated in a vectorised way from an integer seed with local
:class:`torch.Generator` objects (never the global RNGs), on the CPU, in a fraction of a second for
a couple of thousand 64x64 images. Objects, backgrounds and artifact appearance come from separate
random streams, so the same ``seed`` with another ``correlation`` or ``artifact_mode`` gives the
same objects on the same backgrounds: only the artifact changes (paired comparisons).

Pixel values: images are rendered in ``[0, 1]`` (background kept within ``[0.05, 0.95]``), then
normalised per channel with :data:`MEAN` and :data:`STD`; :func:`denormalize` inverts it.

Public API::

    ds = ShortcutDataset(1024, artifact="watermark", correlation=1.0, seed=0)
    image, label, object_mask, artifact_mask = ds[0]     # [3,H,W] f32, long, [H,W] bool, [H,W] bool
    ds.variant(artifact="removed")                         # same images, artifact painted over
    ds.variant(artifact="swapped")                         # artifact of a class other than the label
    dm = ShortcutDataModule(artifact="tag", correlation=1.0, shortcut_epochs=2)
    model = ShortcutClassifier(num_classes=2)              # SmallCNN: target layer "model.features"
    world = train_world("watermark", shortcut=True)        # trained on CPU in a few seconds
    model, dm = world                                      # TrainedWorld unpacks like a tuple
    artifact_reliance(model, dm.val_set)                   # {"acc", "acc_removed", "acc_swapped"}
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

__all__ = [
    "ARTIFACTS",
    "ARTIFACT_MODES",
    "DEFAULT_PLACE",
    "MEAN",
    "SHAPES",
    "STD",
    "ShortcutClassifier",
    "ShortcutDataModule",
    "ShortcutDataset",
    "SmallCNN",
    "TrainedWorld",
    "accuracy",
    "artifact_reliance",
    "denormalize",
    "make_world",
    "normalize",
    "train_world",
]

#: Per-channel normalisation constants (RGB): ``x_norm = (x - MEAN) / STD``.
MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
STD: tuple[float, float, float] = (0.25, 0.25, 0.25)

#: Object shape of each class index (the first ``num_classes`` are used).
SHAPES: tuple[str, ...] = ("disc", "square", "triangle", "cross")

#: Artifact kinds.
ARTIFACTS: tuple[str, ...] = ("watermark", "tag", "border", "stamp", "texture", "none")

#: ``artifact_mode`` values of :class:`ShortcutDataset` (see :meth:`ShortcutDataset.variant`).
ARTIFACT_MODES: tuple[str, ...] = ("present", "removed", "swapped")

#: Default placement per artifact kind (``None``: placement does not apply).
DEFAULT_PLACE: dict[str, str | None] = {
    "watermark": "top-left",
    "tag": "bottom-right",
    "border": "bottom",
    "stamp": "left",
    "texture": None,
    "none": None,
}

_CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")
_EDGES = ("top", "bottom", "left", "right")
_VALID_PLACES: dict[str, tuple[str, ...]] = {
    "watermark": _CORNERS,
    "tag": _CORNERS,
    "border": _EDGES,
    "stamp": _EDGES,
}

# Random streams (each gets its own generator, so changing one never shifts another).
_S_LABEL, _S_OBJECT, _S_BACKGROUND, _S_VARIANT, _S_SWAP, _S_APPEARANCE = range(1, 7)
_SPLITS = {"train": 11, "val": 12, "test": 13, "train_decorrelated": 11}

_BG_LO, _BG_HI = 0.05, 0.95
_R_MIN, _R_MAX = 7.0, 11.0
_BLOB_AMPLITUDE, _NOISE_AMPLITUDE = 0.1, 0.03

# 5x5 letter glyphs (watermark and the inside of a stamp), one per class: Z, N, W, R.
_GLYPHS = (
    ("#####", "...#.", "..#..", ".#...", "#####"),
    ("#...#", "##..#", "#.#.#", "#..##", "#...#"),
    ("#...#", "#...#", "#.#.#", "##.##", "#...#"),
    ("####.", "#...#", "####.", "#..#.", "#...#"),
)
# 3x5 pseudo-characters (digits) for tags, and each class's 4-character tag.
_CHARS = (
    ("###", "#.#", "#.#", "#.#", "###"),
    (".#.", "##.", ".#.", ".#.", "###"),
    ("###", "..#", "###", "#..", "###"),
    ("###", "..#", ".##", "..#", "###"),
    ("#.#", "#.#", "###", "..#", "..#"),
    ("###", "#..", "###", "..#", "###"),
    ("#..", "#..", "###", "#.#", "###"),
    ("###", "..#", "..#", ".#.", ".#."),
)
_TAGS = ((1, 0, 7, 1), (4, 2, 5, 6), (3, 3, 0, 7), (6, 5, 2, 4))
_BORDER_COLOURS = ((0.92, 0.10, 0.10), (0.10, 0.25, 0.92), (0.10, 0.80, 0.20), (0.95, 0.85, 0.10))
_STAMP_INK = (0.75, 0.05, 0.10)
_WATERMARK_ALPHA = 0.8
_TEXTURE_AMPLITUDE, _TEXTURE_PERIOD = 0.16, 8.0
_TEXTURE_WAVE = "smooth"


# --------------------------------------------------------------------------------------------
# seeds and small helpers
# --------------------------------------------------------------------------------------------


def _mix(*keys: int) -> int:
    """Deterministic 63-bit seed from integer keys (SplitMix64 finaliser, platform independent)."""
    mask = (1 << 64) - 1
    h = 0x9E3779B97F4A7C15
    for k in keys:
        h = (h ^ (int(k) & mask)) * 0xBF58476D1CE4E5B9 & mask
        h ^= h >> 31
        h = (h + 0x9E3779B97F4A7C15) * 0x94D049BB133111EB & mask
        h ^= h >> 29
    return h & ((1 << 63) - 1)


def _gen(seed: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(_mix(seed, stream))


def _size_hw(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        h = w = image_size
    else:
        h, w = (int(v) for v in image_size)
    if h < 24 or w < 24:
        raise ValueError(f"image_size must be at least 24x24, got {h}x{w}")
    return h, w


def _bitmap(rows: Sequence[str], scale: int) -> Tensor:
    """bool ``[len(rows) * scale, len(rows[0]) * scale]`` from a '#'/'.' picture."""
    bm = torch.tensor([[c == "#" for c in r] for r in rows], dtype=torch.bool)
    return bm.repeat_interleave(scale, 0).repeat_interleave(scale, 1)


def _mean_std(device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    mean = torch.tensor(MEAN, dtype=torch.float32, device=device).view(3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float32, device=device).view(3, 1, 1)
    return mean, std


def normalize(images: Tensor) -> Tensor:
    """Map images from ``[0, 1]`` to model space with :data:`MEAN` / :data:`STD`.

    Args:
        images: float ``[..., 3, H, W]`` in ``[0, 1]``.

    Returns:
        float ``[..., 3, H, W]`` (``(x - MEAN) / STD``: ``[-2, 2]`` with the default constants).
    """
    mean, std = _mean_std(images.device)
    return (images - mean.to(images.dtype)) / std.to(images.dtype)


def denormalize(images: Tensor) -> Tensor:
    """Inverse of :func:`normalize`: model space back to ``[0, 1]`` (not clamped).

    Args:
        images: float ``[..., 3, H, W]`` normalised with :data:`MEAN` / :data:`STD`.

    Returns:
        float ``[..., 3, H, W]``, ``x * STD + MEAN``, in ``[0, 1]`` for images of this module.
    """
    mean, std = _mean_std(images.device)
    return images * std.to(images.dtype) + mean.to(images.dtype)


# --------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Template:
    """Fixed-position artifact: per-variant mask/colour on the full canvas, plus its bounding box."""

    masks: Tensor  # bool [V, H, W]
    colours: Tensor  # float [V, 3, H, W]
    alpha: float
    box: tuple[int, int, int, int]  # y0, y1, x0, x1 (exclusive ends), union over variants


def _anchor(place: str, h: int, w: int, bh: int, bw: int, margin: int) -> tuple[int, int]:
    """Top-left pixel of a ``bh x bw`` box at a corner or at the middle of an edge."""
    top, left = margin, margin
    bottom, right = h - margin - bh, w - margin - bw
    mid_y, mid_x = (h - bh) // 2, (w - bw) // 2
    return {
        "top-left": (top, left),
        "top-right": (top, right),
        "bottom-left": (bottom, left),
        "bottom-right": (bottom, right),
        "top": (top, mid_x),
        "bottom": (bottom, mid_x),
        "left": (mid_y, left),
        "right": (mid_y, right),
    }[place]


def _template(kind: str, place: str, h: int, w: int, num_classes: int) -> _Template:
    unit = max(1, round(min(h, w) / 64))
    margin = 2 * unit
    masks = torch.zeros(num_classes, h, w, dtype=torch.bool)
    colours = torch.zeros(num_classes, 3, h, w)
    alpha = 1.0
    if kind == "watermark":
        scale = 2 * unit
        for k in range(num_classes):
            bm = _bitmap(_GLYPHS[k], scale)
            y, x = _anchor(place, h, w, *bm.shape, margin)
            masks[k, y : y + bm.shape[0], x : x + bm.shape[1]] = bm
        colours[:] = 1.0
        alpha = _WATERMARK_ALPHA
    elif kind == "tag":
        for k in range(num_classes):
            chars = [_bitmap(_CHARS[c], unit) for c in _TAGS[k]]
            ch, cw = chars[0].shape
            bh, bw = ch + 2 * unit, 2 * unit + len(chars) * cw + (len(chars) - 1) * unit
            y, x = _anchor(place, h, w, bh, bw, margin)
            masks[k, y : y + bh, x : x + bw] = True
            colours[k, :, y : y + bh, x : x + bw] = 0.02
            for i, c in enumerate(chars):
                cx = x + unit + i * (cw + unit)
                ink = colours[k, :, y + unit : y + unit + ch, cx : cx + cw]
                ink[:, c] = 0.98
    elif kind == "border":
        band = 4 * unit
        for k in range(num_classes):
            region = {
                "top": (slice(0, band), slice(None)),
                "bottom": (slice(h - band, h), slice(None)),
                "left": (slice(None), slice(0, band)),
                "right": (slice(None), slice(w - band, w)),
            }[place]
            masks[k][region] = True
            colours[k] = torch.tensor(_BORDER_COLOURS[k]).view(3, 1, 1)
    elif kind == "stamp":
        frame = unit
        for k in range(num_classes):
            glyph = _bitmap(_GLYPHS[k], 2 * unit)
            side = 2 * frame + 2 * unit + glyph.shape[0]
            stamp = torch.ones(side, side, dtype=torch.bool)
            stamp[frame:-frame, frame:-frame] = False
            g0 = frame + unit
            stamp[g0 : g0 + glyph.shape[0], g0 : g0 + glyph.shape[1]] = glyph
            y, x = _anchor(place, h, w, side, side, margin)
            masks[k, y : y + side, x : x + side] = stamp
        colours[:] = torch.tensor(_STAMP_INK).view(3, 1, 1)
    else:  # pragma: no cover - guarded by the caller
        raise ValueError(kind)
    ys, xs = torch.nonzero(masks.any(0), as_tuple=True)
    box = (int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1)
    return _Template(masks, colours, alpha, box)


def _upsample_matrix(n_out: int, n_in: int) -> Tensor:
    """``[n_out, n_in]`` linear-interpolation weights (``align_corners=False``)."""
    eye = torch.eye(n_in).unsqueeze(0)  # [1, C=n_in, L=n_in]
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[0].T


def _background(n: int, h: int, w: int, gen: torch.Generator) -> Tensor:
    """Textured background ``[n, 3, h, w]`` in ``[0.05, 0.95]``: tinted level + blobs + noise.

    Blobs: uniform noise on an ``h/8 x w/8`` grid, bilinearly upsampled (two small matmuls).
    """
    level = 0.35 + 0.3 * torch.rand(n, 1, 1, 1, generator=gen)
    tint = 0.1 * (torch.rand(n, 3, 1, 1, generator=gen) - 0.5)
    hb, wb = max(2, h // 8), max(2, w // 8)
    low = torch.rand(n, 3, hb, wb, generator=gen).mul_(2 * _BLOB_AMPLITUDE).sub_(_BLOB_AMPLITUDE)
    blobs = _upsample_matrix(h, hb) @ low @ _upsample_matrix(w, wb).T
    bg = torch.randn(n, 3, h, w, generator=gen).mul_(_NOISE_AMPLITUDE)
    bg.add_(blobs).add_(level + tint)
    return bg.clamp_(_BG_LO, _BG_HI)


def _object_params(
    labels: Tensor, h: int, w: int, avoid: tuple[int, int, int, int] | None, gen: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """Centres ``[n, 2]`` (y, x), radii ``[n]`` and colours ``[n, 3]`` of the objects.

    The object's bounding box (half-side ``1.3 r``) stays inside the image and, when ``avoid`` is
    given, clear of that box (plus a margin): the first of 32 random candidates that fits is used.
    """
    n = labels.numel()
    s = min(h, w) / 64
    radius = s * (_R_MIN + (_R_MAX - _R_MIN) * torch.rand(n, generator=gen))
    ext = 1.3 * radius + 1.0
    cand = 32
    u = torch.rand(n, cand, 2, generator=gen)
    span = torch.tensor([h, w], dtype=torch.float32)
    lo = ext[:, None, None]
    cy_cx = lo + u * (span - 2 * lo)
    if avoid is not None:
        m = 2.0 * s
        y0, y1, x0, x1 = (float(v) for v in avoid)
        cy, cx = cy_cx[..., 0], cy_cx[..., 1]
        e = lo[..., 0]
        hit = (cy + e > y0 - m) & (cy - e < y1 + m) & (cx + e > x0 - m) & (cx - e < x1 + m)
        first = (~hit).float().argmax(dim=1)
    else:
        first = torch.zeros(n, dtype=torch.long)
    centres = cy_cx[torch.arange(n), first]
    # Colour: a random hue, either bright or dark (all channels agree), so the object stands out
    # from the mid-grey background by luminance whatever its hue.
    bright = torch.rand(n, 1, generator=gen) < 0.5
    hue = torch.rand(n, 3, generator=gen)
    colour = torch.where(bright, 0.72 + 0.28 * hue, 0.28 * hue)
    return centres, radius, colour


def _shape_masks(labels: Tensor, centres: Tensor, radius: Tensor, h: int, w: int) -> Tensor:
    """Exact boolean object masks ``[n, h, w]`` (pixel centres at integer + 0.5)."""
    n = labels.numel()
    out = torch.zeros(n, h, w, dtype=torch.bool)
    ys = torch.arange(h, dtype=torch.float32) + 0.5
    xs = torch.arange(w, dtype=torch.float32) + 0.5
    for k, shape in enumerate(SHAPES):
        idx = torch.nonzero(labels == k).flatten()
        if idx.numel() == 0:
            continue
        r = radius[idx].view(-1, 1, 1)
        dy = ys.view(1, -1, 1) - centres[idx, 0].view(-1, 1, 1)
        dx = xs.view(1, 1, -1) - centres[idx, 1].view(-1, 1, 1)
        if shape == "disc":
            m = dy * dy + dx * dx <= r * r
        elif shape == "square":
            m = (dy.abs() <= 0.85 * r) & (dx.abs() <= 0.85 * r)
        elif shape == "triangle":  # equilateral, apex up, circumradius 1.3 r
            a = 1.3 * r
            m = (dy <= 0.5 * a) & (dx.abs() * math.sqrt(3.0) <= dy + a)
        else:  # cross
            arm = 0.3 * r
            m = ((dy.abs() <= arm) & (dx.abs() <= r)) | ((dx.abs() <= arm) & (dy.abs() <= r))
        out[idx] = m
    return out


def _draw_variants(
    labels: Tensor, num_classes: int, correlation: float | None, gen: torch.Generator
) -> Tensor:
    n = labels.numel()
    if correlation is None:
        return torch.randint(0, num_classes, (n,), generator=gen)
    match = torch.rand(n, generator=gen) < correlation
    other = (labels + torch.randint(1, num_classes, (n,), generator=gen)) % num_classes
    return torch.where(match, labels, other)


def make_world(
    n: int,
    *,
    artifact: str = "watermark",
    num_classes: int = 2,
    image_size: int | Sequence[int] = 64,
    correlation: float | None = 1.0,
    place: str | None = None,
    seed: int = 0,
    artifact_mode: str = "present",
) -> dict[str, Tensor]:
    """Render ``n`` images of the planted-shortcut world (the engine of :class:`ShortcutDataset`).

    Args:
        n: number of images.
        artifact: one of :data:`ARTIFACTS`.
        num_classes: 2..4; class ``k`` is the shape ``SHAPES[k]``; labels are balanced.
        image_size: ``S`` or ``(H, W)``, at least 24; sizes scale with ``min(H, W) / 64``.
        correlation: probability that an image's artifact variant equals its label (mismatches
            take a uniformly chosen other class's variant); ``None``: variant drawn uniformly,
            independent of the label (the clean world, same as ``1 / num_classes``).
        place: artifact placement; a corner (``"top-left"``, ...) for watermark/tag, an edge
            (``"top"``, ``"bottom"``, ``"left"``, ``"right"``) for border/stamp (a stamp sits at the
            middle of it); ``None``: :data:`DEFAULT_PLACE`. Must be ``None`` for texture/none.
        seed: integer seed; objects, backgrounds, variants and appearance use separate streams.
        artifact_mode: ``"present"``; ``"removed"`` (artifact pixels left as background; the
            returned ``artifact_masks`` still mark where it was); ``"swapped"`` (every image gets
            the variant of a class other than its label).

    Returns:
        dict with ``images`` float32 ``[n, 3, H, W]`` (normalised, see :data:`MEAN`), ``labels``
        long ``[n]``, ``object_masks`` / ``artifact_masks`` bool ``[n, H, W]`` (disjoint),
        ``variants`` long ``[n]`` (artifact variant drawn, ``-1`` when removed or kind "none"),
        ``centres`` float32 ``[n, 2]`` (y, x in pixels), ``radii`` float32 ``[n]``,
        ``colours`` float32 ``[n, 3]`` (object colour in ``[0, 1]``).
    """
    if artifact not in ARTIFACTS:
        raise ValueError(f"artifact must be one of {ARTIFACTS}, got {artifact!r}")
    if artifact_mode not in ARTIFACT_MODES:
        raise ValueError(f"artifact_mode must be one of {ARTIFACT_MODES}, got {artifact_mode!r}")
    if not 2 <= num_classes <= len(SHAPES):
        raise ValueError(f"num_classes must be in 2..{len(SHAPES)}, got {num_classes}")
    if correlation is not None and not 0.0 <= correlation <= 1.0:
        raise ValueError(f"correlation must be in [0, 1] or None, got {correlation}")
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    h, w = _size_hw(image_size)
    if place is None:
        place = DEFAULT_PLACE[artifact]
    elif artifact not in _VALID_PLACES:
        raise ValueError(f"place does not apply to artifact {artifact!r}")
    elif place not in _VALID_PLACES[artifact]:
        raise ValueError(
            f"place for {artifact!r} must be one of {_VALID_PLACES[artifact]}, got {place!r}"
        )

    g_label = _gen(seed, _S_LABEL)
    labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=g_label)]
    template = _template(artifact, place, h, w, num_classes) if place is not None else None
    avoid = template.box if template is not None else None
    centres, radius, colour = _object_params(labels, h, w, avoid, _gen(seed, _S_OBJECT))
    obj = _shape_masks(labels, centres, radius, h, w)
    img = _background(n, h, w, _gen(seed, _S_BACKGROUND))

    variants = _draw_variants(labels, num_classes, correlation, _gen(seed, _S_VARIANT))
    if artifact_mode == "swapped":
        shift = torch.randint(1, num_classes, (n,), generator=_gen(seed, _S_SWAP))
        variants = (labels + shift) % num_classes
    g_app = _gen(seed, _S_APPEARANCE)
    paint = artifact_mode != "removed"

    art = torch.zeros(n, h, w, dtype=torch.bool)
    if artifact == "texture":
        period = max(3.0, _TEXTURE_PERIOD * min(h, w) / 64)
        theta = variants.float() * (math.pi / num_classes)
        phase = torch.rand(n, generator=g_app) * (2 * math.pi)
        ys = torch.arange(h, dtype=torch.float32).view(1, -1, 1)
        xs = torch.arange(w, dtype=torch.float32).view(1, 1, -1)
        proj = ys * torch.cos(theta).view(-1, 1, 1) + xs * torch.sin(theta).view(-1, 1, 1)
        sine = torch.sin(proj * (2 * math.pi / period) + phase.view(-1, 1, 1))
        if _TEXTURE_WAVE == "square":
            wave = torch.where(sine >= 0, 1.0, -1.0)
        else:  # smooth, one-signed: shifts every pixel by between 0.25 and 1 amplitude
            wave = 0.625 + 0.375 * sine
        if paint:
            img = (img + _TEXTURE_AMPLITUDE * wave.unsqueeze(1)).clamp_(0.0, 1.0)
        art[:] = True
    elif template is not None:
        # Only the artifact's bounding box (union over variants) is touched.
        y0, y1, x0, x1 = template.box
        masks = template.masks[:, y0:y1, x0:x1][variants]  # [n, bh, bw]
        art[:, y0:y1, x0:x1] = masks
        if paint:
            crop = img[:, :, y0:y1, x0:x1]
            ink = template.colours[:, :, y0:y1, x0:x1][variants]  # [n, 3, bh, bw]
            blended = torch.lerp(crop, ink, template.alpha)
            img[:, :, y0:y1, x0:x1] = torch.where(masks.unsqueeze(1), blended, crop)
    art &= ~obj
    img = torch.where(obj.unsqueeze(1), colour.view(n, 3, 1, 1), img)
    mean, std = _mean_std()
    img.sub_(mean).div_(std)  # normalise in place
    if artifact == "none" or artifact_mode == "removed":
        variants = torch.full((n,), -1, dtype=torch.long)
    return {
        "images": img,
        "labels": labels,
        "object_masks": obj,
        "artifact_masks": art,
        "variants": variants,
        "centres": centres,
        "radii": radius,
        "colours": colour,
    }


# --------------------------------------------------------------------------------------------
# dataset and data module
# --------------------------------------------------------------------------------------------


class ShortcutDataset(Dataset):
    """Pre-generated planted-shortcut images (see :func:`make_world` for every argument).

    ``ds[i]`` returns ``(image [3, H, W] float32, label long scalar, object_mask [H, W] bool,
    artifact_mask [H, W] bool)``, or with ``as_dict=True`` the dict ``{"image", "label",
    "object_mask", "artifact_mask"}``. Every image carries an artifact (unless ``artifact="none"``
    or ``artifact_mode="removed"``), so artifact masks are never empty; the object and artifact
    masks are disjoint (the object is drawn on top).

    Attributes:
        images, labels, object_masks, artifact_masks, variants, centres, radii, colours: the
            tensors of :func:`make_world` (CPU).
    """

    def __init__(
        self,
        n: int = 1024,
        *,
        artifact: str = "watermark",
        num_classes: int = 2,
        image_size: int | Sequence[int] = 64,
        correlation: float | None = 1.0,
        place: str | None = None,
        seed: int = 0,
        artifact_mode: str = "present",
        as_dict: bool = False,
    ) -> None:
        self.config: dict[str, Any] = {
            "n": n,
            "artifact": artifact,
            "num_classes": num_classes,
            "image_size": image_size,
            "correlation": correlation,
            "place": place,
            "seed": seed,
            "artifact_mode": artifact_mode,
        }
        self.as_dict = as_dict
        world = make_world(**self.config)
        self.images: Tensor = world["images"]
        self.labels: Tensor = world["labels"]
        self.object_masks: Tensor = world["object_masks"]
        self.artifact_masks: Tensor = world["artifact_masks"]
        self.variants: Tensor = world["variants"]
        self.centres: Tensor = world["centres"]
        self.radii: Tensor = world["radii"]
        self.colours: Tensor = world["colours"]

    def __len__(self) -> int:
        return self.labels.numel()

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, Tensor, Tensor] | dict[str, Tensor]:
        item = (self.images[i], self.labels[i], self.object_masks[i], self.artifact_masks[i])
        if self.as_dict:
            return dict(zip(("image", "label", "object_mask", "artifact_mask"), item))
        return item

    @property
    def num_classes(self) -> int:
        """Number of classes ``K``."""
        return int(self.config["num_classes"])

    @property
    def artifact(self) -> str:
        """Artifact kind (one of :data:`ARTIFACTS`)."""
        return str(self.config["artifact"])

    def variant(
        self, artifact: str = "removed", *, correlation: float | Literal["same"] | None = "same"
    ) -> ShortcutDataset:
        """The same objects on the same backgrounds, with the artifact changed.

        Args:
            artifact: ``"removed"`` (artifact pixels show the background; ``artifact_masks`` keep
                the footprint of the removed artifact, ``variants`` are ``-1``), ``"swapped"`` (every
                image carries the variant of a class other than its label: a lying artifact),
                ``"present"`` (as drawn with ``correlation``).
            correlation: override the correlation for the new dataset (``"same"``: keep it);
                e.g. ``variant("present", correlation=None)`` is the decorrelated twin.

        Returns:
            A new :class:`ShortcutDataset`; images differ from this one only inside the union of
            both datasets' artifact masks.
        """
        config = dict(self.config, artifact_mode=artifact)
        if correlation != "same":
            config["correlation"] = correlation
        return ShortcutDataset(**config, as_dict=self.as_dict)

    def tensors(self, n: int | None = None) -> dict[str, Tensor]:
        """The first ``n`` images (all: ``None``) as a dict of tensors.

        Returns:
            ``images`` float32 ``[n, 3, H, W]``, ``labels`` long ``[n]``, ``object_masks`` and
            ``artifact_masks`` bool ``[n, H, W]`` (views, not copies); the keys match
            ``ProbeSet(**ds.tensors(16))``. Labels are shuffled, so a prefix holds every class
            about equally often.
        """
        sl = slice(None) if n is None else slice(0, n)
        return {
            "images": self.images[sl],
            "labels": self.labels[sl],
            "object_masks": self.object_masks[sl],
            "artifact_masks": self.artifact_masks[sl],
        }


class ShortcutDataModule(pl.LightningDataModule):
    """Train / val / test splits of the planted-shortcut world.

    Each split has its own seed (derived from ``seed``), so splits never share images.

    Validation and test use ``val_correlation`` (default ``"same"``: the train ``correlation``):
    every val image keeps its artifact, so the probes show whether the model still looks at it,
    and with the default the shortcut leaks into validation like it does in real data sets, so
    ``val_acc`` looks perfect whether or not the model learned the object. Pass
    ``val_correlation=None`` for an honest (decorrelated) validation set instead.

    ``shortcut_epochs=N`` (a shortcut taken early and dropped later): the training set carries the
    correlated artifact for epochs ``0..N-1`` and, from epoch ``N`` on, its decorrelated twin (same
    images, variants drawn independently of the label). It needs the trainer to rebuild the train
    loader every epoch: ``Trainer(reload_dataloaders_every_n_epochs=1)``. Validation keeps
    ``val_correlation`` throughout, so ``val_acc`` stays high while the attention should move from
    the artifact to the object.

    Args:
        artifact, num_classes, image_size, correlation, place: see :func:`make_world`.
        n_train, n_val, n_test: split sizes.
        batch_size: loader batch size (val/test use twice that).
        seed: base seed.
        num_workers: DataLoader workers (0: main process, fastest for these in-memory tensors).
        shortcut_epochs: see above; ``None``: the train correlation never changes.
        val_correlation: correlation of val/test (``"same"``, a float or ``None``).
        as_dict: batches as dicts instead of tuples.
    """

    def __init__(
        self,
        artifact: str = "watermark",
        correlation: float | None = 1.0,
        num_classes: int = 2,
        image_size: int | tuple[int, int] = 64,
        place: str | None = None,
        n_train: int = 1536,
        n_val: int = 512,
        n_test: int = 512,
        batch_size: int = 64,
        seed: int = 0,
        num_workers: int = 0,
        shortcut_epochs: int | None = None,
        val_correlation: float | Literal["same"] | None = "same",
        as_dict: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.artifact = artifact
        self.correlation = correlation
        self.num_classes = num_classes
        self.image_size = image_size
        self.place = place
        self.n_train, self.n_val, self.n_test = n_train, n_val, n_test
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers
        self.shortcut_epochs = shortcut_epochs
        self.val_correlation = correlation if val_correlation == "same" else val_correlation
        self.as_dict = as_dict
        self._cache: dict[str, ShortcutDataset] = {}

    def split_seed(self, split: str) -> int:
        """Seed of a split (``"train"``, ``"val"``, ``"test"``)."""
        return _mix(self.seed, _SPLITS[split])

    def _make(self, split: str) -> ShortcutDataset:
        if split not in self._cache:
            n = {"train": self.n_train, "val": self.n_val, "test": self.n_test}
            corr = {
                "train": self.correlation,
                "train_decorrelated": None,
                "val": self.val_correlation,
                "test": self.val_correlation,
            }[split]
            self._cache[split] = ShortcutDataset(
                n.get(split, self.n_train),
                artifact=self.artifact,
                num_classes=self.num_classes,
                image_size=self.image_size,
                correlation=corr,
                place=self.place,
                seed=self.split_seed(split),
                as_dict=self.as_dict,
            )
        return self._cache[split]

    def release(self, *splits: str) -> None:
        """Forget generated splits (``"train"``, ``"train_decorrelated"``, ``"val"``, ``"test"``;
        none given: all) to free memory; they are regenerated identically on the next access."""
        for split in splits or tuple(self._cache):
            self._cache.pop(split, None)

    @property
    def train_set(self) -> ShortcutDataset:
        """Training split (with ``correlation``); generated on first access."""
        return self._make("train")

    @property
    def decorrelated_train_set(self) -> ShortcutDataset:
        """The training images with variants drawn independently of the label."""
        return self._make("train_decorrelated")

    @property
    def val_set(self) -> ShortcutDataset:
        """Validation split (with ``val_correlation``)."""
        return self._make("val")

    @property
    def test_set(self) -> ShortcutDataset:
        """Test split (with ``val_correlation``)."""
        return self._make("test")

    def setup(self, stage: str | None = None) -> None:
        """Generate the splits the stage needs (idempotent)."""
        if stage in (None, "fit"):
            _ = self.train_set, self.val_set
        if stage in (None, "validate"):
            _ = self.val_set
        if stage in (None, "test"):
            _ = self.test_set

    def _epoch(self) -> int:
        trainer = getattr(self, "trainer", None)
        return int(trainer.current_epoch) if trainer is not None else 0

    def current_train_set(self) -> ShortcutDataset:
        """The training set the trainer's current epoch uses (see ``shortcut_epochs``)."""
        if self.shortcut_epochs is not None and self._epoch() >= self.shortcut_epochs:
            return self.decorrelated_train_set
        return self.train_set

    def train_dataloader(self) -> DataLoader:
        """Shuffled loader (order seeded by ``seed`` and the epoch it was built for)."""
        gen = torch.Generator().manual_seed(_mix(self.seed, 99, self._epoch()))
        return DataLoader(
            self.current_train_set(),
            batch_size=self.batch_size,
            shuffle=True,
            generator=gen,
            num_workers=self.num_workers,
            drop_last=False,
        )

    def val_dataloader(self) -> DataLoader:
        """Unshuffled validation loader."""
        return DataLoader(
            self.val_set, batch_size=2 * self.batch_size, num_workers=self.num_workers
        )

    def test_dataloader(self) -> DataLoader:
        """Unshuffled test loader."""
        return DataLoader(
            self.test_set, batch_size=2 * self.batch_size, num_workers=self.num_workers
        )


# --------------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------------


def _block(cin: int, cout: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


class SmallCNN(nn.Module):
    """Small conv net with an obvious Grad-CAM target layer.

    ``features`` (``nn.Sequential`` of three conv-BN-ReLU blocks, total stride 4: ``[N, 2w, H/4,
    W/4]``, i.e. 16x16 for 64x64 inputs) -> ``pool`` (global average) -> ``head``
    (``nn.Linear(2w, num_classes)``). The target layer is ``"features"`` (or its last block
    ``"features.2"``); no in-place ops.

    Args:
        in_channels: input channels ``C``.
        num_classes: output logits ``K``.
        width: channels of the first block ``w`` (the others have ``2w``).
        seed: parameter initialisation seed (local generator; the global RNG is not used).
    """

    def __init__(
        self, in_channels: int = 3, num_classes: int = 2, width: int = 16, seed: int = 0
    ) -> None:
        super().__init__()
        # Built on the meta device (PyTorch's default init would draw from the global RNG), then
        # materialised and initialised from a local generator.
        with torch.device("meta"):
            self.features = nn.Sequential(
                _block(in_channels, width, 5, 2),
                _block(width, 2 * width, 3, 2),
                _block(2 * width, 2 * width, 3, 1),
            )
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.head = nn.Linear(2 * width, num_classes)
        self.to_empty(device="cpu")
        self.reset_parameters(seed)

    @torch.no_grad()
    def reset_parameters(self, seed: int = 0) -> None:
        """Kaiming-uniform init (PyTorch's default scheme) drawn from a local generator."""
        gen = torch.Generator().manual_seed(_mix(seed, 1234))
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=gen)
                if m.bias is not None:
                    fan_in = m.weight[0].numel()
                    bound = 1.0 / math.sqrt(fan_in)
                    nn.init.uniform_(m.bias, -bound, bound, generator=gen)
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        """``x`` float ``[N, C, H, W]`` -> logits float ``[N, K]``."""
        return self.head(self.pool(self.features(x)).flatten(1))


def _unpack(batch: Any) -> tuple[Tensor, Tensor]:
    """(images, labels) from a tuple/list batch ``(x, y, ...)`` or a dict batch."""
    if isinstance(batch, Mapping):
        x = next((batch[k] for k in ("image", "images", "x", "input") if k in batch), None)
        y = next((batch[k] for k in ("label", "labels", "y", "target") if k in batch), None)
        if x is None or y is None:
            raise KeyError(f"dict batch needs 'image' and 'label' keys, got {sorted(batch)}")
        return x, y
    return batch[0], batch[1]


class ShortcutClassifier(pl.LightningModule):
    """Cross-entropy classifier around :class:`SmallCNN` (or any ``nn.Module`` giving logits).

    Logs ``train_loss`` (per step and epoch), ``val_loss``, ``val_acc``, ``test_loss``,
    ``test_acc`` (epoch means). Batches: tuples ``(x, y, ...)`` or dicts with ``"image"`` /
    ``"label"``. With the default network the Grad-CAM target layer is ``"model.features"``.

    Args:
        num_classes: number of classes ``K``.
        in_channels: input channels.
        width: :class:`SmallCNN` width.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        seed: initialisation seed of the default network.
        model: a network to train instead of :class:`SmallCNN` (``[N, C, H, W] -> [N, K]``).
    """

    def __init__(
        self,
        num_classes: int = 2,
        in_channels: int = 3,
        width: int = 16,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        seed: int = 0,
        model: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        self.model = model if model is not None else SmallCNN(in_channels, num_classes, width, seed)

    def forward(self, x: Tensor) -> Tensor:
        """``x`` float ``[N, C, H, W]`` (normalised) -> logits float ``[N, K]``."""
        return self.model(x)

    def _step(self, batch: Any, stage: str) -> Tensor:
        x, y = _unpack(batch)
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        n = y.shape[0]
        if stage == "train":
            self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n)
        else:
            acc = (logits.argmax(dim=1) == y).float().mean()
            self.log(f"{stage}_loss", loss, prog_bar=False, batch_size=n)
            self.log(f"{stage}_acc", acc, prog_bar=True, batch_size=n)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Cross-entropy on one batch; returns the loss."""
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Logs ``val_loss`` and ``val_acc``."""
        return self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Logs ``test_loss`` and ``test_acc``."""
        return self._step(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam with ``lr`` and ``weight_decay``."""
        return torch.optim.Adam(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )


# --------------------------------------------------------------------------------------------
# evaluation and training helpers
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def accuracy(
    model: nn.Module,
    data: ShortcutDataset | Tensor,
    labels: Tensor | None = None,
    batch_size: int = 512,
) -> float:
    """Top-1 accuracy of ``model`` (in eval mode; its mode is restored) on a dataset or tensors.

    Args:
        model: ``[N, C, H, W] -> logits [N, K]``.
        data: a :class:`ShortcutDataset`, or images float ``[N, C, H, W]`` (then pass ``labels``).
        labels: long ``[N]`` when ``data`` is a tensor.
        batch_size: images per forward.

    Returns:
        Fraction of correct predictions in ``[0, 1]``.
    """
    if isinstance(data, ShortcutDataset):
        images, labels = data.images, data.labels
    else:
        if labels is None:
            raise ValueError("labels are required when data is a tensor")
        images = data
    was_training = model.training
    model.eval()
    try:
        device = next((p.device for p in model.parameters()), images.device)
        correct = 0
        for i in range(0, images.shape[0], batch_size):
            logits = model(images[i : i + batch_size].to(device))
            correct += int((logits.argmax(1).cpu() == labels[i : i + batch_size].cpu()).sum())
    finally:
        model.train(was_training)
    return correct / max(1, images.shape[0])


def artifact_reliance(model: nn.Module, dataset: ShortcutDataset) -> dict[str, float]:
    """How much ``model`` depends on the artifact: accuracy as drawn, removed, and swapped.

    Returns:
        ``{"acc": ..., "acc_removed": ..., "acc_swapped": ...}``, each in ``[0, 1]``. A shortcut
        model scores high on ``acc``, about chance (or below) on ``acc_removed`` and far below
        chance on ``acc_swapped``; a model that learned the object scores high on all three.
    """
    return {
        "acc": accuracy(model, dataset),
        "acc_removed": accuracy(model, dataset.variant(artifact="removed")),
        "acc_swapped": accuracy(model, dataset.variant(artifact="swapped")),
    }


@dataclass
class TrainedWorld:
    """A model trained on a planted-shortcut world; unpacks as ``model, datamodule = world``.

    Attributes:
        model: the trained :class:`ShortcutClassifier` (CPU, eval mode).
        datamodule: its :class:`ShortcutDataModule` (splits already generated).
        artifact, shortcut, seed: how the world was made.
        seconds: wall time of data generation plus training.
        metrics: ``trainer.callback_metrics`` after fitting, as floats (``val_acc``, ...).
    """

    model: ShortcutClassifier
    datamodule: ShortcutDataModule
    artifact: str
    shortcut: bool
    seed: int
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.model, self.datamodule))


def train_world(
    artifact: str = "watermark",
    *,
    shortcut: bool = True,
    seed: int = 0,
    epochs: int | None = None,
    callbacks: Sequence[pl.Callback] = (),
    num_classes: int = 2,
    width: int = 16,
    lr: float = 1e-3,
    trainer_kwargs: Mapping[str, Any] | None = None,
    **datamodule_kwargs: Any,
) -> TrainedWorld:
    """Generate a world and train a :class:`ShortcutClassifier` on it, on the CPU.

    Args:
        artifact: one of :data:`ARTIFACTS`.
        shortcut: ``True``: ``correlation=1.0`` (perfect shortcut); ``False``: the clean world
            (``correlation=None``). A ``correlation`` in ``datamodule_kwargs`` overrides it.
        seed: seeds the data (all splits) and the initialisation.
        epochs: training epochs; ``None``: 2 for a shortcut world, 12 for a clean one,
            ``shortcut_epochs + 10`` when ``shortcut_epochs`` is given.
        callbacks: extra Lightning callbacks (e.g. a ``GradCAMCallback``).
        num_classes, width, lr: see :class:`ShortcutClassifier`.
        trainer_kwargs: overrides of the ``pytorch_lightning.Trainer`` arguments (defaults:
            ``accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, deterministic=True,
            num_sanity_val_steps=0``; ``reload_dataloaders_every_n_epochs=1`` when
            ``shortcut_epochs`` is given).
        **datamodule_kwargs: passed to :class:`ShortcutDataModule` (``n_train``, ``batch_size``,
            ``place``, ``shortcut_epochs``, ``val_correlation``, ...).

    Returns:
        A :class:`TrainedWorld` (``model, dm = train_world(...)`` also works). The global
        deterministic-algorithms flag that ``deterministic=True`` sets is restored afterwards.
    """
    start = time.perf_counter()
    datamodule_kwargs.setdefault("correlation", 1.0 if shortcut else None)
    dm = ShortcutDataModule(
        artifact=artifact, num_classes=num_classes, seed=seed, **datamodule_kwargs
    )
    dm.setup("fit")
    model = ShortcutClassifier(num_classes=num_classes, width=width, lr=lr, seed=seed)
    if epochs is None:
        default = 2 if shortcut else 12
        epochs = default if dm.shortcut_epochs is None else dm.shortcut_epochs + 10
    kwargs: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": epochs,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "deterministic": True,
        "num_sanity_val_steps": 0,
        "callbacks": list(callbacks),
    }
    if dm.shortcut_epochs is not None:
        kwargs["reload_dataloaders_every_n_epochs"] = 1
    kwargs.update(trainer_kwargs or {})
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
            warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
            trainer = pl.Trainer(**kwargs)
            trainer.fit(model, datamodule=dm)
    finally:
        torch.use_deterministic_algorithms(was_deterministic, warn_only=warn_only)
    model.eval()
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    # Detach the trainer (it holds the loaders) and drop the training images: a world kept for a
    # test session then costs only its model and validation set. Dropped splits are regenerated,
    # identically, on access.
    model.trainer = None
    dm.trainer = None
    dm.release("train", "train_decorrelated")
    return TrainedWorld(
        model=model,
        datamodule=dm,
        artifact=artifact,
        shortcut=shortcut,
        seed=seed,
        seconds=time.perf_counter() - start,
        metrics=metrics,
    )
