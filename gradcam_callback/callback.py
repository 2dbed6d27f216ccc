"""``GradCAMCallback``: training-time Grad-CAM on a fixed probe set, with shortcut alarms.

The callback is a thin orchestrator of hooks, schedule, state and ``on_flag``: it chooses the
probes once (:mod:`.probes`), explains them at each scheduled run (:mod:`.probing`, the engine),
hands the maps to the monitor (:mod:`.alarms`; during ``fit`` on a worker thread against a copy
of the weights, :mod:`.background`), and the results to the reporter (:mod:`.reporting`, off the
training thread) and the loggers (:mod:`.trainer_utils`). Settings are checked at construction
and set-up (:mod:`.checks`). It is the only layer that knows Lightning.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any, Literal

import torch
from pytorch_lightning.callbacks import Callback
from torch import Tensor, nn

from . import checks, runs
from . import trainer_utils as tu
from .alarms import Flag, ShortcutDetected, ShortcutMonitor
from .background import AnalysisWorker, ModelShadow
from .engine import GradCAM
from .multilabel import Task
from .probes import ProbeChoice, ProbeSet, preserve_rng
from .reporting import Reporter
from .rules import FlagKind
from .sinks import SinkGroup

__all__ = ["GradCAMCallback"]

_STATE_VERSION = 2  # 2: a run in flight is saved as its inputs (``in_flight``)


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
        async_analysis: during ``fit``, analyse each run on a worker thread against a copy of
            the model's weights taken at the run (one copy of the parameters and buffers), so the
            training thread pays only for the maps; results (logs, flags, ``cb.history``) arrive
            at the next training batch. ``False``, or automatically with ``on_flag="stop"`` or
            ``"raise"``, under DDP, with a half/double-precision plugin, a compiled module, when
            another callback monitors a ``prefix/`` metric: on the training thread, as
            ``validate()`` and ``test()`` runs are. A checkpoint saved while a run is in flight
            holds the run's inputs, and a fit resumed from it finishes the run.
        image_format: how the overlay grids and images are encoded for the loggers (and the
            files of a CSV logger or none): ``"jpeg"`` (quality 95; a grid encodes 10-25x
            faster than as PNG, which matters on a small model's short epochs) or ``"png"``
            (lossless): TensorBoard, W&B, files, and the ``filmstrip.jpg`` (``.png``) saved
            at fit end. MLflow stores PNG either way.

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
        async_analysis: bool = True,
        image_format: Literal["jpeg", "png"] = "jpeg",
    ) -> None:
        super().__init__()
        self._configure(dict(locals()))

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

    def _configure(self, given: dict[str, Any]) -> None:
        """Validate the constructor's arguments (:func:`~.checks.check_settings`) and store them."""
        settings, thresholds, self.keys = checks.split_settings(given)
        self.__dict__.update(settings)
        classes, prefix = given["classes"], given["prefix"]
        self.classes = None if classes is None else [int(c) for c in classes]
        self.target_layer, self.prefix = given["target_layer"], prefix.rstrip("/")
        self.thresholds = {k: float(v) for k, v in thresholds.items() if v is not None}
        self.monitor = checks.build_monitor(
            given["monitor"], thresholds, given["confirm"], given["min_map_size"]
        )
        self.reporter = Reporter(
            prefix=self.prefix, log_images=given["log_images"], colormap=given["colormap"],
            alpha=given["alpha"], mean=given["mean"], std=given["std"], max_filmstrip_runs=24,
            image_format=given["image_format"],
        )  # fmt: skip
        self.max_images = 32
        self._probes: ProbeSet | None = given["probes"]
        self._explicit_probes = self._probes is not None
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
        self.async_analysis = bool(given["async_analysis"])
        self._worker = AnalysisWorker()  # the runs analysed off the training thread
        self._shadow = ModelShadow()  # the model's weights at the run in flight
        self._sync_why: str | None = "not set up"  # why runs stay on the training thread
        self._unacted: list[Flag] = []  # collected flags whose on_flag action is still due
        self._in_flight: runs.InFlight | None = None  # the run on the worker, as saved
        self._resumed: dict[str, Any] | None = None  # a run a checkpoint held in flight
        self._trainer_ref: weakref.ref[Any] | None = None

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
        if self._probes is None:
            self.probe_choice = runs.choose(self, trainer, stage)
            if self.probe_choice is None:
                self._disabled = True
                return
            self._probes = self.probe_choice.probes
        runs.prepare(self, trainer, model)
        self._sync_why = runs.sync_reason(self, trainer, model, stage)

    def _start_session(self, trainer: Any, model: nn.Module) -> None:
        """Fresh per-set-up state (de-duplication key, sinks, once-only warnings); a model other
        than the last set-up's (a reused callback) also gets a fresh engine, probes and records."""
        self._collect(trainer, wait=True, act=False)
        self._last_key, self._sink_group, self._warned = None, None, set()
        self._trainer_ref = weakref.ref(trainer)
        if self._model_ref is not None and self._model_ref() is not model:
            tu.warn(
                trainer,
                "GradCAMCallback: this callback was set up with another model before; it starts "
                "afresh for this one (new engine, probes from the new dataloader unless given, "
                "empty history and flags, new drift baseline). Copy cb.history / cb.flags first "
                "to keep them, or use one callback per model.",
            )
            self._engine, self.history, self.flags, self.layer_info = None, [], [], []
            self._explained = self.explained_index = self._resumed = None
            self.reporter.reset()
            self.monitor.reset()
            if not self._explicit_probes:
                self._probes = None
        self._model_ref = weakref.ref(model)

    # ------------------------------------------------------------------ schedule
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._finish_resumed(trainer, pl_module)
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

    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        if self._worker.busy or self._unacted:
            self._collect(trainer, wait=False)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._collect(trainer, wait=True, act=False)
        self._flush(trainer)

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._collect(trainer, wait=True, act=False)
        self._worker.close()
        self._shadow.release()
        for error in self.reporter.close():
            tu.warn(trainer, f"GradCAMCallback: {error}")

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self._collect(trainer, wait=True)
        self._flush(trainer)
        if self._disabled or not trainer.is_global_zero:
            return
        self.flags.extend(runs.finish(self, trainer, pl_module))
        self._flush(trainer)

    def _flush(self, trainer: Any) -> None:
        for error in self.reporter.flush():
            tu.warn(trainer, f"GradCAMCallback: {error}")

    # ------------------------------------------------------------------ a run
    def _run(self, trainer: Any, pl_module: Any, stage: str, use_log: bool = True) -> None:
        """Decide (explain, measure, flag), then act (record, log, report, ``on_flag``); with
        the analysis on the worker thread, the acting comes when the run is collected."""
        if self._disabled or self._probes is None or self._engine is None:
            return
        self._finish_resumed(trainer, pl_module)
        self._collect(trainer, wait=True)  # the runs before this one come first
        step = tu.log_step(trainer)
        key = (stage, int(trainer.current_epoch), step)
        if key == self._last_key:
            return
        self._last_key = key
        try:
            # validate()/test() run under inference_mode: the run's own tensors must not be
            # inference tensors (the engine and the erasures need autograd / in-place writes)
            with preserve_rng(), torch.inference_mode(False):
                done = runs.start_run(self, trainer, pl_module, stage, step, use_log)
        except ShortcutDetected:
            raise
        except Exception as err:
            self._run_failed(trainer, f"step {step}", err)
            return
        if done is not None:  # analysed here, not queued for the worker
            self._publish(trainer, *done, use_log)
            self._act_on_flags(trainer)

    def _finish_resumed(self, trainer: Any, pl_module: Any) -> None:
        """Finish the run a checkpoint held in flight (this fit resumed from it), on the
        training thread, before any other run: the model is the one its maps saw."""
        if self._resumed is None or self._disabled or self._engine is None:
            return
        state, self._resumed = self._resumed, None
        try:
            with preserve_rng(), torch.inference_mode(False):
                done = runs.resume_run(self, trainer, pl_module, state)
        except Exception as err:
            self._run_failed(trainer, f"step {state.get('step')} (resumed)", err)
            return
        self._publish(trainer, *done, bool(state.get("use_log", True)))
        self._act_on_flags(trainer)

    def _collect(self, trainer: Any, wait: bool, act: bool = True) -> None:
        """Publish the runs the worker has finished (all of them with ``wait``), in order, and
        act on their flags (``act=False``: later, e.g. not from inside a checkpoint)."""
        finished = self._worker.collect(wait=wait)
        if not self._worker.busy:
            self._in_flight = None
        for done in finished:
            if done.error is not None:
                self._run_failed(trainer, done.what.removeprefix("run at "), done.error)
            else:
                self._publish(trainer, *done.value)
        if act and (finished or self._unacted):
            self._act_on_flags(trainer)

    def _publish(
        self, trainer: Any, record: dict[str, Any], flags: list[Flag], media: Any, use_log: bool
    ) -> None:
        self.history.append(record)
        self.flags.extend(flags)
        self._unacted.extend(flags)
        runs.report_run(self, trainer, record, flags, media, use_log)

    def _run_failed(self, trainer: Any, where: str, err: BaseException) -> None:
        tu.warn(
            trainer,
            f"GradCAMCallback: the Grad-CAM run at {where} failed and was skipped "
            f"(training goes on): {err!r}",
        )

    # ------------------------------------------------------------------ acting on flags
    def _act_on_flags(self, trainer: Any) -> None:
        """``on_flag`` for the flags published since the last call."""
        flags, self._unacted = self._unacted, []
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
            self._sink_group = SinkGroup.from_trainer(trainer, self.image_format)
        return self._sink_group

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain Python values only: loads with ``torch.load(weights_only=True)``.

        A run whose analysis is still on the worker thread is saved as its inputs
        (``in_flight``: the maps, scores and place of the run, with the monitor as it was before
        it), without waiting, when no optimizer step came since the run (the checkpoint then
        holds the weights its maps saw, and a resumed fit finishes it exactly); otherwise the
        save waits for the run."""
        trainer = self._trainer_ref() if self._trainer_ref is not None else None
        held = None
        if trainer is not None:
            self._collect(trainer, wait=False, act=False)
            flight = self._in_flight
            if flight is not None and int(trainer.global_step) == flight.global_step:
                held = flight
            else:
                self._collect(trainer, wait=True, act=False)
        return {
            "version": _STATE_VERSION,
            "probes": self._probes.state_dict() if self._probes is not None else None,
            "history": [dict(r) for r in self.history],
            "flags": [f.to_dict() for f in self.flags],
            "monitor": held.monitor if held is not None else self.monitor.state_dict(),
            "layers": [i.name for i in self.layer_info],
            "in_flight": held.state_dict() if held is not None else self._resumed,
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
        self._resumed = state_dict.get("in_flight")  # finished at the next run or train start
