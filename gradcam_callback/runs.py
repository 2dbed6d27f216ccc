"""The set-up and the scheduled runs of :class:`~gradcam_callback.GradCAMCallback`.

At set-up :func:`choose` takes the probes from a dataloader and :func:`prepare` resolves the
engine, the layers and the task. A run is two halves: :func:`explain_run`, on the training
thread, explains the probes (:mod:`.probing`, sharded over DDP ranks) and drops maps that are not
finite; :func:`analyse_run` has the monitor measure and decide (:mod:`.alarms`), adds the periodic
quality checks, and returns the run's record, flags and media, either on the training thread
(:func:`compute_run`, both halves) or on the worker thread against the model's shadow
(:func:`background_job`, :mod:`.background`; :func:`sync_reason` says when it cannot);
:func:`report_run` publishes the scalars, announces new flags and
queues the media (:mod:`.reporting`). :func:`finish` writes the filmstrip and runs the
randomisation test (:func:`sanity_run`) at fit end. Each takes the callback (``cb``) for its
settings and state; the callback keeps the hooks, the schedule, the state and what to do about a
flag.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from . import background, checks
from . import trainer_utils as tu
from .alarms import Flag
from .engine import GradCAM
from .multilabel import plan_task, scan_multilabel, sigmoid_outputs
from .probes import ProbeChoice, choose_probes, preserve_rng
from .probing import Explained, Shard, explain_probes, quality_metrics, sanity_check, score_function
from .reporting import RunMedia, flag_warning, run_media
from .sinks import thread_safe_logger

__all__ = [
    "Explanation",
    "InFlight",
    "analyse_run",
    "announce",
    "background_job",
    "choose",
    "compute_run",
    "draw_now",
    "explain_run",
    "plugin_kwargs",
    "prepare",
    "probe_metrics",
    "report_run",
    "resume_run",
    "sanity_run",
    "score_fn_for",
    "shard_of",
    "start_run",
    "sync_reason",
]


@dataclass
class Explanation:
    """What the training thread hands to a run's analysis (:func:`analyse_run`): the engine's
    results and the run's place in the fit, on the model's device."""

    stage: str
    step: int
    epoch: int
    run: int  # 1-based index of the run in the history
    baseline: bool  # the drift reference: the baseline run, or the first run of a history
    images: Tensor
    labels: Tensor | None
    maps: Tensor  # finite, [N, h, w]
    skipped: list[int]  # probes whose map was not finite (zeroed)
    res: Explained
    media: RunMedia  # what the artefacts show, without the per-probe metrics yet


def explain_run(cb: Any, trainer: Any, pl_module: Any, stage: str, step: int) -> Explanation:
    """The part of a run that needs the model as it trains: the maps of the probes (sharded over
    DDP ranks), with non-finite maps zeroed and said in a warning, and what the run's artefacts
    show of them."""
    images, labels = _inputs(cb, tu.module_device(pl_module))
    use_label = cb.target == "label" and labels is not None and cb.target_fn is None
    with tu.eager_forward(pl_module):
        res = explain_probes(
            cb._engine, images, labels if use_label else cb.target_fn,
            batch_size=cb.batch_size, shard=shard_of(trainer), **plugin_kwargs(trainer),
        )  # fmt: skip
    maps, skipped = _finite_maps(cb, trainer, res.maps, stage, step)
    return Explanation(
        stage=stage, step=step, epoch=int(trainer.current_epoch), run=len(cb.history) + 1,
        baseline=stage == "baseline" or not cb.history, images=images, labels=labels,
        maps=maps, skipped=skipped, res=res, media=_media(cb, step, images, maps, res),
    )  # fmt: skip


def _inputs(cb: Any, device: torch.device) -> tuple[Tensor, Tensor | None]:
    """The explained probes' images and labels on ``device``."""
    probes = cb.explained_probes
    labels = probes.labels.to(device) if probes.labels is not None else None
    return probes.images.to(device), labels


