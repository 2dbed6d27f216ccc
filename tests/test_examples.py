"""Every script in ``examples/`` runs at its ``--fast`` size and logs real Grad-CAM runs."""

from __future__ import annotations

import importlib.util
import math
import sys
import urllib.error
from pathlib import Path
from types import ModuleType

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gradcam_callback import GradCAMCallback

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _overlay_steps(root: Path) -> list[int]:
    (events,) = root.rglob("events.out.tfevents.*")
    acc = EventAccumulator(str(events.parent), size_guidance={"images": 0})
    acc.Reload()
    return [e.step for e in acc.Images("gradcam/overlays")]


def test_minimal(tmp_path: Path) -> None:
    cb = _load("minimal").main(["--fast", "--root", str(tmp_path)])
    assert len(cb.history) == 3  # baseline + 2 epochs
    assert len(_overlay_steps(tmp_path / "lightning_logs")) == 3


def test_dict_batches_with_masks(tmp_path: Path) -> None:
    cb = _load("dict_batches_masks").main(["--fast", "--root", str(tmp_path)])
    probes = cb.probes
    assert probes is not None and probes.artifact_masks is not None
    assert probes.object_masks is not None and probes.labels is not None
    assert bool(probes.artifact_masks.flatten(1).any(1).all())  # every probe shows its tag
    last = cb.history[-1]["metrics"]
    assert math.isfinite(last["attention/artifact_enrichment"])
    assert math.isfinite(last["attention/object_enrichment"])


def test_resnet_weights_fallback_never_downloads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("torchvision")
    import torch
    import torchvision.models._api as api

    example = _load("resnet_finetune")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty-hub"))

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    _, note = example.load_resnet18("auto")  # nothing cached: no download attempt at all
    assert note.startswith("weights=None") and "--weights imagenet" in note
    model, note = example.load_resnet18("imagenet")  # download fails: stated fallback
    assert "could not load" in note and "weights=None" in note
    assert model.fc.out_features == 2


def test_resnet_finetune(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torchvision")
    cb = _load("resnet_finetune").main(["--fast", "--epochs", "1", "--root", str(tmp_path)])
    assert "ResNet-18: " in capsys.readouterr().out
    assert [info.name for info in cb.layer_info] == ["model.layer3"]
    assert len(cb.history) == 2
    assert len(_overlay_steps(tmp_path / "lightning_logs")) == 2


def test_wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")  # restored after the test
    monkeypatch.setenv("WANDB_SILENT", "true")
    cb, run_dir = _load("wandb_logging").main(["--fast", "--root", str(tmp_path)])
    assert run_dir.name.startswith("offline-run-")
    images = list((run_dir / "files" / "media" / "images").rglob("*.jpg"))  # image_format
    assert len(images) >= 3 * 8  # one per probe per run
    assert len(_overlay_steps(tmp_path / "tensorboard")) == len(cb.history) == 3


def test_lightning_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("jsonargparse")
    monkeypatch.chdir(tmp_path)
    cli = _load("lightning_cli").main(
        [
            "fit",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.max_epochs=1",
            "--trainer.enable_progress_bar=false",
            "--data.n_train=96",
            "--gradcam.method=gradcam++",
        ]
    )
    (cb,) = [c for c in cli.trainer.callbacks if isinstance(c, GradCAMCallback)]
    assert cb.method == "gradcam++" and cb.num_probes == 8  # the CLI flag and the script default
    assert len(cb.history) == 2
    assert len(_overlay_steps(tmp_path / "lightning_logs")) == 2
