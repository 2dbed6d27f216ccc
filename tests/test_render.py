"""Tests for gradcam_callback.render: LUTs, denormalisation, overlays, layouts, PNG/GIF files."""

from __future__ import annotations

import io

import cv2
import matplotlib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageSequence

from gradcam_callback import render as R

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _smooth_images(n: int, h: int, w: int) -> torch.Tensor:
    """float [n, 3, h, w] in [0, 1]: gradients that differ per image."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    imgs = [torch.stack([yy, xx * (k + 1) / n, (yy + xx) / 2]) for k in range(n)]
    return torch.stack(imgs)


def _blob_maps(n: int, h: int, w: int) -> torch.Tensor:
    """float [n, h, w] in [0, 1]: one Gaussian blob per map at a different place."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    centres = torch.linspace(0.2, 0.8, n)
    return torch.stack([torch.exp(-((yy - c) ** 2 + (xx - 1 + c) ** 2) * 12) for c in centres])


def _lut_u8(name: str) -> torch.Tensor:
    return (R.colormap_lut(name) * 255).round().to(torch.uint8)


# --------------------------------------------------------------------------------------------
# Colormaps
# --------------------------------------------------------------------------------------------


def _opencv_table(cv_id: int) -> np.ndarray:
    """OpenCV's uint8 RGB table [256, 3] of a colormap id."""
    ramp = np.arange(256, dtype=np.uint8)[:, None]
    return cv2.applyColorMap(ramp, cv_id)[:, 0, ::-1]  # BGR -> RGB


def test_every_opencv_colormap_is_available() -> None:
    names = {n[len("COLORMAP_") :].lower() for n in dir(cv2) if n.startswith("COLORMAP_")}
    assert set(R.COLORMAPS) == names and len(R.COLORMAPS) == len(names)
    assert R.COLORMAPS[:4] == ("jet", "turbo", "inferno", "viridis")
    assert {"hot", "bone", "magma", "plasma"} <= names


@pytest.mark.parametrize("name", R.COLORMAPS)
def test_lut_equals_opencv(name: str) -> None:
    lut = R.colormap_lut(name)
    assert lut.shape == (256, 3) and lut.dtype == torch.float32
    ref = _opencv_table(getattr(cv2, f"COLORMAP_{name.upper()}"))
    assert np.array_equal(_lut_u8(name).numpy(), ref)
    torch.testing.assert_close(lut, torch.from_numpy(ref.copy()).float() / 255, atol=0, rtol=0)


@pytest.mark.parametrize("name", ["jet", "turbo", "hot", "twilight"])
def test_apply_colormap_equals_opencv_on_an_image(name: str) -> None:
    maps = torch.rand(2, 7, 9, generator=_gen(3))
    got = R.apply_colormap(maps, name)  # [N, 3, H, W] RGB
    cv_id = getattr(cv2, f"COLORMAP_{name.upper()}")
    for m, out in zip(maps, got):
        q = (m * 255).round().to(torch.uint8).numpy()
        ref = cv2.applyColorMap(q, cv_id)[:, :, ::-1]  # [H, W, 3] RGB
        assert np.array_equal(out.permute(1, 2, 0).numpy(), ref)


@pytest.mark.parametrize("name", ["turbo", "inferno", "viridis", "magma", "plasma", "cividis"])
def test_perceptual_luts_match_matplotlib(name: str) -> None:
    ref = matplotlib.colormaps[name](np.linspace(0, 1, 256))[:, :3]
    assert np.abs(R.colormap_lut(name).numpy() - ref).max() <= 0.5 / 255 + 1e-6  # byte rounding


def test_jet_close_to_matplotlib_on_average() -> None:
    # OpenCV's jet has other breakpoints than matplotlib's: close on average, not everywhere
    ref = matplotlib.colormaps["jet"](np.linspace(0, 1, 256))[:, :3]
    assert np.abs(R.colormap_lut("jet").numpy() - ref).mean() < 0.03


@pytest.mark.parametrize(
    ("name", "first", "last"),
    [
        ("jet", (0x00, 0x00, 0x80), (0x80, 0x00, 0x00)),
        ("turbo", (0x30, 0x12, 0x3B), (0x7A, 0x04, 0x03)),
        ("inferno", (0x00, 0x00, 0x04), (0xFC, 0xFF, 0xA4)),
        ("viridis", (0x44, 0x01, 0x54), (0xFD, 0xE7, 0x25)),
    ],
)
def test_lut_endpoints(name: str, first: tuple, last: tuple) -> None:
    lut = R.colormap_lut(name)
    torch.testing.assert_close(lut[0], torch.tensor(first) / 255.0, atol=1e-6, rtol=0)
    torch.testing.assert_close(lut[-1], torch.tensor(last) / 255.0, atol=1e-6, rtol=0)
    assert lut.min() >= 0 and lut.max() <= 1


