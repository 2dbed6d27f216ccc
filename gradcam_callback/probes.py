"""The fixed probe set: images (and optional labels and masks) explained at every run.

A :class:`ProbeSet` is chosen once, copied to CPU memory, validated, and then reused for the whole
training run (and across checkpoint resumes), so that maps of different epochs are comparable.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "BatchKeys",
    "ProbeChoice",
    "ProbeSet",
    "choose_probes",
    "is_multi_hot",
    "label_problem",
    "peek_batch",
    "preserve_rng",
    "select_probes",
    "unpack_batch",
]


@dataclass(frozen=True)
class BatchKeys:
    """Key names of dict batches."""

    image: str = "image"
    label: str = "label"
    object_mask: str = "object_mask"
    artifact_mask: str = "artifact_mask"


def _shape(x: object) -> str:
    return str(tuple(x.shape)) if isinstance(x, Tensor) else type(x).__name__


def _as_mask(mask: Tensor, n: int, hw: tuple[int, int], what: str) -> Tensor:
    if mask.dim() == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if mask.dim() != 3 or mask.shape[0] != n or tuple(mask.shape[1:]) != hw:
        raise ValueError(
            f"{what} must have shape [N, H, W] = [{n}, {hw[0]}, {hw[1]}] (or [N, 1, H, W]) to "
            f"match the images, got {_shape(mask)}"
        )
    if mask.dtype != torch.bool:
        if mask.is_floating_point() and not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(f"{what} must be boolean or 0/1 valued (True = inside the region)")
        mask = mask != 0
    return mask


@dataclass
class ProbeSet:
    """A fixed set of probe images, explained at every run.

    Args:
        images: ``[N, C, H, W]``, as the model takes them: float (normalised; stored as float32,
            every pixel finite) or ``uint8`` (for models that scale inside; kept as uint8).
        labels: long ``[N]`` class indices (one-hot ``[N, K]`` rows are read as their argmax),
            or ``None`` (targets are then the predictions). Multi-hot ``[N, K]`` rows (0/1 or
            bool, some row with other than one 1) are read as ``label_sets``.
        object_masks: bool ``[N, H, W]``, True on the object (enables object-attention metrics).
        artifact_masks: bool ``[N, H, W]``, True on known label artifacts (watermark, tag, ...).
        label_sets: multi-label probes: bool ``[N, K]`` (or 0/1), True for every label present
            in the image. The callback explains each probe once per positive label (see
            :func:`gradcam_callback.multilabel.expand_positive_labels`). With ``labels`` as well,
            ``labels[i]`` is the label row ``i`` explains and must be positive in its set.

    Every tensor is cloned to CPU memory (never an inference tensor, never a view of a batch).

    Raises:
        ValueError: shapes or dtypes that do not fit, with the expected and actual shapes.
    """

    images: Tensor
    labels: Tensor | None = None
    object_masks: Tensor | None = None
    artifact_masks: Tensor | None = None
    label_sets: Tensor | None = None

    def __post_init__(self) -> None:
        with torch.inference_mode(False):
            self.images = _checked_images(self.images)
            n, _c, h, w = self.images.shape
            if self.labels is not None and self.label_sets is None:
                given = torch.as_tensor(self.labels)
                if is_multi_hot(given):  # multi-label rows: the label sets, nothing explained yet
                    self.labels, self.label_sets = None, given
            if self.label_sets is not None:
                self.label_sets = _as_label_sets(torch.as_tensor(self.label_sets), n)
            if self.labels is not None:
                self.labels = _checked_labels(torch.as_tensor(self.labels), n, self.label_sets)
            for name in ("object_masks", "artifact_masks"):
                mask = getattr(self, name)
                if mask is not None:
                    mask = _as_mask(torch.as_tensor(mask), n, (h, w), f"probe {name}")
                    setattr(self, name, mask.detach().to("cpu").clone().contiguous())

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of the probe images."""
        return int(self.images.shape[-2]), int(self.images.shape[-1])

    def check_num_classes(self, num_classes: int) -> None:
        """Raise ValueError when a label is not a valid class index of a ``num_classes`` output."""
        if self.labels is not None and int(self.labels.max()) >= num_classes:
            raise ValueError(
                f"probe label {int(self.labels.max())} is out of range for a model with "
                f"{num_classes} outputs; labels must lie in [0, {num_classes})"
            )
        if self.label_sets is not None and self.label_sets.shape[1] != num_classes:
            raise ValueError(
                f"the probes' label sets have {self.label_sets.shape[1]} labels, the model "
                f"{num_classes} outputs; give one column per output (multi-hot [N, {num_classes}])"
            )

    @property
    def is_multilabel(self) -> bool:
        """``True`` when the probes carry multi-label ``label_sets``."""
        return self.label_sets is not None

    def state_dict(self) -> dict[str, Tensor]:
        """Tensors only (loads with ``torch.load(weights_only=True)``)."""
        state = {"images": self.images}
        for name in ("labels", "object_masks", "artifact_masks", "label_sets"):
            value = getattr(self, name)
            if value is not None:
                state[name] = value
        return state

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Tensor]) -> ProbeSet:
        """Inverse of :meth:`state_dict`."""
        return cls(
            state["images"],
            state.get("labels"),
            state.get("object_masks"),
            state.get("artifact_masks"),
            state.get("label_sets"),
        )


