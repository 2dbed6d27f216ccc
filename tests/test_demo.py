"""The shortcut demo at CI size: the artifact flag fires in the shortcut world, not in the clean one.

Also runs ``configs/shortcut_demo.yaml`` through ``python -m gradcam_callback.cli`` at reduced size
(CLI overrides), and reads what both wrote back from the TensorBoard event files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gradcam_callback import demo

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--fast", "--no-progress-bar", "--accelerator", "cpu"]


def _events(log_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_shortcut_demo_raises_the_artifact_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    res = demo.run([*FAST, "--logdir", str(tmp_path)])
    out = capsys.readouterr().out

    # the alarm: an artifact flag, printed on one line as it fired, and recorded in flags.json
    artifact = [f for f in res.flags if f.kind == "artifact"]
    assert artifact, f"no artifact flag; history: {[r['metrics'] for r in res.history]}"
    first = artifact[0]
    assert not first.persistent and first.value >= first.threshold
    flag_lines = [ln for ln in out.splitlines() if ln.startswith("[FLAG]")]
    assert any(" artifact: " in ln for ln in flag_lines)
    assert len(flag_lines) == len([f for f in res.new_flags if f.kind.alarming])
    recorded = json.loads(res.flags_file.read_text())
    assert "artifact" in {f["kind"] for f in recorded}

    # the ground truth agrees: the model reads the watermark
    assert res.reliance["acc"] > 0.9 and res.reliance["acc_swapped"] < 0.5

    # what a new user is told to open, and that it exists and is not blank
    assert f"tensorboard --logdir {tmp_path}" in out
    assert str(res.log_dir) in out and res.log_dir.parent.parent == tmp_path
    for path in (res.summary_image, res.filmstrip, res.gif):
        assert path is not None and path.is_file() and str(path) in out
    summary = _png(res.summary_image)
    assert summary.shape == (2 * (8 * 66 + 2), 2 * (3 * 66 + 2), 3) and summary.std() > 20
    strip = _png(res.filmstrip)  # a row per probe (8), a column per run (baseline + 3 epochs)
    assert strip.shape[:2] == (8 * 66 + 2, 4 * 66 + 2) and strip.std() > 20

    # TensorBoard: overlays at the baseline and after every validation, the flags as text
    acc = _events(res.log_dir)
    steps = [e.step for e in acc.Images("gradcam/overlays")]
    assert steps[0] == 0 and len(steps) == 4
    assert [e.step for e in acc.Scalars("val_acc")] == steps[1:]
    assert "gradcam/filmstrip" in acc.Tags()["images"]
    assert any(t.startswith("gradcam/flags") for t in acc.Tags()["tensors"])


def test_clean_demo_raises_no_artifact_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert demo.main([*FAST, "--clean", "--logdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    (flags_file,) = tmp_path.glob("clean-watermark/version_*/flags.json")
    kinds = [f["kind"] for f in json.loads(flags_file.read_text())]
    assert "artifact" not in kinds, out
    assert not any(" artifact: " in ln for ln in out.splitlines() if ln.startswith("[FLAG]"))
    assert "Control run:" not in out  # only suggested after a shortcut run


def test_shortcut_demo_config_runs_at_reduced_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("jsonargparse")
    from gradcam_callback import GradCAMCallback
    from gradcam_callback.cli import main

    monkeypatch.chdir(tmp_path)
    cli = main(
        [
            "fit",
            "--config",
            str(ROOT / "configs" / "shortcut_demo.yaml"),
            "--trainer.max_epochs=1",
            "--trainer.accelerator=cpu",
            "--trainer.enable_progress_bar=false",
            f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}",
            "--data.n_train=96",
            "--data.n_val=32",
        ]
    )
    (cb,) = [c for c in cli.trainer.callbacks if isinstance(c, GradCAMCallback)]
    assert cb.num_probes == 16 and cb.mean == [0.5, 0.5, 0.5] and len(cb.probes) == 16
    assert len(cb.history) == 2  # baseline + one validation
    log_dir = Path(cli.trainer.logger.log_dir)
    assert log_dir.parent.name == "shortcut-watermark-cli"
    assert (log_dir / "gradcam" / "filmstrip.jpg").is_file()
    assert len(_events(log_dir).Images("gradcam/overlays")) == 2
