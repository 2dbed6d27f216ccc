"""The analysis off the training thread: the model's shadow, the worker, and what a fit sees."""

from __future__ import annotations

import math
import threading
import time

import pytest
import pytorch_lightning as pl
import torch
from lit_helpers import loaders, make_module_class, trainer_kwargs
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn

from gradcam_callback import GradCAMCallback
from gradcam_callback.background import (
    AnalysisWorker,
    ModelShadow,
    checkpoints_each_epoch,
    clone_structure,
    sync_reason,
)
from gradcam_callback.demos import train_world

TinyModule = make_module_class(pl)


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.b.weight = self.a.weight  # tied weights
        self.bn = nn.BatchNorm1d(4)
        self.shared = self.a  # one module reachable twice
        self.table = torch.randn(1000)  # a plain tensor attribute (e.g. a dataset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.b(self.a(x)))


# ---------------------------------------------------------------------------- the shadow
def test_clone_structure_copies_weights_and_shares_the_rest():
    model = Tied().train()
    calls = []
    model.a.register_forward_hook(lambda m, i, o: calls.append("a"))
    clone = clone_structure(model)
    assert not clone.training and all(not m.training for m in clone.modules())
    assert model.training  # the model's own mode is untouched
    for (n, p), (_, q) in zip(model.named_parameters(), clone.named_parameters()):
        assert torch.equal(p, q) and p.data_ptr() != q.data_ptr() and not q.requires_grad, n
    assert clone.b.weight is clone.a.weight  # still tied
    assert clone.shared is clone.a  # still one module
    assert clone.table is model.table  # not a module's tensor: shared, not copied
    assert torch.equal(clone.bn.running_mean, model.bn.running_mean)
    assert clone.bn.running_mean.data_ptr() != model.bn.running_mean.data_ptr()
    clone(torch.randn(2, 4))
    assert calls == ["a"]  # the hooks the model had are kept
    model.b.register_forward_hook(lambda m, i, o: calls.append("b"))
    clone(torch.randn(2, 4))
    assert calls == ["a", "a"]  # hooks added to the model later never reach the copy


def test_shadow_refresh_follows_the_weights_in_place():
    model = Tied()
    shadow = ModelShadow()
    first = shadow.refresh(model)
    ptr = first.a.weight.data_ptr()
    with torch.no_grad():
        model.a.weight.add_(1.0)
        model.bn.running_var.mul_(3.0)
    again = shadow.refresh(model)
    assert again is first and again.a.weight.data_ptr() == ptr  # copied into, not re-made
    assert torch.equal(again.a.weight, model.a.weight)
    assert torch.equal(again.b.weight, model.a.weight)
    assert torch.equal(again.bn.running_var, model.bn.running_var)
    model.c = nn.Linear(4, 2)  # the layout changed: a new copy
    assert shadow.refresh(model) is not first and hasattr(shadow.model, "c")
    shadow.release()
    assert shadow.model is None


# ---------------------------------------------------------------------------- the worker
def test_worker_keeps_order_and_carries_errors():
    worker = AnalysisWorker(max_pending=2)
    gate = threading.Event()
    names = []

    def slow(i: int):
        def job():
            gate.wait(5)
            names.append(threading.current_thread().name)
            if i == 1:
                raise RuntimeError("job 1 failed")
            return i

        return job

    worker.submit(slow(0), "zero")
    worker.submit(slow(1), "one")
    assert worker.busy and worker.collect(wait=False) == []  # nothing done yet: no blocking
    gate.set()
    done = worker.collect(wait=True)
    assert [d.what for d in done] == ["zero", "one"]
    assert done[0].value == 0 and done[0].error is None
    assert isinstance(done[1].error, RuntimeError) and "job 1" in str(done[1].error)
    assert all(n.startswith("gradcam-analysis") for n in names)
    assert not worker.busy
    worker.submit(lambda: 7, "seven")
    assert [d.value for d in worker.close()] == [7]


def test_worker_waits_for_the_oldest_job_when_full():
    worker = AnalysisWorker(max_pending=1)
    worker.submit(lambda: time.sleep(0.2) or "first", "first")
    t0 = time.perf_counter()
    worker.submit(lambda: "second", "second")  # waits for the first
    assert time.perf_counter() - t0 > 0.1
    assert [d.value for d in worker.collect(wait=True)] == ["first", "second"]
    worker.close()


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({}, None),
        ({"enabled": False}, "async_analysis=False"),
        ({"on_flag": "stop"}, "on_flag='stop'"),
        ({"world_size": 2}, "2 processes"),
        ({"precision_plugin": type("HalfPrecision", (), {})()}, "HalfPrecision"),
        ({"precision_plugin": type("MixedPrecision", (), {})()}, None),
        ({"compiled": True}, "torch.compile"),
        ({"monitored": ["val_loss", "gradcam/attention/entropy"]}, "gradcam/attention/entropy"),
        ({"monitored": ["gradcamx/other"]}, None),
        ({"checkpoint_each_run": True}, "after every run"),
    ],
)
def test_sync_reason(change, reason):
    kw = dict(
        enabled=True, on_flag="warn", world_size=1, precision_plugin=None, compiled=False,
        monitored=["val_loss"], prefix="gradcam",
    )  # fmt: skip
    got = sync_reason(**{**kw, **change})
    assert (got is None) if reason is None else (reason in got)