def _checked_images(images: Any) -> Tensor:
    """Probe images as a contiguous CPU copy (float32, or uint8 as given), or a precise error:
    not ``[N, C, H, W]``, an unusable dtype, empty, under 2x2 pixels, or NaN / inf pixels."""
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise ValueError(
            f"probe images must be a Tensor of shape [N, C, H, W], got {_shape(images)}; "
            "a single image needs a batch dimension (image.unsqueeze(0))"
        )
    if not (images.is_floating_point() or images.dtype == torch.uint8):
        raise ValueError(
            f"probe images must be floating point or uint8 (as fed to the model), got "
            f"{images.dtype}; convert them with .float() (and normalise as in training)"
        )
    n, _c, h, w = images.shape
    if n == 0:
        raise ValueError("the probe set is empty")
    if h < 2 or w < 2:
        raise ValueError(f"probe images must be at least 2x2 pixels, got {h}x{w}")
    if images.is_floating_point():
        bad = ~torch.isfinite(images.detach()).flatten(1).all(1)
        if bool(bad.any()):
            which = torch.nonzero(bad).flatten().tolist()
            raise ValueError(
                f"probe image(s) {which[:10]} contain NaN or inf pixels; every map of "
                "them would be NaN. Clean the data, or pass "
                "GradCAMCallback(probes=ProbeSet(...)) with finite images"
            )
        images = images.detach().to("cpu", torch.float32)
    return images.detach().to("cpu").clone().contiguous()


def _checked_labels(given: Tensor, n: int, sets: Tensor | None) -> Tensor:
    """Long ``[N]`` CPU class indices (one-hot rows read as indices), each positive in its label
    set when ``sets`` (bool ``[N, K]``) is given, or a precise error."""
    labels = _one_hot_to_index(given)
    if labels.dim() != 1 or labels.shape[0] != n:
        raise ValueError(
            f"probe labels must have shape [N] = [{n}], got {_shape(labels)} (or "
            "give one-hot rows [N, K])"
        )
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"probe labels must be integer class indices, got {labels.dtype}")
    if labels.numel() and int(labels.min()) < 0:
        raise ValueError(f"probe labels must be >= 0, got {int(labels.min())}")
    labels = labels.detach().to("cpu", torch.long).clone()
    if sets is not None:
        if int(labels.max()) >= sets.shape[1]:
            raise ValueError(
                f"probe label {int(labels.max())} is outside the label sets' {sets.shape[1]} labels"
            )
        if not bool(sets[torch.arange(n), labels].all()):
            raise ValueError(
                "every probe label must be positive in its probe's label set "
                "(labels[i] is the label row i explains)"
            )
    return labels


