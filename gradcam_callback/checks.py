"""Set-up checks of the callback: every setting that could only fail later fails here.

Small, separately testable validators of the constructor's arguments, of what set-up finds (the
model on the probes, the overlays the probes allow, labels that cannot be read) and the notes
set-up gives (which classes are watched, maps too coarse to localise). Each error says what is
wrong and how to fix it. No Lightning import.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from .alarms import ShortcutMonitor
from .engine import METHODS
from .multilabel import check_task
from .probes import BatchKeys, ProbeChoice, ProbeSet, label_problem, peek_batch
from .render import check_colormap, check_image_format
from .reporting import Reporter

__all__ = [
    "SETTINGS",
    "THRESHOLDS",
    "build_monitor",
    "check_display",
    "check_mean_std",
    "check_output",
    "check_settings",
    "finest_map",
    "label_warning",
    "model_fault",
    "setup_notes",
    "split_settings",
    "zero_map_warning",
]

#: The callback's threshold shorthands, forwarded to :class:`ShortcutMonitor`.
THRESHOLDS = (
    "artifact_enrichment",
    "object_enrichment",
    "hotspot_consistency",
    "hotspot_stability",
    "diffuse_entropy",
    "evidence_drop",
    "dependence",
    "border_enrichment",
    "drift_pearson",
)


def _choice(name: str, value: Any, allowed: Sequence[Any]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")


def _at_least(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def check_settings(
    *,
    num_probes: int | None,
    probes_per_class: int,
    max_probes: int,
    every_n_epochs: int,
    batch_size: int,
    method: str,
    target: str,
    on_flag: str,
    alpha: float,
    colormap: str,
    image_format: str,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    dataloader_idx: int,
    probes: Any,
    faithfulness_every_n_runs: int,
    faithfulness_steps: int,
    occlusion_every_n_runs: int,
    min_map_size: int,
    task: str,
) -> None:
    """Validate the callback's constructor arguments.

    Raises:
        ValueError / TypeError: the first bad argument, with the accepted values.
    """
    if num_probes is not None:
        _at_least("num_probes (or None: per class)", num_probes, 1)
    _at_least("probes_per_class", probes_per_class, 1)
    _at_least(f"max_probes (>= probes_per_class={probes_per_class})", max_probes, probes_per_class)
    _at_least("every_n_epochs", every_n_epochs, 1)
    _at_least("batch_size", batch_size, 1)
    _at_least("dataloader_idx", dataloader_idx, 0)
    _at_least("faithfulness_every_n_runs", faithfulness_every_n_runs, 0)
    _at_least("occlusion_every_n_runs", occlusion_every_n_runs, 0)
    _at_least("faithfulness_steps", faithfulness_steps, 1)
    _at_least("min_map_size", min_map_size, 1)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    _choice("target", target, ("label", "predicted"))
    _choice("on_flag", on_flag, ("warn", "stop", "raise"))
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    check_colormap(colormap)
    check_image_format(image_format)
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std (the inputs' normalisation), or neither")
    check_mean_std(mean, std)
    if probes is not None and not isinstance(probes, ProbeSet):
        raise TypeError(f"probes must be a ProbeSet, got {type(probes).__name__}")
    check_task(task)


#: Constructor arguments the callback stores under other names (or builds objects from).
_NOT_PLAIN = ("self", "__class__", "monitor", "classes", "prefix", "target_layer", "probes")
_KEYS = ("image_key", "label_key", "object_mask_key", "artifact_mask_key")


def split_settings(given: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], BatchKeys]:
    """Validate the callback's constructor arguments (:func:`check_settings`) and split them.

    Args:
        given: the constructor's ``locals()``.

    Returns:
        ``(plain, thresholds, keys)``: the settings stored as attributes of the same name, the
        threshold shorthands (``None``: the monitor's default), and the dict-batch keys.
    """
    plain = {k: v for k, v in given.items() if k not in _NOT_PLAIN}
    thresholds = {k: plain.pop(k) for k in THRESHOLDS}
    keys = BatchKeys(*(plain.pop(k) for k in _KEYS))
    check_settings(probes=given["probes"], **{k: plain[k] for k in SETTINGS if k != "probes"})
    return plain, thresholds, keys


def check_mean_std(mean: Any, std: Any) -> None:
    """The display normalisation: finite numbers, std > 0, matching lengths (or one entry)."""
    if mean is None or std is None:
        return
    stats = {}
    for name, value in (("mean", mean), ("std", std)):
        try:
            t = torch.as_tensor(value, dtype=torch.float64).flatten()
        except Exception as err:
            raise ValueError(f"{name} must be a list of numbers, got {value!r}") from err
        if t.numel() == 0 or not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} must be a non-empty list of finite numbers, got {value!r}")
        stats[name] = t
    if bool((stats["std"] <= 0).any()):
        raise ValueError(f"std must be > 0 in every channel, got {std!r}")
    a, b = stats["mean"].numel(), stats["std"].numel()
    if a != b and 1 not in (a, b):
        raise ValueError(
            f"mean has {a} entries and std {b}; give one per image channel (or a single one)"
        )


#: The constructor arguments :func:`check_settings` validates.
SETTINGS: tuple[str, ...] = tuple(inspect.signature(check_settings).parameters)


def build_monitor(
    monitor: ShortcutMonitor | None,
    thresholds: dict[str, float | None],
    confirm: bool,
    min_map_size: int,
) -> ShortcutMonitor:
    """The callback's monitor: the one given, or one built from the threshold shorthands.

    Raises:
        TypeError: ``monitor`` is not a :class:`ShortcutMonitor`.
        ValueError: both a monitor and shorthand thresholds (or ``confirm=False``) are given.
    """
    given = {k: float(v) for k, v in thresholds.items() if v is not None}
    if monitor is None:
        return ShortcutMonitor(**given, confirm=confirm, min_map_cells=min_map_size)
    if not isinstance(monitor, ShortcutMonitor):
        raise TypeError(f"monitor must be a ShortcutMonitor, got {type(monitor).__name__}")
    if given or not confirm:
        both = sorted(given) + ([] if confirm else ["confirm"])
        raise ValueError(
            "give the thresholds either as monitor=ShortcutMonitor(...) or as callback "
            f"arguments, not both (got monitor= and {', '.join(both)})"
        )
    return monitor


@contextmanager
def model_fault(model: nn.Module, sample: Tensor) -> Iterator[None]:
    """At set-up: the model failing on the probes (a RuntimeError, TypeError, ... such as a
    convolution's channel mismatch; not out-of-memory, not the engine's own ValueErrors) becomes
    a ValueError that names the probes' shape and dtype and the model's first convolution."""
    try:
        yield
    except (RuntimeError, TypeError, IndexError, AttributeError) as err:
        if isinstance(err, torch.cuda.OutOfMemoryError):
            raise
        first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        hint = ""
        if first is not None and first.in_channels != sample.shape[1]:
            hint = (
                f" The model's first convolution takes {first.in_channels} channels, the probes "
                f"have {sample.shape[1]}."
            )
        raise ValueError(
            f"GradCAMCallback: the model fails on the probe images (shape "
            f"{list(sample.shape[1:])}, {sample.dtype}): {type(err).__name__}: {err}.{hint} "
            "The probes must be shaped and typed as the model's inputs: check the "
            "dataloader, image_key or the ProbeSet given"
        ) from err


def check_output(output: Any, probes: ProbeSet, target: str, has_target_fn: bool) -> None:
    """The model output on the probes: ``[N, K]`` logits (unless a ``target_fn`` reads it) that
    the probe labels index."""
    if has_target_fn:
        return
    if not isinstance(output, Tensor) or output.dim() != 2:
        got = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise ValueError(
            f"the model output has shape {got}, not [N, num_classes] logits; pass "
            "GradCAMCallback(target_fn=lambda output: <Tensor [N] of scores>)"
        )
    if target == "label":
        probes.check_num_classes(output.shape[1])


def check_display(reporter: Reporter, probes: ProbeSet) -> None:
    """Render one probe as the runs will, so that a colour map, ``mean``/``std`` or a channel
    count the overlay cannot show fails at set-up, before any training step."""
    channels = int(probes.images.shape[1])
    try:
        reporter.check(probes.images)
    except ValueError as err:
        raise ValueError(
            f"GradCAMCallback cannot draw overlays of these probe images ({channels} "
            f"channels): {err}. Give mean/std 1 or {channels} entries, or pass "
            "GradCAMCallback(log_images=False) to log scalars and tables only"
        ) from err


def label_warning(probes: ProbeSet, loader: Any, keys: BatchKeys, target: str) -> str | None:
    """A warning when the batches carry labels that cannot be read as class indices."""
    if target != "label" or probes.labels is not None or probes.is_multilabel:
        return None
    problem = label_problem(peek_batch(loader), keys)
    if not problem:
        return None
    return (
        f"GradCAMCallback: {problem}. The probes have no labels, so the predicted class is "
        "explained (GradCAMCallback(target='predicted') says so and silences this)."
    )


def setup_notes(
    *,
    choice: ProbeChoice | None,
    probes: ProbeSet,
    layer_info: Sequence[Any],
    monitor: ShortcutMonitor,
    target: str,
    max_probes: int,
    probes_per_class: int,
) -> tuple[list[str], list[str]]:
    """What set-up says: ``(lines to print when verbose, warnings)``.

    Lines: the explained layer(s) and the probe policy with its per-class counts. Warnings:
    classes that get no probe, classes with too few probes for a rule, maps too coarse to
    localise (spatial rules are then not evaluated).
    """
    lines = [f"GradCAMCallback: explaining {info} with {len(probes)} probes" for info in layer_info]
    notes: list[str] = []
    if choice is not None and choice.counts:
        per = ", ".join(f"{c}: {k}" for c, k in choice.counts.items())
        lines.append(f"GradCAMCallback: probes: {choice.policy}; per class {{{per}}}")
    if choice is not None and choice.unwatched:
        shown = ", ".join(str(c) for c in choice.unwatched[:20])
        more = f" and {len(choice.unwatched) - 20} more" if len(choice.unwatched) > 20 else ""
        notes.append(
            f"GradCAMCallback: {len(choice.unwatched)} classes get no probe and are not watched "
            f"(max_probes={max_probes} at {probes_per_class} per class): {shown}{more}. Pass "
            "classes=[...] to choose them, or raise max_probes."
        )
    if probes.labels is not None and target == "label":
        counts = torch.bincount(probes.labels)
        few = [int(c) for c in torch.nonzero((counts > 0) & (counts < monitor.min_probes))]
        if few:
            notes.append(
                f"GradCAMCallback: classes {few} have fewer than min_probes={monitor.min_probes} "
                "probes, so no rule can decide about them; add probes of those classes (or lower "
                "the monitor's min_probes)."
            )
    cells = finest_map(layer_info)
    if cells is not None and min(cells) < monitor.min_map_cells:
        names = ", ".join(i.name for i in layer_info)
        k = monitor.min_map_cells
        notes.append(
            f"GradCAMCallback: the map of {names} is {cells[0]}x{cells[1]} cells, too coarse to "
            f"localise (< {k}x{k}): the spatial shortcut rules (artifact, background) are not "
            "evaluated. Choose an earlier layer with target_layer=... (see GradCAM.describe())."
        )
    return lines, notes


def zero_map_warning(maps: Tensor, layer_info: Sequence[Any]) -> str | None:
    """A warning when every probe's map is zero (``None`` otherwise)."""
    if maps.numel() == 0 or bool(maps.flatten(1).amax(1).gt(0).any()):
        return None
    return (
        f"GradCAMCallback: every probe's Grad-CAM map is zero at layer(s) "
        f"{[i.name for i in layer_info]}. The likely cause is a layer with no gradient: the "
        "target scores do not depend on its spatial cells (e.g. a vision transformer's block "
        "after the last attention, where only the class token reaches the head, or a layer "
        "after global pooling), or all weighted maps are negative. Pass target_layer=<an "
        "earlier layer> (for a ViT the last block's first norm) or leave target_layer=None for "
        "the automatic choice."
    )


def finest_map(layer_info: Sequence[Any]) -> tuple[int, int] | None:
    """Cells ``(h, w)`` of the finest target-layer map (``None`` before set-up)."""
    if not layer_info:
        return None
    return max((tuple(i.map_size) for i in layer_info), key=lambda s: math.prod(s))