@pytest.mark.parametrize(
    ("kwargs", "ours", "each_run"),
    [
        ({}, 1, True),  # no monitor: saves at every epoch end
        ({"every_n_epochs": 2}, 1, False),
        ({"every_n_epochs": 2}, 2, True),
        ({"monitor": "val_loss"}, 1, False),  # only when the metric improves
        ({"monitor": "val_loss", "save_last": True}, 1, True),
        ({"save_top_k": 0}, 1, False),
        ({"every_n_train_steps": 50}, 1, False),
    ],
)
def test_checkpoints_each_epoch(tmp_path, kwargs, ours, each_run):
    ck = ModelCheckpoint(dirpath=tmp_path, **kwargs)
    assert checkpoints_each_epoch([ck], ours) is each_run
    assert checkpoints_each_epoch([], ours) is False


# ---------------------------------------------------------------------------- in a fit
def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a
    )


@pytest.mark.slow
def test_worker_and_training_thread_reach_the_same_runs(monkeypatch):
    threads: list[str] = []
    from gradcam_callback import runs

    analyse = runs.analyse_run

    def spy(*args, **kw):
        threads.append(threading.current_thread().name)
        return analyse(*args, **kw)

    monkeypatch.setattr(runs, "analyse_run", spy)
    out = {}
    for background in (True, False):
        cb = GradCAMCallback(async_analysis=background, verbose=False)
        train_world("watermark", callbacks=[cb])
        out[background] = cb
    on, off = out[True], out[False]
    assert on._sync_why is None and off._sync_why == "async_analysis=False"
    assert len(threads) == 6
    assert all(t.startswith("gradcam-analysis") for t in threads[:3])
    assert all(t == threading.main_thread().name for t in threads[3:])
    assert [r["stage"] for r in on.history] == ["baseline", "fit", "fit"]
    for a, b in zip(on.history, off.history):
        assert a["flags"] == b["flags"] and a["epoch"] == b["epoch"]
        assert _same(a["metrics"], b["metrics"])  # bit for bit: the shadow is the model
    assert [f.to_dict() for f in on.flags] == [f.to_dict() for f in off.flags]
    assert {f.kind for f in on.flags} >= {"artifact"}


def test_a_checkpoint_holds_the_run_in_flight(tmp_path):
    # every second epoch: not after every run, so the runs go to the worker
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_epochs=2, save_top_k=-1)
    cb = GradCAMCallback(num_probes=4, verbose=False)
    train, val = loaders()
    pl.seed_everything(0)
    kw = trainer_kwargs(tmp_path, callbacks=[cb, ckpt], logger=False, enable_checkpointing=True)
    pl.Trainer(**{**kw, "max_epochs": 2}).fit(TinyModule(), train, val)
    assert cb._sync_why is None  # the runs went to the worker
    (path,) = (tmp_path / "ckpt").glob("epoch=1-*.ckpt")
    state = torch.load(path, weights_only=True)
    (saved,) = [v for k, v in state["callbacks"].items() if "GradCAMCallback" in k]
    # saved right after the second validation: its run is in the checkpoint
    assert [r["stage"] for r in saved["history"]] == ["baseline", "fit", "fit"]
    assert saved["monitor"]["previous_maps"] is not None


def test_monitored_metrics_and_acting_flags_keep_runs_on_the_training_thread(tmp_path):
    from pytorch_lightning.callbacks import EarlyStopping

    es = EarlyStopping(monitor="gradcam/attention/entropy", mode="max", patience=5)
    every_epoch = ModelCheckpoint(dirpath=tmp_path / "ckpt")  # Lightning's default schedule
    cases = [
        (GradCAMCallback(num_probes=4, verbose=False), [es], "is monitored"),
        (GradCAMCallback(num_probes=4, verbose=False, on_flag="stop"), [], "on_flag='stop'"),
        (GradCAMCallback(num_probes=4, verbose=False), [every_epoch], "after every run"),
    ]
    for cb, others, reason in cases:
        train, val = loaders()
        kw = trainer_kwargs(tmp_path, logger=False, callbacks=[cb, *others], max_epochs=1)
        trainer = pl.Trainer(
            **{**kw, "enable_checkpointing": bool(others) and others[0] is every_epoch}
        )
        trainer.fit(TinyModule(), train, val)
        assert reason in cb._sync_why and len(cb.history) == 2


class Captures(nn.Module):
    """Keeps the features of its layer through a hook bound to itself."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 4)
        self.layer.register_forward_hook(self.capture)
        self.seen: torch.Tensor | None = None

    def capture(self, module, args, output) -> None:
        self.seen = output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class HoldsMethod(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 2)
        self.head_fn = self.head.forward  # calls the original head, whatever copies it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head_fn(x)


@pytest.mark.parametrize(
    ("model", "says"),
    [
        (Captures(), "_forward_hooks"),
        (HoldsMethod(), "head_fn is Linear.forward, a method"),
        (nn.Sequential(torch.compile(nn.Linear(4, 4), backend="eager")), "torch.compile"),
    ],
)
def test_a_copy_that_would_call_the_model_is_refused(model, says):
    with pytest.raises(ValueError, match=says):
        clone_structure(model)


def test_a_model_that_cannot_be_copied_keeps_runs_on_the_training_thread(tmp_path):
    class Hooked(TinyModule):
        def __init__(self) -> None:
            super().__init__()
            self.net[0].register_forward_hook(self.capture)

        def capture(self, module, args, output) -> None:
            self.features = output

    cb = GradCAMCallback(num_probes=4)  # verbose: says where the runs go
    train, val = loaders()
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, logger=False, callbacks=[cb], max_epochs=1))
    trainer.fit(Hooked(), train, val)
    assert "cannot be copied" in cb._sync_why and "capture" in cb._sync_why
    assert len(cb.history) == 2 and cb._shadow.model is None