def unpack_batch(
    batch: Any, keys: BatchKeys = BatchKeys()
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """Split a batch into ``(images, labels, object_masks, artifact_masks)``.

    Recognised layouts: a Tensor ``x``; tuples/lists ``(x,)``, ``(x, y)``, ``(x, y, object_mask)``,
    ``(x, y, object_mask, artifact_mask)``; dicts with ``keys`` (missing optional keys are None).

    Raises:
        ValueError: a layout that is not one of these, naming what was found.
    """
    if isinstance(batch, Tensor):
        return batch, None, None, None
    if isinstance(batch, Mapping):
        if keys.image not in batch:
            raise ValueError(
                f"dict batch has no image key {keys.image!r} (keys: {sorted(map(str, batch))}); "
                "set GradCAMCallback(image_key=...) to the key that holds the images"
            )
        return (
            batch[keys.image],
            batch.get(keys.label),
            batch.get(keys.object_mask),
            batch.get(keys.artifact_mask),
        )
    if isinstance(batch, list | tuple) and 1 <= len(batch) <= 4:
        parts = [*batch, None, None, None][:4]
        return parts[0], parts[1], parts[2], parts[3]
    raise ValueError(
        f"cannot read images from a batch of type {type(batch).__name__}"
        f"{f' with {len(batch)} items' if isinstance(batch, list | tuple) else ''}; expected x, "
        "(x, y), (x, y, object_mask), (x, y, object_mask, artifact_mask) or a dict; or pass "
        "GradCAMCallback(probes=ProbeSet(...))"
    )


@contextmanager
def preserve_rng() -> Iterator[None]:
    """Restore torch (CPU and CUDA), numpy and Python RNG states on exit.

    Reading a dataset or a shuffled dataloader may draw random numbers (samplers, random
    transforms); the monitor must never shift the training run's random stream.
    """
    py_state = random.getstate()
    try:
        import numpy as np

        np_state: Any = np.random.get_state()
    except Exception:  # pragma: no cover - numpy is a dependency
        np, np_state = None, None
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py_state)
            if np is not None:
                np.random.set_state(np_state)


def _iter_samples(
    dataloader: Any, limit: int, keys: BatchKeys, spread: bool = False
) -> Iterator[tuple[int, tuple[Any, ...]]]:
    """Yield ``(position, (x, y, om, am, row))`` single samples from a dataloader, at most ``limit``.

    Map-style datasets are read by index through the loader's ``collate_fn`` (no sampler, no
    workers): the first ``limit`` in order, or with ``spread`` (when it holds more) ``limit``
    indices spread evenly over it, so a dataset sorted by class, like an image folder, is covered
    end to end. Other loaders are iterated. ``position`` is the dataset index (or the running
    sample count for iterated loaders).
    """
    dataset = getattr(dataloader, "dataset", None)
    collate = getattr(dataloader, "collate_fn", None)
    if dataset is not None and hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__"):
        from torch.utils.data import IterableDataset, default_collate

        if not isinstance(dataset, IterableDataset):
            collate = collate or default_collate
            size = len(dataset)
            if size <= limit or not spread:
                indices = list(range(min(size, limit)))
            else:
                indices = torch.linspace(0, size - 1, limit).round().long().unique().tolist()
            for i in indices:
                try:
                    batch = collate([dataset[i]])
                except Exception:
                    batch = default_collate([dataset[i]])
                for sample in _split(batch, keys):
                    yield i, sample
            return
    seen = 0
    for batch in dataloader:
        for sample in _split(batch, keys):
            yield seen, sample
            seen += 1
            if seen >= limit:
                return


def _split(batch: Any, keys: BatchKeys) -> Iterator[tuple[Any, ...]]:
    x, y, om, am = unpack_batch(batch, keys)
    if not isinstance(x, Tensor):
        raise ValueError(f"batch images must be a Tensor, got {type(x).__name__}")
    if x.dim() == 3:  # a single unbatched image
        x = x[None]
    if x.dim() != 4:
        raise ValueError(
            f"batch images must have shape [N, C, H, W], got {_shape(x)}; GradCAMCallback "
            "explains image classifiers (4-D image batches)"
        )
    for i in range(x.shape[0]):
        yield (
            x[i],
            _item(y, i),
            om[i] if isinstance(om, Tensor) else None,
            am[i] if isinstance(am, Tensor) else None,
            y[i] if isinstance(y, Tensor) and y.dim() == 2 else None,  # a multi-hot row?
        )


