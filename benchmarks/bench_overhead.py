"""Overhead of ``GradCAMCallback()`` (defaults) on a whole Lightning fit.

Two arms, the same fit with the same seed, data and trainer settings: ``off`` (no Grad-CAM
callback) and ``on`` (``GradCAMCallback()`` at its defaults: 16 probes, a baseline run at fit
start, one run per validation, confirmation forwards, overlays, filmstrip and GIF at fit end).
The arms alternate (``off, on``, then ``on, off``, ...) after one untimed warm-up fit of each;
the tables show medians.

Fit time: wall clock from the first callback ``setup`` hook to the last ``teardown`` hook,
measured by a tiny clock callback present in both arms (so data generation and ``Trainer``
construction, identical in both arms, are left out). The overhead is reported three ways:
``median(on) / median(off) - 1``, the median of the paired per-repetition overheads, and the
time spent inside the callback's own hooks (each hook wrapped with a timer) divided by the
``off`` fit: the last is the least noisy on a loaded machine.

Workloads:

* ``smallcnn`` (default): the demo's fit, :func:`gradcam_callback.demos.train_world`
  (planted-shortcut world, ``SmallCNN``, 64x64, its default epochs and sizes), CPU.
* ``resnet18``: a torchvision ResNet-18 (random init) trained on the same world at
  ``--image-size`` (default 128) for ``--epochs`` (default 2): the GPU run (``--device cuda``).

Usage::

    .venv/bin/python benchmarks/bench_overhead.py                      # demo fit, CPU (~4 min)
    .venv/bin/python benchmarks/bench_overhead.py --quick              # smoke run (< 60 s)
    .venv/bin/python benchmarks/bench_overhead.py --model resnet18 --device cuda
    .venv/bin/python benchmarks/bench_overhead.py --threads 1 --no-checkpoint --logger none

The defaults are the set-up users run: torch's default threads (all cores), default OpenMP
settings, Lightning's default checkpointing and a TensorBoard logger in both arms; the other
rows (``--threads 1``, ``OMP_WAIT_POLICY=PASSIVE``, ``--no-checkpoint``) go beside them.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import functools
import io
import json
import os
import platform
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

TARGETS = {"cpu": 5.0, "cuda": 1.0}  # maximum overhead, % of the fit


# ------------------------------------------------------------------------------ environment
def machine_info(device: str) -> dict[str, str]:
    """CPU model, cores, torch threads, versions and (for CUDA) the GPU name."""
    from importlib.metadata import version

    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": version("pytorch-lightning"),
    }
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import loadavg, oversubscription_note  # noqa: E402  (shared helpers)


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table (first column left-aligned, the rest right-aligned)."""
    align = ["---" if i == 0 else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ clocks
class FitClock(pl.Callback):
    """Wall time from the first ``setup`` hook to the last ``teardown`` hook of a fit.

    Put it first in the callback list: Lightning calls ``setup`` in list order, so the clock
    starts before any other callback's set-up; it stops in ``teardown``, after every
    ``on_fit_end``.
    """

    def __init__(self) -> None:
        self.start = self.stop = 0.0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.start = time.perf_counter()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.stop = time.perf_counter()

    @property
    def seconds(self) -> float:
        """The measured fit time."""
        return self.stop - self.start


#: Pieces of the callback's work timed separately: (label, module path, attribute path).
#: Indented labels (shown with a ``--`` per level) are part of the line above them.
COMPONENTS: tuple[tuple[str, str, str], ...] = (
    ("engine: GradCAM.explain", "gradcam_callback.engine", "GradCAM.explain"),
    ("monitor: ShortcutMonitor.analyze", "gradcam_callback.alarms", "ShortcutMonitor.analyze"),
    ("  causal check: metrics.erasure_effect_from_logits", "gradcam_callback.metrics",
     "erasure_effect_from_logits"),
    ("    inpainting: metrics.erase", "gradcam_callback.metrics", "erase"),
    ("media (worker thread): Reporter._write_run", "gradcam_callback.reporting",
     "Reporter._write_run"),
    ("  PNG encoding: render.write_png", "gradcam_callback.render", "write_png"),
    ("scalars: LightningModule.log", "pytorch_lightning", "LightningModule.log"),
    ("fit end: Reporter.write_filmstrip", "gradcam_callback.reporting",
     "Reporter.write_filmstrip"),
    ("  GIF: render.write_gif", "gradcam_callback.reporting", "write_gif"),
)  # fmt: skip


class Instrument:
    """Timers around the callback's hooks and around :data:`COMPONENTS` (only counted while a
    callback hook runs, so the training's own ``self.log`` calls are not charged).

    On CUDA each timed region synchronises before stopping its timer, so queued kernels are
    charged to the region that launched them.
    """

    def __init__(self, device: str) -> None:
        self.device = device
        self.hooks: dict[str, float] = {}
        self.parts: dict[str, float] = {}
        self.depth = 0
        self._undo: list[tuple[Any, str, Any]] = []

    def _timer(self, fn: Callable[..., Any], key: str, into: dict[str, float], hook: bool) -> Any:
        inst, main = self, threading.main_thread()

        @functools.wraps(fn)
        def timed(*args: Any, **kw: Any) -> Any:
            if not hook and (inst.depth == 0 or threading.current_thread() is not main):
                return fn(*args, **kw)  # outside a hook, or on a worker thread
            inst.depth += hook
            t0 = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                if inst.device == "cuda":
                    torch.cuda.synchronize()
                into[key] = into.get(key, 0.0) + time.perf_counter() - t0
                inst.depth -= hook

        return timed

    def wrap_hooks(self, callback: pl.Callback) -> None:
        """Time every Lightning hook the callback's class overrides (instance attributes)."""
        base = pl.Callback
        for name in dir(base):
            if not (name.startswith("on_") or name in ("setup", "teardown")):
                continue
            if getattr(type(callback), name, None) is getattr(base, name):
                continue
            setattr(callback, name, self._timer(getattr(callback, name), name, self.hooks, True))

    def __enter__(self) -> Instrument:
        import importlib

        for label, module, attr in COMPONENTS:
            owner: Any = importlib.import_module(module)
            *path, leaf = attr.split(".")
            try:
                for part in path:
                    owner = getattr(owner, part)
                original = owner.__dict__[leaf] if isinstance(owner, type) else getattr(owner, leaf)
            except (AttributeError, KeyError):
                continue  # renamed or moved: that line is left out of the breakdown
            setattr(owner, leaf, self._timer(original, label, self.parts, False))
            self._undo.append((owner, leaf, original))
        return self

    def __exit__(self, *exc: object) -> None:
        for owner, leaf, original in reversed(self._undo):
            setattr(owner, leaf, original)
        self._undo.clear()


# ------------------------------------------------------------------------------ one fit
def fit_once(args: argparse.Namespace, arm: str, root: Path) -> dict[str, Any]:
    """One fit of the workload with (``arm="on"``) or without (``"off"``) the callback."""
    clock = FitClock()
    callbacks: list[pl.Callback] = [clock]
    inst = Instrument(args.device)
    cam: GradCAMCallback | None = None
    if arm == "on":
        cam = GradCAMCallback(**args.cb_kwargs)
        inst.wrap_hooks(cam)
        callbacks.append(cam)
    run_dir = root / f"{arm}-{time.monotonic_ns()}"
    logger: Any = False
    if args.logger == "tensorboard":
        from pytorch_lightning.loggers import TensorBoardLogger

        logger = TensorBoardLogger(str(run_dir), name="tb")
    trainer_kwargs: dict[str, Any] = {
        "default_root_dir": str(run_dir),
        "logger": logger,
        "accelerator": "gpu" if args.device == "cuda" else "cpu",
        "enable_checkpointing": args.checkpoint,  # Lightning's default ModelCheckpoint
    }
    if args.device == "cuda":
        trainer_kwargs["deterministic"] = False
    dm_kwargs = dict(args.dm_kwargs)
    if args.model == "smallcnn":
        fit = functools.partial(
            syn.train_world,
            args.artifact,
            shortcut=True,
            seed=args.seed,
            epochs=args.epochs,
            callbacks=callbacks,
            trainer_kwargs=trainer_kwargs,
            **dm_kwargs,
        )
    else:
        fit = functools.partial(_fit_resnet, args, callbacks, trainer_kwargs, dm_kwargs)
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), inst:
        warnings.simplefilter("ignore")
        fit()
    out: dict[str, Any] = {"arm": arm, "fit_s": clock.seconds, "hook_s": sum(inst.hooks.values())}
    out["hooks"], out["parts"] = dict(inst.hooks), dict(inst.parts)
    if cam is not None:
        out["runs"] = len(cam.history)
        out["flags"] = sorted({f.kind for f in cam.flags})
    return out


