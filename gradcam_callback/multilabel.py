"""Multi-label classifiers (independent sigmoid outputs, trained with BCE): what is explained.

A multi-label probe (chest X-ray findings, scene tags) carries a *set* of positive labels
(``ProbeSet.label_sets``, bool ``[N, K]``). The callback explains each probe once per positive
label (:func:`expand_positive_labels`): the explanation set repeats the image (and its masks) for
every label present, so that each map has one target label and the rules, which group by the
explained class, decide per label. A shortcut that lives in one label (a hospital token that
comes with one finding) is then flagged for that label only.

The callback's ``task`` says which kind of classifier it watches (:func:`plan_task`):

* ``"multiclass"``: softmax class logits, one class per probe;
* ``"multilabel"``: sigmoid logits; confidence is ``sigmoid(logit)`` of the explained label, a
  label counts as predicted when its logit is positive, and causal evidence is that logit (its
  log-odds);
* ``"auto"``: multi-label when the probes carry multi-hot label rows, else multi-class (said once
  at set-up).

No Lightning import.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from .probes import ProbeSet

__all__ = [
    "TASKS",
    "ExpandedProbes",
    "Task",
    "TaskPlan",
    "check_task",
    "expand_positive_labels",
    "plan_task",
    "scan_multilabel",
    "sigmoid_outputs",
]

Task = Literal["multiclass", "multilabel", "auto"]
#: The accepted values of ``GradCAMCallback(task=...)``.
TASKS: tuple[str, ...] = ("multiclass", "multilabel", "auto")


def check_task(task: object) -> None:
    """Raise ValueError unless ``task`` is one of :data:`TASKS`."""
    if task not in TASKS:
        raise ValueError(
            f"task must be one of {TASKS}, got {task!r}: 'multiclass' for softmax class logits, "
            "'multilabel' for independent sigmoid outputs (BCE), 'auto' to decide from the labels"
        )


def scan_multilabel(task: str) -> bool | None:
    """The ``multilabel`` argument of :func:`~gradcam_callback.probes.choose_probes` for a task:
    ``False`` (class indices only), ``True`` (label rows are label sets) or ``None`` (decide
    from the rows: multi-hot means multi-label)."""
    check_task(task)
    return {"multiclass": False, "multilabel": True}.get(task)


@dataclass(frozen=True)
class ExpandedProbes:
    """The explanation set of multi-label probes.

    Attributes:
        probes: a :class:`ProbeSet` of ``M`` rows: long ``labels [M]`` (the label each row
            explains), ``label_sets [M, K]`` (its image's whole set), images and masks repeated.
        index: long ``[M]``, the probe (row of the original set) each row comes from.
    """

    probes: ProbeSet
    index: Tensor


def expand_positive_labels(
    probes: ProbeSet, classes: Sequence[int] | None = None
) -> ExpandedProbes:
    """One explanation per (probe, positive label), in probe order and label order.

    Args:
        probes: a :class:`ProbeSet` with ``label_sets`` (bool ``[N, K]``).
        classes: explain only these labels (``None``: every positive label).

    Returns:
        :class:`ExpandedProbes`; probes with no positive (wanted) label get no row.

    Raises:
        ValueError: probes without ``label_sets``, or no positive label to explain at all.
    """
    sets = probes.label_sets
    if sets is None:
        raise ValueError(
            "expand_positive_labels needs multi-label probes: ProbeSet(images, "
            "label_sets=<bool [N, K]>)"
        )
    wanted = sets
    if classes is not None:
        keep = torch.zeros(sets.shape[1], dtype=torch.bool)
        cols = [int(c) for c in classes if 0 <= int(c) < sets.shape[1]]
        keep[cols] = True
        wanted = sets & keep
    pos = torch.nonzero(wanted)  # [M, 2]: (probe, label), row-major = probe order, label order
    if pos.shape[0] == 0:
        which = "" if classes is None else f" among classes={list(classes)}"
        raise ValueError(
            f"none of the {len(probes)} multi-label probes has a positive label{which}: there "
            "is nothing to explain; give probes where the labels to watch are present"
        )
    index, labels = pos[:, 0].contiguous(), pos[:, 1].contiguous()

    def rows(t: Tensor | None) -> Tensor | None:
        return None if t is None else t[index]

    expanded = ProbeSet(
        probes.images[index],
        labels,
        rows(probes.object_masks),
        rows(probes.artifact_masks),
        label_sets=sets[index],
    )
    return ExpandedProbes(expanded, index)


@dataclass(frozen=True)
class TaskPlan:
    """What the runs explain, decided at set-up by :func:`plan_task`.

    Attributes:
        multilabel: read the outputs as independent sigmoid logits.
        explained: the :class:`ProbeSet` the runs explain (the probes themselves, or one row per
            positive label of multi-label probes).
        index: long ``[M]``, the probe each explained row comes from.
        message: one sentence for the set-up (``None``: nothing to say).
    """

    multilabel: bool
    explained: ProbeSet
    index: Tensor
    message: str | None = None


def plan_task(
    task: str,
    probes: ProbeSet,
    *,
    target: str = "label",
    classes: Sequence[int] | None = None,
) -> TaskPlan:
    """Decide the task and the explanation set of a probe set.

    * ``"multiclass"``: the probes as they are (multi-label probes are an error).
    * ``"multilabel"``, or ``"auto"`` with probes that carry ``label_sets``: sigmoid outputs.
      With ``target="label"`` and label sets, each probe is explained once per positive label
      (probes with none are not explained: an image without a finding has no label whose
      evidence could be a shortcut); with ``target="predicted"`` each probe's top logit is
      explained; probes with class indices explain their one label.
    * ``"auto"`` otherwise: multi-class.

    Args:
        task: one of :data:`TASKS`.
        probes: the probe set in use.
        target: the callback's ``target`` (``"label"`` or ``"predicted"``).
        classes: explain only these labels (the callback's ``classes``).

    Raises:
        ValueError: an unknown task, multi-label probes with ``task="multiclass"``, or
            multi-label probes with no positive label to explain.
    """
    check_task(task)
    n = len(probes)
    same = torch.arange(n)
    if task == "multiclass":
        if probes.is_multilabel:
            raise ValueError(
                "GradCAMCallback(task='multiclass'), but the probes carry multi-hot label sets "
                "[N, K]; pass task='multilabel' (or 'auto') for a sigmoid multi-label model, or "
                "give class indices [N] for a softmax one"
            )
        return TaskPlan(False, probes, same)
    if task == "auto" and not probes.is_multilabel:
        return TaskPlan(False, probes, same)
    if not probes.is_multilabel:  # task="multilabel" with class indices (or no labels)
        return TaskPlan(True, probes, same)
    if target != "label":
        top = ProbeSet(probes.images, None, probes.object_masks, probes.artifact_masks)
        note = (
            "GradCAMCallback: multi-label probes with target='predicted': each probe's top "
            "label (its largest logit) is explained"
        )
        return TaskPlan(True, top, same, note if task == "auto" else None)
    return _per_label_plan(task, probes, classes)


def _per_label_plan(task: str, probes: ProbeSet, classes: Sequence[int] | None) -> TaskPlan:
    """The plan that explains multi-label probes once per positive label, with its set-up
    sentence (``task`` is ``"multilabel"`` or ``"auto"``)."""
    expanded = expand_positive_labels(probes, classes)
    n, m = len(probes), len(expanded.probes)
    empty = n - int(torch.unique(expanded.index).numel())
    unexplained = f"; {empty} probe(s) with no positive label are not explained" if empty else ""
    if task == "auto":
        k = int(probes.label_sets.shape[1])  # type: ignore[union-attr]
        message = (
            f"GradCAMCallback: the probe labels are multi-hot [N, {k}], so the model is watched "
            f"as a multi-label classifier (sigmoid outputs): each probe is explained once per "
            f"positive label ({m} explanations of {n} probes{unexplained}), confidence is the "
            "label's sigmoid and flags name the label. Pass task='multilabel' to silence this "
            "(or task='multiclass' to explain class indices instead)."
        )
    else:
        message = f"GradCAMCallback: multi-label probes{unexplained}." if empty else None
    return TaskPlan(True, expanded.probes, expanded.index, message)


def sigmoid_outputs(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Prediction and confidence of each explained label of a multi-label model.

    Args:
        logits: float ``[N, K]`` sigmoid logits.
        targets: long ``[N]``, the label each row explains.

    Returns:
        ``(predicted, confidence)``: long ``[N]``, 1 where the target label is predicted
        present (logit > 0), else 0; float32 ``[N]`` in ``[0, 1]``, ``sigmoid(logit)``.
    """
    z = logits.float().gather(1, targets.to(logits.device, torch.long)[:, None])[:, 0]
    return (z > 0).long(), z.sigmoid()