def _item(y: Any, i: int) -> Tensor | None:
    """Sample ``i``'s class index: integer ``[N]`` or ``[N, 1]`` labels, or one-hot ``[N, K]``
    rows (their argmax); ``None`` for anything else (multi-hot, soft or float labels)."""
    if not isinstance(y, Tensor) or y.dtype == torch.bool:
        return None
    if y.dim() == 2 and y.shape[1] == 1 and not y.is_floating_point():
        return y[i, 0]
    if y.dim() == 1 and not y.is_floating_point():
        return y[i]
    if y.dim() == 2 and _is_one_hot(y[i : i + 1]):
        return y[i].argmax()
    return None


def _is_one_hot(rows: Tensor) -> bool:
    """True for ``[N, K]`` rows of 0/1 values with exactly one 1 each (K >= 2)."""
    if rows.dim() != 2 or rows.shape[1] < 2 or rows.dtype == torch.bool:
        return False
    binary = bool(((rows == 0) | (rows == 1)).all())
    return binary and bool((rows.sum(1) == 1).all())


def _one_hot_to_index(labels: Tensor) -> Tensor:
    return labels.argmax(1) if _is_one_hot(labels) else labels


def _is_binary_rows(rows: Tensor) -> bool:
    """``[N, K]`` (K >= 2) of bool or 0/1 values."""
    if rows.dim() != 2 or rows.shape[1] < 2 or rows.shape[0] == 0 or rows.is_complex():
        return False
    return rows.dtype == torch.bool or bool(((rows == 0) | (rows == 1)).all())


def is_multi_hot(rows: Tensor) -> bool:
    """``True`` for multi-label targets: ``[N, K]`` rows (K >= 2) of bool or 0/1 values where
    some row has other than exactly one 1 (all rows one-hot read as class indices instead)."""
    return _is_binary_rows(rows) and not bool((rows.long().sum(1) == 1).all())


def _as_label_sets(sets: Tensor, n: int) -> Tensor:
    if sets.dim() != 2 or sets.shape[0] != n or sets.shape[1] < 1:
        raise ValueError(
            f"probe label_sets must have shape [N, K] = [{n}, K] (multi-hot), got {_shape(sets)}"
        )
    if sets.dtype != torch.bool:
        if sets.is_complex() or not bool(((sets == 0) | (sets == 1)).all()):
            raise ValueError(
                "probe label_sets must be bool or 0/1 valued (True = the label is present); "
                "soft or probabilistic labels are not label sets"
            )
        sets = sets != 0
    return sets.detach().to("cpu").clone().contiguous()


def peek_batch(dataloader: Any, size: int = 8) -> Any:
    """A small batch from ``dataloader`` (its dataset's first ``size`` items, collated, or the
    first batch of an iterable loader) under :func:`preserve_rng`, for set-up checks; ``None``
    if nothing can be read."""
    with preserve_rng(), torch.inference_mode(False), torch.no_grad():
        try:
            dataset = getattr(dataloader, "dataset", None)
            from torch.utils.data import IterableDataset, default_collate

            if (
                dataset is not None
                and hasattr(dataset, "__getitem__")
                and hasattr(dataset, "__len__")
                and not isinstance(dataset, IterableDataset)
            ):
                if len(dataset) == 0:
                    return None
                collate = getattr(dataloader, "collate_fn", None) or default_collate
                return collate([dataset[i] for i in range(min(size, len(dataset)))])
            return next(iter(dataloader))
        except Exception:
            return None


