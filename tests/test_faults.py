"""Fault injection: the callback's promises to a hostile user, as tables.

1. ``SETUP_ERRORS``: a setting or input that can only fail later fails in ``__init__`` or
   ``setup``, before any training step, with a message that says how to fix it.
2. ``SETUP_WARNINGS``: data the callback can use only in part gives one warning at set-up.
3. ``RUN_FAULTS``: a fault inside a scheduled run, its rendering or its writing is a warning;
   training runs to its end.
4. Behaviours that used to be silently wrong: ``target_fn`` models, reused callbacks, uint8
   models, one-hot labels, flag messages.

Every case uses a real Lightning Trainer on tiny models (32x32 blobs, 2 classes).
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from lit_helpers import TupleDataset, blob_data, loaders, make_module_class, tiny_net
from lit_helpers import trainer_kwargs as base_kwargs
from pytorch_lightning.callbacks import EarlyStopping
from pytorch_lightning.loggers import CSVLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from gradcam_callback import GradCAMCallback, ProbeSet, ShortcutMonitor
from gradcam_callback import reporting as reporting_module

TinyModule = make_module_class(pl)


# ---------------------------------------------------------------------------- helpers
class ListDataset(Dataset):
    """Yields the given per-sample tuples."""

    def __init__(self, *columns: Any) -> None:
        self.columns = columns

    def __len__(self) -> int:
        return len(self.columns[0])

    def __getitem__(self, i: int) -> Any:
        return tuple(c[i] for c in self.columns)


class StepCounter(pl.Callback):
    def __init__(self) -> None:
        self.steps = 0

    def on_train_batch_start(self, *args: Any) -> None:
        self.steps += 1


def run_fit(tmp_path, cb, model=None, train=None, val=None, **kw):
    """Fit ``model`` (TinyModule) with ``cb``; returns ``(trainer, model, caught warnings)``."""
    pl.seed_everything(0)
    if train is None or val is None:
        train, val = loaders()
    model = model if model is not None else TinyModule()
    counter = StepCounter()
    kw = {"logger": False, "max_epochs": 2, **kw}
    callbacks = [cb, counter, *kw.pop("callbacks", [])]
    trainer = pl.Trainer(**base_kwargs(tmp_path, callbacks=callbacks, **kw))
    trainer.step_counter = counter
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, train, val)
    return trainer, model, [str(w.message) for w in caught]


def gradcam_warnings(caught: list[str]) -> list[str]:
    """The callback's fault warnings (not its flags, which read "GradCAMCallback [kind]", nor
    set-up notes on the probes)."""
    fault = re.compile(r"fail|could not|skipped|zero|Error\(")
    return [m for m in caught if m.startswith(("GradCAMCallback:", "gradcam:")) and fault.search(m)]


@pytest.fixture(autouse=True)
def _seed() -> None:
    pl.seed_everything(0)  # models are built in the tests: the same weights in any order


def blobs(n: int = 32, seed: int = 2) -> dict[str, Tensor]:
    return blob_data(n, seed=seed)


class ChannelModule(TinyModule):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.net = tiny_net(2, in_channels)


def channel_loaders(channels: int) -> tuple[DataLoader, DataLoader]:
    def ds(seed: int) -> ListDataset:
        d = blobs(32, seed)
        return ListDataset(d["image"][:, :1].repeat(1, channels, 1, 1), d["label"])

    return DataLoader(ds(1), batch_size=16), DataLoader(ds(2), batch_size=16)


class DictOutput(TinyModule):
    """A model whose output is a dict (the README's case for ``target_fn``)."""

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"logits": self.net(x), "aux": x.mean((1, 2, 3))}

    @staticmethod
    def logits(out: Any) -> Tensor:
        return out["logits"]

    def training_step(self, batch: Any, _i: int) -> Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.logits(self(x)), y)

    def validation_step(self, batch: Any, _i: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self.logits(self(x)), y))


