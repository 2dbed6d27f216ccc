"""Regenerate the README images in ``docs/`` from real demo runs (about 2-4 minutes on a CPU).

Runs ``python -m gradcam_callback.demo`` twice at its default size (the shortcut world and the
``--clean`` control, same seed: the same probes, only the watermark's link to the label differs),
then writes:

* ``docs/overlays.png``: per probe, the input and the final Grad-CAM overlay of both runs;
* ``docs/filmstrip.png``: the shortcut run's evolution filmstrip (first probes, every run);
* ``docs/tensorboard.png``: the TensorBoard IMAGES page (``tensorboard --logdir demo_logs``, both
  runs' overlays), taken with headless Chromium (skipped when ``chromium`` is not installed).

Run::

    python docs/make_images.py [--workdir /tmp/gradcam-docs]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from gradcam_callback import demo

DOCS = Path(__file__).resolve().parent
CELL = 2 * 66  # summary.png: 64-px panels with 2-px padding, enlarged 2x
ROWS = 6


def _font(size: int = 15) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def _save(image: Image.Image, path: Path) -> None:
    """PNG with a 256-colour palette (adaptive, no dithering): a fraction of the RGB size."""
    image.convert("RGB").quantize(256, dither=Image.Dither.NONE).save(path, optimize=True)
    print(f"wrote {path} ({path.stat().st_size // 1024} KB, {image.width}x{image.height})")


def overlays_figure(shortcut: Path, clean: Path, out: Path, rows: int = ROWS) -> None:
    """Rows of probes: shortcut input | shortcut overlay || clean input | clean overlay."""
    a, b = Image.open(shortcut).convert("RGB"), Image.open(clean).convert("RGB")
    head, gap = 40, 12
    width = 4 * CELL + gap
    fig = Image.new("RGB", (width, head + rows * CELL), "white")
    for i in range(rows):
        y = i * CELL
        for j, (src, panel) in enumerate(((a, 0), (a, 2), (b, 0), (b, 2))):
            box = (panel * CELL, y, panel * CELL + CELL, y + CELL)
            fig.paste(src.crop(box), (j * CELL + (gap if j >= 2 else 0), head + y))
    draw = ImageDraw.Draw(fig)
    font = _font(15)
    draw.text((4, 4), "shortcut world (watermark = label)", fill="black", font=font)
    draw.text((2 * CELL + gap + 4, 4), "clean control (watermark random)", fill="black", font=font)
    for j, text in enumerate(("input", "Grad-CAM", "input", "Grad-CAM")):
        draw.text((j * CELL + (gap if j >= 2 else 0) + 4, 22), text, fill="dimgray", font=font)
    _save(fig, out)


def filmstrip_figure(strip: Path, out: Path, epochs: int, rows: int = ROWS) -> None:
    """The first ``rows`` probes of the filmstrip, with a header naming each column."""
    src = Image.open(strip).convert("RGB")
    cell = 66
    crop = src.crop((0, 0, src.width, rows * cell + 2))
    crop = crop.resize((crop.width * 2, crop.height * 2), Image.Resampling.NEAREST)
    head = 24
    fig = Image.new("RGB", (crop.width, crop.height + head), "white")
    fig.paste(crop, (0, head))
    draw = ImageDraw.Draw(fig)
    font = _font(14)
    labels = ["untrained", *(f"epoch {e}" for e in range(epochs))]
    for j, text in enumerate(labels[: (src.width - 2) // cell]):
        draw.text((j * 2 * cell + 8, 4), text, fill="black", font=font)
    _save(fig, out)


def tensorboard_screenshot(workdir: Path, out: Path, tag_filter: str = "overlays") -> None:
    """Serve ``workdir/demo_logs`` (both runs) on loopback and shoot the IMAGES page."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("chromium not installed: no docs/tensorboard.png")
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "tensorboard.main", "--logdir", "demo_logs"]  # as in the README
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                url = f"http://127.0.0.1:{port}/data/plugin/images/tags"
                with urllib.request.urlopen(url, timeout=5) as r:
                    if b"gradcam/overlays" in r.read():
                        break
            except OSError:
                pass
            time.sleep(0.5)
        shot = workdir / "tensorboard-full.png"
        page = f"http://127.0.0.1:{port}/#images&tagFilter={urllib.parse.quote(tag_filter)}"
        subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={workdir / 'chromium-profile'}",
                "--virtual-time-budget=15000",
                f"--screenshot={shot}",
                "--window-size=1400,1000",
                page,
            ],
            capture_output=True,
            timeout=120,
            check=True,
        )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
    _save(Image.open(shot), out)


def main(argv: list[str] | None = None) -> int:
    """Run both demos and write the three images."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None, help="where the demo logs go (default: temp)")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="gradcam-docs-"))
    logdir = workdir / "demo_logs"
    common = ["--no-progress-bar", "--logdir", str(logdir)]
    shortcut = demo.run(common)
    clean = demo.run([*common, "--clean"])
    assert shortcut.summary_image and clean.summary_image and shortcut.filmstrip
    overlays_figure(shortcut.summary_image, clean.summary_image, DOCS / "overlays.png")
    epochs = len(shortcut.history) - 1
    filmstrip_figure(shortcut.filmstrip, DOCS / "filmstrip.png", epochs)
    tensorboard_screenshot(workdir, DOCS / "tensorboard.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