def _media(cb: Any, step: int, images: Tensor, maps: Tensor, res: Explained) -> RunMedia:
    """What the run's artefacts show (the per-probe metrics are added after the analysis)."""
    return run_media(
        step, cb.explained_probes, images, maps, res.logits if cb.target_fn is None else None,
        res.targets, {}, cb.max_images if cb.log_images else 0, multilabel=cb._multilabel,
    )  # fmt: skip


def draw_now(cb: Any, trainer: Any, ex: Explanation) -> None:
    """Queue the run's overlay grid before its analysis on the training thread (rank zero): the
    overlays need only the maps and predictions, so the reporter draws them meanwhile. (With
    the analysis on the worker the grid follows it, with the tables: one background thread at a
    time then competes with training for the cores.)"""
    if not trainer.is_global_zero:
        return
    try:
        for error in cb.reporter.submit_images(cb._sinks(trainer), ex.media):
            tu.warn(trainer, f"GradCAMCallback: {error}")
    except Exception as err:  # a reporting fault never crashes training
        tu.warn(trainer, f"GradCAMCallback: could not queue the run's images: {err!r}")


def analyse_run(
    cb: Any, ex: Explanation, score_fn: Callable[[Tensor], Tensor]
) -> tuple[dict[str, Any], list[Flag], RunMedia]:
    """Measure and decide on the training thread or the worker: ``(record, flags, media)``.

    ``score_fn`` is the model as the causal checks and quality metrics see it (the model itself
    on the training thread, its :class:`~.background.ModelShadow` on the worker).
    """
    probes, res, images, maps = cb.explained_probes, ex.res, ex.images, ex.maps
    device = images.device
    logits = res.logits if cb.target_fn is None else None  # target_fn: read its score
    targets = res.targets if res.targets is not None else torch.zeros_like(res.scores).long()
    metrics = probe_metrics(logits, res.targets, ex.labels, res.scores, cb._multilabel)
    analysis = cb.monitor.analyze(
        maps=maps, images=images.float(), targets=targets, logits=logits,
        object_masks=_to(probes.object_masks, device) if cb.use_masks else None,
        artifact_masks=_to(probes.artifact_masks, device) if cb.use_masks else None,
        score_fn=score_fn if cb.confirm else None, epoch=ex.epoch,
        global_step=ex.step, baseline=ex.baseline,
        map_size=checks.finest_map(cb.layer_info), multilabel=cb._multilabel,
        probe_index=cb.explained_index if cb._multilabel else None,
    )  # fmt: skip
    metrics.update(analysis.summary)
    metrics.update(
        quality_metrics(
            score_fn, images, maps, targets,
            softmax=cb.target_fn is None and not cb._multilabel,  # else the raw logit
            deletion_steps=(
                cb.faithfulness_steps if _due(ex.run, cb.faithfulness_every_n_runs) else 0
            ),
            occlusion=_due(ex.run, cb.occlusion_every_n_runs),
        )
    )  # fmt: skip
    flags = [f for f in analysis.flags if f.probe is None or f.probe not in ex.skipped]
    record = {
        "epoch": ex.epoch, "global_step": ex.step, "stage": ex.stage,
        "metrics": metrics, "flags": [str(f.kind) for f in flags],
    }  # fmt: skip
    per_probe = {k: v.tolist() for k, v in analysis.per_probe.items()}
    return record, flags, dataclasses.replace(ex.media, per_probe=per_probe)


def compute_run(
    cb: Any, trainer: Any, pl_module: Any, stage: str, step: int
) -> tuple[dict[str, Any], list[Flag], RunMedia]:
    """A whole run on the training thread: explain the probes, measure, decide."""
    return _analyse_here(cb, trainer, pl_module, explain_run(cb, trainer, pl_module, stage, step))


def _analyse_here(
    cb: Any, trainer: Any, pl_module: Any, ex: Explanation
) -> tuple[dict[str, Any], list[Flag], RunMedia]:
    """The analysis on the training thread, against the model itself (the grid drawn meanwhile)."""
    draw_now(cb, trainer, ex)
    return analyse_run(cb, ex, score_fn_for(cb, trainer, pl_module, ex.images.dtype))