def _luminance(lut: torch.Tensor) -> torch.Tensor:
    linear = torch.where(lut <= 0.04045, lut / 12.92, ((lut + 0.055) / 1.055) ** 2.4)
    return linear @ torch.tensor([0.2126, 0.7152, 0.0722])


def _rises(lum: torch.Tensor, span: int = 4) -> bool:
    """Luminance increases over every ``span`` entries (8-bit tables dip by a rounding step)."""
    return bool((lum[span:] - lum[:-span] > 0).all())


@pytest.mark.parametrize("name", ["inferno", "viridis", "magma", "plasma"])
def test_perceptual_luts_have_increasing_luminance(name: str) -> None:
    lum = _luminance(R.colormap_lut(name))
    assert _rises(lum) and lum.diff().min() > -1e-3  # single steps: at most a rounding dip


def test_jet_luminance_is_not_monotone() -> None:
    assert not _rises(_luminance(R.colormap_lut("jet")))


def test_colormap_lut_returns_a_copy() -> None:
    R.colormap_lut("jet").zero_()
    assert R.colormap_lut("jet").max() == 1.0


def test_apply_colormap_indexes_the_lut() -> None:
    values = torch.tensor([[[0.0, 1.0, 100 / 255], [-3.0, 7.0, float("nan")]]])  # [1, 2, 3]
    out = R.apply_colormap(values, "viridis")
    assert out.shape == (1, 3, 2, 3) and out.dtype == torch.uint8
    lut = _lut_u8("viridis")
    expected_idx = torch.tensor([[0, 255, 100], [0, 255, 0]])
    assert torch.equal(out[0].permute(1, 2, 0), lut[expected_idx])


def test_apply_colormap_accepts_channel_dim() -> None:
    maps = torch.rand(2, 5, 6, generator=_gen())
    assert torch.equal(R.apply_colormap(maps[:, None], "turbo"), R.apply_colormap(maps, "turbo"))


def test_unknown_colormap_lists_available() -> None:
    with pytest.raises(ValueError, match="jet, turbo, inferno, viridis"):
        R.apply_colormap(torch.zeros(1, 2, 2), "paroola")
    with pytest.raises(ValueError, match="viridis"):
        R.colormap_lut("gist_heat")
    with pytest.raises(ValueError, match="Did you mean 'viridis'"):
        R.check_colormap("virdis")
    with pytest.raises(ValueError, match="Did you mean 'jet'"):
        R.overlay(torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 2), colormap="Jet")
    assert R.check_colormap("hot") == "hot"


# --------------------------------------------------------------------------------------------
# denormalize
# --------------------------------------------------------------------------------------------


def test_denormalize_inverts_normalize() -> None:
    x = torch.rand(3, 3, 8, 9, generator=_gen())
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    out = R.denormalize((x - mean) / std, IMAGENET_MEAN, IMAGENET_STD)
    assert out.dtype == torch.float32 and out.shape == x.shape
    torch.testing.assert_close(out, x, atol=1e-6, rtol=0)


def test_denormalize_255_scale_constants() -> None:
    x = torch.randint(0, 256, (2, 3, 4, 5), generator=_gen()).float()
    mean, std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
    normed = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(R.denormalize(normed, mean, std), x / 255, atol=1e-5, rtol=0)


def test_denormalize_grayscale_to_three_channels() -> None:
    x = torch.rand(2, 1, 6, 6, generator=_gen())
    out = R.denormalize((x - 0.5) / 0.25, [0.5], [0.25])
    assert out.shape == (2, 3, 6, 6)
    for c in range(3):
        torch.testing.assert_close(out[:, c], x[:, 0], atol=1e-6, rtol=0)


def test_denormalize_infers_unit_range() -> None:
    x = torch.rand(2, 3, 4, 4, generator=_gen())
    assert torch.equal(R.denormalize(x), x)


def test_denormalize_infers_byte_range() -> None:
    x = torch.randint(0, 256, (2, 3, 4, 4), generator=_gen(), dtype=torch.uint8)
    torch.testing.assert_close(R.denormalize(x), x.float() / 255, atol=0, rtol=0)
    torch.testing.assert_close(R.denormalize(x.float()), x.float() / 255, atol=0, rtol=0)


