"""``GradCAMCallback``: training-time Grad-CAM on a fixed probe set, with shortcut alarms.

The callback is a thin orchestrator of hooks, schedule, state and ``on_flag``: it chooses the
probes once (:mod:`.probes`), explains them at each scheduled run (:mod:`.probing`, the engine),
hands the maps to the monitor (:mod:`.alarms`), and the results to the reporter
(:mod:`.reporting`, off the training thread) and the loggers (:mod:`.trainer_utils`). Settings are
checked at construction and set-up (:mod:`.checks`). It is the only layer that knows Lightning.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any, Literal

import torch
from pytorch_lightning.callbacks import Callback
from torch import Tensor, nn

from . import checks
from . import trainer_utils as tu
from .alarms import Flag, ShortcutDetected, ShortcutMonitor
from .engine import GradCAM
from .multilabel import Task, plan_task, scan_multilabel, sigmoid_outputs
from .probes import BatchKeys, ProbeChoice, ProbeSet, choose_probes, preserve_rng
from .probing import Shard, explain_probes, quality_metrics, sanity_check, score_function
from .reporting import Reporter, RunMedia, flag_warning, run_media
from .rules import FlagKind
from .sinks import SinkGroup

__all__ = ["GradCAMCallback"]

_STATE_VERSION = 1


class GradCAMCallback(Callback):
    r"""Run Grad-CAM on a fixed probe set during training; log overlays, drift and shortcut flags.

    At fit start (a baseline before any training step), after every ``every_n_epochs``-th
    validation, and in ``trainer.validate()`` / ``trainer.test()``, the callback explains the same
    probes with one batched forward + gradient on the training device, logs an ``input | heatmap
    | overlay`` grid and attention metrics to every logger, and raises a
    :class:`~gradcam_callback.Flag` when attention moves onto a label artifact or off the object.
    The README's options table explains every argument; in short:

    Args:
        num_probes: ``None``: ``probes_per_class`` probes of every class (at most ``max_probes``,
            watching ``classes`` or the most frequent ones); an ``int``: that many, balanced.
        probes_per_class, max_probes, classes: the per-class probe policy (see ``num_probes``).
        every_n_epochs: run after the validation of every n-th epoch.
        target_layer: ``None`` (automatic: the deepest layer with at least ``min_map_size``
            cells per side), a dotted module name, or a list of names (maps averaged).
        method: ``"gradcam"``, ``"gradcam++"``, ``"hirescam"``, ``"xgradcam"``, ``"layercam"``.
        target: explain the probe's ``"label"`` or the ``"predicted"`` class.
        probes: an explicit :class:`~gradcam_callback.ProbeSet` (images, labels, masks).
        batch_size: probes per forward chunk.
        dataloader_idx: the validation dataloader the probes come from.
        prefix: first component of every logged name.
        log_images, colormap, alpha, mean, std: the overlay grid (any OpenCV colour map), and
            the inputs' normalisation to show them in true colour (``None``: inferred).
        baseline: run once at fit start, before any training step (the drift reference).
        use_masks: use object/artifact masks of the batches or the ProbeSet.
        on_flag: ``"warn"``, ``"stop"`` (end training, as EarlyStopping does) or ``"raise"``
            (:class:`~gradcam_callback.ShortcutDetected`).
        artifact_enrichment, object_enrichment, hotspot_consistency, hotspot_stability,
            diffuse_entropy, evidence_drop, dependence, border_enrichment, drift_pearson:
            shorthand for the :class:`~gradcam_callback.ShortcutMonitor` thresholds (``None``:
            its default).
        confirm: confirm flags causally (erase the region, require the evidence to drop).
        filmstrip: at fit end, a probe-by-run filmstrip (PNG) and GIF of the overlays.
        sanity_check: at fit end, the model-parameter randomisation test.
        faithfulness_every_n_runs, faithfulness_steps: periodic deletion-curve AUC.
        occlusion_every_n_runs: periodic occlusion cross-check (slow).
        image_key, label_key, object_mask_key, artifact_mask_key: dict-batch keys.
        target_fn: ``output -> Tensor[N]`` scores, for outputs other than ``[N, K]`` logits.
        verbose: print the layer, its resolution and the probe policy at set-up.
        reshape_transform: token/channels-last layer output -> ``[N, K, h, w]`` when the grid
            is not evident from the input size.
        min_map_size: fewest map cells per side for the automatic layer and spatial rules.
        monitor: a :class:`~gradcam_callback.ShortcutMonitor` with every threshold (not
            together with the shorthands).
        task: ``"multiclass"`` (softmax logits), ``"multilabel"`` (sigmoid outputs: a probe is
            explained once per positive label, flags name the label) or ``"auto"`` (multi-label
            when the probe labels are multi-hot, said at set-up).

    Example::

        >>> from pytorch_lightning import Trainer
        >>> from gradcam_callback import GradCAMCallback
        >>> trainer = Trainer(callbacks=[GradCAMCallback()])              # zero-config
        >>> cb = GradCAMCallback(every_n_epochs=2, target_layer="layer4", on_flag="stop")
    """

    def __init__(
        self,
        num_probes: int | None = None,
        probes_per_class: int = 8,
        max_probes: int = 128,
        classes: list[int] | None = None,
        every_n_epochs: int = 1,
        target_layer: str | list[str] | None = None,
        method: Literal["gradcam", "gradcam++", "hirescam", "xgradcam", "layercam"] = "gradcam",
        target: Literal["label", "predicted"] = "label",
        probes: ProbeSet | None = None,
        batch_size: int = 16,
        dataloader_idx: int = 0,
        prefix: str = "gradcam",
        log_images: bool = True,
        colormap: str = "jet",
        alpha: float = 0.5,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        baseline: bool = True,
        use_masks: bool = True,
        on_flag: Literal["warn", "stop", "raise"] = "warn",
        artifact_enrichment: float | None = None,
        object_enrichment: float | None = None,
        hotspot_consistency: float | None = None,
        hotspot_stability: float | None = None,
        diffuse_entropy: float | None = None,
        evidence_drop: float | None = None,
        dependence: float | None = None,
        border_enrichment: float | None = None,
        drift_pearson: float | None = None,
        confirm: bool = True,
        filmstrip: bool = True,
        sanity_check: bool = False,
        faithfulness_every_n_runs: int = 0,
        faithfulness_steps: int = 10,
        occlusion_every_n_runs: int = 0,
        image_key: str = "image",
        label_key: str = "label",
        object_mask_key: str = "object_mask",
        artifact_mask_key: str = "artifact_mask",
        target_fn: Callable[[Any], Tensor] | None = None,
        verbose: bool = True,
        reshape_transform: Callable[[Tensor], Tensor] | None = None,
        min_map_size: int = 7,
        monitor: ShortcutMonitor | None = None,
        task: Task = "auto",
    ) -> None:
        super().__init__()
        settings = dict(locals())
        for name in ("self", "__class__", "monitor", "classes", "prefix", "target_layer", "probes"):
            settings.pop(name, None)
        thresholds = {k: settings.pop(k) for k in checks.THRESHOLDS}
        keys = [settings.pop(k) for k in (
            "image_key", "label_key", "object_mask_key", "artifact_mask_key")]  # fmt: skip
        checks.check_settings(
            probes=probes, **{k: settings[k] for k in checks.SETTINGS if k != "probes"}
        )
        self.__dict__.update(settings)
        self.classes = None if classes is None else [int(c) for c in classes]
        self.target_layer, self.prefix = target_layer, prefix.rstrip("/")
        self.keys = BatchKeys(*keys)
        self.thresholds = {k: float(v) for k, v in thresholds.items() if v is not None}
        self.monitor = checks.build_monitor(monitor, thresholds, confirm, min_map_size)
        self.reporter = Reporter(
            prefix=self.prefix, log_images=log_images, colormap=colormap, alpha=alpha,
            mean=mean, std=std, max_filmstrip_runs=24,
        )  # fmt: skip
        self.max_images = 32
        self._probes: ProbeSet | None = probes
        self._explicit_probes = probes is not None
        self.probe_choice: ProbeChoice | None = None
        self.history: list[dict[str, Any]] = []
        self.flags: list[Flag] = []
        self.layer_info: list[Any] = []
        self._engine: GradCAM | None = None
        self._disabled = False
        self._last_key: tuple[str, int, int] | None = None
        self._sink_group: SinkGroup | None = None
        self._model_ref: weakref.ref[nn.Module] | None = None  # the model of the last set-up
        self._warned: set[str] = set()  # once-per-set-up warnings already given
        self._multilabel = False  # decided at set-up (multilabel.plan_task)
        self._explained: ProbeSet | None = None  # a row per (probe, positive label)
        self.explained_index: Tensor | None = None  # the probe of each explained row

    @property
    def probes(self) -> ProbeSet | None:
        """The :class:`ProbeSet` in use (chosen at set-up, or given)."""
        return self._probes

    @property
    def explained_probes(self) -> ProbeSet | None:
        """The probes the runs explain: :attr:`probes`, or for multi-label probes one row per
        (probe, positive label), with ``explained_index`` naming each row's probe."""
        return self._explained if self._explained is not None else self._probes

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            prefix=self.prefix, target_layer=self.target_layer, method=self.method
        )

    # ------------------------------------------------------------------ set-up
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Choose the probes and validate layer, shapes and labels before any training step.

        Raises:
            ValueError: an unknown layer (with the closest names), a model without a spatial
                layer, masks or labels that do not fit, a model that fails on the probes, a
                ``dataloader_idx`` beyond the dataloaders, probes the overlays cannot show.
        """
        self._disabled = False
        model = pl_module  # the LightningModule itself, never the DDP wrapper
        self._start_session(trainer, model)
        if self._probes is None and not self._choose_probes(trainer, stage):
            return
        probes = self._probes
        assert probes is not None
        if self._engine is None:
            self._engine = GradCAM(
                model, self.target_layer, self.method,
                reshape_transform=self.reshape_transform, min_map_size=self.min_map_size,
            )  # fmt: skip
        sample = probes.images[: min(2, len(probes))].to(tu.module_device(model))
        with preserve_rng(), checks.model_fault(model, sample):
            self.layer_info = self._engine.resolve(sample)
            out = self._engine.explain(sample, self.target_fn, upsample=False).output
        checks.check_output(out, probes, self.target, self.target_fn is not None)
        plan = plan_task(self.task, probes, target=self.target, classes=self.classes)
        self._multilabel, self._explained, self.explained_index = (
            plan.multilabel,
            plan.explained,
            plan.index,
        )
        if plan.message:
            tu.warn(trainer, plan.message)
        if self.log_images:
            checks.check_display(self.reporter, probes)
        lines, notes = checks.setup_notes(
            choice=self.probe_choice, probes=plan.explained, layer_info=self.layer_info,
            monitor=self.monitor, target=self.target, max_probes=self.max_probes,
            probes_per_class=self.probes_per_class,
        )  # fmt: skip
        if self.verbose and getattr(trainer, "is_global_zero", True):
            print("\n".join(lines))
        for note in notes:
            tu.warn(trainer, note)

    def _choose_probes(self, trainer: Any, stage: str) -> bool:
        loader = tu.find_dataloader(trainer, stage, self.dataloader_idx)
        if loader is None:
            tu.warn(
                trainer,
                "GradCAMCallback: no validation dataloader and no probes given, so there is "
                "nothing to explain; the callback disables itself. Add a val_dataloader or "
                "pass GradCAMCallback(probes=ProbeSet(images, labels)).",
            )
            self._disabled = True
            return False
        self.probe_choice = choose_probes(
            loader, self.num_probes, per_class=self.probes_per_class,
            max_probes=self.max_probes, classes=self.classes, keys=self.keys,
            multilabel=scan_multilabel(self.task),
        )  # fmt: skip
        self._probes = self.probe_choice.probes
        note = checks.label_warning(self._probes, loader, self.keys, self.target)
        if note:
            tu.warn(trainer, note)
        return True

    def _start_session(self, trainer: Any, model: nn.Module) -> None:
        """Fresh per-set-up state (de-duplication key, sinks, once-only warnings); a model other
        than the last set-up's (a reused callback) also gets a fresh engine, probes and records."""
        self._last_key, self._sink_group, self._warned = None, None, set()
        if self._model_ref is not None and self._model_ref() is not model:
            tu.warn(
                trainer,
                "GradCAMCallback: this callback was set up with another model before; it starts "
                "afresh for this one (new engine, probes from the new dataloader unless given, "
                "empty history and flags, new drift baseline). Copy cb.history / cb.flags first "
                "to keep them, or use one callback per model.",
            )
            self._engine, self.history, self.flags, self.layer_info = None, [], [], []
            self._explained = self.explained_index = None
            self.reporter.reset()
            self.monitor.reset()
            if not self._explicit_probes:
                self._probes = None
        self._model_ref = weakref.ref(model)

    # ------------------------------------------------------------------ schedule
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if self.baseline and not self.history and not tu.fast_dev_run(trainer):
            self._run(trainer, pl_module, stage="baseline", use_log=False)

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking:
            return
        fn = tu.trainer_fn(trainer)
        scheduled = (trainer.current_epoch + 1) % self.every_n_epochs == 0
        if fn == "fit" and not tu.fast_dev_run(trainer) and not scheduled:
            return
        self._run(trainer, pl_module, stage="validate" if fn == "validate" else "fit")

    def on_test_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._run(trainer, pl_module, stage="test")

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: Any) -> None:
        self._flush(trainer)  # every run before the checkpoint is written out

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._flush(trainer)

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        for error in self.reporter.close():
            tu.warn(trainer, f"GradCAMCallback: {error}")

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self._flush(trainer)
        if self._disabled or not trainer.is_global_zero:
            return
        try:
            if self.filmstrip and self.log_images and self.reporter.thumbs:
                self.reporter.write_filmstrip(self._sinks(trainer), tu.log_step(trainer))
        except Exception as err:  # a fault in the monitor never crashes training
            tu.warn(trainer, f"GradCAMCallback: could not write the filmstrip: {err!r}")
        if self.sanity_check and self._probes is not None:
            try:
                with preserve_rng(), tu.eager_forward(pl_module):
                    self._sanity_check(trainer, pl_module)
            except Exception as err:
                tu.warn(trainer, f"GradCAMCallback: the randomisation check failed: {err!r}")
            self._flush(trainer)

    def _flush(self, trainer: Any) -> None:
        for error in self.reporter.flush():
            tu.warn(trainer, f"GradCAMCallback: {error}")

    # ------------------------------------------------------------------ a run
    def _run(self, trainer: Any, pl_module: Any, stage: str, use_log: bool = True) -> None:
        """Decide (explain, measure, flag), then act (record, log, report, ``on_flag``)."""
        if self._disabled or self._probes is None or self._engine is None:
            return
        step = tu.log_step(trainer)
        key = (stage, int(trainer.current_epoch), step)
        if key == self._last_key:
            return
        self._last_key = key
        try:
            # validate()/test() run under inference_mode: the run's own tensors must not be
            # inference tensors (the engine and the erasures need autograd / in-place writes)
            with preserve_rng(), torch.inference_mode(False):
                record, flags, media = self._compute(trainer, pl_module, stage, step)
        except ShortcutDetected:
            raise
        except Exception as err:
            tu.warn(
                trainer,
                f"GradCAMCallback: the Grad-CAM run at step {step} failed and was skipped "
                f"(training goes on): {err!r}",
            )
            return
        self.history.append(record)
        scalars = {f"{self.prefix}/{k}": v for k, v in record["metrics"].items()}
        # Scalars go straight to the loggers in guarded calls; the set-level values also go
        # into trainer.callback_metrics on every rank, where EarlyStopping / ModelCheckpoint
        # read them (every rank holds the same values: no sync needed).
        if use_log:
            tu.publish_metrics(trainer, {k: v for k, v in scalars.items() if "/class_" not in k})
        if trainer.is_global_zero:
            tu.log_metrics(trainer, scalars, step, self._warned)
            self._announce(trainer, flags)
            try:
                for error in self.reporter.submit(self._sinks(trainer), media, flags):
                    tu.warn(trainer, f"GradCAMCallback: {error}")
            except Exception as err:  # a reporting fault never crashes training
                tu.warn(trainer, f"GradCAMCallback: could not queue the run's media: {err!r}")
        self._act_on_flags(trainer, flags)

    def _compute(
        self, trainer: Any, pl_module: Any, stage: str, step: int
    ) -> tuple[dict[str, Any], list[Flag], RunMedia]:
        """Explain the probes, measure, decide: ``(record, flags, media)``."""
        probes, model = self.explained_probes, pl_module
        assert probes is not None and self._engine is not None
        device = tu.module_device(model)
        images = probes.images.to(device)
        labels = probes.labels.to(device) if probes.labels is not None else None
        use_label = self.target == "label" and labels is not None and self.target_fn is None
        with tu.eager_forward(pl_module):
            res = explain_probes(
                self._engine, images, labels if use_label else self.target_fn,
                batch_size=self.batch_size, shard=self._shard(trainer), **self._plugin(trainer),
            )  # fmt: skip
        maps = res.maps
        finite = torch.isfinite(maps).flatten(1).all(1)
        skipped = [int(i) for i in torch.nonzero(~finite).flatten().tolist()]
        if skipped:
            tu.warn(
                trainer,
                f"GradCAMCallback: probe(s) {skipped} gave a NaN or inf map at step {step} and are "
                "skipped in this run (check for overflow under fp16, or a diverging model)",
            )
            maps = torch.where(finite[:, None, None], maps, torch.zeros_like(maps))
        note = checks.zero_map_warning(maps, self.layer_info)
        if note and stage != "baseline" and bool(finite.any()) and "zero" not in self._warned:
            self._warned.add("zero")  # once per fit; not at the baseline (an untrained,
            tu.warn(trainer, note)  # zero-initialised head legitimately has no gradient)
        logits = res.logits if self.target_fn is None else None  # target_fn: read its score
        targets = res.targets if res.targets is not None else torch.zeros_like(res.scores).long()
        metrics = _probe_metrics(logits, res.targets, labels, res.scores, self._multilabel)
        score_fn = self._score_fn(trainer, pl_module, images.dtype)
        analysis = self.monitor.analyze(
            maps=maps, images=images.float(), targets=targets, logits=logits,
            object_masks=_to(probes.object_masks, device) if self.use_masks else None,
            artifact_masks=_to(probes.artifact_masks, device) if self.use_masks else None,
            score_fn=score_fn if self.confirm else None, epoch=int(trainer.current_epoch),
            global_step=step, baseline=stage == "baseline" or not self.history,
            map_size=checks.finest_map(self.layer_info), multilabel=self._multilabel,
        )  # fmt: skip
        metrics.update(analysis.summary)
        run = len(self.history) + 1
        metrics.update(
            quality_metrics(
                score_fn, images, maps, targets,
                softmax=self.target_fn is None and not self._multilabel,  # else the raw logit
                deletion_steps=self.faithfulness_steps if _due(run, self.faithfulness_every_n_runs) else 0,
                occlusion=_due(run, self.occlusion_every_n_runs),
            )
        )  # fmt: skip
        flags = [f for f in analysis.flags if f.probe is None or f.probe not in skipped]
        record = {
            "epoch": int(trainer.current_epoch), "global_step": step, "stage": stage,
            "metrics": metrics, "flags": [str(f.kind) for f in flags],
        }  # fmt: skip
        media = run_media(
            step, probes, images, maps, logits, res.targets, analysis.per_probe,
            self.max_images if self.log_images else 0, multilabel=self._multilabel,
        )  # fmt: skip
        return record, flags, media

    def _plugin(self, trainer: Any) -> dict[str, Any]:
        plugin = tu.precision_plugin(trainer)
        if plugin is None:
            return {}
        return {"convert": plugin.convert_input, "context": plugin.forward_context}

    def _shard(self, trainer: Any) -> Shard:
        world = int(getattr(trainer, "world_size", 1) or 1)
        if world <= 1:
            return Shard()
        gather: Callable[[Tensor], Tensor] = lambda t: tu.all_gather(trainer, t)  # noqa: E731
        return Shard(int(trainer.global_rank), world, gather)

    def _score_fn(self, trainer: Any, pl_module: Any, dtype: torch.dtype) -> Callable:
        return score_function(
            pl_module, batch_size=self.batch_size, dtype=dtype, target_fn=self.target_fn,
            eager=lambda: tu.eager_forward(pl_module), shard=self._shard(trainer),
            **self._plugin(trainer),
        )  # fmt: skip

    def _sanity_check(self, trainer: Any, pl_module: Any) -> None:
        """Model-parameter randomisation test on a copy of the model: a record and, when the
        maps barely change, an ``"unfaithful"`` flag."""
        assert self._probes is not None and self._engine is not None
        step, epoch = tu.log_step(trainer), int(trainer.current_epoch)
        summary, flag = sanity_check(
            pl_module, self.explained_probes, self._engine.target_layers, self.method,
            use_labels=self.target == "label", epoch=epoch, step=step, prefix=self.prefix,
        )  # fmt: skip
        flags = [flag] if flag is not None else []
        self.history.append({"epoch": epoch, "global_step": step, "stage": "sanity_check",
                             "metrics": summary, "flags": [str(f.kind) for f in flags]})  # fmt: skip
        tu.log_metrics(trainer, {f"{self.prefix}/{k}": v for k, v in summary.items()}, step)
        self.flags.extend(flags)
        self._announce(trainer, flags)
        self.reporter.write_flags(self._sinks(trainer), flags, step)

    # ------------------------------------------------------------------ acting on flags
    def _announce(self, trainer: Any, flags: list[Flag]) -> None:
        """One rank-zero warning per new flag (persisting ones are only written to the log)."""
        for flag in flags:
            if not flag.persistent:
                tu.warn(trainer, flag_warning(flag, self.prefix))

    def _act_on_flags(self, trainer: Any, flags: list[Flag]) -> None:
        self.flags.extend(flags)
        alarming = [f for f in flags if FlagKind(f.kind).alarming]
        if self.on_flag == "stop":
            if trainer.strategy.reduce_boolean_decision(bool(alarming), all=False):
                trainer.should_stop = True
        elif self.on_flag == "raise" and alarming:
            self._flush(trainer)
            raise ShortcutDetected(alarming)

    def _sinks(self, trainer: Any) -> SinkGroup:
        # One group per set-up, so a failing logger warns once, not at every run.
        if self._sink_group is None:
            self._sink_group = SinkGroup.from_trainer(trainer)
        return self._sink_group

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain Python values only: loads with ``torch.load(weights_only=True)``."""
        return {
            "version": _STATE_VERSION,
            "probes": self._probes.state_dict() if self._probes is not None else None,
            "history": [dict(r) for r in self.history],
            "flags": [f.to_dict() for f in self.flags],
            "monitor": self.monitor.state_dict(),
            "layers": [i.name for i in self.layer_info],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore probes, history, flags and drift references; safe to call more than once."""
        version = state_dict.get("version", 0)
        if version > _STATE_VERSION:
            raise ValueError(
                f"GradCAMCallback state version {version} is newer than this release supports "
                f"({_STATE_VERSION}); upgrade gradcam-callback"
            )
        if state_dict.get("probes") is not None and not self._explicit_probes:
            self._probes = ProbeSet.from_state_dict(state_dict["probes"])
        self.history = [dict(r) for r in state_dict.get("history", [])]
        self.flags = [Flag(**f) for f in state_dict.get("flags", [])]
        if state_dict.get("monitor") is not None:
            self.monitor.load_state_dict(state_dict["monitor"])


def _probe_metrics(
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