def label_problem(batch: Any, keys: BatchKeys = BatchKeys()) -> str | None:
    """Why the labels of ``batch`` cannot be used as class indices, or ``None`` when they can
    (or when the layout has no labels at all, such as a bare image tensor or ``(x,)``)."""
    if isinstance(batch, Mapping) and keys.label not in batch:
        return (
            f"dict batches have no label key {keys.label!r} (keys: {sorted(map(str, batch))}); "
            "set GradCAMCallback(label_key=...) to the key that holds the class indices"
        )
    try:
        _x, y, _om, _am = unpack_batch(batch, keys)
    except ValueError:
        return None
    if y is None:
        return None
    if not isinstance(y, Tensor):
        return (
            f"the labels are a {type(y).__name__}, not a Tensor of class indices; return "
            "torch.long labels [N] from the dataset"
        )
    if is_multi_hot(y):
        return (
            f"the labels look multi-hot ({y.dtype} {list(y.shape)} of 0/1 with other than one "
            "1 per row), but task='multiclass' reads the model's output as softmax class logits "
            "and explains the predicted class; pass GradCAMCallback(task='multilabel') (or "
            "task='auto') to explain each positive label with sigmoid outputs"
        )
    if _item(y, 0) is None:
        return (
            f"the labels ({y.dtype}, shape {list(y.shape)}) are not class indices [N] or one-hot "
            "rows [N, K]; return torch.long class indices from the dataset"
        )
    return None


@dataclass
class ProbeChoice:
    """What :func:`choose_probes` chose and why.

    Attributes:
        probes: the :class:`ProbeSet`.
        counts: class -> number of probes of that class (empty without labels).
        unwatched: classes seen in the scanned samples that got no probe (the cap was reached).
        scanned: number of samples read.
        policy: one sentence: how the probes were chosen.
    """

    probes: ProbeSet
    counts: dict[int, int]
    unwatched: list[int]
    scanned: int
    policy: str


def choose_probes(
    dataloader: Any,
    num_probes: int | None = None,
    *,
    per_class: int = 8,
    max_probes: int = 128,
    classes: Sequence[int] | None = None,
    keys: BatchKeys = BatchKeys(),
    scan: int | None = None,
    unlabeled: int = 32,
    multilabel: bool | None = False,
) -> ProbeChoice:
    """Choose a fixed probe set from ``dataloader`` (deterministic; the global RNGs are untouched).

    Policy:

    * ``num_probes`` given: that many probes, taken round-robin across the classes in order of
      first appearance among the first ``8 * num_probes`` samples (balanced), as in earlier
      releases.
    * otherwise **per class**: ``per_class`` probes of every class found (rules decide per class
      and need several probes of one class), at most ``max_probes`` in all. With more classes than
      ``max_probes // per_class``, the watched classes are ``classes`` when given, else the most
      frequent ones in the scanned samples (ties: first seen); the rest are reported as
      ``unwatched``. A class with fewer samples than ``per_class`` gets all it has.
    * without integer labels: the first ``unlabeled`` samples (the predicted class is explained).
    * **multi-label** (``multilabel=True``, or ``None`` and multi-hot label rows found, see
      :func:`is_multi_hot`): the probes carry ``label_sets`` and every positive label of a probe
      is one explanation. Per label (in label order; with too many labels the most frequent, or
      ``classes``), images where it is positive are added until it has ``per_class``
      explanations (an image chosen for one label also counts for its other positive labels);
      an image is skipped when its explanations would pass ``max_probes`` in all. With
      ``num_probes``: that many images, taken round-robin across the labels. Samples with no
      positive label are never chosen; ``counts`` are explanations per label.

    The scan reads ``scan`` samples (default: ``max(2048, 8 * max_probes)``; spread evenly over a
    map-style dataset that is larger), under :func:`preserve_rng`, so a shuffled loader or a random
    transform does not shift the training run's random stream.

    Args:
        dataloader: any loader whose batches :func:`unpack_batch` reads.
        num_probes: a fixed total (see above), or ``None`` for the per-class policy.
        per_class: probes per class, >= 1.
        max_probes: cap of the per-class policy, >= ``per_class``.
        classes: the classes to watch (per-class policy); others get no probe.
        keys: dict-batch key names.
        scan: how many samples to read at most.
        unlabeled: probes taken when the samples carry no integer labels.
        multilabel: ``False``: class indices only (multi-hot rows count as no label); ``True``:
            ``[N, K]`` 0/1 label rows are label sets (integer class indices fall back to the
            per-class policy); ``None``: multi-label when the rows are multi-hot.

    Raises:
        ValueError: bad arguments, a batch layout that cannot be read, masks or labels of the
            wrong shape, or ``classes`` none of which occurs in the scanned samples.
    """
    _check_policy(num_probes, per_class, max_probes)
    samples = _scan_samples(dataloader, num_probes, max_probes, scan, keys)
    sets = _scanned_label_sets(samples) if multilabel is not False else None
    if sets is not None and (multilabel or not bool((sets.long().sum(1) == 1).all())):
        return _choose_multilabel(samples, sets, num_probes, per_class, max_probes, classes)
    return _choose_single_label(samples, num_probes, per_class, max_probes, classes, unlabeled)


