"""Training and evaluation helpers of the planted-shortcut world (CPU, seconds).

:func:`train_world` generates a world and trains a :class:`ShortcutClassifier` on it;
:func:`accuracy` and :func:`artifact_reliance` measure how much a model reads the artifact (the
ground truth a shortcut alarm is checked against).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from ..layers import eval_mode
from .data import ShortcutDataModule, ShortcutDataset
from .models import ShortcutClassifier

__all__ = ["TrainedWorld", "accuracy", "artifact_reliance", "train_world"]


def accuracy(
    model: nn.Module,
    data: ShortcutDataset | Tensor,
    labels: Tensor | None = None,
    batch_size: int = 512,
) -> float:
    """Top-1 accuracy of ``model`` (in eval mode; its mode is restored) on a dataset or tensors.

    Args:
        model: ``[N, C, H, W] -> logits [N, K]``.
        data: a :class:`ShortcutDataset`, or images float ``[N, C, H, W]`` (then pass ``labels``).
        labels: long ``[N]`` when ``data`` is a tensor.
        batch_size: images per forward.

    Returns:
        Fraction of correct predictions in ``[0, 1]``.
    """
    if isinstance(data, ShortcutDataset):
        images, labels = data.images, data.labels
    else:
        if labels is None:
            raise ValueError("labels are required when data is a tensor")
        images = data
    device = next((p.device for p in model.parameters()), images.device)
    correct = 0
    with eval_mode(model):
        for i in range(0, images.shape[0], batch_size):
            logits = model(images[i : i + batch_size].to(device))
            correct += int((logits.argmax(1).cpu() == labels[i : i + batch_size].cpu()).sum())
    return correct / max(1, images.shape[0])


def artifact_reliance(model: nn.Module, dataset: ShortcutDataset) -> dict[str, float]:
    """How much ``model`` depends on the artifact: accuracy as drawn, removed, and swapped.

    Returns:
        ``{"acc": ..., "acc_removed": ..., "acc_swapped": ...}``, each in ``[0, 1]``. A shortcut
        model scores high on ``acc``, about chance (or below) on ``acc_removed`` and far below
        chance on ``acc_swapped``; a model that learned the object scores high on all three.
    """
    return {
        "acc": accuracy(model, dataset),
        "acc_removed": accuracy(model, dataset.variant(artifact="removed")),
        "acc_swapped": accuracy(model, dataset.variant(artifact="swapped")),
    }


@dataclass
class TrainedWorld:
    """A model trained on a planted-shortcut world; unpacks as ``model, datamodule = world``.

    Attributes:
        model: the trained :class:`ShortcutClassifier` (CPU, eval mode).
        datamodule: its :class:`ShortcutDataModule` (splits already generated).
        artifact, shortcut, seed: how the world was made.
        seconds: wall time of data generation plus training.
        metrics: ``trainer.callback_metrics`` after fitting, as floats (``val_acc``, ...).
    """

    model: ShortcutClassifier
    datamodule: ShortcutDataModule
    artifact: str
    shortcut: bool
    seed: int
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.model, self.datamodule))


def _default_epochs(shortcut: bool, shortcut_epochs: int | None) -> int:
    """2 epochs for a shortcut world, 12 for a clean one, ``shortcut_epochs + 10`` when given."""
    default = 2 if shortcut else 12
    return default if shortcut_epochs is None else shortcut_epochs + 10


def _trainer_kwargs(
    epochs: int,
    callbacks: Sequence[pl.Callback],
    reload_each_epoch: bool,
    overrides: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The quiet, deterministic CPU ``pl.Trainer`` arguments of :func:`train_world`."""
    kwargs: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": epochs,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "deterministic": True,
        "num_sanity_val_steps": 0,
        "callbacks": list(callbacks),
    }
    if reload_each_epoch:
        kwargs["reload_dataloaders_every_n_epochs"] = 1
    kwargs.update(overrides or {})
    return kwargs


def _fit(
    model: pl.LightningModule, dm: pl.LightningDataModule, kwargs: dict[str, Any]
) -> pl.Trainer:
    """Fit ``model`` on ``dm`` with a ``pl.Trainer(**kwargs)``, hiding the small-run warnings
    and restoring the global deterministic-algorithms flag afterwards."""
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
            warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
            trainer = pl.Trainer(**kwargs)
            trainer.fit(model, datamodule=dm)
    finally:
        torch.use_deterministic_algorithms(was_deterministic, warn_only=warn_only)
    return trainer


def _release(model: ShortcutClassifier, dm: ShortcutDataModule) -> None:
    """Detach the trainer (it holds the loaders) and drop the training images: a world kept for
    a test session then costs only its model and validation set. Dropped splits are
    regenerated, identically, on access."""
    model.trainer = None
    dm.trainer = None
    dm.release("train", "train_decorrelated")


def train_world(
    artifact: str = "watermark",
    *,
    shortcut: bool = True,
    seed: int = 0,
    epochs: int | None = None,
    callbacks: Sequence[pl.Callback] = (),
    num_classes: int = 2,
    width: int = 16,
    lr: float = 1e-3,
    trainer_kwargs: Mapping[str, Any] | None = None,
    **datamodule_kwargs: Any,
) -> TrainedWorld:
    """Generate a world and train a :class:`ShortcutClassifier` on it, on the CPU.

    Args:
        artifact: one of :data:`ARTIFACTS`.
        shortcut: ``True``: ``correlation=1.0`` (perfect shortcut); ``False``: the clean world
            (``correlation=None``). A ``correlation`` in ``datamodule_kwargs`` overrides it.
        seed: seeds the data (all splits) and the initialisation.
        epochs: training epochs; ``None``: 2 for a shortcut world, 12 for a clean one,
            ``shortcut_epochs + 10`` when ``shortcut_epochs`` is given.
        callbacks: extra Lightning callbacks (e.g. a ``GradCAMCallback``).
        num_classes, width, lr: see :class:`ShortcutClassifier`.
        trainer_kwargs: overrides of the ``pytorch_lightning.Trainer`` arguments (defaults:
            ``accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, deterministic=True,
            num_sanity_val_steps=0``; ``reload_dataloaders_every_n_epochs=1`` when
            ``shortcut_epochs`` is given).
        **datamodule_kwargs: passed to :class:`ShortcutDataModule` (``n_train``, ``batch_size``,
            ``place``, ``shortcut_epochs``, ``val_correlation``, ...).

    Returns:
        A :class:`TrainedWorld` (``model, dm = train_world(...)`` also works). The global
        deterministic-algorithms flag that ``deterministic=True`` sets is restored afterwards.
    """
    start = time.perf_counter()
    datamodule_kwargs.setdefault("correlation", 1.0 if shortcut else None)
    dm = ShortcutDataModule(
        artifact=artifact, num_classes=num_classes, seed=seed, **datamodule_kwargs
    )
    dm.setup("fit")
    model = ShortcutClassifier(num_classes=num_classes, width=width, lr=lr, seed=seed)
    if epochs is None:
        epochs = _default_epochs(shortcut, dm.shortcut_epochs)
    kwargs = _trainer_kwargs(epochs, callbacks, dm.shortcut_epochs is not None, trainer_kwargs)
    trainer = _fit(model, dm, kwargs)
    model.eval()
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    _release(model, dm)
    return TrainedWorld(
        model=model,
        datamodule=dm,
        artifact=artifact,
        shortcut=shortcut,
        seed=seed,
        seconds=time.perf_counter() - start,
        metrics=metrics,
    )
