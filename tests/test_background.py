"""The analysis off the training thread: the model's shadow, the worker, and what a fit sees."""

from __future__ import annotations

import math
import os
import sys
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
    ],
)
def test_sync_reason(change, reason):
    kw = dict(
        enabled=True, on_flag="warn", world_size=1, precision_plugin=None, compiled=False,
        monitored=["val_loss"], prefix="gradcam",
    )  # fmt: skip
    got = sync_reason(**{**kw, **change})
    assert (got is None) if reason is None else (reason in got)


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


def test_monitored_metrics_and_acting_flags_keep_runs_on_the_training_thread(tmp_path):
    from pytorch_lightning.callbacks import EarlyStopping

    es = EarlyStopping(monitor="gradcam/attention/entropy", mode="max", patience=5)
    cases = [
        (GradCAMCallback(num_probes=4, verbose=False), [es], "is monitored"),
        (GradCAMCallback(num_probes=4, verbose=False, on_flag="stop"), [], "on_flag='stop'"),
    ]
    for cb, others, reason in cases:
        train, val = loaders()
        kw = trainer_kwargs(tmp_path, logger=False, callbacks=[cb, *others], max_epochs=1)
        pl.Trainer(**kw).fit(TinyModule(), train, val)
        assert reason in cb._sync_why and len(cb.history) == 2


def test_default_checkpointing_keeps_the_runs_on_the_worker(tmp_path):
    cb = GradCAMCallback(num_probes=4, verbose=False)
    train, val = loaders()
    kw = trainer_kwargs(tmp_path, logger=False, callbacks=[cb], enable_checkpointing=True)
    trainer = pl.Trainer(**kw)  # Lightning's default ModelCheckpoint: a save after each epoch
    trainer.fit(TinyModule(), train, val)
    assert trainer.checkpoint_callback is not None and cb._sync_why is None
    assert [r["stage"] for r in cb.history] == ["baseline", "fit", "fit"]


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


# ---------------------------------------------------------------------------- threads
def test_background_threads_run_torch_on_one_core():
    from gradcam_callback.reporting import Reporter

    own, own_nice = torch.get_num_threads(), _nice()
    torch.set_num_threads(2)  # a count the limit must change (and leave alone here)
    try:
        worker = AnalysisWorker()
        worker.submit(torch.get_num_threads, "count")
        worker.submit(_nice, "priority")
        done, nice = worker.close()
        reporter, seen = Reporter(), []
        reporter._enqueue(lambda: seen.append(torch.get_num_threads()), "count")
        assert reporter.close() == []
        later: list[int] = []
        thread = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
        thread.start()
        thread.join()
        assert (done.value, seen) == (1, [1])  # both background threads: one intra-op thread
        assert torch.get_num_threads() == 2 and later == [2]  # this thread and later ones: not
        if sys.platform.startswith("linux"):  # the worker yields the cores to training
            assert nice.value == 19 and _nice() == own_nice
    finally:
        torch.set_num_threads(own)


def _nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


# ---------------------------------------------------------------------------- resume
def _ordered_loaders() -> tuple:
    from lit_helpers import TupleDataset, blob_data
    from torch.utils.data import DataLoader

    train = TupleDataset(blob_data(64, seed=1), "xy")
    val = TupleDataset(blob_data(32, seed=2), "xy")
    return DataLoader(train, batch_size=16), DataLoader(val, batch_size=16)  # no shuffling


class _SavedEvent(pl.Callback):
    """Sets ``event`` once a checkpoint of ``epoch`` has been written (after every state_dict)."""

    def __init__(self, event: threading.Event, epoch: int) -> None:
        self.event, self.epoch = event, epoch

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if trainer.current_epoch == self.epoch:
            self.event.set()


@pytest.mark.slow
def test_resume_from_a_checkpoint_saved_with_a_run_in_flight(tmp_path, monkeypatch):
    from gradcam_callback import runs

    saved, analyse = threading.Event(), runs.analyse_run

    def gated(cb, ex, score_fn):  # the worker's run of epoch 1 waits for the checkpoint
        if ex.epoch == 1 and threading.current_thread() is not threading.main_thread():
            assert saved.wait(60)
        return analyse(cb, ex, score_fn)

    monkeypatch.setattr(runs, "analyse_run", gated)

    def fit(max_epochs: int, root, ckpt_path=None) -> GradCAMCallback:
        cb = GradCAMCallback(num_probes=8, verbose=False, log_images=False)
        ckpt = ModelCheckpoint(dirpath=root / "ckpt", save_top_k=-1)  # a save after each run
        kw = trainer_kwargs(root, logger=False, enable_checkpointing=True, max_epochs=max_epochs)
        kw["callbacks"] = [cb, ckpt, _SavedEvent(saved, 1)]
        pl.seed_everything(0)
        model = TinyModule()
        model.net[3] = nn.Identity()  # no dropout: training resumes bit for bit
        pl.Trainer(**kw).fit(model, *_ordered_loaders(), ckpt_path=ckpt_path)
        assert cb._sync_why is None  # the default checkpoint schedule keeps the worker
        return cb

    whole = fit(3, tmp_path / "whole")
    saved.clear()
    fit(2, tmp_path / "cut")
    (path,) = (tmp_path / "cut" / "ckpt").glob("epoch=1-*.ckpt")
    state = torch.load(path, weights_only=True)
    (held,) = [v for k, v in state["callbacks"].items() if "GradCAMCallback" in k]
    assert held["in_flight"]["epoch"] == 1  # saved while the run of epoch 1 was in flight
    assert [r["stage"] for r in held["history"]] == ["baseline", "fit"]
    saved.set()
    resumed = fit(3, tmp_path / "resumed", ckpt_path=str(path))
    assert [(r["stage"], r["epoch"]) for r in resumed.history] == [
        (r["stage"], r["epoch"]) for r in whole.history
    ]
    assert [(r["stage"], r["epoch"]) for r in whole.history] == [
        ("baseline", 0),
        ("fit", 0),
        ("fit", 1),
        ("fit", 2),
    ]
    for i, (a, b) in enumerate(zip(whole.history, resumed.history)):
        assert a["flags"] == b["flags"] and a["global_step"] == b["global_step"]
        assert _same(a["metrics"], b["metrics"]), i
    assert [f.to_dict() for f in resumed.flags] == [f.to_dict() for f in whole.flags]
    ref_a, ref_b = whole.monitor.state_dict(), resumed.monitor.state_dict()
    assert torch.equal(ref_a["baseline_maps"], ref_b["baseline_maps"])
    assert torch.equal(ref_a["previous_maps"], ref_b["previous_maps"])
    assert ref_a["causal"] == ref_b["causal"] and ref_a["active"] == ref_b["active"]