def test_denormalize_min_max_per_image() -> None:
    x = torch.randn(2, 3, 5, 5, generator=_gen()) * torch.tensor([1.0, 10.0]).view(2, 1, 1, 1)
    out = R.denormalize(x)
    for i in range(2):
        lo, hi = x[i].min(), x[i].max()
        torch.testing.assert_close(out[i], (x[i] - lo) / (hi - lo), atol=1e-6, rtol=0)
    assert out.amin(dim=(1, 2, 3)).tolist() == [0.0, 0.0]
    assert out.amax(dim=(1, 2, 3)).tolist() == [1.0, 1.0]


def test_denormalize_constant_image_becomes_zero() -> None:
    x = torch.full((1, 3, 4, 4), -2.0)
    assert torch.equal(R.denormalize(x), torch.zeros(1, 3, 4, 4))


def test_denormalize_channels() -> None:
    rgba = torch.rand(1, 4, 3, 3, generator=_gen())
    assert torch.equal(R.denormalize(rgba), rgba[:, :3])
    with pytest.raises(ValueError, match="2 channels"):
        R.denormalize(torch.rand(1, 2, 3, 3))
    with pytest.raises(ValueError, match="mean has 2 entries"):
        R.denormalize(torch.rand(1, 3, 3, 3), mean=[0.1, 0.2], std=[1.0])


# --------------------------------------------------------------------------------------------
# overlay
# --------------------------------------------------------------------------------------------


def test_overlay_alpha_endpoints() -> None:
    images = _smooth_images(2, 12, 10)
    maps = _blob_maps(2, 12, 10)
    image_u8 = R.to_uint8(images)
    heat = R.apply_colormap(maps, "inferno")
    assert torch.equal(R.overlay(images, maps, alpha=0.0, colormap="inferno"), image_u8)
    assert torch.equal(R.overlay(images, maps, alpha=1.0, colormap="inferno"), heat)
    half = R.overlay(images, maps, alpha=0.5, colormap="inferno")
    assert half.dtype == torch.uint8 and half.shape == (2, 3, 12, 10)
    assert ((half.float() - (image_u8.float() + heat.float()) / 2).abs() <= 0.5).all()


def test_overlay_resizes_maps_bilinearly() -> None:
    images = _smooth_images(2, 16, 24)
    small = _blob_maps(2, 4, 6)
    big = F.interpolate(small[:, None], size=(16, 24), mode="bilinear", align_corners=False)[:, 0]
    out = R.overlay(images, small, alpha=1.0)
    assert out.shape == (2, 3, 16, 24)
    assert torch.equal(out, R.apply_colormap(big))


def test_overlay_rejects_bad_alpha_and_counts() -> None:
    with pytest.raises(ValueError, match="alpha"):
        R.overlay(_smooth_images(1, 4, 4), _blob_maps(1, 4, 4), alpha=1.5)
    with pytest.raises(ValueError, match="2 maps for 1 images"):
        R.overlay(_smooth_images(1, 4, 4), _blob_maps(2, 4, 4))


# --------------------------------------------------------------------------------------------
# Layouts
# --------------------------------------------------------------------------------------------


def _place(canvas: torch.Tensor, cell: torch.Tensor, top: int, left: int) -> None:
    canvas[:, top : top + cell.shape[1], left : left + cell.shape[2]] = cell