def start_run(
    cb: Any, trainer: Any, pl_module: Any, stage: str, step: int, use_log: bool
) -> tuple[dict[str, Any], list[Flag], RunMedia] | None:
    """A run, on the worker thread where the fit allows it (``None``: queued on ``cb._worker``,
    its :class:`InFlight` in ``cb._in_flight``; its ``(record, flags, media, use_log)`` is
    collected later), else here: ``(record, flags, media)``. A model whose copy fails keeps this
    and the later runs here (said once)."""
    if cb._sync_why is not None or stage not in ("baseline", "fit"):
        return compute_run(cb, trainer, pl_module, stage, step)
    ex = explain_run(cb, trainer, pl_module, stage, step)
    try:
        job = background_job(cb, trainer, pl_module, ex)
    except Exception as err:
        cb._sync_why = f"the model's copy for the worker thread failed: {err}"
        cb._shadow.release()
        tu.warn(
            trainer,
            f"GradCAMCallback: {cb._sync_why}; the runs are analysed on the training thread "
            "(set async_analysis=False to say so up front)",
        )
        return _analyse_here(cb, trainer, pl_module, ex)
    # no run in flight, so the monitor is still as it was before this run; its state dict is
    # new containers over maps the monitor replaces but never writes into: no copy needed
    before = cb.monitor.state_dict()
    cb._worker.submit(lambda: (*job(), use_log), f"run at step {step}")
    cb._in_flight = InFlight(ex, use_log, int(trainer.global_step), before)
    return None


@dataclass
class InFlight:
    """A run whose analysis is on the worker thread, as a checkpoint saved meanwhile holds it
    (instead of waiting for it): the run's engine results, and the monitor as it was before the
    run. A fit resumed from that checkpoint finishes the run (:func:`resume_run`) against the
    restored model, which is the model the maps saw when no optimizer step came between the run
    and the save (``global_step``; the callback waits for the run otherwise)."""

    ex: Explanation
    use_log: bool
    global_step: int  # optimizer steps at the run
    monitor: dict[str, Any]  # ShortcutMonitor.state_dict() before the run

    def state_dict(self) -> dict[str, Any]:
        """CPU tensors and plain Python only (loads with ``torch.load(weights_only=True)``)."""
        ex, res = self.ex, self.ex.res
        return {
            "stage": ex.stage, "step": ex.step, "epoch": ex.epoch, "run": ex.run,
            "baseline": ex.baseline, "skipped": list(ex.skipped), "maps": _cpu(ex.maps),
            "scores": _cpu(res.scores), "logits": _cpu(res.logits),
            "targets": _cpu(res.targets), "use_log": self.use_log,
            "global_step": self.global_step,
        }  # fmt: skip


def resume_run(
    cb: Any, trainer: Any, pl_module: Any, state: dict[str, Any]
) -> tuple[dict[str, Any], list[Flag], RunMedia]:
    """Finish, on the training thread, a run that a checkpoint saved in flight
    (:meth:`InFlight.state_dict`): ``(record, flags, media)`` as the worker would have made them,
    with the monitor restored to its state before the run."""
    device = tu.module_device(pl_module)
    images, labels = _inputs(cb, device)
    res = Explained(
        maps=state["maps"].to(device), scores=state["scores"].to(device),
        logits=_to(state["logits"], device), targets=_to(state["targets"], device),
    )  # fmt: skip
    step = int(state["step"])
    ex = Explanation(
        stage=str(state["stage"]), step=step, epoch=int(state["epoch"]), run=int(state["run"]),
        baseline=bool(state["baseline"]), images=images, labels=labels, maps=res.maps,
        skipped=[int(i) for i in state["skipped"]], res=res,
        media=_media(cb, step, images, res.maps, res),
    )  # fmt: skip
    return _analyse_here(cb, trainer, pl_module, ex)


