"""The TensorBoard page itself: a demo run served by ``tensorboard`` and shot by headless Chromium.

Starts ``tensorboard --logdir <run> --host 127.0.0.1 --port <free port>`` as a subprocess (loopback
only), waits until its images plugin lists ``gradcam/overlays``, takes a screenshot of
``/#images`` with ``chromium --headless`` and checks that it shows TensorBoard (its orange header)
and the Grad-CAM overlays (the jet colormap's saturated blue). Skipped when Chromium is not
installed (Debian: ``apt-get install chromium``). TensorBoard is always stopped.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gradcam_callback import demo

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
WINDOW = (1400, 1000)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read()
    except OSError:
        return None


def _wait_for_tag(proc: subprocess.Popen[bytes], port: int, tag: str, timeout: float) -> None:
    """Poll the images plugin until it lists ``tag`` (TensorBoard loads event files lazily)."""
    url = f"http://127.0.0.1:{port}/data/plugin/images/tags"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            pytest.fail(f"tensorboard exited with {proc.returncode}: {out[-2000:]}")
        body = _get(url)
        if body is not None:
            runs = json.loads(body)
            if any(tag in tags for tags in runs.values()):
                return
        time.sleep(0.5)
    pytest.fail(f"tensorboard did not list {tag!r} within {timeout:.0f} s")


def _screenshot(url: str, out: Path, profile: Path) -> None:
    assert CHROMIUM is not None
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=15000",
        f"--screenshot={out}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        url,
    ]
    done = subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    assert done.returncode == 0 and out.is_file(), done.stderr.decode(errors="replace")[-2000:]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_tensorboard_images_page_shows_the_overlays(tmp_path: Path) -> None:
    logdir = tmp_path / "logs"
    small = ["--fast", "--epochs", "1", "--n-train", "96", "--n-val", "32", "--probes", "4"]
    res = demo.run([*small, "--no-progress-bar", "--accelerator", "cpu", "--logdir", str(logdir)])
    assert res.summary_image is not None

    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            str(logdir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--reload_interval",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    shot = tmp_path / "tensorboard.png"
    try:
        _wait_for_tag(proc, port, "gradcam/overlays", timeout=90)
        url = f"http://127.0.0.1:{port}/#images&tagFilter=gradcam%2Foverlays"
        _screenshot(url, shot, tmp_path / "chromium-profile")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)

    page = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert page.shape[:2] == (WINDOW[1], WINDOW[0])
    assert page.std() > 20, "blank page"
    r, g, b = page[..., 0], page[..., 1], page[..., 2]
    # TensorBoard's orange header bar (#f57c00) across the top of the page
    header = (abs(r - 245) < 25) & (abs(g - 124) < 30) & (b < 60)
    assert header[:50].mean() > 0.5, "no TensorBoard header: an error page?"
    # the overlay grid: the jet colormap's dark-to-mid blue (cold heatmap), absent from the UI
    jet_blue = (b > 110) & (r < 60) & (g < 60)
    assert jet_blue.sum() > 2000, f"overlays not found ({jet_blue.sum()} jet-blue pixels)"
