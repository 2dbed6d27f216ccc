"""What the callback reads from, and writes to, a Lightning ``Trainer``, duck-typed.

Everything here works with both the ``pytorch_lightning`` and the ``lightning.pytorch``
namespaces (no isinstance checks against either): rank-zero warnings, the dataloader that probes
come from, the step Lightning logs ``val_*`` curves at, the precision plugin, the eager forward of
a ``torch.compile``d module, guarded scalar writes to every logger, and the scalars that
``EarlyStopping`` / ``ModelCheckpoint`` monitor.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from .probes import preserve_rng

__all__ = [
    "all_gather",
    "eager_forward",
    "fast_dev_run",
    "find_dataloader",
    "forward_context",
    "log_metrics",
    "log_step",
    "module_device",
    "precision_plugin",
    "publish_metrics",
    "trainer_fn",
    "warn",
]


def warn(trainer: Any, message: str, stacklevel: int = 3) -> None:
    """A ``UserWarning`` from global rank zero only."""
    if getattr(trainer, "is_global_zero", True):
        warnings.warn(message, UserWarning, stacklevel=stacklevel)


def trainer_fn(trainer: Any) -> str:
    """``"fit"``, ``"validate"``, ``"test"`` or ``"predict"``: what the trainer is running."""
    fn = getattr(getattr(trainer, "state", None), "fn", None)
    return str(getattr(fn, "value", fn))


def fast_dev_run(trainer: Any) -> bool:
    """The trainer runs in ``fast_dev_run`` mode."""
    return bool(getattr(trainer, "fast_dev_run", False))


def log_step(trainer: Any) -> int:
    """The step Lightning uses for ``val_*`` curves (as ``LearningRateMonitor`` does)."""
    try:
        return int(trainer.fit_loop.epoch_loop._batches_that_stepped)
    except AttributeError:
        return int(trainer.global_step)


def module_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer; CPU for neither)."""
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def precision_plugin(trainer: Any) -> Any:
    """The strategy's precision plugin (``None`` without one)."""
    return getattr(getattr(trainer, "strategy", None), "precision_plugin", None)


def forward_context(plugin: Any) -> Any:
    """The plugin's forward context (autocast for ``16-mixed`` and ``bf16-mixed``)."""
    return nullcontext() if plugin is None else plugin.forward_context()


@contextmanager
def eager_forward(pl_module: Any) -> Iterator[None]:
    """Run a ``torch.compile``d LightningModule's original forward (hooks do not fire inside a
    compiled graph); restored on exit."""
    ctx = getattr(pl_module, "_compiler_ctx", None)
    if not (isinstance(ctx, dict) and "original_forward" in ctx):
        yield
        return
    compiled = pl_module.forward
    pl_module.forward = ctx["original_forward"]
    try:
        yield
    finally:
        pl_module.forward = compiled


def find_dataloader(trainer: Any, stage: str, idx: int) -> Any:
    """The dataloader to draw probes from: validation for fit/validate, else test.

    Returns:
        The loader, or ``None`` when the trainer has none for the stage.

    Raises:
        ValueError: loaders exist but ``idx`` is beyond them (the message names the count).
    """
    loops = []
    if stage in ("fit", "validate"):
        loops = [_attr(trainer, "fit_loop.epoch_loop.val_loop"), _attr(trainer, "validate_loop")]
        if stage == "validate":
            loops.reverse()
    loops += [_attr(trainer, "test_loop")] if stage == "test" else []
    for loop in loops:
        source = getattr(loop, "_data_source", None)
        if source is None:
            continue
        try:
            if not source.is_defined():
                continue
            with preserve_rng():
                loaders = source.dataloader()
        except Exception:
            continue
        loader = _pick(loaders, idx)
        if loader is not None:
            return loader
        count = _count(loaders)
        if count:
            kind = "test" if stage == "test" else "validation"
            raise ValueError(
                f"GradCAMCallback(dataloader_idx={idx}), but there are only {count} {kind} "
                f"dataloader(s); choose an index in [0, {count})"
            )
    return None


def _count(loaders: Any) -> int:
    if loaders is None:
        return 0
    return len(loaders) if isinstance(loaders, list | tuple | dict) else 1


def _pick(loaders: Any, idx: int) -> Any:
    if loaders is None:
        return None
    if isinstance(loaders, list | tuple):
        return loaders[idx] if len(loaders) > idx else None
    if isinstance(loaders, dict):
        values = list(loaders.values())
        return values[idx] if len(values) > idx else None
    return loaders if idx == 0 else None


def _attr(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def log_metrics(
    trainer: Any,
    scalars: dict[str, float],
    step: int,
    warned: set[str] | None = None,
    *,
    only: Callable[[Any], bool] | None = None,
    report: Callable[[str], None] | None = None,
) -> None:
    """The finite scalars straight to each logger (those ``only`` accepts) in guarded calls: a
    failing logger warns once per set-up (when ``warned`` is given; through ``report`` when
    given, e.g. from a worker thread) and is tried again at the next run."""
    finite = {k: v for k, v in scalars.items() if math.isfinite(v)}
    if not finite:
        return
    for i, logger in enumerate(getattr(trainer, "loggers", None) or []):
        if only is not None and not only(logger):
            continue
        try:
            logger.log_metrics(finite, step=step)
        except Exception as err:
            key = f"log_metrics:{i}"
            if warned is not None and key in warned:
                continue
            if warned is not None:
                warned.add(key)
            message = (
                f"GradCAMCallback: {type(logger).__name__}.log_metrics failed on the callback's "
                f"scalars (training goes on; this logger gets no Grad-CAM scalars while it "
                f"fails, further failures are not reported): {err!r}"
            )
            if report is not None:
                report(message)
            else:
                warn(trainer, message)


def publish_metrics(trainer: Any, scalars: dict[str, float]) -> None:
    """Put finite scalars into ``trainer.callback_metrics`` (what EarlyStopping and
    ModelCheckpoint monitor) without going through a logger."""
    try:
        target = trainer.callback_metrics
        for name, value in scalars.items():
            if math.isfinite(value):
                target[name] = torch.tensor(value)
    except Exception:  # a trainer without callback_metrics: nothing to monitor
        return


def all_gather(trainer: Any, tensor: Tensor) -> Tensor:
    """``[world, *shape]`` through the trainer's strategy (``[1, *shape]`` without one)."""
    strategy = getattr(trainer, "strategy", None)
    if strategy is None or int(getattr(trainer, "world_size", 1)) <= 1:
        return tensor[None]
    out = strategy.all_gather(tensor)
    return out if out.dim() == tensor.dim() + 1 else out[None]