def _cpu(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach().cpu()


def background_job(
    cb: Any, trainer: Any, pl_module: Any, ex: Explanation
) -> Callable[[], tuple[dict[str, Any], list[Flag], RunMedia]]:
    """The analysis of ``ex`` as a job for the worker thread, against the model's shadow
    refreshed now (on the training thread, so it holds the weights the maps saw)."""
    shadow = cb._shadow.refresh(pl_module)
    score_fn = score_function(
        shadow, batch_size=cb.batch_size, dtype=ex.images.dtype, target_fn=cb.target_fn,
        **plugin_kwargs(trainer),
    )  # fmt: skip
    device = ex.images.device

    def job() -> tuple[dict[str, Any], list[Flag], RunMedia]:
        # a new thread's current CUDA device is device 0: make it the run's
        with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
            return analyse_run(cb, ex, score_fn)

    return job


def sync_reason(cb: Any, trainer: Any, pl_module: Any, stage: str) -> str | None:
    """Why this set-up's runs stay on the training thread (``None``: they go to the worker).
    For a fit that can use the worker, the model's copy is made now: a model it cannot copy
    safely (:func:`~.background.clone_structure`) stays here, rather than failing at a run."""
    why = _sync_reason(cb, trainer, pl_module)
    if why is None and stage == "fit":
        try:
            cb._shadow.refresh(pl_module)
        except Exception as err:
            why = f"the model cannot be copied for the worker thread: {err}"
    if cb.verbose and cb.async_analysis and why and getattr(trainer, "is_global_zero", True):
        print(f"GradCAMCallback: runs analysed on the training thread ({why})")
    return why


def _sync_reason(cb: Any, trainer: Any, pl_module: Any) -> str | None:
    monitored = [
        str(m) for c in getattr(trainer, "callbacks", None) or [] if c is not cb
        if isinstance(m := getattr(c, "monitor", None), str)
    ]  # fmt: skip
    return background.sync_reason(
        enabled=cb.async_analysis,
        on_flag=cb.on_flag,
        world_size=int(getattr(trainer, "world_size", 1) or 1),
        precision_plugin=tu.precision_plugin(trainer),
        compiled="original_forward" in (getattr(pl_module, "_compiler_ctx", None) or {}),
        monitored=monitored,
        prefix=cb.prefix,
    )


def _finite_maps(
    cb: Any, trainer: Any, maps: Tensor, stage: str, step: int
) -> tuple[Tensor, list[int]]:
    """``maps`` ``[N, h, w]`` with non-finite maps zeroed (said in a warning), and their probe
    indices; warns once per fit when the maps are all zero (not at the baseline, where an
    untrained, zero-initialised head legitimately has no gradient)."""
    finite = torch.isfinite(maps).flatten(1).all(1)
    skipped = [int(i) for i in torch.nonzero(~finite).flatten().tolist()]
    if skipped:
        tu.warn(
            trainer,
            f"GradCAMCallback: probe(s) {skipped} gave a NaN or inf map at step {step} and are "
            "skipped in this run (check for overflow under fp16, or a diverging model)",
        )
        maps = torch.where(finite[:, None, None], maps, torch.zeros_like(maps))
    note = checks.zero_map_warning(maps, cb.layer_info)
    if note and stage != "baseline" and bool(finite.any()) and "zero" not in cb._warned:
        cb._warned.add("zero")
        tu.warn(trainer, note)
    return maps, skipped


def report_run(
    cb: Any,
    trainer: Any,
    record: dict[str, Any],
    flags: list[Flag],
    media: RunMedia,
    use_log: bool = True,
) -> None:
    """Publish a run: scalars to the loggers (rank zero, guarded calls; from the reporter's
    worker thread for the loggers that allow it, :func:`~.sinks.thread_safe_logger`) and the
    set-level ones into ``trainer.callback_metrics`` on every rank (where EarlyStopping /
    ModelCheckpoint read them; every rank holds the same values: no sync needed); new flags as
    warnings; the media queued for the reporter's worker thread."""
    scalars = {f"{cb.prefix}/{k}": v for k, v in record["metrics"].items()}
    if use_log:
        tu.publish_metrics(trainer, {k: v for k, v in scalars.items() if "/class_" not in k})
    if not trainer.is_global_zero:
        return
    step, reporter = record["global_step"], cb.reporter
    # loggers that take writes from another thread get them from the reporter's worker
    aside = thread_safe_logger if reporter.background else lambda _: False
    tu.log_metrics(trainer, scalars, step, cb._warned, only=lambda lg: not aside(lg))

    def later() -> None:
        tu.log_metrics(
            trainer, scalars, step, cb._warned, only=aside,
            report=lambda m: reporter.note(m.removeprefix("GradCAMCallback: ")),
        )  # fmt: skip

    announce(trainer, flags, cb.prefix)
    try:
        for error in reporter.submit(cb._sinks(trainer), media, flags, scalars=later):
            tu.warn(trainer, f"GradCAMCallback: {error}")
    except Exception as err:  # a reporting fault never crashes training
        tu.warn(trainer, f"GradCAMCallback: could not queue the run's media: {err!r}")


def announce(trainer: Any, flags: Sequence[Flag], prefix: str) -> None:
    """One rank-zero warning per new flag (persisting ones are only written to the log)."""
    for flag in flags:
        if not flag.persistent:
            tu.warn(trainer, flag_warning(flag, prefix))


def sanity_run(cb: Any, trainer: Any, pl_module: Any) -> list[Flag]:
    """Model-parameter randomisation test on a copy of the model: a history record, logged
    scalars and, when the maps barely change, an ``"unfaithful"`` flag (returned, announced and
    written to the loggers)."""
    step, epoch = tu.log_step(trainer), int(trainer.current_epoch)
    summary, flag = sanity_check(
        pl_module, cb.explained_probes, cb._engine.target_layers, cb.method,
        use_labels=cb.target == "label", epoch=epoch, step=step, prefix=cb.prefix,
    )  # fmt: skip
    flags = [flag] if flag is not None else []
    cb.history.append({"epoch": epoch, "global_step": step, "stage": "sanity_check",
                       "metrics": summary, "flags": [str(f.kind) for f in flags]})  # fmt: skip
    tu.log_metrics(trainer, {f"{cb.prefix}/{k}": v for k, v in summary.items()}, step)
    announce(trainer, flags, cb.prefix)
    cb.reporter.write_flags(cb._sinks(trainer), flags, step)
    return flags


def finish(cb: Any, trainer: Any, pl_module: Any) -> list[Flag]:
    """Fit end on rank zero: the filmstrip and GIF, and the randomisation test when asked for
    (its flags returned). A fault in either is a warning, never a crashed fit."""
    try:
        if cb.filmstrip and cb.log_images and cb.reporter.thumbs:
            cb.reporter.write_filmstrip(cb._sinks(trainer), tu.log_step(trainer))
    except Exception as err:
        tu.warn(trainer, f"GradCAMCallback: could not write the filmstrip: {err!r}")
    if not (cb.sanity_check and cb.probes is not None):
        return []
    try:
        with preserve_rng(), tu.eager_forward(pl_module):
            return sanity_run(cb, trainer, pl_module)
    except Exception as err:
        tu.warn(trainer, f"GradCAMCallback: the randomisation check failed: {err!r}")
        return []


def plugin_kwargs(trainer: Any) -> dict[str, Any]:
    """``convert`` / ``context`` of the trainer's precision plugin (``{}`` without one)."""
    plugin = tu.precision_plugin(trainer)
    if plugin is None:
        return {}
    return {"convert": plugin.convert_input, "context": plugin.forward_context}


def shard_of(trainer: Any) -> Shard:
    """This rank's share of the probes, gathered through the strategy (one shard off DDP)."""
    world = int(getattr(trainer, "world_size", 1) or 1)
    if world <= 1:
        return Shard()
    gather: Callable[[Tensor], Tensor] = lambda t: tu.all_gather(trainer, t)  # noqa: E731
    return Shard(int(trainer.global_rank), world, gather)


def score_fn_for(cb: Any, trainer: Any, pl_module: Any, dtype: torch.dtype) -> Callable:
    """``images -> logits`` of the model in eval mode, chunked, sharded, under the plugin."""
    return score_function(
        pl_module, batch_size=cb.batch_size, dtype=dtype, target_fn=cb.target_fn,
        eager=lambda: tu.eager_forward(pl_module), shard=shard_of(trainer),
        **plugin_kwargs(trainer),
    )  # fmt: skip


def probe_metrics(
    logits: Tensor | None,
    targets: Tensor | None,
    labels: Tensor | None,
    scores: Tensor,
    multilabel: bool = False,
) -> dict[str, float]:
    """``probe/confidence`` (softmax of the target; multi-label: its sigmoid), ``probe/accuracy``
    (multi-label: share of explained labels predicted present), ``probe/target_score``."""
    out: dict[str, float] = {}
    if logits is not None and targets is not None and multilabel:
        pred, conf = sigmoid_outputs(logits, targets)
        out["probe/confidence"] = float(conf.mean())
        if labels is not None:
            out["probe/accuracy"] = float(pred.float().mean())
    elif logits is not None and targets is not None:
        out["probe/confidence"] = float(logits.softmax(1).gather(1, targets[:, None]).mean())
        if labels is not None:
            out["probe/accuracy"] = float((logits.argmax(1) == labels).float().mean())
    out["probe/target_score"] = float(scores.mean())
    return out


def _due(run: int, every: int) -> bool:
    return bool(every) and run % every == 0


def _to(t: Tensor | None, device: torch.device) -> Tensor | None:
    return None if t is None else t.to(device)


def prepare(cb: Any, trainer: Any, model: nn.Module) -> None:
    """Set-up after the probes are known: the engine, the layers it resolves on two probes, the
    model's output, the task plan (multi-label rows), the overlays, and the set-up notes."""
    probes = cb.probes
    if cb._engine is None:
        cb._engine = GradCAM(
            model, cb.target_layer, cb.method,
            reshape_transform=cb.reshape_transform, min_map_size=cb.min_map_size,
        )  # fmt: skip
    sample = probes.images[: min(2, len(probes))].to(tu.module_device(model))
    with preserve_rng(), checks.model_fault(model, sample):
        cb.layer_info = cb._engine.resolve(sample)
        out = cb._engine.explain(sample, cb.target_fn, upsample=False).output
    checks.check_output(out, probes, cb.target, cb.target_fn is not None)
    plan = plan_task(cb.task, probes, target=cb.target, classes=cb.classes)
    cb._multilabel, cb._explained, cb.explained_index = plan.multilabel, plan.explained, plan.index
    if plan.message:
        tu.warn(trainer, plan.message)
    if cb.log_images:
        checks.check_display(cb.reporter, probes)
    lines, notes = checks.setup_notes(
        choice=cb.probe_choice, probes=plan.explained, layer_info=cb.layer_info,
        monitor=cb.monitor, target=cb.target, max_probes=cb.max_probes,
        probes_per_class=cb.probes_per_class,
    )  # fmt: skip
    if cb.verbose and getattr(trainer, "is_global_zero", True):
        print("\n".join(lines))
    for note in notes:
        tu.warn(trainer, note)


def choose(cb: Any, trainer: Any, stage: str) -> ProbeChoice | None:
    """The probes from the stage's dataloader by the callback's policy (``None``, said in a
    warning, when there is no dataloader to take them from)."""
    loader = tu.find_dataloader(trainer, stage, cb.dataloader_idx)
    if loader is None:
        tu.warn(
            trainer,
            "GradCAMCallback: no validation dataloader and no probes given, so there is "
            "nothing to explain; the callback disables itself. Add a val_dataloader or "
            "pass GradCAMCallback(probes=ProbeSet(images, labels)).",
        )
        return None
    choice = choose_probes(
        loader, cb.num_probes, per_class=cb.probes_per_class, max_probes=cb.max_probes,
        classes=cb.classes, keys=cb.keys, multilabel=scan_multilabel(cb.task),
    )  # fmt: skip
    note = checks.label_warning(choice.probes, loader, cb.keys, cb.target)
    if note:
        tu.warn(trainer, note)
    return choice
