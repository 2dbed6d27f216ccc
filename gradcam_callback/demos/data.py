"""The planted-shortcut world as a ``Dataset`` and a ``LightningDataModule``.

``ShortcutDataset`` holds pre-generated images of :func:`~gradcam_callback.demos.world.make_world`
(``ds[i]`` is ``(image, label, object_mask, artifact_mask)`` or a dict); ``variant`` gives the same
images with the artifact removed or swapped. ``ShortcutDataModule`` makes disjoint train / val /
test splits from one seed, optionally dropping the shortcut after ``shortcut_epochs``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .world import make_world, mix_seed

__all__ = ["ShortcutDataModule", "ShortcutDataset"]

# Seed keys of the splits (the decorrelated train split is the train images, redrawn variants).
_SPLITS = {"train": 11, "val": 12, "test": 13, "train_decorrelated": 11}


class ShortcutDataset(Dataset):
    """Pre-generated planted-shortcut images (see :func:`make_world` for every argument).

    ``ds[i]`` returns ``(image [3, H, W] float32, label long scalar, object_mask [H, W] bool,
    artifact_mask [H, W] bool)``, or with ``as_dict=True`` the dict ``{"image", "label",
    "object_mask", "artifact_mask"}``. Every image carries an artifact (unless ``artifact="none"``
    or ``artifact_mode="removed"``), so artifact masks are never empty; the object and artifact
    masks are disjoint (the object is drawn on top).

    Attributes:
        images, labels, object_masks, artifact_masks, variants, centres, radii, colours: the
            tensors of :func:`make_world` (CPU).
    """

    def __init__(
        self,
        n: int = 1024,
        *,
        artifact: str = "watermark",
        num_classes: int = 2,
        image_size: int | Sequence[int] = 64,
        correlation: float | None = 1.0,
        place: str | None = None,
        seed: int = 0,
        artifact_mode: str = "present",
        as_dict: bool = False,
    ) -> None:
        self.config: dict[str, Any] = {
            "n": n,
            "artifact": artifact,
            "num_classes": num_classes,
            "image_size": image_size,
            "correlation": correlation,
            "place": place,
            "seed": seed,
            "artifact_mode": artifact_mode,
        }
        self.as_dict = as_dict
        world = make_world(**self.config)
        self.images: Tensor = world["images"]
        self.labels: Tensor = world["labels"]
        self.object_masks: Tensor = world["object_masks"]
        self.artifact_masks: Tensor = world["artifact_masks"]
        self.variants: Tensor = world["variants"]
        self.centres: Tensor = world["centres"]
        self.radii: Tensor = world["radii"]
        self.colours: Tensor = world["colours"]

    def __len__(self) -> int:
        return self.labels.numel()

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, Tensor, Tensor] | dict[str, Tensor]:
        item = (self.images[i], self.labels[i], self.object_masks[i], self.artifact_masks[i])
        if self.as_dict:
            return dict(zip(("image", "label", "object_mask", "artifact_mask"), item))
        return item

    @property
    def num_classes(self) -> int:
        """Number of classes ``K``."""
        return int(self.config["num_classes"])

    @property
    def artifact(self) -> str:
        """Artifact kind (one of :data:`ARTIFACTS`)."""
        return str(self.config["artifact"])

    def variant(
        self, artifact: str = "removed", *, correlation: float | Literal["same"] | None = "same"
    ) -> ShortcutDataset:
        """The same objects on the same backgrounds, with the artifact changed.

        Args:
            artifact: ``"removed"`` (artifact pixels show the background; ``artifact_masks`` keep
                the footprint of the removed artifact, ``variants`` are ``-1``), ``"swapped"`` (every
                image carries the variant of a class other than its label: a lying artifact),
                ``"present"`` (as drawn with ``correlation``).
            correlation: override the correlation for the new dataset (``"same"``: keep it);
                e.g. ``variant("present", correlation=None)`` is the decorrelated twin.

        Returns:
            A new :class:`ShortcutDataset`; images differ from this one only inside the union of
            both datasets' artifact masks.
        """
        config = dict(self.config, artifact_mode=artifact)
        if correlation != "same":
            config["correlation"] = correlation
        return ShortcutDataset(**config, as_dict=self.as_dict)

    def tensors(self, n: int | None = None) -> dict[str, Tensor]:
        """The first ``n`` images (all: ``None``) as a dict of tensors.

        Returns:
            ``images`` float32 ``[n, 3, H, W]``, ``labels`` long ``[n]``, ``object_masks`` and
            ``artifact_masks`` bool ``[n, H, W]`` (views, not copies); the keys match
            ``ProbeSet(**ds.tensors(16))``. Labels are shuffled, so a prefix holds every class
            about equally often.
        """
        sl = slice(None) if n is None else slice(0, n)
        return {
            "images": self.images[sl],
            "labels": self.labels[sl],
            "object_masks": self.object_masks[sl],
            "artifact_masks": self.artifact_masks[sl],
        }


class ShortcutDataModule(pl.LightningDataModule):
    """Train / val / test splits of the planted-shortcut world.

    Each split has its own seed (derived from ``seed``), so splits never share images.

    Validation and test use ``val_correlation`` (default ``"same"``: the train ``correlation``):
    every val image keeps its artifact, so the probes show whether the model still looks at it,
    and with the default the shortcut leaks into validation like it does in real data sets, so
    ``val_acc`` looks perfect whether or not the model learned the object. Pass
    ``val_correlation=None`` for an honest (decorrelated) validation set instead.

    ``shortcut_epochs=N`` (a shortcut taken early and dropped later): the training set carries the
    correlated artifact for epochs ``0..N-1`` and, from epoch ``N`` on, its decorrelated twin (same
    images, variants drawn independently of the label). It needs the trainer to rebuild the train
    loader every epoch: ``Trainer(reload_dataloaders_every_n_epochs=1)``. Validation keeps
    ``val_correlation`` throughout, so ``val_acc`` stays high while the attention should move from
    the artifact to the object.

    Args:
        artifact, num_classes, image_size, correlation, place: see :func:`make_world`.
        n_train, n_val, n_test: split sizes.
        batch_size: loader batch size (val/test use twice that).
        seed: base seed.
        num_workers: DataLoader workers (0: main process, fastest for these in-memory tensors).
        shortcut_epochs: see above; ``None``: the train correlation never changes.
        val_correlation: correlation of val/test (``"same"``, a float or ``None``).
        as_dict: batches as dicts instead of tuples.
    """

    def __init__(
        self,
        artifact: str = "watermark",
        correlation: float | None = 1.0,
        num_classes: int = 2,
        image_size: int | tuple[int, int] = 64,
        place: str | None = None,
        n_train: int = 1536,
        n_val: int = 512,
        n_test: int = 512,
        batch_size: int = 64,
        seed: int = 0,
        num_workers: int = 0,
        shortcut_epochs: int | None = None,
        val_correlation: float | Literal["same"] | None = "same",
        as_dict: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.artifact = artifact
        self.correlation = correlation
        self.num_classes = num_classes
        self.image_size = image_size
        self.place = place
        self.n_train, self.n_val, self.n_test = n_train, n_val, n_test
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers
        self.shortcut_epochs = shortcut_epochs
        self.val_correlation = correlation if val_correlation == "same" else val_correlation
        self.as_dict = as_dict
        self._cache: dict[str, ShortcutDataset] = {}

    def split_seed(self, split: str) -> int:
        """Seed of a split (``"train"``, ``"val"``, ``"test"``)."""
        return mix_seed(self.seed, _SPLITS[split])

    def _make(self, split: str) -> ShortcutDataset:
        if split not in self._cache:
            n = {"train": self.n_train, "val": self.n_val, "test": self.n_test}
            corr = {
                "train": self.correlation,
                "train_decorrelated": None,
                "val": self.val_correlation,
                "test": self.val_correlation,
            }[split]
            self._cache[split] = ShortcutDataset(
                n.get(split, self.n_train),
                artifact=self.artifact,
                num_classes=self.num_classes,
                image_size=self.image_size,
                correlation=corr,
                place=self.place,
                seed=self.split_seed(split),
                as_dict=self.as_dict,
            )
        return self._cache[split]

    def release(self, *splits: str) -> None:
        """Forget generated splits (``"train"``, ``"train_decorrelated"``, ``"val"``, ``"test"``;
        none given: all) to free memory; they are regenerated identically on the next access."""
        for split in splits or tuple(self._cache):
            self._cache.pop(split, None)

    @property
    def train_set(self) -> ShortcutDataset:
        """Training split (with ``correlation``); generated on first access."""
        return self._make("train")

    @property
    def decorrelated_train_set(self) -> ShortcutDataset:
        """The training images with variants drawn independently of the label."""
        return self._make("train_decorrelated")

    @property
    def val_set(self) -> ShortcutDataset:
        """Validation split (with ``val_correlation``)."""
        return self._make("val")

    @property
    def test_set(self) -> ShortcutDataset:
        """Test split (with ``val_correlation``)."""
        return self._make("test")

    def setup(self, stage: str | None = None) -> None:
        """Generate the splits the stage needs (idempotent)."""
        if stage in (None, "fit"):
            _ = self.train_set, self.val_set
        if stage in (None, "validate"):
            _ = self.val_set
        if stage in (None, "test"):
            _ = self.test_set

    def _epoch(self) -> int:
        trainer = getattr(self, "trainer", None)
        return int(trainer.current_epoch) if trainer is not None else 0

    def current_train_set(self) -> ShortcutDataset:
        """The training set the trainer's current epoch uses (see ``shortcut_epochs``)."""
        if self.shortcut_epochs is not None and self._epoch() >= self.shortcut_epochs:
            return self.decorrelated_train_set
        return self.train_set

    def train_dataloader(self) -> DataLoader:
        """Shuffled loader (order seeded by ``seed`` and the epoch it was built for)."""
        gen = torch.Generator().manual_seed(mix_seed(self.seed, 99, self._epoch()))
        return DataLoader(
            self.current_train_set(),
            batch_size=self.batch_size,
            shuffle=True,
            generator=gen,
            num_workers=self.num_workers,
            drop_last=False,
        )

    def val_dataloader(self) -> DataLoader:
        """Unshuffled validation loader."""
        return DataLoader(
            self.val_set, batch_size=2 * self.batch_size, num_workers=self.num_workers
        )

    def test_dataloader(self) -> DataLoader:
        """Unshuffled test loader."""
        return DataLoader(
            self.test_set, batch_size=2 * self.batch_size, num_workers=self.num_workers
        )