class TupleOutput(DictOutput):
    """A model whose output is a tuple ``(logits, aux)``."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.net(x), x.mean((1, 2, 3))

    @staticmethod
    def logits(out: Any) -> Tensor:
        return out[0]


class ZeroGradient(TinyModule):
    """The logits do not depend on the features: every gradient at the target layer is 0."""

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x) * 0.0 + self.net[-1].bias


class Uint8Model(TinyModule):
    """Takes uint8 images and scales them inside; refuses anything else."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype != torch.uint8:
            raise TypeError(f"Uint8Model takes uint8 images, got {x.dtype}")
        return self.net(x.float() / 127.5 - 1.0)


def uint8_loaders() -> tuple[DataLoader, DataLoader]:
    def ds(seed: int) -> ListDataset:
        d = blobs(32, seed)
        x = ((d["image"].clamp(-1, 2) + 1) / 3 * 255).round().to(torch.uint8)
        return ListDataset(x, d["label"])

    return DataLoader(ds(1), batch_size=16, shuffle=True), DataLoader(ds(2), batch_size=16)


def label_loaders(kind: str) -> tuple[DataLoader, DataLoader]:
    """Val batches whose labels are ``kind``: one-hot / multi-hot / float / under 'target'."""

    def ds(seed: int) -> Dataset:
        d = blobs(32, seed)
        onehot = nn.functional.one_hot(d["label"], 2).float()
        if kind == "one_hot":
            return ListDataset(d["image"], onehot)
        if kind == "multi_hot":
            multi = onehot.clone()
            multi[::3] = 1.0  # some rows carry both labels
            return ListDataset(d["image"], multi)
        if kind == "float":
            return ListDataset(d["image"], d["label"].float())
        if kind == "dict_key":
            return TupleDataset(d, "dict", keys={"label": "target"})
        raise ValueError(kind)

    return DataLoader(ds(1), batch_size=16), DataLoader(ds(2), batch_size=16)


class SoftTargets(TinyModule):
    """Trains on any label layout (class indices, one-hot, multi-hot, dicts)."""

    def _xy(self, batch: Any) -> tuple[Tensor, Tensor]:
        x, y = super()._xy(batch)
        return x, y if y.dim() == 2 else y.long()

    def validation_step(self, batch: Any, _i: int) -> None:
        x, y = self._xy(batch)
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))


# ---------------------------------------------------------------------------- 1. set-up errors
def _cb(**kw: Any) -> GradCAMCallback:
    # no baseline run: the check must not rely on a run before the first training step
    return GradCAMCallback(num_probes=4, verbose=False, baseline=False, **kw)


def _nan_probes() -> ProbeSet:
    d = blobs(4)
    images = d["image"].clone()
    images[2, 1, 5, 5] = float("nan")
    return ProbeSet(images, d["label"])


# (case, make the callback, model, loaders, expected message): constructing the callback or
# calling fit raises ValueError before the first training step.
SETUP_ERRORS = [
    (
        "unknown colormap",
        lambda: _cb(colormap="plasmaa"),
        None,
        None,
        r"(?i)unknown colormap 'plasmaa'.*plasma",
    ),
    (
        "unknown image format",
        lambda: _cb(image_format="jpg"),
        None,
        None,
        r"unknown image_format 'jpg'.*did you mean 'jpeg'",
    ),
    (
        "mean and std of different lengths",
        lambda: _cb(mean=[0.5, 0.5, 0.5], std=[0.2, 0.2]),
        None,
        None,
        r"mean has 3 entries and std 2",
    ),
    ("std of zero", lambda: _cb(mean=[0.5], std=[0.0]), None, None, r"std must be > 0"),
    (
        "mean/std with 2 entries for RGB images",
        lambda: _cb(mean=[0.5, 0.5], std=[0.2, 0.2]),
        None,
        None,
        r"mean has 2 entries, images have 3 channels.*Give mean/std 1 or 3 entries",
    ),
    (
        "2-channel images (the overlay cannot show them)",
        lambda: _cb(),
        lambda: ChannelModule(2),
        lambda: channel_loaders(2),
        r"2 channels cannot be shown.*log_images=False",
    ),
    (
        "dataloader_idx beyond the validation dataloaders",
        lambda: _cb(dataloader_idx=3),
        None,
        None,
        r"dataloader_idx=3\), but there are only 1 validation dataloader",
    ),
    ("negative dataloader_idx", lambda: _cb(dataloader_idx=-1), None, None, r"dataloader_idx"),
    (
        "3-channel probes for a 1-channel model",
        lambda: _cb(probes=ProbeSet(blobs(4)["image"])),
        lambda: ChannelModule(1),
        lambda: channel_loaders(1),
        r"model fails on the probe images \(shape \[3, 32, 32\].*first convolution takes 1 "
        r"channels, the probes have 3",
    ),
    (
        "a NaN pixel in a given probe",
        lambda: _cb(probes=_nan_probes()),
        None,
        None,
        r"probe image\(s\) \[2\] contain NaN",
    ),
    (
        "a NaN pixel in the validation data",
        lambda: _cb(),
        None,
        lambda: (
            loaders()[0],
            DataLoader(
                ListDataset(
                    blobs(8)["image"].index_put_((torch.tensor([1]),), torch.tensor(float("inf"))),
                    blobs(8)["label"],
                ),
                batch_size=4,
            ),
        ),
        r"probe image\(s\) \[1\] contain NaN or inf",
    ),
]


