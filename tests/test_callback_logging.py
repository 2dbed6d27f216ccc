"""What the callback writes, read back from real TensorBoard event files, W&B runs and PNG files."""

from __future__ import annotations

import importlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from lit_helpers import loaders, make_module_class, trainer_kwargs
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

NAMESPACES = ["pytorch_lightning", "lightning.pytorch"]


def _ns(name):
    L = importlib.import_module(name)
    loggers = importlib.import_module(f"{name}.loggers")
    cb_mod = "gradcam_callback.lightning" if name == "lightning.pytorch" else "gradcam_callback"
    return L, loggers, importlib.import_module(cb_mod).GradCAMCallback


def _events(log_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


@pytest.mark.parametrize("namespace", NAMESPACES)
@pytest.mark.parametrize("plain_class", [True, False])
def test_tensorboard_images_scalars_text_share_val_steps(tmp_path, namespace, plain_class):
    L, loggers, NsCallback = _ns(namespace)
    from gradcam_callback import GradCAMCallback

    Callback = GradCAMCallback if plain_class else NsCallback  # the plain class works in both
    cb = Callback(num_probes=4, verbose=False)
    logger = loggers.TensorBoardLogger(str(tmp_path), name="tb")
    L.seed_everything(0)
    train, val = loaders()
    trainer = L.Trainer(**trainer_kwargs(tmp_path, logger=logger, callbacks=[cb], max_epochs=2))
    trainer.fit(make_module_class(L)(), train, val)

    acc = _events(Path(logger.log_dir))
    val_steps = [e.step for e in acc.Scalars("val_acc")]
    image_steps = [e.step for e in acc.Images("gradcam/overlays")]
    assert image_steps == [0, *val_steps]  # baseline at step 0, then aligned with val_* curves
    gradcam_steps = [e.step for e in acc.Scalars("gradcam/probe/confidence")]
    assert gradcam_steps == [0, *val_steps]
    # the overlay grid: 4 probe rows of input | heatmap | overlay, not blank
    img = np.array(
        Image.open(
            __import__("io").BytesIO(acc.Images("gradcam/overlays")[-1].encoded_image_string)
        )
    )
    assert img.shape[0] == 4 * (32 + 2) + 2 and img.shape[1] == 3 * (32 + 2) + 2
    assert acc.Images("gradcam/overlays")[-1].encoded_image_string[:3] == b"\xff\xd8\xff"  # JPEG
    assert img.std() > 10
    text_tags = acc.Tags()["tensors"]
    assert any(t.startswith("gradcam/probes") for t in text_tags)
    assert (Path(logger.log_dir) / "gradcam" / "filmstrip.jpg").exists()
    assert (Path(logger.log_dir) / "gradcam" / "evolution.gif").exists()


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_csv_logger_and_no_logger_write_images(tmp_path, namespace):
    L, loggers, NsCallback = _ns(namespace)
    cb = NsCallback(num_probes=4, verbose=False)  # image_format="jpeg" by default
    logger = loggers.CSVLogger(str(tmp_path), name="csv")
    train, val = loaders()
    trainer = L.Trainer(**trainer_kwargs(tmp_path, logger=logger, callbacks=[cb], max_epochs=1))
    trainer.fit(make_module_class(L)(), train, val)
    root = Path(logger.log_dir) / "gradcam"
    steps = sorted(p.parent.name for p in root.glob("step=*/gradcam_overlays.jpg"))
    assert steps == ["step=0", "step=3"]
    assert not list(root.glob("step=*/*.png"))
    assert (root / "step=4" / "gradcam_filmstrip.jpg").exists()  # at fit end
    assert (root / "filmstrip.jpg").exists()  # the file the callback keeps
    with Image.open(root / "step=3" / "gradcam_overlays.jpg") as im:
        assert im.format == "JPEG"
        jpg = np.array(im)
    assert jpg.ndim == 3 and jpg.std() > 10
    metrics = (Path(logger.log_dir) / "metrics.csv").read_text()
    assert "gradcam/probe/confidence" in metrics

    cb2 = NsCallback(num_probes=4, verbose=False, image_format="png")
    trainer = L.Trainer(
        **trainer_kwargs(tmp_path / "none", logger=False, callbacks=[cb2], max_epochs=1)
    )
    trainer.fit(make_module_class(L)(), train, val)
    assert (tmp_path / "none" / "gradcam" / "filmstrip.png").exists()
    png = tmp_path / "none" / "gradcam" / "step=3" / "gradcam_overlays.png"
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == (jpg.shape[1], jpg.shape[0])


def test_wandb_offline_and_tensorboard_together(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger

    from gradcam_callback import GradCAMCallback

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    wandb_logger = WandbLogger(project="gradcam-test", save_dir=str(tmp_path), offline=True)
    tb = TensorBoardLogger(str(tmp_path), name="tb")
    cb = GradCAMCallback(num_probes=4, verbose=False)
    train, val = loaders()
    trainer = pl.Trainer(
        **trainer_kwargs(tmp_path, logger=[tb, wandb_logger], callbacks=[cb], max_epochs=1)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(make_module_class(pl)(), train, val)
    run_dir = Path(wandb_logger.experiment.dir)
    wandb_logger.experiment.finish()
    images = sorted((run_dir / "media" / "images").rglob("*.jpg"))  # image_format="jpeg"
    assert len(images) >= 2 * 4  # one per probe per run, plus grids
    arr = np.array(Image.open(images[0]))
    assert arr.dtype == np.uint8 and arr.std() > 10  # not the black image of float inputs
    tables = list((run_dir / "media" / "table").rglob("*.json"))
    assert tables
    table = json.loads(tables[0].read_text())
    assert "probe" in table["columns"] and len(table["data"]) == 4
    assert _events(Path(tb.log_dir)).Images("gradcam/overlays")


def test_a_failing_logger_warns_once_and_training_goes_on(tmp_path):
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    from gradcam_callback import GradCAMCallback

    broken = TensorBoardLogger(str(tmp_path), name="broken")

    def disk_full(*args, **kwargs):
        raise OSError("disk full")

    broken.experiment.add_image = disk_full  # the media calls of this logger all fail
    broken.experiment.add_text = disk_full

    csv = CSVLogger(str(tmp_path), name="csv")
    cb = GradCAMCallback(num_probes=4, verbose=False)
    train, val = loaders()
    trainer = pl.Trainer(
        **trainer_kwargs(tmp_path, logger=[broken, csv], callbacks=[cb], max_epochs=2)
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(make_module_class(pl)(), train, val)
    disk = [w for w in caught if "disk full" in str(w.message)]
    assert len(disk) == 1
    assert trainer.current_epoch == 2 and len(cb.history) == 3
    assert len(list((Path(csv.log_dir) / "gradcam").glob("step=*/gradcam_overlays.jpg"))) == 3


def test_metrics_are_monitorable_by_early_stopping(tmp_path):
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import EarlyStopping

    from gradcam_callback import GradCAMCallback

    cb = GradCAMCallback(num_probes=4, verbose=False)
    es = EarlyStopping(monitor="gradcam/attention/entropy", mode="max", patience=0, strict=True)
    train, val = loaders()
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, logger=False, callbacks=[cb, es], max_epochs=4))
    trainer.fit(make_module_class(pl)(), train, val)
    assert es.best_score is not None and torch.isfinite(es.best_score)


def test_lightning_cli_config(tmp_path, monkeypatch):
    pytest.importorskip("jsonargparse")
    from pytorch_lightning.cli import LightningCLI

    config = Path(__file__).parent.parent / "configs" / "gradcam.yaml"
    monkeypatch.chdir(tmp_path)
    cli = LightningCLI(
        args=[
            "fit",
            "--config",
            str(config),
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=1",
            "--trainer.logger=false",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.enable_progress_bar=false",
            "--data.n_train=64",
            "--data.n_val=32",
        ],
        save_config_kwargs={"overwrite": True},
        seed_everything_default=0,
    )
    from gradcam_callback import GradCAMCallback

    cbs = [c for c in cli.trainer.callbacks if isinstance(c, GradCAMCallback)]
    assert len(cbs) == 1 and len(cbs[0].history) == 2
    assert cbs[0].every_n_epochs == 1 and cbs[0].num_probes == 8
    assert os.path.exists(tmp_path / "gradcam" / "step=0")


def test_lightning_namespace_cli_needs_its_own_class(tmp_path, monkeypatch):
    pytest.importorskip("jsonargparse")
    from lightning.pytorch.cli import LightningCLI
    from lit_helpers import LightningBlobDataModule, LightningTinyModule

    from gradcam_callback.lightning import GradCAMCallback as LightningGradCAM

    monkeypatch.chdir(tmp_path)

    def run(class_path):
        callbacks = json.dumps([{"class_path": class_path, "init_args": {"num_probes": 4}}])
        return LightningCLI(
            LightningTinyModule,
            LightningBlobDataModule,
            args=[
                "fit",
                "--trainer.max_epochs=1",
                "--trainer.logger=false",
                "--trainer.enable_progress_bar=false",
                "--trainer.enable_checkpointing=false",
                f"--trainer.default_root_dir={tmp_path}",
                f"--trainer.callbacks={callbacks}",
            ],
            save_config_kwargs={"overwrite": True},
        )

    cli = run("gradcam_callback.lightning.GradCAMCallback")
    cbs = [c for c in cli.trainer.callbacks if isinstance(c, LightningGradCAM)]
    assert len(cbs) == 1 and [r["stage"] for r in cbs[0].history] == ["baseline", "fit"]
    # the pytorch_lightning class is refused by lightning.pytorch's CLI type check
    with pytest.raises((SystemExit, ValueError, TypeError)):
        run("gradcam_callback.GradCAMCallback")


def test_media_are_written_off_the_training_thread_and_none_is_lost(tmp_path, monkeypatch):
    """Overlays are rendered and written by the reporter's worker thread; every run's image is in
    the event file when fit() (and a validate() right after it) returns."""
    import threading

    import pytorch_lightning as pl
    from pytorch_lightning.loggers import TensorBoardLogger

    from gradcam_callback import GradCAMCallback, sinks

    threads: list[str] = []
    original = sinks.TensorBoardSink.log_probe_images

    def recording(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        threads.append(threading.current_thread().name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(sinks.TensorBoardSink, "log_probe_images", recording)
    cb = GradCAMCallback(num_probes=4, verbose=False)
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    pl.seed_everything(0)
    train, val = loaders()
    model = make_module_class(pl)()
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, logger=logger, callbacks=[cb], max_epochs=2))
    trainer.fit(model, train, val)
    trainer.validate(model, val, verbose=False)
    assert threads and set(threads) == {"gradcam-reporter"}
    runs = [r for r in cb.history if r["stage"] in ("baseline", "fit", "validate")]
    images = _events(Path(logger.log_dir)).Images("gradcam/overlays")
    assert len(images) == len(runs) == 4  # baseline, 2 epochs, validate