def _choose_single_label(
    samples: list[tuple[int, tuple[Any, ...]]],
    num_probes: int | None,
    per_class: int,
    max_probes: int,
    classes: Sequence[int] | None,
    unlabeled: int,
) -> ProbeChoice:
    """:func:`choose_probes` for class-index labels (or none): balanced, per class, or the first
    ``unlabeled`` samples."""
    labels_known = all(s[1] is not None for _, s in samples)
    if not labels_known and any(s[1] is not None for _, s in samples):
        warnings.warn(
            "some samples have no integer label; the probes explain the predicted classes",
            stacklevel=3,
        )
    by_class: dict[int, list[int]] = {}
    if labels_known:
        for i, (_, s) in enumerate(samples):
            by_class.setdefault(int(s[1]), []).append(i)
    unwatched: list[int] = []
    if num_probes is not None:
        chosen = _balanced(len(samples), by_class if labels_known else None, num_probes)
        policy = f"{num_probes} probes, balanced across classes (num_probes={num_probes})"
    elif not labels_known:
        chosen = list(range(min(unlabeled, len(samples))))
        policy = f"the first {len(chosen)} samples (no integer labels: predicted classes explained)"
    else:
        watch, unwatched = _watched(by_class, len(samples), per_class, max_probes, classes)
        chosen = sorted(i for c in watch for i in by_class[c][:per_class])
        policy = f"{per_class} probes per class for {len(watch)} classes (cap {max_probes} probes)"
    probes = _probe_set([samples[i][1] for i in chosen])
    counts: dict[int, int] = {}
    if probes.labels is not None:
        for c in probes.labels.tolist():
            counts[int(c)] = counts.get(int(c), 0) + 1
    return ProbeChoice(probes, dict(sorted(counts.items())), unwatched, len(samples), policy)


def _scan_samples(
    dataloader: Any, num_probes: int | None, max_probes: int, scan: int | None, keys: BatchKeys
) -> list[tuple[int, tuple[Any, ...]]]:
    """The samples :func:`choose_probes` chooses from (at most ``scan``, see there), read under
    :func:`preserve_rng`; an empty loader is an error."""
    if scan is None:
        scan = 8 * num_probes if num_probes is not None else max(2048, 8 * max_probes)
    scan = max(scan, num_probes or 1)
    with preserve_rng(), torch.inference_mode(False), torch.no_grad():
        samples = list(_iter_samples(dataloader, scan, keys, spread=num_probes is None))
    if not samples:
        raise ValueError("the dataloader yielded no samples to choose probes from")
    return samples


def _check_policy(num_probes: int | None, per_class: int, max_probes: int) -> None:
    """The probe policy's numbers are usable (see :func:`choose_probes`)."""
    if num_probes is not None and num_probes < 1:
        raise ValueError(f"num_probes must be >= 1, got {num_probes}")
    if per_class < 1 or max_probes < per_class:
        raise ValueError(
            f"need per_class >= 1 and max_probes >= per_class, got {per_class} and {max_probes}"
        )


def _balanced(n: int, by_class: dict[int, list[int]] | None, num_probes: int) -> list[int]:
    """``num_probes`` of ``n`` sample indices, taken round-robin across the classes (in order of
    first appearance; ``by_class=None``: the first ones), sorted."""
    order = list(range(n))
    if by_class is not None:
        queues = [list(q) for q in by_class.values()]
        order = []
        while len(order) < n:
            for q in queues:
                if q:
                    order.append(q.pop(0))
    return sorted(order[:num_probes])