@pytest.mark.parametrize(
    "make_cb, make_model, make_loaders, message",
    [case[1:] for case in SETUP_ERRORS],
    ids=[case[0] for case in SETUP_ERRORS],
)
def test_bad_setting_fails_before_any_training_step(
    tmp_path, make_cb, make_model, make_loaders, message
):
    model = make_model() if make_model else TinyModule()
    train, val = make_loaders() if make_loaders else loaders()
    counter = StepCounter()
    with pytest.raises(ValueError, match=message):
        cb = make_cb()
        trainer = pl.Trainer(
            **base_kwargs(tmp_path, callbacks=[cb, counter], logger=False, max_epochs=1)
        )
        trainer.fit(model, train, val)
    assert counter.steps == 0


# ---------------------------------------------------------------------------- 2. set-up warnings
# (case, label layout of the batches, expected warning): the probes carry no labels, the
# predicted class is explained, and the warning names the fix.
SETUP_WARNINGS = [
    ("labels under an unknown dict key", "dict_key", r"no label key 'label'.*label_key="),
    ("multi-hot labels, task='multiclass'", "multi_hot", r"multi-hot.*task='multilabel'"),
    ("float class labels", "float", r"torch.float32.*not class indices"),
]


@pytest.mark.parametrize(
    "kind, message", [c[1:] for c in SETUP_WARNINGS], ids=[c[0] for c in SETUP_WARNINGS]
)
def test_unusable_labels_warn_at_setup(tmp_path, kind, message):
    train, val = label_loaders(kind)
    task = "multiclass" if kind == "multi_hot" else "auto"  # auto: multi-hot is multi-label
    cb = GradCAMCallback(num_probes=4, verbose=False, baseline=False, task=task)
    trainer, _, caught = run_fit(tmp_path, cb, SoftTargets(), train, val, max_epochs=1)
    assert cb.probes.labels is None
    hits = [m for m in caught if re.search(message, m)]
    assert len(hits) == 1, gradcam_warnings(caught)
    assert "predicted class is explained" in hits[0]
    assert trainer.current_epoch == 1


def test_one_hot_labels_are_read_as_class_indices(tmp_path):
    train, val = label_loaders("one_hot")
    cb = GradCAMCallback(num_probes=6, verbose=False, baseline=False)
    _, _, caught = run_fit(tmp_path, cb, SoftTargets(), train, val, max_epochs=1)
    assert cb.probes.labels.tolist() == blobs(32)["label"][:6].tolist()
    assert not [m for m in caught if "predicted class is explained" in m]
    assert ProbeSet(torch.zeros(2, 3, 4, 4), torch.eye(2)).labels.tolist() == [0, 1]