def test_probe_grid_layout() -> None:
    n, h, w, p, fill = 3, 5, 7, 2, 17
    images, maps = _smooth_images(n, h, w), _blob_maps(n, 3, 4)
    grid = R.probe_grid(images, maps, alpha=0.4, colormap="turbo", padding=p, pad_value=fill)
    assert grid.shape == (3, n * (h + p) + p, 3 * (w + p) + p) and grid.dtype == torch.uint8
    resized = F.interpolate(maps[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
    panels = [R.to_uint8(images), R.apply_colormap(resized, "turbo")]
    panels.append(R.overlay(images, maps, alpha=0.4, colormap="turbo"))
    expected = torch.full_like(grid, fill)
    for r in range(n):
        for c, panel in enumerate(panels):
            _place(expected, panel[r], p + r * (h + p), p + c * (w + p))
    assert torch.equal(grid, expected)


def test_probe_rows_are_the_grid_rows() -> None:
    n, h, w, p = 3, 6, 5, 2
    images, maps = _smooth_images(n, h, w), _blob_maps(n, h, w)
    grid = R.probe_grid(images, maps, padding=p)
    rows = R.probe_rows(images, maps, padding=p)
    assert rows.shape == (n, 3, h + 2 * p, 3 * (w + p) + p)
    for i in range(n):
        top = i * (h + p)
        assert torch.equal(rows[i], grid[:, top : top + h + 2 * p])


def test_tile_without_padding_is_concatenation() -> None:
    cells = torch.arange(2 * 3 * 3 * 2 * 2, dtype=torch.uint8).view(2, 3, 3, 2, 2)
    expected = torch.cat([torch.cat(list(row), dim=2) for row in cells], dim=1)
    assert torch.equal(R.tile(cells, padding=0), expected)


def _constant_runs(runs: int, n: int, h: int, w: int) -> list[torch.Tensor]:
    """uint8 [n, 3, h, w] per run; run c, probe r has the constant colour (10c, 20r, 7)."""
    out = []
    for c in range(runs):
        colours = torch.tensor([[10 * c, 20 * r, 7] for r in range(n)], dtype=torch.uint8)
        out.append(colours[:, :, None, None].expand(n, 3, h, w).contiguous())
    return out


def _cell(img: torch.Tensor, r: int, c: int, h: int, w: int, p: int) -> torch.Tensor:
    top, left = p + r * (h + p), p + c * (w + p)
    return img[:, top : top + h, left : left + w]


def test_filmstrip_layout() -> None:
    runs, n, h, w, p = 4, 3, 5, 6, 1
    frames = _constant_runs(runs, n, h, w)
    strip = R.filmstrip(frames, padding=p)
    assert strip.shape == (3, n * (h + p) + p, runs * (w + p) + p)
    for r in range(n):
        for c in range(runs):
            assert torch.equal(_cell(strip, r, c, h, w, p), frames[c][r])


def test_filmstrip_thumbnail_and_max_columns() -> None:
    frames = _constant_runs(5, 2, 8, 16)
    strip = R.filmstrip(frames, padding=2, thumbnail=8, max_columns=2)
    h, w = 4, 8  # longest side 16 -> 8, aspect kept
    assert strip.shape == (3, 2 * (h + 2) + 2, 2 * (w + 2) + 2)
    for r in range(2):
        assert torch.equal(_cell(strip, r, 0, h, w, 2), frames[0][r, :, :h, :w])  # first run
        assert torch.equal(_cell(strip, r, 1, h, w, 2), frames[4][r, :, :h, :w])  # last run
    exact = R.filmstrip(frames, padding=0, thumbnail=(3, 5))
    assert exact.shape == (3, 2 * 3, 5 * 5)


def test_filmstrip_rejects_mismatched_runs() -> None:
    with pytest.raises(ValueError, match="same N"):
        R.filmstrip([torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(3, 3, 4, 4)])
    with pytest.raises(ValueError, match="at least one"):
        R.filmstrip([])


def test_highlight_frames_selected_images_only() -> None:
    images = torch.full((2, 3, 6, 7), 100, dtype=torch.uint8)
    out = R.highlight(images, torch.tensor([True, False]), color=(255, 0, 9), width=2)
    assert torch.equal(out[1], images[1])
    assert torch.equal(out[0, :, 2:-2, 2:-2], images[0, :, 2:-2, 2:-2])
    ring = torch.ones(6, 7, dtype=torch.bool)
    ring[2:-2, 2:-2] = False
    assert out[0, 0][ring].eq(255).all() and out[0, 2][ring].eq(9).all()


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def test_png_round_trip(tmp_path) -> None:
    image = torch.randint(0, 256, (3, 9, 13), generator=_gen(), dtype=torch.uint8)
    path = R.write_png(image, tmp_path / "a" / "b" / "grid.png")
    assert path.is_file()
    expected = image.permute(1, 2, 0).numpy()
    assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), expected)
    assert np.array_equal(cv2.imread(str(path), cv2.IMREAD_COLOR)[:, :, ::-1], expected)


def test_png_rejects_float(tmp_path) -> None:
    with pytest.raises(ValueError, match="uint8"):
        R.write_png(torch.rand(3, 4, 4), tmp_path / "x.png")