def _watched(
    by_class: dict[int, list[int]],
    scanned: int,
    per_class: int,
    max_probes: int,
    classes: Sequence[int] | None,
) -> tuple[list[int], list[int]]:
    """``(watched, unwatched)`` classes of the per-class policy: ``classes`` when given (those
    that occur), else every class found; at most ``max_probes // per_class`` of them (the most
    frequent, ties by first appearance, unless ``classes`` orders them)."""
    watch = list(by_class)
    if classes is not None:
        wanted = [int(c) for c in classes]
        missing = [c for c in wanted if c not in by_class]
        watch = [c for c in wanted if c in by_class]
        if not watch:
            raise ValueError(
                f"none of classes={wanted} occurs in the {scanned} samples scanned; "
                f"classes seen: {sorted(by_class)[:20]}"
            )
        if missing:
            warnings.warn(
                f"classes {missing} do not occur in the {scanned} scanned samples and get no probe",
                stacklevel=4,
            )
    room = max_probes // per_class
    if len(watch) > room:
        if classes is None:  # the most frequent classes, ties broken by first appearance
            watch = sorted(watch, key=lambda c: -len(by_class[c]))
        watch = watch[:room]
    return watch, sorted(c for c in by_class if c not in watch)


def _scanned_label_sets(samples: Sequence[tuple[int, tuple[Any, ...]]]) -> Tensor | None:
    """Bool ``[S, K]`` label rows of the scanned samples, or ``None`` unless every sample has a
    0/1 (or bool) row of the same length ``K >= 2``."""
    rows = [s[4] for _, s in samples]
    if not all(isinstance(r, Tensor) and r.dim() == 1 for r in rows):
        return None
    if len({int(r.shape[0]) for r in rows}) != 1:
        return None
    stacked = torch.stack(rows)
    return (stacked != 0) if _is_binary_rows(stacked) else None


def _choose_multilabel(
    samples: Sequence[tuple[int, tuple[Any, ...]]],
    sets: Tensor,
    num_probes: int | None,
    per_class: int,
    max_probes: int,
    classes: Sequence[int] | None,
) -> ProbeChoice:
    """The multi-label policy of :func:`choose_probes` (see there)."""
    k = int(sets.shape[1])
    freq = sets.long().sum(0)
    seen = [c for c in range(k) if int(freq[c]) > 0]
    watch, explained = _watched_labels(sets, seen, len(samples), classes)
    queues = {c: torch.nonzero(sets[:, c]).flatten().tolist() for c in watch}
    if num_probes is not None:
        chosen, count = _labels_round_robin(watch, queues, explained, num_probes)
        policy = f"{num_probes} multi-label probes, round-robin across labels"
    else:
        room = max_probes // per_class
        if len(watch) > room:
            if classes is None:  # the most frequent labels, ties broken by label order
                watch = sorted(watch, key=lambda c: -int(freq[c]))
            watch = watch[:room]
        chosen, count = _labels_per_label(watch, queues, explained, per_class, max_probes)
        policy = (
            f"{per_class} explanations per label for {len(watch)} labels, one per positive label "
            f"of a probe (multi-label; cap {max_probes} explanations)"
        )
    chosen.sort()
    probes = _probe_set([samples[i][1] for i in chosen], multilabel=True)
    counts = {c: int(count[c]) for c in range(k) if int(count[c]) > 0}
    unwatched = [c for c in seen if int(count[c]) == 0]
    return ProbeChoice(probes, counts, unwatched, len(samples), policy)


def _watched_labels(
    sets: Tensor, seen: list[int], scanned: int, classes: Sequence[int] | None
) -> tuple[list[int], Tensor]:
    """``(watched labels, explained [S, K] bool)``: the labels positive somewhere (``seen``), or
    those of ``classes`` that are; the label sets reduced to the watched ``classes``."""
    if not seen:
        raise ValueError(
            f"none of the {scanned} samples scanned has a positive label (multi-hot rows "
            "are all zero): there is no label to explain"
        )
    if classes is None:
        return seen, sets
    wanted = [int(c) for c in classes]
    watch = [c for c in wanted if c in seen]
    if not watch:
        raise ValueError(
            f"none of classes={wanted} is positive in the {scanned} samples scanned; "
            f"labels seen: {seen[:20]}"
        )
    missing = [c for c in wanted if c not in seen]
    if missing:
        warnings.warn(
            f"labels {missing} are positive in none of the {scanned} scanned samples "
            "and get no probe",
            stacklevel=4,
        )
    keep = torch.zeros(int(sets.shape[1]), dtype=torch.bool)
    keep[[c for c in wanted if 0 <= c < sets.shape[1]]] = True
    return watch, sets & keep


