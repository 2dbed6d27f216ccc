"""Per-run cost of ``GradCAMCallback``, in engine calls and milliseconds, against the probe count.

A *run* is what the callback does once per validation (and once at fit start, the baseline):
Grad-CAM on the probes, the monitor's analysis (with its causal checks where a rule needs them),
scalars, overlays and tables. Its cost is stated in *engine calls*: the time of the run on the
training thread divided by the time of one Grad-CAM pass of the engine over the same probes. The
floor is 1 (a run must at least compute the maps); issue 12's target is at most 2 at defaults.

Measured only through surfaces that survive refactoring of the callback's internals:

* the callback's Lightning hooks (``on_train_start`` for the baseline, ``on_validation_epoch_end``
  for the runs; ``setup`` and ``on_fit_end`` per fit), timed by the wrappers of
  ``bench_overhead.Instrument.wrap_hooks``;
* ``gradcam_callback.engine.GradCAM.explain`` (its calls counted and timed while a callback hook
  runs: the *engine time inside the run*) and ``ShortcutMonitor.analyze`` (with its part
  ``metrics.erasure_effect``, the causal checks), plus whatever else
  ``bench_overhead.COMPONENTS`` still finds (media, scalars), shown as a breakdown;
* an *independent engine call*: right after each run, on the same model state, a fresh
  ``GradCAM(model, <the callback's layers>).explain(probes in chunks of the callback's
  batch_size, labels as targets, upsample=False, normalize=False)``, timed outside the hook
  (interleaved with the runs, so both see the same machine load; ``--independent-reps``
  back-to-back passes, the fastest kept).

Two ratios per run, paired: ``training thread / engine inside the hook`` and ``training thread /
independent engine call``; the tables show medians over the runs of a fit. "Training thread" is
the run's hook plus what the callback does for that run later on the training thread: with the
analysis on the worker thread (``async_analysis``, the default), collecting the finished run at
the next batch or at fit end, and any wait of a checkpoint's ``state_dict`` for the run in flight
(``--checkpoint``, the default: a ``ModelCheckpoint`` saving at every epoch end, as a default
``Trainer`` does; ``--no-checkpoint`` for the row without).
``rest = training thread - engine - analyze`` is what the run spends on media and logging (and
bookkeeping). ``runs.analyse_run`` is timed on whichever thread it ran ("analysis").

Workloads (``--workloads``, ``model:size`` items): ``smallcnn:64`` (the demo's ``SmallCNN``) and
``resnet18:224`` (torchvision, ``weights=None``) by default, also ``resnet18:64`` or
``smallcnn:224``. Each is fitted with ``GradCAMCallback(num_probes=P)`` for every ``--probes``
item (``default`` = ``num_probes=None``: per-class probes) on the planted-shortcut world
(``ShortcutDataModule``, correlation 1.0), a short real ``Trainer`` fit (``--epochs``,
``--train-batches`` train batches, one validation batch) logging to TensorBoard in a temporary
directory, so media are really encoded and written.

Worst case (``--worst-case``): the demo's model at its size and default probes, on a world whose
model took the shortcut (correlation 1.0, trained: causal checks run) against the clean world
(``correlation=None``, no shortcut to confirm).

The defaults are the set-up users run: torch's default threads, default OpenMP settings, a
default ``ModelCheckpoint`` and a TensorBoard logger. ``--threads 1``, ``OMP_WAIT_POLICY=PASSIVE``
and ``--no-checkpoint`` give the rows beside them.

Usage::

    .venv/bin/python benchmarks/bench_run_cost.py                      # the default set-up
    .venv/bin/python benchmarks/bench_run_cost.py --threads 1 --no-checkpoint
    .venv/bin/python benchmarks/bench_run_cost.py --quick              # smoke run (< 60 s)
    .venv/bin/python benchmarks/bench_run_cost.py --workloads resnet18:224 --probes 16,64
    .venv/bin/python benchmarks/bench_run_cost.py --device cuda --probes 16,64,256,default
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from gradcam_callback import GradCAMCallback
from gradcam_callback import demos as syn
from gradcam_callback.engine import GradCAM

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_overhead import (
    COMPONENTS,
    Instrument,
    loadavg,
    machine_info,
    md_table,
    oversubscription_note,
)

TARGET_CALLS = 2.0  # issue 12: a run at defaults costs at most this many engine calls
ENGINE = "engine: GradCAM.explain"
ANALYZE = "monitor: ShortcutMonitor.analyze"
#: the causal checks: ``erasure_effect`` where the monitor calls it, else its inpainting ``erase``
CAUSAL = ("  causal check: metrics.erasure_effect", "    inpainting: metrics.erase")
RUN_HOOKS = {"on_train_start": "baseline", "on_validation_epoch_end": "validation"}
FIT_HOOKS = ("setup", "on_fit_end")


# ------------------------------------------------------------------------------ per-run timers
def _stopwatch(fn: Callable[..., Any], done: Callable[[float], None]) -> Callable[..., Any]:
    """``fn`` that hands its wall time in seconds to ``done`` after each call."""

    @functools.wraps(fn)
    def timed(*args: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kw)
        finally:
            done(time.perf_counter() - t0)

    return timed


class RunRecorder:
    """Per-hook-call deltas of an :class:`Instrument` (one record per callback run).

    Wraps, on top of ``Instrument.wrap_hooks``, the callback's hooks: each call of a run hook
    that made at least one engine call inside it is a run, recorded with its hook time, engine
    calls and time, and the time of every :data:`COMPONENTS` part during it. What the callback
    does for that run on the training thread after the hook returns (collecting a run analysed
    on the worker thread, at the next training batches or at fit end) is added to the run as
    ``collect_s``; every other hook's time goes to ``fit_hooks``. It also counts the
    ``GradCAM.explain`` calls made while a callback hook runs (install with :meth:`count`), and
    times each ``runs.analyse_run`` (the analysis, on whichever thread it runs).
    """

    def __init__(self, inst: Instrument) -> None:
        self.inst = inst
        self.calls = 0
        self.runs: list[dict[str, Any]] = []
        self.fit_hooks: dict[str, float] = {}
        self.analyses: list[tuple[str, float]] = []  # (thread, seconds) per analyse_run
        self._collect_s = 0.0  # _collect time inside the current fit hook
        self._in_hook = 0  # inside one of the callback's hooks

    def count(self) -> Callable[[], None]:
        """Count ``GradCAM.explain`` calls made inside a callback hook and time every
        ``runs.analyse_run``; returns the undo."""
        from gradcam_callback import runs as cb_runs

        original = GradCAM.__dict__["explain"]
        analyse = cb_runs.analyse_run
        rec = self

        @functools.wraps(original)
        def counted(*args: Any, **kw: Any) -> Any:
            if rec.inst.depth > 0 and threading.current_thread() is threading.main_thread():
                rec.calls += 1
            return original(*args, **kw)

        def done(dt: float) -> None:
            main = threading.current_thread() is threading.main_thread()
            rec.analyses.append(("main" if main else "worker", dt))

        GradCAM.explain = counted  # type: ignore[method-assign]
        cb_runs.analyse_run = _stopwatch(analyse, done)

        def undo() -> None:
            GradCAM.explain = original  # type: ignore[method-assign]
            cb_runs.analyse_run = analyse

        return undo

    def wrap(self, callback: pl.Callback) -> None:
        """Record each call of the callback's hooks (after ``Instrument.wrap_hooks``)."""
        for name, timed in list(callback.__dict__.items()):
            if callable(timed) and callable(getattr(pl.Callback, name, None)):  # a hook
                setattr(callback, name, self._record(timed, name))
        collect = getattr(callback, "_collect", None)
        if collect is not None:
            callback._collect = self._timed_collect(collect)  # type: ignore[attr-defined]

    def _timed_collect(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        rec = self

        def done(dt: float) -> None:
            if rec._in_hook:
                rec._collect_s += dt
            elif rec.runs:  # from outside its hooks: state_dict, for a checkpoint
                rec.runs[-1]["collect_s"] += dt

        return _stopwatch(fn, done)

    def _record(self, fn: Callable[..., Any], name: str) -> Callable[..., Any]:
        rec, inst = self, self.inst

        @functools.wraps(fn)
        def recorded(trainer: pl.Trainer, *args: Any, **kw: Any) -> Any:
            hooks0, parts0, calls0 = dict(inst.hooks), dict(inst.parts), rec.calls
            rec._collect_s = 0.0
            rec._in_hook += 1
            try:
                return fn(trainer, *args, **kw)
            finally:
                rec._in_hook -= 1
                hook_s = inst.hooks.get(name, 0.0) - hooks0.get(name, 0.0)
                if name in RUN_HOOKS and rec.calls > calls0:
                    parts = {k: v - parts0.get(k, 0.0) for k, v in inst.parts.items()}
                    rec.runs.append(
                        {
                            "stage": RUN_HOOKS[name],
                            "epoch": int(trainer.current_epoch),
                            "hook_s": hook_s,
                            "collect_s": 0.0,
                            "engine_calls": rec.calls - calls0,
                            "engine_s": parts.get(ENGINE, 0.0),
                            "analyze_s": parts.get(ANALYZE, 0.0),
                            "causal_s": max(parts.get(c, 0.0) for c in CAUSAL),
                            "parts": {k: v for k, v in parts.items() if v > 0},
                        }
                    )
                elif rec.runs and name not in FIT_HOOKS and name not in RUN_HOOKS:
                    rec.runs[-1]["collect_s"] += hook_s  # e.g. on_train_batch_end
                else:  # set-up, fit end, teardown: the last run's collection goes to the run
                    if rec.runs and name != "setup":
                        rec.runs[-1]["collect_s"] += rec._collect_s
                        hook_s -= rec._collect_s
                    rec.fit_hooks[name] = rec.fit_hooks.get(name, 0.0) + hook_s

        return recorded

    def finish(self) -> None:
        """After the fit: each run's analysis time, and where it ran."""
        for run, (where, seconds) in zip(self.runs, self.analyses):
            run["analysis_s"], run["analysis_thread"] = seconds, where


class IndependentEngine(pl.Callback):
    """Right after each run of ``cam`` (this callback comes after it in the list), time one
    Grad-CAM pass of a fresh engine over the same probes, outside the callback's hooks
    (``reps`` back-to-back passes, the fastest kept: the first one after a run can find the
    caches cold)."""

    def __init__(
        self, cam: GradCAMCallback, recorder: RunRecorder, device: str, reps: int = 2
    ) -> None:
        self.cam, self.recorder, self.device, self.reps = cam, recorder, device, reps
        self.engine: GradCAM | None = None
        self.seen = 0

    def _measure(self, pl_module: pl.LightningModule) -> None:
        runs = self.recorder.runs
        if len(runs) == self.seen or self.cam.probes is None:
            return  # no new run of the callback in this hook
        self.seen = len(runs)
        probes = self.cam.probes
        if self.engine is None:
            layers = [info.name for info in self.cam.layer_info]
            self.engine = GradCAM(pl_module, layers or None)
            warm = True  # the first call measures the layers: untimed
        else:
            warm = False
        dev = pl_module.device
        images = probes.images.to(dev)
        images = images.float() if not images.is_floating_point() else images
        labels = probes.labels.to(dev) if probes.labels is not None else None
        bs = self.cam.batch_size
        if warm:
            self.engine.explain(images[:bs], None if labels is None else labels[:bs])
        times = []
        for _ in range(self.reps):
            self._sync()
            t0 = time.perf_counter()
            for start in range(0, images.shape[0], bs):
                targets = labels[start : start + bs] if labels is not None else None
                self.engine.explain(
                    images[start : start + bs], targets, upsample=False, normalize=False
                )
            self._sync()
            times.append(time.perf_counter() - t0)
        runs[-1]["independent_s"] = min(times)
        runs[-1]["independent_all_s"] = times

    def _sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._measure(pl_module)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._measure(pl_module)


# ------------------------------------------------------------------------------ one fit
def build_model(name: str, num_classes: int, seed: int) -> pl.LightningModule:
    """The demo's ``ShortcutClassifier`` around ``SmallCNN`` or a random-init ResNet-18."""
    if name == "smallcnn":
        return syn.ShortcutClassifier(num_classes=num_classes, seed=seed)
    import torchvision

    torch.manual_seed(seed)
    net = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
    return syn.ShortcutClassifier(num_classes=num_classes, model=net, lr=1e-3)


def fit_once(
    args: argparse.Namespace,
    model_name: str,
    size: int,
    probes: int | None,
    root: Path,
    correlation: float | None = 1.0,
) -> dict[str, Any]:
    """One short fit with ``GradCAMCallback(num_probes=probes)``; returns its per-run records."""
    from pytorch_lightning.loggers import TensorBoardLogger

    n_val = max(probes or 0, 2 * args.batch_size, 64)
    dm = syn.ShortcutDataModule(
        args.artifact,
        correlation=correlation,
        image_size=size,
        n_train=args.batch_size * args.train_batches,
        n_val=n_val,
        n_test=8,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    model = build_model(model_name, 2, args.seed)
    cam = GradCAMCallback(num_probes=probes, async_analysis=args.async_analysis)
    inst = Instrument(args.device)
    inst.wrap_hooks(cam)
    recorder = RunRecorder(inst)
    recorder.wrap(cam)
    run_dir = root / f"{model_name}-{size}-{probes}-{time.monotonic_ns()}"
    independent = IndependentEngine(cam, recorder, args.device, args.independent_reps)
    extra: list[pl.Callback] = []
    if args.checkpoint:  # Lightning's default: a checkpoint at every epoch end
        from pytorch_lightning.callbacks import ModelCheckpoint

        extra.append(ModelCheckpoint(dirpath=str(run_dir / "ckpt")))
    trainer = pl.Trainer(
        accelerator="gpu" if args.device == "cuda" else "cpu",
        devices=1,
        max_epochs=args.epochs,
        limit_train_batches=args.train_batches,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=TensorBoardLogger(str(run_dir), name="tb"),
        default_root_dir=str(run_dir),
        enable_checkpointing=args.checkpoint,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[cam, independent, *extra],
    )
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), inst:
        warnings.simplefilter("ignore")
        undo = recorder.count()
        try:
            trainer.fit(model, datamodule=dm)
        finally:
            undo()
    recorder.finish()
    n_probes = len(cam.probes) if cam.probes is not None else 0
    media = sum(1 for p in run_dir.rglob("*") if p.is_file())
    return {
        "model": model_name,
        "size": size,
        "num_probes": "default" if probes is None else probes,
        "probes": n_probes,
        "batch_size": cam.batch_size,
        "layers": [i.name for i in cam.layer_info],
        "correlation": correlation,
        "runs": recorder.runs,
        "fit_hooks": recorder.fit_hooks,
        "flags": sorted({f.kind for f in cam.flags}),
        "async": cam._sync_why is None,
        "checkpoint": bool(args.checkpoint),
        "logged_files": media,
    }


# ------------------------------------------------------------------------------ summaries
def _med(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarize(fit: dict[str, Any]) -> dict[str, float]:
    """Medians over the fit's runs (baseline included) of times (ms) and the paired ratios.

    ``hook_ms`` is the run's time on the training thread: its run hook plus what the callback
    did for it later on that thread (``collect_s``: publishing a run analysed on the worker).
    """
    runs = [{**r, "train_s": r["hook_s"] + r.get("collect_s", 0.0)} for r in fit["runs"]]
    ms = {
        k: _med([r[k] * 1e3 for r in runs])
        for k in ("train_s", "engine_s", "analyze_s", "causal_s", "collect_s")
    }
    rest = _med([(r["train_s"] - r["engine_s"] - r["analyze_s"]) * 1e3 for r in runs])
    indep = [r for r in runs if r.get("independent_s")]
    return {
        "runs": len(runs),
        "calls": _med([r["engine_calls"] for r in runs]),
        "hook_ms": ms["train_s"],
        "collect_ms": ms["collect_s"],
        "engine_ms": ms["engine_s"],
        "analyze_ms": ms["analyze_s"],
        "analysis_ms": _med([r["analysis_s"] * 1e3 for r in runs if "analysis_s" in r]),
        "causal_ms": ms["causal_s"],
        "rest_ms": rest,
        "independent_ms": _med([r["independent_s"] * 1e3 for r in indep]),
        "cost_inside": _med([r["train_s"] / r["engine_s"] for r in runs if r["engine_s"] > 0]),
        "cost_independent": _med([r["train_s"] / r["independent_s"] for r in indep]),
    }


def _validation(fit: dict[str, Any]) -> dict[str, Any]:
    """The fit with its validation runs only (the baseline has no causal checks)."""
    return {**fit, "runs": [r for r in fit["runs"] if r["stage"] == "validation"]}


def _f(x: float, digits: int = 1) -> str:
    return "n/a" if x != x else f"{x:.{digits}f}"


def report(results: dict[str, Any]) -> str:
    """The scaling table, the per-stage table, the breakdown, the worst case and the target."""
    fits = results["fits"]
    out = ["", "## Per-run cost (median over the validation runs of a fit)", ""]
    header = ["workload", "probes", "analysis on", "runs", "engine calls/run",
              "training-thread ms", "of it collect ms", "engine ms", "analyze ms (in hook)",
              "rest ms", "analysis ms (any thread)", "independent engine ms", "cost (inside)",
              "cost (independent)"]  # fmt: skip
    rows = []
    for fit in fits:
        s = summarize(_validation(fit))
        label = f"{fit['model']} {fit['size']}px"
        probes = f"{fit['probes']}" + (" (default)" if fit["num_probes"] == "default" else "")
        where = "worker" if fit.get("async") else "training thread"
        label += " + checkpoints" if fit.get("checkpoint") else ""
        rows.append([label, probes, where, s["runs"], _f(s["calls"], 0), _f(s["hook_ms"]),
                     _f(s["collect_ms"]), _f(s["engine_ms"]), _f(s["analyze_ms"]),
                     _f(s["rest_ms"]), _f(s["analysis_ms"]), _f(s["independent_ms"]),
                     _f(s["cost_inside"], 2), _f(s["cost_independent"], 2)])  # fmt: skip
    out.append(md_table(header, rows))
    out += ["", "cost = training-thread time of a run / engine time of the same run (paired, "
            "median over the validation runs; the baseline run is in the next table). The "
            "training-thread time is the run's hook plus, with the analysis on the worker "
            "thread, the time spent later collecting it (collect). rest = training-thread - "
            "engine - analyze (media, logging, bookkeeping). The analysis column times "
            "runs.analyse_run wherever it ran (on the worker it overlaps training). The "
            "independent engine call runs while the worker may still be analysing the run "
            "(the two threads share the GIL and the cores): read the inside ratio."]  # fmt: skip

    out += ["", "## Cost by stage (median ms)", ""]
    rows = []
    for fit in fits:
        for stage in ("baseline", "validation"):
            runs = [r for r in fit["runs"] if r["stage"] == stage]
            if not runs:
                continue
            s = summarize({**fit, "runs": runs})
            rows.append([f"{fit['model']} {fit['size']}px", fit["probes"], stage, s["runs"],
                         _f(s["hook_ms"]), _f(s["engine_ms"]), _f(s["analyze_ms"]),
                         _f(s["causal_ms"]), _f(s["cost_inside"], 2),
                         _f(s["cost_independent"], 2)])  # fmt: skip
    header = ["workload", "probes", "stage", "runs", "hook ms", "engine ms", "analyze ms",
              "causal ms", "cost (inside)", "cost (independent)"]  # fmt: skip
    out.append(md_table(header, rows))

    out += ["", "## Where a run's time goes (median ms per validation run)", ""]
    seen = {lab for f in fits for r in f["runs"] for lab in r["parts"]}
    labels = [lab for lab, _, _ in COMPONENTS if lab in seen]
    header = ["workload", "probes", "hook", *[lab.strip() for lab in labels]]
    rows = []
    for fit in fits:
        runs = _validation(fit)["runs"]
        cells = [_f(_med([r["parts"].get(lab, 0.0) * 1e3 for r in runs])) for lab in labels]
        rows.append([f"{fit['model']} {fit['size']}px", fit["probes"],
                     _f(_med([r["hook_s"] * 1e3 for r in runs])), *cells])  # fmt: skip
    out.append(md_table(header, rows))
    out += ["", "Indented parts in bench_overhead.COMPONENTS are included in the line above them."]

    out += ["", "## Per-fit hooks (ms)", ""]
    rows = [[f"{f['model']} {f['size']}px", f["probes"],
             _f(f["fit_hooks"].get("setup", 0.0) * 1e3),
             _f(f["fit_hooks"].get("on_fit_end", 0.0) * 1e3),
             ", ".join(f["flags"]) or "-", f["logged_files"]] for f in fits]  # fmt: skip
    out.append(md_table(["workload", "probes", "setup", "on_fit_end", "flags", "files logged"],
                        rows))  # fmt: skip

    worst = results.get("worst_case") or []
    if worst:
        out += ["", "## Worst case: shortcut taken (causal checks) vs clean world", ""]
        rows = []
        for fit in worst:
            s = summarize(_validation(fit))
            world = "shortcut (correlation 1.0)" if fit["correlation"] else "clean (no shortcut)"
            rows.append([world, f"{fit['model']} {fit['size']}px", fit["probes"], s["runs"],
                         _f(s["hook_ms"]), _f(s["engine_ms"]), _f(s["analyze_ms"]),
                         _f(s["causal_ms"]), _f(s["cost_inside"], 2),
                         _f(s["cost_independent"], 2), ", ".join(fit["flags"]) or "-"])  # fmt: skip
        header = ["world", "workload", "probes", "runs", "hook ms", "engine ms", "analyze ms",
                  "causal ms", "cost (inside)", "cost (independent)", "flags"]  # fmt: skip
        out.append(md_table(header, rows))
        out += ["", "Validation runs only (the baseline never runs causal checks)."]
    out += [
        "",
        "causal = metrics.erasure_effect where the monitor calls it, else only its inpainting "
        "(metrics.erase); the confirmation forwards are then in analyze only.",
    ]

    out += ["", "## Targets", ""]
    rows = []
    for fit in fits:
        if fit["num_probes"] != "default":
            continue
        s = summarize(_validation(fit))
        for kind, key in (("inside", "cost_inside"), ("independent", "cost_independent")):
            value = s[key]
            verdict = "n/a" if value != value else ("met" if value <= TARGET_CALLS else "MISSED")
            rows.append([f"run <= {TARGET_CALLS:g} engine calls ({kind})",
                         f"{fit['model']} {fit['size']}px", _f(value, 2), verdict])  # fmt: skip
    out.append(md_table(["target", "config", "value", "verdict"], rows))
    return "\n".join(out)


# ------------------------------------------------------------------------------ main
def _probe_list(text: str) -> list[int | None]:
    out: list[int | None] = []
    for item in text.split(","):
        item = item.strip()
        if item == "default":
            out.append(None)
        elif item.isdigit() and int(item) > 0:
            out.append(int(item))
        else:
            raise argparse.ArgumentTypeError(f"--probes: {item!r} is not a count or 'default'")
    return out


def _workloads(text: str) -> list[tuple[str, int]]:
    out = []
    for item in text.split(","):
        name, _, size = item.strip().partition(":")
        if name not in ("smallcnn", "resnet18") or not size.isdigit():
            raise argparse.ArgumentTypeError(
                f"--workloads: {item!r}; expected MODEL:SIZE with MODEL smallcnn or resnet18"
            )
        out.append((name, int(size)))
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--workloads", type=_workloads, default=_workloads("smallcnn:64,resnet18:224"))
    p.add_argument("--probes", type=_probe_list, default=_probe_list("default,16,64,256"))
    p.add_argument("--artifact", default="watermark", choices=syn.ARTIFACTS)
    p.add_argument("--epochs", type=int, default=3, help="fit epochs (runs = 1 + epochs)")
    p.add_argument("--train-batches", type=int, default=4, help="train batches per epoch")
    p.add_argument("--batch-size", type=int, default=16, help="train batch size")
    p.add_argument(
        "--warmup", type=int, default=1, help="untimed fits of the first workload before timing"
    )
    p.add_argument("--independent-reps", type=int, default=2, help="passes per run (min kept)")
    p.add_argument("--worst-case", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument(
        "--async-analysis",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the callback's async_analysis (default: on, as at defaults)",
    )
    p.add_argument(
        "--checkpoint",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Lightning's default ModelCheckpoint, a save at every epoch end (default: on, as "
        "a default Trainer; a save that waits for a run in flight is charged to the run)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all)")
    p.add_argument("--json", type=Path, default=None, help="also write raw results here")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny world (< 60 s)")
    p.add_argument(
        "--report-only",
        type=Path,
        nargs="+",
        default=None,
        metavar="JSON",
        help="print the tables of earlier --json files (their fits together), measure nothing",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.workloads = [("smallcnn", 32)]
        args.probes = [None, 16]
        args.epochs = 2
        args.train_batches = 2
        args.threads = args.threads or 1
        args.warmup = 0
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print markdown tables, return the raw results."""
    args = parse_args(argv)
    if args.report_only:
        merged: dict[str, Any] = {"fits": [], "worst_case": []}
        for path in args.report_only:
            part = json.loads(path.read_text())
            merged["fits"] += part["fits"]
            merged["worst_case"] += part.get("worst_case") or []
        print(report(merged))
        return merged
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device available")
    info = machine_info(args.device)
    t_start = time.perf_counter()
    print(f"# bench_run_cost: device={args.device} epochs={args.epochs} "
          f"train_batches={args.train_batches} batch_size={args.batch_size}")  # fmt: skip
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    print(f"loadavg start: {loadavg()}")
    if note := oversubscription_note(torch.get_num_threads()):
        print(note)
    results: dict[str, Any] = {"info": info, "fits": [], "worst_case": []}
    results["args"] = {k: str(v) for k, v in vars(args).items()}
    with tempfile.TemporaryDirectory(prefix="gcam-runcost-") as tmp:
        root = Path(tmp)
        for _ in range(args.warmup):  # the first fits of a process run slower (allocator, caches)
            fit_once(args, *args.workloads[0], args.probes[0], root)
        for model_name, size in args.workloads:
            for probes in args.probes:
                fit = fit_once(args, model_name, size, probes, root)
                results["fits"].append(fit)
                s = summarize(fit)
                print(f"  {model_name} {size}px probes={fit['probes']}: hook {s['hook_ms']:.0f} "
                      f"ms, cost {s['cost_inside']:.2f} / {s['cost_independent']:.2f}, "
                      f"load {loadavg()}", file=sys.stderr)  # fmt: skip
        if args.worst_case:
            model_name, size = args.workloads[0]
            for correlation in (1.0, None):
                fit = fit_once(args, model_name, size, None, root, correlation=correlation)
                results["worst_case"].append(fit)
    results["loadavg_end"] = loadavg()
    results["seconds"] = time.perf_counter() - t_start
    print(report(results))
    print(f"\nloadavg end: {results['loadavg_end']}  (wall {results['seconds']:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
