"""MLflow sink: an end-to-end fit with ``MLFlowLogger`` on a local sqlite store, read back."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from lit_helpers import loaders, make_module_class, trainer_kwargs
from PIL import Image

from gradcam_callback import GradCAMCallback
from gradcam_callback.sinks import MLflowSink, SinkGroup, sink_for_logger

mlflow = pytest.importorskip("mlflow")
pytest.importorskip("sqlalchemy")
pytest.importorskip("alembic")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """One sqlite tracking store per module (creating its tables takes seconds); MLflow 3 does
    not start new runs in a plain ``file:`` store."""
    root = tmp_path_factory.mktemp("mlflow")
    return {
        "tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
        "artifact_location": str(root / "artifacts"),
    }


def _files(client: Any, run_id: str, path: str | None = None) -> list[str]:
    out = []
    for item in client.list_artifacts(run_id, path):
        out += _files(client, run_id, item.path) if item.is_dir else [item.path]
    return out


def _read(client: Any, run_id: str, path: str, dst: Path) -> bytes:
    return Path(client.download_artifacts(run_id, path, str(dst))).read_bytes()


@pytest.mark.slow
def test_mlflow_fit_end_to_end(tmp_path: Path, store: dict[str, str]) -> None:
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import MLFlowLogger

    logger = MLFlowLogger(experiment_name="fit", **store)
    assert isinstance(sink_for_logger(logger, tmp_path), MLflowSink)
    cb = GradCAMCallback(num_probes=4, drift_pearson=1.01, verbose=False)  # drift: always flags
    train, val = loaders(n_train=32, n_val=16)
    trainer = pl.Trainer(callbacks=[cb], logger=logger, **trainer_kwargs(tmp_path))
    with pytest.warns(UserWarning, match="drift"):
        trainer.fit(make_module_class(pl)(), train, val)
    steps = [r["global_step"] for r in cb.history]
    assert len(steps) == 3 and len(set(steps)) == 3  # baseline + 2 epochs
    client, run_id = logger.experiment, logger.run_id
    files = _files(client, run_id)
    failures = cb._sink_group.failures if cb._sink_group is not None else []
    assert failures == []

    # overlays: one step-indexed image per run, a grid of 4 probe rows
    overlays = sorted(f for f in files if f.startswith("images/gradcam~overlays+step+"))
    overlays = [f for f in overlays if f.endswith(".png")]
    assert sorted(int(f.split("+")[2]) for f in overlays) == sorted(steps)
    grid = Image.open(io.BytesIO(_read(client, run_id, overlays[0], tmp_path / "dl")))
    assert grid.mode == "RGB" and grid.height > 4 * 8 and grid.width > grid.height // 2
    for step in steps:
        probes = _read(client, run_id, f"gradcam/probes/step_{step:08d}.md", tmp_path / "dl")
        assert probes.decode().count("\n") == 2 + 4  # header, separator, 4 probes
        captions = _read(client, run_id, f"gradcam/overlays/step_{step:08d}.md", tmp_path / "dl")
        assert captions.decode().startswith("0. probe 0 \\| label ")

    # the per-probe table: one JSON table for the run, a step column, 4 rows per run
    table = json.loads(_read(client, run_id, "gradcam/per_probe.json", tmp_path / "dl"))
    assert table["columns"][:5] == ["step", "probe", "label", "prediction", "confidence"]
    assert [row[0] for row in table["data"]] == [s for s in steps for _ in range(4)]
    assert [row[1] for row in table["data"]] == [0, 1, 2, 3] * 3

    # the flags text, the filmstrip and the GIF
    flagged = sorted(f for f in files if f.startswith("gradcam/flags/"))
    assert flagged and b"drift" in _read(client, run_id, flagged[0], tmp_path / "dl")
    assert any(f.startswith("images/gradcam~filmstrip+step+") for f in files)
    gif = _read(client, run_id, "gradcam/evolution/evolution.gif", tmp_path / "dl")
    assert gif[:6] in (b"GIF87a", b"GIF89a")
    # the scalars went through the same logger
    history = client.get_metric_history(run_id, "gradcam/probe/confidence")
    assert len(history) >= 2


class _Client:
    """An ``MlflowClient`` without step-indexed images (MLflow < 2.16) that records calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []

    def log_image(self, run_id: str, image: Any, artifact_file: str | None = None) -> None:
        self.calls.append(("image", artifact_file, image.shape))

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.calls.append(("text", artifact_file, text))

    def log_dict(self, run_id: str, dictionary: dict, artifact_file: str) -> None:
        self.calls.append(("dict", artifact_file, dictionary))

    def log_artifact(self, run_id: str, local_path: str, artifact_path: str | None = None) -> None:
        self.calls.append(("artifact", artifact_path, Path(local_path).name))


class MLFlowLogger:  # duck-typed: the class name in a lightning namespace
    __module__ = "lightning.pytorch.loggers.mlflow"

    def __init__(self) -> None:
        self.experiment = _Client()
        self.run_id = "r1"
        self.save_dir = None


def test_mlflow_sink_layout_without_pandas_or_step_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas -> ImportError
    logger = MLFlowLogger()
    sink = sink_for_logger(logger, tmp_path)
    assert isinstance(sink, MLflowSink) and sink.log_dir is None
    group = SinkGroup([sink], default_dir=tmp_path)
    assert group.log_dir == tmp_path  # the filmstrip's files go to the trainer's directory
    img = torch.zeros(3, 6, 9, dtype=torch.uint8)
    group.log_probe_images("gradcam/overlays", img, [img, img], ["a", "b"], 7)
    group.log_text("gradcam/flags", "- **artifact**", 7)
    group.log_table("gradcam/per_probe", ["probe", "value"], [[0, torch.tensor(0.5)]], 7)
    gif = tmp_path / "evolution.gif"
    gif.write_bytes(b"GIF89a")
    group.log_gif("gradcam/evolution", gif, 7)
    group.log_image("bad tag/../x", img, 7)
    assert group.failures == []
    assert logger.experiment.calls == [
        ("image", "gradcam/overlays/step_00000007.png", (6, 9, 3)),
        ("text", "gradcam/overlays/step_00000007.md", "0. a\n1. b\n"),
        ("text", "gradcam/flags/step_00000007.md", "- **artifact**\n"),
        (
            "dict",
            "gradcam/per_probe/step_00000007.json",
            {"columns": ["step", "probe", "value"], "data": [[7, 0, 0.5]]},
        ),
        ("artifact", "gradcam/evolution", "evolution.gif"),
        ("image", "bad_tag/x/step_00000007.png", (6, 9, 3)),
    ]