def _fit_resnet(
    args: argparse.Namespace,
    callbacks: list[pl.Callback],
    trainer_kwargs: dict[str, Any],
    dm_kwargs: dict[str, Any],
) -> None:
    """Train a random-init torchvision ResNet on the planted-shortcut world."""
    import torchvision

    dm = syn.ShortcutDataModule(args.artifact, correlation=1.0, seed=args.seed, **dm_kwargs)
    dm.setup("fit")
    torch.manual_seed(args.seed)
    net = getattr(torchvision.models, args.model)(weights=None, num_classes=2)
    model = syn.ShortcutClassifier(num_classes=2, model=net, lr=1e-3)
    kwargs: dict[str, Any] = {
        "devices": 1,
        "max_epochs": args.epochs or 2,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "callbacks": callbacks,
        **trainer_kwargs,
    }
    pl.Trainer(**kwargs).fit(model, datamodule=dm)


# ------------------------------------------------------------------------------ main
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--model", default="smallcnn", choices=("smallcnn", "resnet18", "resnet50"))
    p.add_argument("--artifact", default="watermark", choices=syn.ARTIFACTS)
    p.add_argument("--epochs", type=int, default=None, help="default: the workload's own")
    p.add_argument("--image-size", type=int, default=None, help="default: 64 (smallcnn), 128")
    p.add_argument("--n-train", type=int, default=None)
    p.add_argument("--n-val", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--reps", type=int, default=5, help="timed fits per arm")
    p.add_argument("--warmup", type=int, default=1, help="untimed fits per arm")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all)")
    p.add_argument(
        "--logger",
        default="tensorboard",
        choices=("none", "tensorboard"),
        help="both arms log to TensorBoard (default), or to no logger",
    )
    p.add_argument(
        "--checkpoint",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Lightning's default checkpointing in both arms (default: on, as a default Trainer)",
    )
    p.add_argument(
        "--callback-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="non-default GradCAMCallback argument (repeatable), e.g. filmstrip=False",
    )
    p.add_argument("--json", type=Path, default=None, help="also write raw results here")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny world (< 60 s)")
    args = p.parse_args(argv)
    if args.quick:
        args.reps = min(args.reps, 1)
        args.warmup = 0
        args.threads = args.threads or 1  # a smoke run: robust on a loaded machine
        args.epochs = args.epochs or 1
        args.n_train = args.n_train or 128
        args.n_val = args.n_val or 64
        args.batch_size = args.batch_size or 64
        args.image_size = args.image_size or 32
    if args.model != "smallcnn" and args.image_size is None:
        args.image_size = 128
    dm_kwargs = {
        "image_size": args.image_size,
        "n_train": args.n_train,
        "n_val": args.n_val,
        "batch_size": args.batch_size,
    }
    args.dm_kwargs = {k: v for k, v in dm_kwargs.items() if v is not None}
    args.cb_kwargs = {}
    for item in args.callback_arg:
        key, sep, value = item.partition("=")
        if not sep:
            p.error(f"--callback-arg expects KEY=VALUE, got {item!r}")
        try:
            args.cb_kwargs[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            args.cb_kwargs[key.strip()] = value.strip()
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print markdown tables, return the raw results."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device available")
    info = machine_info(args.device)
    t_start = time.perf_counter()
    workload = f"{args.model} {args.dm_kwargs or '(train_world defaults)'} epochs={args.epochs}"
    cb = ", ".join(f"{k}={v!r}" for k, v in args.cb_kwargs.items())
    print(f"# bench_overhead: device={args.device} workload={workload}")
    print(f"callback: GradCAMCallback({cb})")
    omp = os.environ.get("OMP_WAIT_POLICY", "default")
    print(f"set-up: torch threads={torch.get_num_threads()}, OMP_WAIT_POLICY={omp}, "
          f"checkpointing={'on' if args.checkpoint else 'off'}, logger={args.logger}")  # fmt: skip
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    print(f"loadavg start: {loadavg()}")
    if note := oversubscription_note(torch.get_num_threads()):
        print(note)
    fits: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory(prefix="gcam-bench-") as tmp:
        root = Path(tmp)
        for _ in range(args.warmup):
            for arm in ("off", "on"):
                fit_once(args, arm, root)
        for r in range(args.reps):
            for arm in ("off", "on") if r % 2 == 0 else ("on", "off"):
                res = fit_once(args, arm, root)
                fits[arm].append(res)
                print(f"  rep {r} {arm}: {res['fit_s']:.2f} s, load {loadavg()}", file=sys.stderr)
    results = {"args": {k: str(v) for k, v in vars(args).items()}, "info": info, "fits": fits}
    results["loadavg_end"] = loadavg()
    results["seconds"] = time.perf_counter() - t_start
    print(report(results, args.device))
    print(f"loadavg end: {results['loadavg_end']}  (wall {results['seconds']:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return results


def report(results: dict[str, Any], device: str) -> str:
    """The fit-time table, the overhead table and the target verdict."""
    off = [f["fit_s"] for f in results["fits"]["off"]]
    on = [f["fit_s"] for f in results["fits"]["on"]]
    hooks = [f["hook_s"] for f in results["fits"]["on"]]
    med_off, med_on, med_hook = (statistics.median(v) for v in (off, on, hooks))
    paired = statistics.median((b / a - 1) * 100 for a, b in zip(off, on))
    ratio = (med_on / med_off - 1) * 100
    hook_pct = med_hook / med_off * 100
    last = results["fits"]["on"][-1]
    out = ["", "## Fit time, s", ""]
    rows = [
        ["off (no callback)", len(off), f"{med_off:.2f}", f"{min(off):.2f}", f"{max(off):.2f}"],
        ["on (GradCAMCallback())", len(on), f"{med_on:.2f}", f"{min(on):.2f}", f"{max(on):.2f}"],
        ["on: inside the callback's hooks", len(hooks), f"{med_hook:.2f}", f"{min(hooks):.2f}",
         f"{max(hooks):.2f}"],
    ]  # fmt: skip
    out.append(md_table(["arm", "reps", "median", "min", "max"], rows))
    out += ["", "## Overhead, % of the fit without the callback", ""]
    target = TARGETS[device]
    rows = [
        ["median(on) / median(off) - 1", f"{ratio:.1f}"],
        ["median of paired (on / off - 1)", f"{paired:.1f}"],
        ["callback hook time / median(off)", f"{hook_pct:.1f}"],
    ]
    out.append(md_table(["measure", "overhead %"], rows))
    out += ["", "## Where the callback's time goes (median per fit)", ""]
    rows = []
    fits_on = results["fits"]["on"]
    for name in last["hooks"]:
        v = statistics.median(f["hooks"].get(name, 0.0) for f in fits_on)
        rows.append([f"hook {name}", f"{v:.3f}", f"{v / med_off * 100:.1f}"])
    for label, _, _ in COMPONENTS:
        if any(label in f["parts"] for f in fits_on):
            v = statistics.median(f["parts"].get(label, 0.0) for f in fits_on)
            level = (len(label) - len(label.lstrip())) // 2
            shown = "-- " * level + label.strip()
            rows.append([shown, f"{v:.3f}", f"{v / med_off * 100:.1f}"])
    out.append(md_table(["part", "seconds", "% of off fit"], rows))
    out += ["", f"callback runs per fit: {last.get('runs')}, flags: {last.get('flags')}"]
    out += ["", "## Targets", ""]
    rows = [
        [f"overhead <= {target}% (paired)", f"{paired:.1f}", _verdict(paired <= target)],
        [f"overhead <= {target}% (hook time)", f"{hook_pct:.1f}", _verdict(hook_pct <= target)],
    ]
    out.append(md_table(["target", "value %", "verdict"], rows))
    return "\n".join(out)


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


if __name__ == "__main__":
    main()
