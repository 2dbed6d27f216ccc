"""Rendering of Grad-CAM maps: colormaps, overlays, probe grids, filmstrips, PNG/GIF files.

Everything up to the final file write runs on the device of the input tensors (no numpy round
trips, no host syncs): colormaps are 256-entry uint8 lookup tables indexed with the quantised
map. The tables are OpenCV's own (``cv2.applyColorMap`` on a 0..255 ramp, read once per
colormap, copied once per device), so every OpenCV colormap is available, exactly. No Lightning
import, no global RNG use, no matplotlib.

Conventions used throughout:

* ``maps``: float Tensor ``[N, H, W]`` (``[N, 1, H, W]`` is accepted too) with values in ``[0, 1]``
  (values outside are clamped, NaN counts as 0).
* ``images01``: float Tensor ``[N, 3, H, W]`` in ``[0, 1]`` (see :func:`denormalize`); a ``uint8``
  tensor in ``[0, 255]`` is accepted wherever ``images01`` is.
* Rendered images are ``uint8`` tensors, channels first, RGB: ``[N, 3, H, W]`` or ``[3, H, W]``.
"""

from __future__ import annotations

import difflib
import functools
import io
import math
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "COLORMAPS",
    "IMAGE_FORMATS",
    "apply_colormap",
    "check_colormap",
    "check_image_format",
    "colormap_lut",
    "denormalize",
    "encode_image",
    "encode_png",
    "filmstrip",
    "gif_frame",
    "highlight",
    "overlay",
    "probe_grid",
    "probe_rows",
    "resize",
    "tile",
    "to_uint8",
    "write_gif",
    "write_image",
    "write_png",
]


def _opencv_colormaps() -> dict[str, int]:
    """Every colormap of the installed OpenCV: lowercase name -> ``cv2.COLORMAP_*`` id."""
    ids = {
        n[len("COLORMAP_") :].lower(): getattr(cv2, n)
        for n in dir(cv2)
        if n.startswith("COLORMAP_")
    }
    return {n: i for n, i in sorted(ids.items(), key=lambda kv: kv[1]) if isinstance(i, int)}


_CV_IDS: dict[str, int] = _opencv_colormaps()
_FIRST = ("jet", "turbo", "inferno", "viridis")  # the usual choices, listed first

#: Every OpenCV colormap by lowercase name (``"jet"``, ``"turbo"``, ``"inferno"``, ``"viridis"``
#: first, then the others in OpenCV's order: ``"autumn"``, ``"bone"``, ... ``"hot"``, ...).
COLORMAPS: tuple[str, ...] = (
    *(n for n in _FIRST if n in _CV_IDS),
    *(n for n in _CV_IDS if n not in _FIRST),
)


# --------------------------------------------------------------------------------------------
# Colormaps
# --------------------------------------------------------------------------------------------


@functools.cache
def _cached_lut(name: str) -> Tensor:
    """uint8 ``[256, 3]`` RGB table of ``name``: OpenCV's own, read once from a 0..255 ramp."""
    ramp = np.arange(256, dtype=np.uint8)[:, None]
    bgr = cv2.applyColorMap(ramp, _CV_IDS[name])[:, 0]  # [256, 3] BGR
    return torch.from_numpy(np.ascontiguousarray(bgr[:, ::-1]))


@functools.cache
def _device_lut(name: str, device: torch.device) -> Tensor:
    """The uint8 table of ``name`` on ``device``, copied there once (read-only: never modify)."""
    return _cached_lut(name).to(device)