def _labels_round_robin(
    watch: list[int], queues: dict[int, list[int]], explained: Tensor, num_probes: int
) -> tuple[list[int], Tensor]:
    """``num_probes`` images taken round-robin across the watched labels; ``(chosen, count)``
    with ``count`` long ``[K]`` explanations per label."""
    chosen: list[int] = []
    taken: set[int] = set()
    count = torch.zeros(int(explained.shape[1]), dtype=torch.long)
    while len(chosen) < num_probes and any(queues.values()):
        for c in watch:
            while queues[c] and queues[c][0] in taken:
                queues[c].pop(0)
            if queues[c] and len(chosen) < num_probes:
                i = queues[c].pop(0)
                chosen.append(i)
                taken.add(i)
                count += explained[i].long()
    return chosen, count


def _labels_per_label(
    watch: list[int],
    queues: dict[int, list[int]],
    explained: Tensor,
    per_class: int,
    max_probes: int,
) -> tuple[list[int], Tensor]:
    """Images added per label until it has ``per_class`` explanations, skipping an image whose
    explanations would pass ``max_probes`` in all; ``(chosen, count)`` as above."""
    chosen: list[int] = []
    taken: set[int] = set()
    count = torch.zeros(int(explained.shape[1]), dtype=torch.long)
    total = 0
    for c in watch:
        for i in queues[c]:
            if int(count[c]) >= per_class:
                break
            cost = int(explained[i].sum())
            if i in taken or total + cost > max_probes:
                continue
            chosen.append(i)
            taken.add(i)
            total += cost
            count += explained[i].long()
    return chosen, count


def select_probes(
    dataloader: Any,
    num_probes: int | None = 16,
    *,
    balanced: bool = True,
    keys: BatchKeys = BatchKeys(),
    scan: int | None = None,
    per_class: int = 8,
    max_probes: int = 128,
    classes: Sequence[int] | None = None,
) -> ProbeSet:
    """The :class:`ProbeSet` of :func:`choose_probes` (``num_probes=None``: per class).

    ``balanced=False`` takes the first ``num_probes`` samples as they come.
    """
    if not balanced and num_probes is not None:
        if num_probes < 1:
            raise ValueError(f"num_probes must be >= 1, got {num_probes}")
        with preserve_rng(), torch.inference_mode(False), torch.no_grad():
            pick = [s for _, s in _iter_samples(dataloader, num_probes, keys)]
        if not pick:
            raise ValueError("the dataloader yielded no samples to choose probes from")
        return _probe_set(pick)
    return choose_probes(
        dataloader,
        num_probes,
        per_class=per_class,
        max_probes=max_probes,
        classes=classes,
        keys=keys,
        scan=scan,
    ).probes


def _probe_set(pick: Sequence[tuple[Any, ...]], multilabel: bool = False) -> ProbeSet:
    """A :class:`ProbeSet` of ``(x, y, object_mask, artifact_mask, label_row)`` samples (labels
    and masks only when every sample has them; ``multilabel``: the rows are the label sets)."""

    def stack(j: int) -> Tensor | None:
        items = [s[j] for s in pick]
        return torch.stack(items) if all(isinstance(m, Tensor) for m in items) else None

    images = torch.stack([s[0] for s in pick])
    if multilabel:
        return ProbeSet(images, None, stack(2), stack(3), label_sets=stack(4))
    return ProbeSet(images, stack(1), stack(2), stack(3))


def subset(probes: ProbeSet, index: Sequence[int]) -> ProbeSet:
    """A new :class:`ProbeSet` of the given probe indices."""
    idx = torch.as_tensor(list(index), dtype=torch.long)
    return ProbeSet(
        probes.images[idx],
        None if probes.labels is None else probes.labels[idx],
        None if probes.object_masks is None else probes.object_masks[idx],
        None if probes.artifact_masks is None else probes.artifact_masks[idx],
        None if probes.label_sets is None else probes.label_sets[idx],
    )