# ---------------------------------------------------------------------------- 3. run faults
class RejectsPrefix(CSVLogger):
    """A logger that rejects the callback's metric names (as some trackers reject '/')."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if any(k.startswith("gradcam/") for k in metrics):
            raise ValueError(f"invalid metric name {next(iter(metrics))!r}")
        super().log_metrics(metrics, step)


def _render_explodes(monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("render exploded")

    monkeypatch.setattr(reporting_module, "grid_rows", boom)  # used by the runs only


# (case, inject, expected warning, how many times, records kept) in a 3-epoch fit of 4 runs
RUN_FAULTS = [
    ("the analysis raises at every run", "monitor", r"failed and was skipped.*exploded", 4, 0),
    ("rendering raises at every run", "render", r"could not render.*render exploded", 4, 4),
    (
        "all gradients at the target layer are zero",
        "zero",
        r"every probe's (Grad-CAM )?map is zero",
        1,
        4,
    ),
    ("a logger rejects the callback's scalars", "logger", r"log_metrics failed.*invalid", 1, 4),
]


@pytest.mark.parametrize(
    "inject, message, times, records",
    [c[1:] for c in RUN_FAULTS],
    ids=[c[0] for c in RUN_FAULTS],
)
def test_run_fault_is_a_warning_and_training_goes_on(
    tmp_path, monkeypatch, inject, message, times, records
):
    model, logger = TinyModule(), False
    callbacks: list[Any] = []
    cb = GradCAMCallback(num_probes=4, verbose=False)
    if inject == "monitor":

        def analysis_explodes(**_: Any) -> None:
            raise RuntimeError("metric exploded")

        monkeypatch.setattr(cb.monitor, "analyze", analysis_explodes)
    elif inject == "render":
        _render_explodes(monkeypatch)
    elif inject == "zero":
        model = ZeroGradient()
    elif inject == "logger":
        logger = RejectsPrefix(str(tmp_path), name="rejects")
        # the set-level scalars stay monitorable although the logger rejects them
        callbacks.append(EarlyStopping(monitor="gradcam/probe/confidence", patience=99))
    trainer, _, caught = run_fit(
        tmp_path, cb, model, max_epochs=3, logger=logger, callbacks=callbacks
    )
    assert trainer.current_epoch == 3 and trainer.step_counter.steps == 12
    assert len(cb.history) == records  # a skipped run leaves no record
    hits = [m for m in caught if re.search(message, m)]
    assert len(hits) == times, gradcam_warnings(caught)
    if inject == "logger":
        assert torch.isfinite(trainer.callback_metrics["gradcam/probe/confidence"])
        csv = Path(logger.log_dir) / "metrics.csv"
        assert "train_loss" in csv.read_text()  # the model's own metrics still reach it


# ---------------------------------------------------------------------------- 4. no silent errors
@pytest.mark.parametrize(
    "model_class, target_fn",
    [(DictOutput, lambda out: out["logits"][:, 1]), (TupleOutput, lambda out: out[0][:, 1])],
    ids=["dict output", "tuple output"],
)
def test_target_fn_models_run_causal_and_faithfulness_checks(tmp_path, model_class, target_fn):
    cb = GradCAMCallback(
        num_probes=4,
        verbose=False,
        target_fn=target_fn,
        faithfulness_every_n_runs=1,
        faithfulness_steps=3,
        # a margin this wide makes every rule "near its threshold": every region is tested
        monitor=ShortcutMonitor(confirm_margin=1e-6),
    )
    _, _, caught = run_fit(tmp_path, cb, model_class(), max_epochs=1)
    assert not [m for m in caught if "failed and was skipped" in m], gradcam_warnings(caught)
    assert [r["stage"] for r in cb.history] == ["baseline", "fit"]
    for record in cb.history:
        metrics = record["metrics"]
        assert "faithfulness/deletion_auc" in metrics
        assert metrics["attention/entropy"] > 0
    # the baseline never flags, so it is never confirmed; the trained run is, through target_fn
    causal = {k: v for k, v in cb.history[1]["metrics"].items() if k.startswith("causal/")}
    assert any(math.isfinite(v) for v in causal.values()), causal


def test_reused_callback_starts_afresh_on_a_new_model(tmp_path):
    cb = GradCAMCallback(num_probes=4, verbose=False)
    run_fit(tmp_path / "a", cb, TinyModule(), max_epochs=1)
    first = [dict(r) for r in cb.history]
    pl.seed_everything(1)
    second_model = TinyModule()
    twin = TinyModule()
    twin.load_state_dict(second_model.state_dict())
    # a second fit on a new model: maps of the new model, history from scratch, one warning
    _, _, caught = run_fit(tmp_path / "b", cb, second_model, max_epochs=1)
    fresh = GradCAMCallback(num_probes=4, verbose=False)
    run_fit(tmp_path / "c", fresh, twin, max_epochs=1)
    assert [m for m in caught if "set up with another model before" in m]
    assert cb._engine.model is second_model
    assert [r["stage"] for r in cb.history] == ["baseline", "fit"]
    assert cb.history[0]["metrics"] != first[0]["metrics"]
    for ours, theirs in zip(cb.history, fresh.history, strict=True):
        assert ours["metrics"].keys() == theirs["metrics"].keys()
        for k, v in ours["metrics"].items():
            assert v == pytest.approx(theirs["metrics"][k], nan_ok=True, abs=1e-5), k


def test_second_trainer_on_the_same_model_is_not_deduplicated(tmp_path):
    cb = GradCAMCallback(num_probes=4, verbose=False)
    model = TinyModule()
    run_fit(tmp_path / "a", cb, model, max_epochs=1)
    assert [r["stage"] for r in cb.history] == ["baseline", "fit"]
    _, _, caught = run_fit(tmp_path / "b", cb, model, max_epochs=1)  # same step 4, epoch 0
    assert [r["stage"] for r in cb.history] == ["baseline", "fit", "fit"]
    assert not [m for m in caught if "another model" in m]


def test_uint8_model_gets_uint8_probes_everywhere(tmp_path):
    train, val = uint8_loaders()
    cb = GradCAMCallback(
        num_probes=4, verbose=False, faithfulness_every_n_runs=1, sanity_check=True
    )
    _, _, caught = run_fit(
        tmp_path, cb, Uint8Model(), train, val, max_epochs=1, logger=CSVLogger(str(tmp_path))
    )
    assert cb.probes.images.dtype == torch.uint8
    assert not gradcam_warnings(caught)
    assert [r["stage"] for r in cb.history] == ["baseline", "fit", "sanity_check"]
    metrics = cb.history[-2]["metrics"]
    assert 0 < metrics["attention/entropy"] <= 1
    assert "causal/dependence" in metrics and "faithfulness/deletion_auc" in metrics
    overlays = list((tmp_path / "lightning_logs").rglob("gradcam_overlays.jpg"))
    assert len(overlays) == 2


class LooksAtTheCorner(pl.LightningModule):
    """Fixed weights: attention on a bright corner patch, class 1 always predicted."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 1, 1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1, 2))
        with torch.no_grad():
            self.features[0].weight.fill_(1.0)
            self.features[0].bias.zero_()
            self.head[-1].weight.copy_(torch.tensor([[1.0], [0.0]]))
            self.head[-1].bias.copy_(torch.tensor([-50.0, 0.0]))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    def training_step(self, batch: Any, _i: int) -> Tensor:
        return self(batch[0]).sum() * 0.0 + torch.zeros((), requires_grad=True)

    def validation_step(self, batch: Any, _i: int) -> None:
        pass

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_flag_messages_never_read_nan_or_negative_percentages(tmp_path):
    # the target (label 0) is never the likely class: its evidence is undefined (NaN), and the
    # attention sits on a corner patch, off the object masks. By default such a class is not
    # judged at all (the model has not learned it, and nothing was measured); with the learned
    # gate and the causal check off, the attention alone gives a "background" flag whose values
    # include undefined ones
    n = 8
    images = torch.zeros(n, 3, 32, 32)
    images[:, :, :8, :8] = 5.0
    objects = torch.zeros(n, 32, 32, dtype=torch.bool)
    objects[:, 20:30, 20:30] = True
    probes = ProbeSet(images, torch.zeros(n, dtype=torch.long), object_masks=objects)
    quiet = GradCAMCallback(probes=probes, verbose=False)
    run_fit(tmp_path / "default", quiet, LooksAtTheCorner(), max_epochs=1)
    assert not quiet.flags
    monitor = ShortcutMonitor(learned_share=None, confirm=False)
    cb = GradCAMCallback(probes=probes, verbose=False, monitor=monitor)
    run_fit(tmp_path, cb, LooksAtTheCorner(), max_epochs=1)
    assert cb.flags, "the planted case must raise a flag"
    for flag in cb.flags:
        assert "nan" not in flag.message.lower(), flag.message
        assert not re.search(r"-\d+(\.\d+)?%", flag.message), flag.message