def check_colormap(name: str) -> str:
    """Return ``name`` if it is one of :data:`COLORMAPS`.

    Raises:
        ValueError: an unknown name; the message suggests the closest names and lists all.
    """
    if isinstance(name, str) and name in _CV_IDS:
        return name
    close = difflib.get_close_matches(str(name).lower(), COLORMAPS, n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(
        f"unknown colormap {name!r} (the colormaps are OpenCV's, by lowercase name).{hint} "
        f"Available: {', '.join(COLORMAPS)}"
    )


def colormap_lut(name: str = "jet") -> Tensor:
    """Return the lookup table of colormap ``name``: exactly OpenCV's ``cv2.COLORMAP_<NAME>``.

    Returns:
        float32 Tensor ``[256, 3]`` (RGB, values ``k / 255`` in ``[0, 1]``) on the CPU; a fresh
        copy. Entry ``i`` is the colour of map value ``i / 255``.

    Raises:
        ValueError: ``name`` is not one of :data:`COLORMAPS`.
    """
    return _cached_lut(check_colormap(name)).float() / 255.0


def _as_maps(maps: Tensor) -> Tensor:
    """Validate ``maps`` and return them as float32 ``[N, H, W]`` in ``[0, 1]``."""
    if maps.dim() == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if maps.dim() != 3:
        raise ValueError(f"maps must have shape [N, H, W], got {tuple(maps.shape)}")
    return maps.float().nan_to_num(0.0, 1.0, 0.0).clamp(0.0, 1.0)


def apply_colormap(maps: Tensor, name: str = "jet") -> Tensor:
    """Colour maps through a 256-entry lookup table, on the maps' device.

    Args:
        maps: float Tensor ``[N, H, W]`` (or ``[N, 1, H, W]``), values in ``[0, 1]``.
        name: one of :data:`COLORMAPS`.

    Returns:
        uint8 Tensor ``[N, 3, H, W]`` (RGB) on ``maps.device``.
    """
    lut = _device_lut(check_colormap(name), maps.device)
    idx = (_as_maps(maps) * 255.0).round().long()
    return lut[idx].permute(0, 3, 1, 2).contiguous()


# --------------------------------------------------------------------------------------------
# Image preparation
# --------------------------------------------------------------------------------------------


def _channel_stats(values: Sequence[float], channels: int, what: str, ref: Tensor) -> Tensor:
    t = torch.as_tensor(values, dtype=torch.float32, device=ref.device).flatten()
    if t.numel() not in (1, channels):
        raise ValueError(f"{what} has {t.numel()} entries, images have {channels} channels")
    return t.view(1, -1, 1, 1)


def _infer_range(x: Tensor) -> Tensor:
    """Map float ``[N, C, H, W]`` of unknown range to ``[0, 1]`` without a host sync."""
    lo, hi = x.amin(), x.amax()
    in_unit = (lo >= 0) & (hi <= 1)
    in_byte = (lo >= 0) & (hi <= 255)
    img_lo = x.amin(dim=(1, 2, 3), keepdim=True)
    img_hi = x.amax(dim=(1, 2, 3), keepdim=True)
    minmax = (x - img_lo) / (img_hi - img_lo).clamp_min(1e-12)
    return torch.where(in_unit, x, torch.where(in_byte, x / 255.0, minmax))


def _to_rgb(x: Tensor) -> Tensor:
    channels = x.shape[1]
    if channels == 1:
        return x.expand(-1, 3, -1, -1).contiguous()
    if channels == 2:
        raise ValueError("images with 2 channels cannot be shown as RGB; pass 1, 3 or >= 4")
    return x[:, :3].contiguous()


def denormalize(
    images: Tensor,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Tensor:
    """Turn model inputs back into displayable RGB images.

    Args:
        images: Tensor ``[N, C, H, W]``, any float or integer dtype, any device.
        mean, std: the per-channel (or single) normalisation constants, ``x_norm = (x - mean) / std``.
            Given (either one; the other defaults to 0 / 1): the normalisation is undone; if any
            mean is > 1 the constants are taken to be on the 0..255 scale and the result is divided
            by 255. Not given: the range is inferred from the whole batch: integer dtypes and data
            in ``[0, 255]`` (but not in ``[0, 1]``) are divided by 255, data in ``[0, 1]`` is kept,
            anything else is min-max scaled per image (over all its channels; a constant image
            becomes 0).

    Channels: ``C == 1`` is repeated to 3; ``C == 3`` is kept; ``C >= 4`` keeps the first three
    (RGBA, RGB + extra bands); ``C == 2`` raises ``ValueError``. mean/std apply to all ``C``
    channels before this selection.

    Returns:
        float32 Tensor ``[N, 3, H, W]`` in ``[0, 1]`` on ``images.device``.
    """
    if images.dim() != 4:
        raise ValueError(f"images must have shape [N, C, H, W], got {tuple(images.shape)}")
    is_int = not (images.is_floating_point() or images.is_complex())
    x = images.float()
    channels = x.shape[1]
    if mean is not None or std is not None:
        m = _channel_stats(mean if mean is not None else [0.0], channels, "mean", x)
        s = _channel_stats(std if std is not None else [1.0], channels, "std", x)
        x = x * s + m
        if mean is not None and max(float(v) for v in mean) > 1.0:
            x = x / 255.0
    elif is_int:
        x = x / 255.0
    else:
        x = _infer_range(x)
    return _to_rgb(x.clamp(0.0, 1.0))


def to_uint8(images01: Tensor) -> Tensor:
    """Quantise images in ``[0, 1]`` to bytes (rounding); ``uint8`` input is returned as is.

    Args:
        images01: float Tensor of any shape, values in ``[0, 1]`` (clamped), or a uint8 Tensor.

    Returns:
        uint8 Tensor of the same shape and device.
    """
    if images01.dtype == torch.uint8:
        return images01
    return (images01.float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


def resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinearly resize float ``[N, C, h, w]`` to ``size`` (antialiased when shrinking)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)


def _check_images(images: Tensor) -> Tensor:
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape [N, 3, H, W], got {tuple(images.shape)}")
    return images


def _maps_like(maps: Tensor, images: Tensor) -> Tensor:
    """Maps as float ``[N, H, W]`` in ``[0, 1]`` at the images' size and device."""
    maps = _as_maps(maps.to(images.device))
    if maps.shape[0] != images.shape[0]:
        raise ValueError(f"{maps.shape[0]} maps for {images.shape[0]} images")
    size = (int(images.shape[-2]), int(images.shape[-1]))
    return resize(maps[:, None], size)[:, 0].clamp(0.0, 1.0)


# --------------------------------------------------------------------------------------------
# Overlays and layouts
# --------------------------------------------------------------------------------------------


def overlay(images01: Tensor, maps: Tensor, alpha: float = 0.5, colormap: str = "jet") -> Tensor:
    """Blend coloured heatmaps over images: ``(1 - alpha) * image + alpha * heatmap``.

    The blend is computed on the byte values, so ``alpha=0`` returns exactly ``to_uint8(images01)``
    and ``alpha=1`` exactly ``apply_colormap(maps)`` (after resizing).

    Args:
        images01: float Tensor ``[N, 3, H, W]`` in ``[0, 1]`` (or uint8).
        maps: float Tensor ``[N, h, w]`` in ``[0, 1]``; bilinearly resized (``align_corners=False``)
            to ``H x W`` when ``(h, w) != (H, W)``; moved to the images' device.
        alpha: heatmap weight in ``[0, 1]``.
        colormap: one of :data:`COLORMAPS`.

    Returns:
        uint8 Tensor ``[N, 3, H, W]`` on ``images01.device``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    images = _check_images(images01)
    heat = apply_colormap(_maps_like(maps, images), colormap).float()
    base = to_uint8(images).float()
    return ((1.0 - alpha) * base + alpha * heat).round().clamp(0, 255).to(torch.uint8)


def tile(cells: Tensor, padding: int = 2, pad_value: int = 0) -> Tensor:
    """Lay out a 2-D array of equally sized images as one image.

    Args:
        cells: Tensor ``[R, C, 3, H, W]`` (any dtype): row ``r``, column ``c`` is ``cells[r, c]``.
        padding: pixels between cells and around the border.
        pad_value: fill value of the padding.

    Returns:
        Tensor ``[3, R * (H + p) + p, C * (W + p) + p]`` of ``cells.dtype``; cell ``(r, c)`` sits at
        rows ``p + r * (H + p)`` and columns ``p + c * (W + p)``.
    """
    if cells.dim() != 5:
        raise ValueError(f"cells must have shape [R, C, 3, H, W], got {tuple(cells.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    rows, cols, ch, h, w = cells.shape
    padded = F.pad(cells, (0, padding, 0, padding), value=pad_value)
    joined = padded.permute(2, 0, 3, 1, 4).reshape(ch, rows * (h + padding), cols * (w + padding))
    return F.pad(joined, (padding, 0, padding, 0), value=pad_value)


def probe_panels(
    images01: Tensor, maps: Tensor, alpha: float = 0.5, colormap: str = "jet"
) -> Tensor:
    """uint8 ``[N, 3 panels, 3, H, W]``: input, heatmap, overlay of each probe.

    Render once and lay out with :func:`tile` (the grid), :func:`grid_rows` (per-probe strips)
    and ``panels[:, 2]`` (the overlays alone).
    """
    images = _check_images(images01)
    resized = _maps_like(maps, images)
    heat = apply_colormap(resized, colormap)
    blend = overlay(images, resized, alpha=alpha, colormap=colormap)
    return torch.stack([to_uint8(images), heat, blend], dim=1)


def probe_grid(
    images01: Tensor,
    maps: Tensor,
    *,
    alpha: float = 0.5,
    colormap: str = "jet",
    padding: int = 2,
    pad_value: int = 0,
) -> Tensor:
    """One image with a row per probe: input | heatmap | overlay.

    Args:
        images01: float Tensor ``[N, 3, H, W]`` in ``[0, 1]`` (or uint8).
        maps: float Tensor ``[N, h, w]`` in ``[0, 1]`` (resized to ``H x W``).
        alpha, colormap: as in :func:`overlay`.
        padding, pad_value: as in :func:`tile`.

    Returns:
        uint8 Tensor ``[3, N * (H + p) + p, 3 * (W + p) + p]`` on ``images01.device``.
    """
    return tile(probe_panels(images01, maps, alpha, colormap), padding=padding, pad_value=pad_value)


def probe_rows(
    images01: Tensor,
    maps: Tensor,
    *,
    alpha: float = 0.5,
    colormap: str = "jet",
    padding: int = 2,
    pad_value: int = 0,
) -> Tensor:
    """The rows of :func:`probe_grid` as separate images (one strip per probe).

    Returns:
        uint8 Tensor ``[N, 3, H + 2p, 3 * (W + p) + p]``; ``rows[i]`` is strip ``i`` with its own
        border (iterate over it to get per-probe ``[3, h, w]`` images for the sinks).
    """
    panels = probe_panels(images01, maps, alpha, colormap)
    if panels.shape[0] == 0:
        return panels.new_zeros((0, 3, 0, 0))
    grid = tile(panels, padding=padding, pad_value=pad_value)
    return torch.stack(grid_rows(grid, panels.shape[0], padding))


def grid_rows(grid: Tensor, rows: int, padding: int = 2) -> list[Tensor]:
    """Cut a :func:`tile` grid of ``rows`` equal rows into per-row strips, each with its border.

    Args:
        grid: ``[3, rows * (H + p) + p, W']`` as :func:`tile` returns it.
        rows: number of rows ``R``; padding: the ``p`` used by :func:`tile`.

    Returns:
        ``rows`` views ``[3, H + 2p, W']`` of ``grid`` (no copy).
    """
    h = (grid.shape[1] - padding) // rows - padding
    step = h + padding
    return [grid[:, i * step : i * step + h + 2 * padding] for i in range(rows)]


def _thumb_size(
    height: int, width: int, thumbnail: int | tuple[int, int] | None
) -> tuple[int, int]:
    if thumbnail is None:
        return height, width
    if isinstance(thumbnail, int):
        scale = min(1.0, thumbnail / max(height, width))
        return max(1, round(height * scale)), max(1, round(width * scale))
    return int(thumbnail[0]), int(thumbnail[1])


def _resize_u8(images: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(images.shape[-2:]) == size:
        return images
    return resize(images.float(), size).round().clamp(0, 255).to(torch.uint8)


def pick_columns(count: int, max_columns: int | None) -> list[int]:
    """Evenly spaced indices into ``count`` runs, always keeping the first and the last."""
    if max_columns is None or count <= max_columns:
        return list(range(count))
    if max_columns < 1:
        raise ValueError(f"max_columns must be >= 1, got {max_columns}")
    if max_columns == 1:
        return [count - 1]
    step = (count - 1) / (max_columns - 1)
    return sorted({round(i * step) for i in range(max_columns)})


def filmstrip(
    overlays_per_run: Sequence[Tensor],
    padding: int = 2,
    *,
    thumbnail: int | tuple[int, int] | None = None,
    max_columns: int | None = None,
    pad_value: int = 0,
) -> Tensor:
    """The evolution of the overlays over the runs: a row per probe, a column per run.

    Args:
        overlays_per_run: one uint8 Tensor ``[N, 3, H, W]`` per run (e.g. :func:`overlay`
            outputs), oldest first, all with the same ``N``; all on one device.
        padding, pad_value: as in :func:`tile`.
        thumbnail: cell size: ``None`` = the first run's ``H x W``; an int = longest side at most
            that many pixels (aspect kept, never enlarged); ``(h, w)`` = exactly that size. Runs
            of another size are resized (bilinear, antialiased) to the cell size.
        max_columns: keep at most this many runs, evenly spaced, first and last always included.

    Returns:
        uint8 Tensor ``[3, N * (h + p) + p, R * (w + p) + p]`` with ``R`` the number of columns kept.
    """
    runs = list(overlays_per_run)
    if not runs:
        raise ValueError("filmstrip needs at least one run")
    first = runs[0]
    if any(r.dim() != 4 or r.shape[0] != first.shape[0] or r.shape[1] != 3 for r in runs):
        raise ValueError("every run must be a [N, 3, H, W] tensor with the same N")
    size = _thumb_size(int(first.shape[-2]), int(first.shape[-1]), thumbnail)
    kept = [_resize_u8(to_uint8(runs[i]), size) for i in pick_columns(len(runs), max_columns)]
    return tile(torch.stack(kept, dim=1), padding=padding, pad_value=pad_value)


def highlight(
    images: Tensor, which: Tensor, color: Sequence[int] = (255, 0, 0), width: int = 3
) -> Tensor:
    """Draw a solid frame around the selected images (e.g. probes that raised a flag).

    Args:
        images: uint8 Tensor ``[N, 3, H, W]``.
        which: bool Tensor ``[N]`` (any device): True = draw the frame.
        color: RGB bytes of the frame.
        width: frame thickness in pixels (clipped to the image size).

    Returns:
        A new uint8 Tensor ``[N, 3, H, W]``; unselected images are unchanged.
    """
    _check_images(images)
    h, w = images.shape[-2:]
    rows = torch.arange(h, device=images.device)
    cols = torch.arange(w, device=images.device)
    ring = (
        (rows[:, None] < width)
        | (rows[:, None] >= h - width)
        | (cols[None, :] < width)
        | (cols[None, :] >= w - width)
    )  # [H, W]
    mask = which.to(images.device).bool()[:, None, None, None] & ring  # [N, 1, H, W]
    fill = torch.tensor(list(color), dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return torch.where(mask, fill, images)


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def _check_image(image: Tensor) -> None:
    """Raise ``ValueError`` unless ``image`` is a uint8 ``[3, H, W]`` or ``[1, H, W]`` tensor."""
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(
            f"expected a uint8 [3, H, W] image, got {image.dtype} {tuple(image.shape)}"
        )


def _to_pil(image: Tensor):  # -> PIL.Image.Image
    from PIL import Image

    _check_image(image)
    array = image.detach().cpu().permute(1, 2, 0).contiguous().numpy()
    if array.shape[2] == 1:
        return Image.fromarray(array[:, :, 0], mode="L")
    return Image.fromarray(array, mode="RGB")


#: Image formats the sinks can encode, with their file suffix.
IMAGE_FORMATS: dict[str, str] = {"png": ".png", "jpeg": ".jpg"}
#: JPEG quality of :func:`encode_image` (OpenCV's own default; 0-100).
JPEG_QUALITY = 95

_ENCODED = threading.local()  # per thread: the last image encoded, its version, format, bytes


def check_image_format(image_format: str) -> str:
    """Validate an image format name (:data:`IMAGE_FORMATS`), with a close-match hint.

    Raises:
        ValueError: an unknown format (e.g. ``"jpg"`` says to use ``"jpeg"``).
    """
    if image_format in IMAGE_FORMATS:
        return image_format
    hint = "jpeg" if str(image_format).lower() in ("jpg", "jpeg") else None
    hint = hint or next(iter(difflib.get_close_matches(str(image_format), IMAGE_FORMATS, 1)), None)
    raise ValueError(
        f"unknown image_format {image_format!r}; choose one of {sorted(IMAGE_FORMATS)}"
        + (f" (did you mean {hint!r}?)" if hint else "")
    )


def _encode(image: Tensor, image_format: str) -> bytes:
    if image_format == "png":
        buffer = io.BytesIO()
        _to_pil(image).save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()
    _check_image(image)
    array = image.detach().cpu().permute(1, 2, 0).numpy()
    if array.shape[2] == 3:
        array = array[:, :, ::-1]  # OpenCV encodes BGR
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
    # full-resolution colour (4:4:4): colour maps have saturated edges that 4:2:0 smears
    params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(array), params)
    if not ok:  # pragma: no cover - OpenCV reports failure without raising
        raise RuntimeError(f"OpenCV could not encode a {tuple(image.shape)} image as JPEG")
    return data.tobytes()


def encode_image(image: Tensor, image_format: str = "png") -> bytes:
    """The encoded bytes of one image: ``"png"`` is lossless (Pillow, a fast zlib level),
    ``"jpeg"`` is lossy at quality :data:`JPEG_QUALITY` with full-resolution colour (OpenCV;
    an overlay grid encodes about 15x faster and 2x smaller, with a mean error under 2 of 255).
    The last image encoded on each thread is remembered, so writing the same tensor to several
    destinations (a file, TensorBoard) encodes it once; an in-place change of the tensor is
    noticed (its version counter) and encodes it anew.

    Args:
        image: uint8 Tensor ``[3, H, W]`` (RGB) or ``[1, H, W]`` (grayscale), any device.
        image_format: a key of :data:`IMAGE_FORMATS`.
    """
    check_image_format(image_format)
    try:
        version = image._version
    except RuntimeError:  # an inference tensor has no version counter: not remembered
        version = None
    last = getattr(_ENCODED, "last", None)
    if (
        version is not None
        and last is not None
        and last[0] is image
        and last[1:3] == (version, image_format)
    ):
        return last[3]
    data = _encode(image, image_format)
    _ENCODED.last = (image, version, image_format, data) if version is not None else None
    return data


def encode_png(image: Tensor) -> bytes:
    """The lossless PNG bytes of one image: :func:`encode_image` with ``"png"``."""
    return encode_image(image, "png")


def write_image(image: Tensor, path: str | Path, image_format: str = "png") -> Path:
    """Write one image (:func:`encode_image`), creating the parent directories.

    Args:
        image: uint8 Tensor ``[3, H, W]`` (RGB) or ``[1, H, W]`` (grayscale), any device.
        path: destination file (its suffix is kept as given).
        image_format: a key of :data:`IMAGE_FORMATS`.

    Returns:
        The path written.
    """
    path = Path(path)
    data = encode_image(image, image_format)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_png(image: Tensor, path: str | Path) -> Path:
    """Write one image as a (lossless) PNG file (:func:`encode_png`), creating the parent
    directories.

    Args:
        image: uint8 Tensor ``[3, H, W]`` (RGB) or ``[1, H, W]`` (grayscale), any device.
        path: destination file.

    Returns:
        The path written.
    """
    return write_image(image, path, "png")


def gif_frame(frame: Tensor) -> Any:
    """One GIF frame from a uint8 ``[3, H, W]`` image: a ``PIL.Image`` quantised to its own
    256-colour palette (fast octree, no dithering; :func:`write_gif` takes it as it is)."""
    from PIL import Image

    return (
        _to_pil(frame)
        .convert("RGB")
        .quantize(256, Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    )


def write_gif(
    frames: Sequence[Any], path: str | Path, duration_ms: int = 500, loop: int | None = 0
) -> Path:
    """Write an animated GIF (Pillow), creating the parent directories.

    Each frame is quantised to its own 256-colour palette (fast octree, no dithering: a few ms
    per frame, where median cut with k-means took over a second for a 16-probe frame), so pixels
    are close to, not equal to, the input. Pillow merges identical
    consecutive frames into one longer frame.

    Args:
        frames: uint8 Tensors ``[3, H, W]``, or frames :func:`gif_frame` made, all the same
            size.
        path: destination file.
        duration_ms: display time of each frame.
        loop: number of repeats, 0 = forever, ``None`` = play once.

    Returns:
        The path written.
    """
    frames = list(frames)
    if not frames:
        raise ValueError("write_gif needs at least one frame")
    images = [f if not isinstance(f, Tensor) else gif_frame(f) for f in frames]
    if any(im.size != images[0].size for im in images):
        raise ValueError("all GIF frames must have the same shape")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = {} if loop is None else {"loop": int(loop)}
    images[0].save(
        path,
        format="GIF",
        save_all=True,
        append_images=images[1:],
        duration=max(1, math.ceil(duration_ms)),
        disposal=1,
        optimize=False,
        **extra,
    )
    return path