def test_gif_round_trip(tmp_path) -> None:
    images, maps = _smooth_images(2, 16, 16), _blob_maps(2, 16, 16)
    frames = [R.probe_grid(images, maps * k / 3, colormap="viridis") for k in range(1, 4)]
    path = R.write_gif(frames, tmp_path / "evo" / "evolution.gif", duration_ms=120, loop=0)
    with Image.open(path) as gif:
        assert gif.n_frames == 3
        assert gif.info["loop"] == 0 and gif.info["duration"] == 120
        decoded = [np.asarray(f.convert("RGB")).astype(int) for f in ImageSequence.Iterator(gif)]
    for got, frame in zip(decoded, frames):
        want = frame.permute(1, 2, 0).numpy().astype(int)
        assert got.shape == want.shape
        assert np.abs(got - want).mean() < 5.0  # 256-colour (fast octree) palette per frame
    assert np.abs(decoded[0] - decoded[2]).mean() > 3.0  # the frames really differ


def test_gif_takes_prequantised_frames(tmp_path) -> None:
    images, maps = _smooth_images(2, 16, 16), _blob_maps(2, 16, 16)
    frames = [R.probe_grid(images, maps * k / 3, colormap="viridis") for k in range(1, 4)]
    a = R.write_gif(frames, tmp_path / "a.gif")
    b = R.write_gif([R.gif_frame(f) for f in frames], tmp_path / "b.gif")
    assert a.read_bytes() == b.read_bytes()  # quantising early (on the worker) changes nothing
    with pytest.raises(ValueError, match="same shape"):
        R.write_gif([frames[0], frames[0][:, :8]], tmp_path / "c.gif")


def test_encode_png_once_per_image_and_again_after_a_change(tmp_path) -> None:
    image = torch.randint(0, 256, (3, 9, 13), generator=_gen(), dtype=torch.uint8)
    first = R.encode_png(image)
    assert R.encode_png(image) is first  # the same tensor: encoded once
    assert R.write_png(image, tmp_path / "x.png").read_bytes() == first
    copy = image.clone()
    assert R.encode_png(copy) == first and R.encode_png(copy) is not first  # another tensor
    image[0, 0, 0] = 255 - image[0, 0, 0]  # in place: the version counter moves
    changed = R.encode_png(image)
    assert changed != first
    decoded = np.asarray(Image.open(io.BytesIO(changed)).convert("RGB"))
    assert np.array_equal(decoded, image.permute(1, 2, 0).numpy())
    with torch.inference_mode():
        frozen = torch.zeros(3, 2, 2, dtype=torch.uint8)
    assert R.encode_png(frozen) == R.encode_png(frozen)  # no version counter: encoded each time


def test_jpeg_is_close_to_the_image_and_png_is_exact(tmp_path) -> None:
    images, maps = _smooth_images(4, 32, 32), _blob_maps(4, 32, 32)
    grid = R.probe_grid(images, maps, colormap="jet")  # what the runs encode: an overlay grid
    jpeg, png = R.encode_image(grid, "jpeg"), R.encode_image(grid, "png")
    assert R.encode_image(grid, "png") is png  # the last one encoded: reused
    assert jpeg[:3] == b"\xff\xd8\xff" and png[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(jpeg) < len(png)
    with Image.open(io.BytesIO(jpeg)) as im:
        assert im.format == "JPEG" and im.size == (grid.shape[2], grid.shape[1])
        decoded = np.asarray(im.convert("RGB"), dtype=np.float64)
    exact = grid.permute(1, 2, 0).numpy().astype(np.float64)
    assert np.abs(decoded - exact).mean() < 3  # quality 95, 4:4:4: a few levels of 255
    # channels are not swapped (OpenCV encodes BGR): the mean colour matches per channel
    assert np.allclose(decoded.mean((0, 1)), exact.mean((0, 1)), atol=2)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")), exact)
    gray = R.encode_image(grid[:1].contiguous(), "jpeg")
    with Image.open(io.BytesIO(gray)) as im:
        assert im.mode == "L"
    path = R.write_image(grid, tmp_path / "d" / "grid.jpg", "jpeg")
    assert path.read_bytes() == jpeg


def test_unknown_image_format_names_the_choices() -> None:
    grid = torch.zeros(3, 4, 4, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"did you mean 'jpeg'"):
        R.encode_image(grid, "jpg")
    with pytest.raises(ValueError, match=r"choose one of \['jpeg', 'png'\]"):
        R.check_image_format("webp")
    with pytest.raises(ValueError, match="uint8"):
        R.encode_image(torch.zeros(3, 4, 4), "jpeg")
