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
normalised per channel with :data:`MEAN` and :data:`STD`; :func:`to_unit_range` inverts it (for
display, :func:`gradcam_callback.render.denormalize` with ``MEAN`` / ``STD`` does the same and
clamps). No Lightning import: the dataset, data module and models live next door.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "ARTIFACTS",
    "ARTIFACT_MODES",
    "DEFAULT_PLACE",
    "MEAN",
    "SHAPES",
    "STD",
    "make_world",
    "mix_seed",
    "normalize",
    "to_unit_range",
]

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


def mix_seed(*keys: int) -> int:
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
    return torch.Generator().manual_seed(mix_seed(seed, stream))


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


def to_unit_range(images: Tensor) -> Tensor:
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


def _check_world(
    n: int,
    artifact: str,
    num_classes: int,
    image_size: int | Sequence[int],
    correlation: float | None,
    place: str | None,
    artifact_mode: str,
) -> tuple[int, int, str | None]:
    """Validate :func:`make_world`'s arguments; return ``(H, W, place)`` (default placement)."""
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
    return h, w, place


def _paint_texture(
    img: Tensor, variants: Tensor, num_classes: int, paint: bool, gen: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Add the striped texture of each image's variant (when ``paint``); the mask is everywhere."""
    n, _, h, w = img.shape
    period = max(3.0, _TEXTURE_PERIOD * min(h, w) / 64)
    theta = variants.float() * (math.pi / num_classes)
    phase = torch.rand(n, generator=gen) * (2 * math.pi)
    ys = torch.arange(h, dtype=torch.float32).view(1, -1, 1)
    xs = torch.arange(w, dtype=torch.float32).view(1, 1, -1)
    proj = ys * torch.cos(theta).view(-1, 1, 1) + xs * torch.sin(theta).view(-1, 1, 1)
    sine = torch.sin(proj * (2 * math.pi / period) + phase.view(-1, 1, 1))
    # "smooth" (the default): one-signed, shifts every pixel by between 0.25 and 1 amplitude
    square = _TEXTURE_WAVE == "square"
    wave = torch.where(sine >= 0, 1.0, -1.0) if square else 0.625 + 0.375 * sine
    if paint:
        img = (img + _TEXTURE_AMPLITUDE * wave.unsqueeze(1)).clamp_(0.0, 1.0)
    return img, torch.ones(n, h, w, dtype=torch.bool)


def _paint_template(
    img: Tensor, template: _Template, variants: Tensor, paint: bool
) -> tuple[Tensor, Tensor]:
    """Blend each image's variant of a fixed-position artifact in (when ``paint``); its mask."""
    n, _, h, w = img.shape
    art = torch.zeros(n, h, w, dtype=torch.bool)
    # Only the artifact's bounding box (union over variants) is touched.
    y0, y1, x0, x1 = template.box
    masks = template.masks[:, y0:y1, x0:x1][variants]  # [n, bh, bw]
    art[:, y0:y1, x0:x1] = masks
    if paint:
        crop = img[:, :, y0:y1, x0:x1]
        ink = template.colours[:, :, y0:y1, x0:x1][variants]  # [n, 3, bh, bw]
        blended = torch.lerp(crop, ink, template.alpha)
        img[:, :, y0:y1, x0:x1] = torch.where(masks.unsqueeze(1), blended, crop)
    return img, art


def _draw_labels(n: int, num_classes: int, seed: int) -> Tensor:
    """Balanced labels long ``[n]`` (``0 .. num_classes - 1`` in turn), randomly permuted."""
    g_label = _gen(seed, _S_LABEL)
    return (torch.arange(n) % num_classes)[torch.randperm(n, generator=g_label)]


def _plant_artifact(
    img: Tensor,
    labels: Tensor,
    obj: Tensor,
    artifact: str,
    template: _Template | None,
    num_classes: int,
    correlation: float | None,
    artifact_mode: str,
    seed: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Draw each image's artifact variant and paint it on ``img`` ``[n, 3, H, W]`` (unless
    removed): the images, the artifact masks bool ``[n, H, W]`` outside the objects ``obj`` and
    the variants long ``[n]`` (``-1`` when removed or kind "none")."""
    n, _, h, w = img.shape
    variants = _draw_variants(labels, num_classes, correlation, _gen(seed, _S_VARIANT))
    if artifact_mode == "swapped":
        shift = torch.randint(1, num_classes, (n,), generator=_gen(seed, _S_SWAP))
        variants = (labels + shift) % num_classes
    g_app = _gen(seed, _S_APPEARANCE)
    paint = artifact_mode != "removed"

    if artifact == "texture":
        img, art = _paint_texture(img, variants, num_classes, paint, g_app)
    elif template is not None:
        img, art = _paint_template(img, template, variants, paint)
    else:
        art = torch.zeros(n, h, w, dtype=torch.bool)
    art &= ~obj
    if artifact == "none" or artifact_mode == "removed":
        variants = torch.full((n,), -1, dtype=torch.long)
    return img, art, variants


def _paint_objects(img: Tensor, obj: Tensor, colour: Tensor) -> Tensor:
    """Paint each object (masks ``obj`` ``[n, H, W]``) in its flat ``colour`` ``[n, 3]`` over
    ``img`` ``[n, 3, H, W]`` in ``[0, 1]``, and normalise the result (see :data:`MEAN`)."""
    img = torch.where(obj.unsqueeze(1), colour.view(-1, 3, 1, 1), img)
    mean, std = _mean_std()
    return img.sub_(mean).div_(std)  # normalise in place


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
    h, w, place = _check_world(
        n, artifact, num_classes, image_size, correlation, place, artifact_mode
    )

    labels = _draw_labels(n, num_classes, seed)
    template = _template(artifact, place, h, w, num_classes) if place is not None else None
    avoid = template.box if template is not None else None
    centres, radius, colour = _object_params(labels, h, w, avoid, _gen(seed, _S_OBJECT))
    obj = _shape_masks(labels, centres, radius, h, w)
    img = _background(n, h, w, _gen(seed, _S_BACKGROUND))
    img, art, variants = _plant_artifact(
        img, labels, obj, artifact, template, num_classes, correlation, artifact_mode, seed
    )
    img = _paint_objects(img, obj, colour)
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
