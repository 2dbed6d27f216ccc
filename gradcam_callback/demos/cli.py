"""``make demo``: watch GradCAMCallback catch a planted shortcut, in a few minutes on a CPU.

A small CNN (:class:`~gradcam_callback.demos.models.SmallCNN`) learns to tell a disc from a
square in the planted-shortcut world (:mod:`gradcam_callback.demos.world`), where a watermark (or a tag,
border band, stamp or background texture) gives the label away. ``GradCAMCallback`` explains a
fixed probe set at every validation, logs the overlays and attention metrics to TensorBoard, and
raises an ``"artifact"`` flag once the model's attention sits on the watermark. ``--clean`` runs
the control: the same images with the artifact drawn independently of the label, where the model
has to learn the shapes and no artifact flag should fire.

Run::

    python -m gradcam_callback.demo                 # shortcut world (watermark), ~1-3 min on CPU
    python -m gradcam_callback.demo --clean         # the control run
    python -m gradcam_callback.demo --artifact tag --epochs 4
    python -m gradcam_callback.demo --fast          # CI size, seconds
    tensorboard --logdir demo_logs                  # then open http://localhost:6006/#images

It prints one line per new flag as it fires, then a summary: accuracy with the artifact as drawn,
removed and swapped (the ground truth of the shortcut), the flags, the TensorBoard command and the
files (log folder, ``summary.png``, ``gradcam/filmstrip.jpg``, ``gradcam/evolution.gif``,
``flags.json``). Uses a GPU when there is one (``--accelerator auto``).
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import shutil
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.loggers import TensorBoardLogger

from ..alarms import Flag
from ..callback import GradCAMCallback
from ..engine import METHODS, GradCAM
from ..layers import eval_mode
from ..render import IMAGE_FORMATS, denormalize, probe_grid, write_png
from ..rules import INFO_KINDS
from .data import ShortcutDataModule
from .models import ShortcutClassifier
from .training import artifact_reliance
from .world import MEAN, STD

__all__ = [
    "DEFAULTS",
    "DEMO_ARTIFACTS",
    "FAST",
    "DemoResult",
    "FlagPrinter",
    "build_parser",
    "main",
    "run",
]

#: Artifacts the demo offers (``"none"`` is left out: there is nothing to catch).
DEMO_ARTIFACTS: tuple[str, ...] = ("watermark", "tag", "border", "stamp", "texture")

#: Sizes of ``--fast`` (CI): seconds on two CPU cores, enough for the artifact flag to fire.
FAST = {"epochs": 3, "n_train": 384, "n_val": 64, "num_probes": 8}

#: Default sizes: the clean control reaches ~98 % validation accuracy in 8 epochs.
DEFAULTS = {"epochs": 8, "n_train": 1536, "n_val": 256, "num_probes": 16}

_INFO_KINDS = frozenset(k.value for k in INFO_KINDS)


@dataclass
class DemoResult:
    """What a demo run produced (returned by :func:`run`).

    Attributes:
        flags: every flag the callback raised (new and persistent), in order.
        log_dir: the TensorBoard run folder (``<logdir>/<name>/version_<n>``).
        logdir: the root to pass to ``tensorboard --logdir``.
        summary_image: final ``input | heatmap | overlay`` grid of the first probes (PNG).
        filmstrip: the callback's evolution filmstrip (``filmstrip.jpg``), when written.
        gif: the callback's evolution GIF, when written.
        flags_file: the flags as JSON.
        metrics: final ``trainer.callback_metrics`` as floats (``val_acc``, ``gradcam/...``).
        reliance: accuracy on the validation set with the artifact as drawn, removed, swapped.
        history: the callback's per-run records.
        seconds: wall time of data generation, training and the summary.
        shortcut: whether the artifact was correlated with the label.
    """

    flags: list[Flag]
    log_dir: Path
    logdir: Path
    summary_image: Path | None
    filmstrip: Path | None
    gif: Path | None
    flags_file: Path
    metrics: dict[str, float] = field(default_factory=dict)
    reliance: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    shortcut: bool = True

    @property
    def flag_kinds(self) -> set[str]:
        """The distinct kinds of the flags raised (``{"artifact", "background"}``, ...)."""
        return {f.kind for f in self.flags}

    @property
    def new_flags(self) -> list[Flag]:
        """The flags as first raised (persistent repeats left out)."""
        return [f for f in self.flags if not f.persistent]


def _one_line(flag: Flag, width: int | None = None) -> str:
    """A flag as one console line: when, what, value against threshold, which probes, why."""
    if width is None:
        width = max(100, shutil.get_terminal_size((160, 24)).columns)
    tag = "note" if flag.kind in _INFO_KINDS else "FLAG"
    cmp = "<" if flag.value < flag.threshold else ">="
    metric = flag.metric or "value"
    probes = f" on {len(flag.probes)} probes" if flag.probes else ""
    head = (
        f"[{tag}] epoch {flag.epoch} (step {flag.global_step}) {flag.kind}: "
        f"{metric} {flag.value:.2f} {cmp} {flag.threshold:g}{probes}"
    )
    first = flag.message.split("; ")[0].split(". ")[0]
    line = f"{head} | {first}"
    return line if len(line) <= width else line[: width - 3] + "..."


class FlagPrinter(pl.Callback):
    """Prints each new flag of a :class:`GradCAMCallback` on one line as soon as it fires.

    Put it after the GradCAMCallback in ``callbacks`` (hooks run in list order). Lines go through
    the progress bar's ``print`` so they do not break the bar.

    Args:
        gradcam: the callback to watch.
        show_persistent: also print flags that repeat from the previous run.
    """

    def __init__(self, gradcam: GradCAMCallback, show_persistent: bool = False) -> None:
        super().__init__()
        self.gradcam = gradcam
        self.show_persistent = show_persistent
        self.seen = 0
        self.lines: list[str] = []

    def _drain(self, trainer: pl.Trainer) -> None:
        flags = self.gradcam.flags[self.seen :]
        self.seen = len(self.gradcam.flags)
        bar = trainer.progress_bar_callback
        for flag in flags:
            if flag.persistent and not self.show_persistent:
                continue
            line = _one_line(flag)
            self.lines.append(line)
            if not trainer.is_global_zero:
                continue
            if bar is not None:
                bar.print(line)
            else:
                print(line, flush=True)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """After the GradCAMCallback's run of this validation (when it ran on this thread)."""
        self._drain(trainer)

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        """After the GradCAMCallback has collected a run analysed on its worker thread."""
        if len(self.gradcam.flags) > self.seen:
            self._drain(trainer)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Flags of the fit-end checks (e.g. the randomisation sanity check)."""
        self._drain(trainer)


def build_parser() -> argparse.ArgumentParser:
    """The demo's command line (``python -m gradcam_callback.demo --help``)."""
    p = argparse.ArgumentParser(
        prog="python -m gradcam_callback.demo",
        description=(
            "Train a small CNN on a planted-shortcut world with GradCAMCallback and "
            "TensorBoardLogger; print the shortcut flags as they fire."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--clean",
        action="store_true",
        help="control run: the artifact is drawn independently of the label (no shortcut)",
    )
    p.add_argument("--artifact", choices=DEMO_ARTIFACTS, default="watermark", help="the shortcut")
    p.add_argument(
        "--correlation",
        type=float,
        default=1.0,
        help="how often the artifact matches the label (ignored with --clean)",
    )
    p.add_argument("--fast", action="store_true", help=f"CI size: {FAST}")
    p.add_argument("--epochs", type=int, default=None, help=f"default {DEFAULTS['epochs']}")
    p.add_argument("--n-train", type=int, default=None, help=f"default {DEFAULTS['n_train']}")
    p.add_argument("--n-val", type=int, default=None, help=f"default {DEFAULTS['n_val']}")
    p.add_argument("--probes", type=int, default=None, help=f"default {DEFAULTS['num_probes']}")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--method", choices=METHODS, default="gradcam")
    p.add_argument("--logdir", default="demo_logs", help="TensorBoard root folder")
    p.add_argument(
        "--name",
        default=None,
        help="run name under --logdir (default: the world, e.g. shortcut-watermark)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--accelerator", default="auto", help="auto uses a GPU when there is one")
    p.add_argument("--no-progress-bar", action="store_true", help="hide Lightning's progress bar")
    return p


class _DropTip(logging.Filter):
    """Drops Lightning's advertisement line for another logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def _summary_image(
    cb: GradCAMCallback, model: torch.nn.Module, path: Path, rows: int = 8
) -> Path | None:
    """Final ``input | heatmap | overlay`` grid of the first probes, enlarged 2x (nearest)."""
    probes = cb.probes
    if probes is None:
        return None
    device = next(model.parameters()).device
    images = probes.images[:rows].to(device)
    labels = probes.labels[:rows].to(device) if probes.labels is not None else None
    with eval_mode(model):
        maps = GradCAM(model, cb.target_layer, cb.method)(images, labels)
    grid = probe_grid(denormalize(images, MEAN, STD), maps, alpha=cb.alpha, colormap=cb.colormap)
    big = F.interpolate(grid[None].float(), scale_factor=2, mode="nearest")[0].to(torch.uint8)
    return write_png(big.cpu(), path)


def _tensorboard_command(logdir: Path) -> str:
    return f"tensorboard --logdir {shlex.quote(str(logdir))}"


def _sizes(args: argparse.Namespace) -> dict[str, int]:
    """``--fast`` or the default sizes, with any size given on the command line."""
    sizes = dict(FAST if args.fast else DEFAULTS)
    given = {
        "epochs": args.epochs,
        "n_train": args.n_train,
        "n_val": args.n_val,
        "num_probes": args.probes,
    }
    sizes.update({k: v for k, v in given.items() if v is not None})
    return sizes


def _trainer(
    args: argparse.Namespace, sizes: dict[str, int], cb: GradCAMCallback, logger: Any
) -> pl.Trainer:
    return pl.Trainer(
        accelerator=args.accelerator,
        devices=1,
        max_epochs=sizes["epochs"],
        logger=logger,
        callbacks=[cb, FlagPrinter(cb)],
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=not args.no_progress_bar,
        num_sanity_val_steps=0,
        log_every_n_steps=10,
        default_root_dir=str(Path(args.logdir)),
    )


def _fit(trainer: pl.Trainer, model: pl.LightningModule, dm: pl.LightningDataModule) -> None:
    with warnings.catch_warnings():
        # The flags are printed by FlagPrinter, one line each; do not repeat them as warnings.
        warnings.filterwarnings("ignore", message=r"GradCAMCallback \[")
        warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")
        warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
        trainer.fit(model, datamodule=dm)


def _train(
    args: argparse.Namespace, sizes: dict[str, int], correlation: float | None, name: str
) -> tuple[pl.Trainer, GradCAMCallback, Path, dict[str, float], Path | None]:
    """Fit with the callback; return the trainer, callback, log folder, reliance, summary."""
    pl.seed_everything(args.seed, verbose=False)
    dm = ShortcutDataModule(
        artifact=args.artifact,
        correlation=correlation,
        n_train=sizes["n_train"],
        n_val=sizes["n_val"],
        n_test=sizes["n_val"],
        batch_size=args.batch_size,
        seed=args.seed,
    )
    model = ShortcutClassifier(num_classes=2, lr=args.lr, seed=args.seed)
    cb = GradCAMCallback(
        num_probes=sizes["num_probes"],
        method=args.method,
        mean=list(MEAN),
        std=list(STD),
        verbose=False,
    )
    logger = TensorBoardLogger(str(args.logdir), name=name, default_hp_metric=False)
    trainer = _trainer(args, sizes, cb, logger)
    _fit(trainer, model, dm)
    log_dir = Path(logger.log_dir)
    model.eval()
    reliance = artifact_reliance(model, dm.val_set)
    summary = _summary_image(cb, model, log_dir / "summary.png")
    return trainer, cb, log_dir, reliance, summary


def run(argv: Sequence[str] | None = None) -> DemoResult:
    """Parse ``argv``, train, print the flags and the summary; return a :class:`DemoResult`."""
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    sizes = _sizes(args)
    shortcut = not args.clean
    correlation = args.correlation if shortcut else None
    name = args.name or f"{'shortcut' if shortcut else 'clean'}-{args.artifact}"
    logdir = Path(args.logdir)

    start = time.perf_counter()
    what = (
        f"the {args.artifact} gives the label away in {correlation:.0%} of the images"
        if shortcut
        else f"the {args.artifact} is independent of the label (control run)"
    )
    print(
        f"gradcam-callback demo: a small CNN learns disc vs square; {what}.\n"
        f"  {sizes['n_train']} training images, {sizes['epochs']} epochs, "
        f"{sizes['num_probes']} probes; logging to {logdir / name}",
        flush=True,
    )
    rank_zero_log = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    tip_filter = _DropTip()
    rank_zero_log.addFilter(tip_filter)
    try:
        trainer, cb, log_dir, reliance, summary = _train(args, sizes, correlation, name)
    finally:
        rank_zero_log.removeFilter(tip_filter)

    flags_file = log_dir / "flags.json"
    flags_file.write_text(json.dumps([asdict(f) for f in cb.flags], indent=2))
    strip = log_dir / cb.prefix / f"filmstrip{IMAGE_FORMATS[cb.image_format]}"
    gif = log_dir / cb.prefix / "evolution.gif"
    metrics = {
        k: float(v)
        for k, v in trainer.callback_metrics.items()
        if isinstance(v, torch.Tensor) and v.numel() == 1
    }
    result = DemoResult(
        flags=list(cb.flags),
        log_dir=log_dir,
        logdir=logdir,
        summary_image=summary,
        filmstrip=strip if strip.exists() else None,
        gif=gif if gif.exists() else None,
        flags_file=flags_file,
        metrics=metrics,
        reliance=reliance,
        history=list(cb.history),
        seconds=time.perf_counter() - start,
        shortcut=shortcut,
    )
    _print_summary(result, args.artifact)
    return result


def _print_summary(res: DemoResult, artifact: str) -> None:
    r = res.reliance
    alarms = [f for f in res.new_flags if f.kind not in _INFO_KINDS]
    print(f"\nDone in {res.seconds:.0f} s.")
    print(
        f"Validation accuracy: {r['acc']:.0%} as drawn | {r['acc_removed']:.0%} with the "
        f"{artifact} removed | {r['acc_swapped']:.0%} with it swapped to the other class"
    )
    if r["acc"] - r["acc_swapped"] > 0.3:
        print(f"  -> the model reads the {artifact}, not the shape (a shortcut).")
    elif r["acc"] > 0.8:
        print("  -> the model learned the shapes.")
    if alarms:
        last = set(res.history[-1]["flags"]) if res.history else set()
        print(f"Shortcut flags ({len(alarms)}):")
        for f in alarms:
            still = ", still firing at the last run" if f.kind in last else ""
            print(f"  - {f.kind}, first at epoch {f.epoch}{still}: {f.message}")
    else:
        print("No shortcut flag fired.")
    notes = [f for f in res.new_flags if f.kind in _INFO_KINDS]
    if notes:
        print(f"Notes: {len(notes)} drift flag(s) (informational: the maps changed suddenly).")
    print(
        "\nSee it in TensorBoard (IMAGES: gradcam/overlays, gradcam/filmstrip; TEXT: gradcam/flags):"
    )
    print(f"  {_tensorboard_command(res.logdir)}     # then open http://localhost:6006/#images")
    print(f"Log folder:    {res.log_dir}")
    if res.summary_image is not None:
        print(f"Summary image: {res.summary_image}  (input | Grad-CAM | overlay, final model)")
    if res.filmstrip is not None:
        print(f"Filmstrip:     {res.filmstrip}  (a column per run: the overlays evolving)")
    if res.gif is not None:
        print(f"Evolution GIF: {res.gif}")
    print(f"Flags (JSON):  {res.flags_file}")
    if res.shortcut:
        print(
            "Control run:   python -m gradcam_callback.demo --clean   (make demo DEMO_ARGS=--clean)"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: run the demo and return the exit status (0).

    Use :func:`run` for the :class:`DemoResult` (flags, paths, metrics). Ctrl-C is handled by
    Lightning (graceful shutdown, exit status 1).
    """
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
