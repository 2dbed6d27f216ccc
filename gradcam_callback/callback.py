"""``GradCAMCallback``: training-time Grad-CAM on a fixed probe set, with shortcut alarms.

The callback is a thin orchestrator: it chooses the probes once (:mod:`.probes`), asks the engine
for maps at each scheduled run (:mod:`.engine`), hands them to the monitor for metrics and flags
(:mod:`.metrics`, :mod:`.alarms`), renders overlays (:mod:`.render`) and writes them to every logger
(:mod:`.sinks`). It is the only layer that knows Lightning.
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
from pytorch_lightning.callbacks import Callback
from torch import Tensor, nn

from .alarms import Flag, ShortcutDetected, ShortcutMonitor
from .engine import METHODS, GradCAM, normalize_maps
from .layers import eval_mode
from .multilabel import Task, check_task, plan_task, scan_multilabel, sigmoid_outputs
from .probes import BatchKeys, ProbeSet, choose_probes, label_problem, peek_batch, preserve_rng
from .quality import deletion_curve, occlusion_agreement, occlusion_map, randomization_check
from .render import (
    check_colormap,
    denormalize,
    filmstrip,
    grid_rows,
    pick_columns,
    probe_panels,
    tile,
    write_gif,
    write_png,
)
from .rules import FlagKind
from .sinks import SinkGroup

__all__ = ["GradCAMCallback"]

_STATE_VERSION = 1


def _warn(trainer: Any, message: str) -> None:
    """A warning from global rank zero only (works with both Lightning namespaces)."""
    if getattr(trainer, "is_global_zero", True):
        warnings.warn(message, UserWarning, stacklevel=3)


class GradCAMCallback(Callback):
    r"""Run Grad-CAM on a fixed probe set during training; log overlays, drift and shortcut flags.

    At fit start (a baseline before any training step), after every ``every_n_epochs``-th
    validation, and in ``trainer.validate()`` / ``trainer.test()``, the callback explains the same
    probe images with one batched forward + gradient on the training device, logs an
    ``input | heatmap | overlay`` grid and attention metrics to every logger, and raises a
    :class:`~gradcam_callback.Flag` when attention moves onto a label artifact or off the object.

    Example::

        >>> from pytorch_lightning import Trainer
        >>> from gradcam_callback import GradCAMCallback
        >>> trainer = Trainer(callbacks=[GradCAMCallback()])              # zero-config
        >>> cb = GradCAMCallback(every_n_epochs=2, target_layer="layer4", on_flag="stop")
        >>> trainer = Trainer(callbacks=[cb])  # doctest: +SKIP
        >>> trainer.fit(model, datamodule=dm)  # doctest: +SKIP
        >>> cb.flags  # doctest: +SKIP
        [Flag(kind='artifact', epoch=3, probe=None, value=4.1, threshold=3.0, ...)]

    Args:
        num_probes: ``None`` (default): ``probes_per_class`` probes of every class found in the
            validation data (rules decide per class), at most ``max_probes``; an ``int``: that
            many probes in all, balanced across classes. Ignored when ``probes`` is given.
        probes_per_class: probes per class of the default policy (the rules need at least the
            monitor's ``min_probes`` of a class).
        max_probes: cap of the default policy; with more classes than fit, the watched classes
            are ``classes``, else the most frequent ones (set-up names the others).
        classes: the classes to watch (default policy); ``None``: all that fit.
        every_n_epochs: run after the validation of every n-th epoch (>= 1).
        target_layer: ``None`` (the last layer with a spatial output), a dotted module name such
            as ``"layer4"`` or ``"model.features"``, or a list of names (maps averaged).
        method: ``"gradcam"``, ``"gradcam++"``, ``"hirescam"``, ``"xgradcam"`` or ``"layercam"``.
        target: explain the probe's ``"label"`` (when known) or the model's ``"predicted"`` class.
        probes: an explicit :class:`~gradcam_callback.ProbeSet` (images, labels, masks).
        batch_size: probes per forward chunk (bounds the memory of a run).
        dataloader_idx: which validation dataloader to take probes from.
        prefix: first component of every logged name (``"gradcam/overlays"``, ...).
        log_images: log the overlay grid at every run (scalars are always logged).
        colormap: any OpenCV colour map by its lowercase name (``render.COLORMAPS``: ``"jet"``,
            ``"turbo"``, ``"inferno"``, ``"viridis"``, ``"plasma"``, ...).
        alpha: heatmap opacity of the overlays, in ``[0, 1]``.
        mean: per-channel normalisation mean of the inputs, to show the images in true colour;
            ``None`` infers the display range from the data.
        std: per-channel normalisation std (with ``mean``).
        baseline: run once at fit start, before any training step (the reference for drift).
        use_masks: use object/artifact masks found in the batches or the ProbeSet; ``False``
            forces the mask-free measures.
        on_flag: ``"warn"`` (warn and log), ``"stop"`` (also end training gracefully, as
            EarlyStopping does) or ``"raise"`` (raise :class:`~gradcam_callback.ShortcutDetected`).
        artifact_enrichment: ``"artifact"`` flag (with artifact masks) when attention inside the
            artifact is at least this many times denser than a uniform map's. ``None`` keeps the
            :class:`~gradcam_callback.ShortcutMonitor` default (the README gives each default and
            its reasoning); the same holds for every threshold below.
        object_enrichment: ``"background"`` flag (with object masks) when attention on the object
            is at most this many times a uniform map's.
        hotspot_consistency: mask-free ``"artifact"`` flag: enrichment of the hot spot that the
            probes of one class share, away from the centre ...
        hotspot_stability: ... where the image pixels are at least this stable across images.
        diffuse_entropy: mask-free ``"background"`` flag: normalised entropy of the maps at least
            this (attention spread over the whole image, as over a class-tied texture).
        evidence_drop: causal confirmation: a probe depends on a region when erasing it removes
            at least this share of the target's log-odds ...
        dependence: ... and a flag is confirmed when at least this share of the probes depend.
        border_enrichment: optional mask-free ``"background"`` flag on the image frame (off by
            default); e.g. ``2.0`` for scanner borders or rulers along a whole edge.
        drift_pearson: informational ``"drift"`` flag when the maps' mean Pearson correlation
            with the previous run falls below this.
        confirm: confirm flags causally: erase the region (filled from its surroundings) and
            require the model's evidence to drop (one extra forward of the probes per region).
        filmstrip: at fit end, save and log an evolution filmstrip (PNG) and GIF of the overlays.
        sanity_check: at fit end, run the model-parameter randomisation test (Adebayo et al.
            2018) on a copy of the model; weak change gives an ``"unfaithful"`` flag.
        faithfulness_every_n_runs: every n runs, compute the deletion curve AUC of the maps
            (``0`` = never; costs ``faithfulness_steps + 1`` probe forwards).
        faithfulness_steps: number of deletion steps.
        occlusion_every_n_runs: every n runs, compute a sliding-patch occlusion map of the probes
            (patch = 1/8 of the image side, stride = half a patch) and log its rank
            correlation with Grad-CAM as ``attention/occlusion_agreement`` (``0`` = never; costs
            about 200 probe forwards: a slow cross-check).
        image_key: dict-batch key of the images (also ``label_key``, ``object_mask_key``,
            ``artifact_mask_key``).
        label_key: dict-batch key of the labels.
        object_mask_key: dict-batch key of the object masks.
        artifact_mask_key: dict-batch key of the artifact masks.
        target_fn: callable ``output -> Tensor[N]`` of scores for models whose output is not a
            ``[N, K]`` logit tensor (dicts, tuples, multi-label, regression).
        verbose: print the chosen layer and its resolution at set-up.
        reshape_transform: maps the target layer's output to ``[N, K, h, w]`` for token models
            whose grid is not evident from the input size (ViT/DeiT tokens ``[N, 1 + h*w, K]``
            and channels-last ``[N, h, w, K]`` outputs are recognised without it).
        min_map_size: fewest cells per side of the automatically chosen layer's map (the
            deepest layer reaching it is chosen; default 7, see the README).
        monitor: a :class:`~gradcam_callback.ShortcutMonitor` carrying every threshold (the
            threshold arguments above are shorthand for its most used ones; giving both is an
            error).
        task: ``"multiclass"`` (softmax class logits), ``"multilabel"`` (independent sigmoid
            outputs: each probe is explained once per positive label, confidence is the label's
            sigmoid, flags name the label; see :mod:`~gradcam_callback.multilabel`) or
            ``"auto"`` (multi-label when the probe labels are multi-hot, said at set-up).
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
        check_task(task)  # multi-label
        if num_probes is not None and num_probes < 1:
            raise ValueError(f"num_probes must be >= 1 (or None: per class), got {num_probes}")
        if probes_per_class < 1 or max_probes < probes_per_class:
            raise ValueError(
                f"need probes_per_class >= 1 and max_probes >= probes_per_class, got "
                f"{probes_per_class} and {max_probes}"
            )
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        for name, value, allowed in (
            ("target", target, ("label", "predicted")),
            ("on_flag", on_flag, ("warn", "stop", "raise")),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std (the inputs' normalisation), or neither")
        check_colormap(colormap)
        _check_mean_std(mean, std)
        if dataloader_idx < 0:
            raise ValueError(f"dataloader_idx must be >= 0, got {dataloader_idx}")
        if probes is not None and not isinstance(probes, ProbeSet):
            raise TypeError(f"probes must be a ProbeSet, got {type(probes).__name__}")
        if faithfulness_every_n_runs < 0 or occlusion_every_n_runs < 0:
            raise ValueError("faithfulness_every_n_runs and occlusion_every_n_runs must be >= 0")
        if faithfulness_steps < 1:
            raise ValueError(f"faithfulness_steps must be >= 1, got {faithfulness_steps}")
        self.num_probes = num_probes
        self.probes_per_class = probes_per_class
        self.max_probes = max_probes
        self.classes = None if classes is None else [int(c) for c in classes]
        self.every_n_epochs = every_n_epochs
        self.target_layer = target_layer
        self.method = method
        self.target = target
        self.batch_size = batch_size
        self.dataloader_idx = dataloader_idx
        self.prefix = prefix.rstrip("/")
        self.log_images = log_images
        self.colormap = colormap
        self.alpha = alpha
        self.mean = mean
        self.std = std
        self.baseline = baseline
        self.use_masks = use_masks
        self.on_flag = on_flag
        self.confirm = confirm
        self.filmstrip = filmstrip
        self.sanity_check = sanity_check
        self.faithfulness_every_n_runs = faithfulness_every_n_runs
        self.faithfulness_steps = faithfulness_steps
        self.occlusion_every_n_runs = occlusion_every_n_runs
        self.keys = BatchKeys(image_key, label_key, object_mask_key, artifact_mask_key)
        self.target_fn = target_fn
        self.verbose = verbose
        self.reshape_transform = reshape_transform
        if isinstance(min_map_size, bool) or not isinstance(min_map_size, int) or min_map_size < 1:
            raise ValueError(f"min_map_size must be an int >= 1, got {min_map_size!r}")
        self.min_map_size = min_map_size
        self.max_filmstrip_runs = 24
        given = {
            "artifact_enrichment": artifact_enrichment,
            "object_enrichment": object_enrichment,
            "hotspot_consistency": hotspot_consistency,
            "hotspot_stability": hotspot_stability,
            "diffuse_entropy": diffuse_entropy,
            "evidence_drop": evidence_drop,
            "dependence": dependence,
            "border_enrichment": border_enrichment,
            "drift_pearson": drift_pearson,
        }
        self.thresholds = {k: float(v) for k, v in given.items() if v is not None}
        if monitor is not None:
            if not isinstance(monitor, ShortcutMonitor):
                raise TypeError(f"monitor must be a ShortcutMonitor, got {type(monitor).__name__}")
            if self.thresholds or not confirm:
                both = sorted(self.thresholds) + ([] if confirm else ["confirm"])
                raise ValueError(
                    f"give the thresholds either as monitor=ShortcutMonitor(...) or as callback "
                    f"arguments, not both (got monitor= and {', '.join(both)})"
                )
            self.monitor = monitor
        else:
            self.monitor = ShortcutMonitor(
                **self.thresholds, confirm=confirm, min_map_cells=min_map_size
            )
        self.max_images = 32
        self.probe_choice: Any = None

        self._probes: ProbeSet | None = probes
        self.task = task  # multi-label: the task, decided at set-up (multilabel.plan_task)
        self._multilabel = False
        self._explained: ProbeSet | None = None
        self.explained_index: Tensor | None = None
        self._explicit_probes = probes is not None
        self.history: list[dict[str, Any]] = []
        self.flags: list[Flag] = []
        self.layer_info: list[Any] = []
        self._engine: GradCAM | None = None
        self._disabled = False
        self._last_key: tuple[str, int, int] | None = None
        self._thumbs: list[Tensor] = []
        self._thumb_steps: list[int] = []
        self._sink_group: SinkGroup | None = None
        self._sink_trainer: int | None = None
        self._model_ref: weakref.ref[nn.Module] | None = None  # the model of the last set-up
        self._warned: set[str] = set()  # once-per-set-up warnings already given

    # ------------------------------------------------------------------ public state
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
            ValueError: unknown layer (with the closest names), a model without spatial layer,
                masks or labels that do not fit, inputs that are not images, a model that fails
                on the probes, a ``dataloader_idx`` beyond the dataloaders, probes the overlays
                cannot show (their channels, ``mean`` / ``std``).
        """
        self._disabled = False
        self._start_session(trainer, self._model(pl_module))
        if self._probes is None:
            loader = _find_dataloader(trainer, stage, self.dataloader_idx)
            if loader is None:
                _warn(
                    trainer,
                    "GradCAMCallback: no validation dataloader and no probes given, so there is "
                    "nothing to explain; the callback disables itself. Add a val_dataloader or "
                    "pass GradCAMCallback(probes=ProbeSet(images, labels)).",
                )
                self._disabled = True
                return
            self.probe_choice = choose_probes(
                loader,
                self.num_probes,
                per_class=self.probes_per_class,
                max_probes=self.max_probes,
                classes=self.classes,
                keys=self.keys,
                multilabel=scan_multilabel(self.task),  # multi-label
            )
            self._probes = self.probe_choice.probes
            self._check_labels(trainer, loader)
        probes = self._probes
        # multi-label (multilabel.py): the task and the explained set (a row per positive label)
        plan = plan_task(self.task, probes, target=self.target, classes=self.classes)
        self._multilabel = plan.multilabel
        self._explained, self.explained_index = plan.explained, plan.index
        if plan.message:
            _warn(trainer, plan.message)
        model = self._model(pl_module)
        if self._engine is None:
            self._engine = GradCAM(
                model,
                self.target_layer,
                self.method,
                reshape_transform=self.reshape_transform,
                min_map_size=self.min_map_size,
            )
        device = _module_device(model)
        sample = probes.images[: min(2, len(probes))].to(device)
        with preserve_rng(), _model_fault(model, sample):
            self.layer_info = self._engine.resolve(sample)
            result = self._engine.explain(sample, self.target_fn, upsample=False, normalize=False)
        out = result.output
        if self.target_fn is None:
            if not isinstance(out, Tensor) or out.dim() != 2:
                got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise ValueError(
                    f"the model output has shape {got}, not [N, num_classes] logits; pass "
                    "GradCAMCallback(target_fn=lambda output: <Tensor [N] of scores>)"
                )
            if self.target == "label":
                probes.check_num_classes(out.shape[1])
        self._check_display(probes)
        self._report_setup(trainer, plan.explained)  # multi-label: the explained rows

    def _report_setup(self, trainer: Any, probes: ProbeSet) -> None:
        """Say at set-up what is explained, with which probes, and what cannot be watched."""
        choice = self.probe_choice
        if self.verbose and getattr(trainer, "is_global_zero", True):
            for info in self.layer_info:
                print(f"GradCAMCallback: explaining {info} with {len(probes)} probes")
            if choice is not None and choice.counts:
                per = ", ".join(f"{c}: {k}" for c, k in choice.counts.items())
                print(f"GradCAMCallback: probes: {choice.policy}; per class {{{per}}}")
        if choice is not None and choice.unwatched:
            shown = ", ".join(str(c) for c in choice.unwatched[:20])
            more = f" and {len(choice.unwatched) - 20} more" if len(choice.unwatched) > 20 else ""
            _warn(
                trainer,
                f"GradCAMCallback: {len(choice.unwatched)} classes get no probe and are not "
                f"watched (max_probes={self.max_probes} at {self.probes_per_class} per class): "
                f"{shown}{more}. Pass classes=[...] to choose them, or raise max_probes.",
            )
        if probes.labels is not None and self.target == "label":
            counts = torch.bincount(probes.labels)
            few = [int(c) for c in torch.nonzero((counts > 0) & (counts < self.monitor.min_probes))]
            if few:
                _warn(
                    trainer,
                    f"GradCAMCallback: classes {few} have fewer than min_probes="
                    f"{self.monitor.min_probes} probes, so no rule can decide about them; add "
                    "probes of those classes (or lower the monitor's min_probes).",
                )
        cells = self._map_size()
        if cells is not None and min(cells) < self.monitor.min_map_cells:
            names = ", ".join(i.name for i in self.layer_info)
            _warn(
                trainer,
                f"GradCAMCallback: the map of {names} is {cells[0]}x{cells[1]} cells, too coarse "
                f"to localise (< {self.monitor.min_map_cells}x{self.monitor.min_map_cells}): the "
                "spatial shortcut rules (artifact, background) are not evaluated. Choose an "
                "earlier layer with target_layer=... (see GradCAM.describe()).",
            )

    def _map_size(self) -> tuple[int, int] | None:
        """Cells of the finest target-layer map (``None`` before set-up)."""
        if not self.layer_info:
            return None
        return max((tuple(i.map_size) for i in self.layer_info), key=lambda s: s[0] * s[1])

    def _model(self, pl_module: Any) -> nn.Module:
        return pl_module  # the LightningModule itself, never the DDP wrapper

    def _start_session(self, trainer: Any, model: nn.Module) -> None:
        """Fresh per-set-up state (de-duplication key, sinks, once-only warnings); a model other
        than the last set-up's (a reused callback) also gets a fresh engine, probes and records."""
        self._last_key = None
        self._sink_group = None
        self._sink_trainer = None
        self._warned = set()
        if self._model_ref is not None and self._model_ref() is not model:
            _warn(
                trainer,
                "GradCAMCallback: this callback was set up with another model before; it starts "
                "afresh for this one (new engine, probes from the new dataloader unless given, "
                "empty history and flags, new drift baseline). Copy cb.history / cb.flags first "
                "to keep them, or use one callback per model.",
            )
            self._engine = None
            self.history, self.flags, self.layer_info = [], [], []
            self._thumbs, self._thumb_steps = [], []
            self.monitor.reset()
            if not self._explicit_probes:
                self._probes = None
        self._model_ref = weakref.ref(model)

    def _check_labels(self, trainer: Any, loader: Any) -> None:
        """Warn when the batches carry labels that cannot be read as class indices."""
        if self.target != "label" or self._probes is None or self._probes.labels is not None:
            return
        if self._probes.is_multilabel:  # multi-label: label sets are usable labels
            return
        problem = label_problem(peek_batch(loader), self.keys)
        if problem:
            _warn(
                trainer,
                f"GradCAMCallback: {problem}. The probes have no labels, so the predicted class "
                "is explained (GradCAMCallback(target='predicted') says so and silences this).",
            )

    def _check_display(self, probes: ProbeSet) -> None:
        """Render one probe as the runs will, so that colormap, mean/std and channels that the
        overlay cannot show fail here, before any training step."""
        if not self.log_images:
            return
        channels = int(probes.images.shape[1])
        try:
            images01 = denormalize(probes.images[:1], self.mean, self.std)
            maps = torch.zeros(1, *probes.image_size)
            probe_panels(images01, maps, alpha=self.alpha, colormap=self.colormap)
        except ValueError as err:
            raise ValueError(
                f"GradCAMCallback cannot draw overlays of these probe images ({channels} "
                f"channels): {err}. Give mean/std 1 or {channels} entries, or pass "
                "GradCAMCallback(log_images=False) to log scalars and tables only"
            ) from err

    # ------------------------------------------------------------------ schedule
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if self.baseline and not self.history and not _fast_dev_run(trainer):
            self._run(trainer, pl_module, stage="baseline", use_log=False)

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking:
            return
        fn = _fn(trainer)
        scheduled = (trainer.current_epoch + 1) % self.every_n_epochs == 0
        if fn == "fit" and not _fast_dev_run(trainer) and not scheduled:
            return
        self._run(trainer, pl_module, stage="validate" if fn == "validate" else "fit")

    def on_test_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._run(trainer, pl_module, stage="test")

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        if self._disabled or not trainer.is_global_zero:
            return
        try:
            if self.filmstrip and self.log_images and len(self._thumbs) >= 1:
                self._log_filmstrip(trainer)
        except Exception as err:  # a fault in the monitor never crashes training
            _warn(trainer, f"GradCAMCallback: could not write the filmstrip: {err!r}")
        if self.sanity_check and self._probes is not None:
            try:
                with preserve_rng():
                    self._run_sanity_check(trainer, pl_module)
            except Exception as err:
                _warn(trainer, f"GradCAMCallback: the randomisation check failed: {err!r}")

    def _run_sanity_check(self, trainer: Any, pl_module: Any) -> None:
        """Model-parameter randomisation test (Adebayo et al. 2018) on a copy of the model."""
        assert self._probes is not None and self._engine is not None
        model = self._model(pl_module)
        device = _module_device(model)
        probes = self.explained_probes  # multi-label: the explained rows
        assert probes is not None
        images = probes.images.to(device)
        targets = None
        if self.target == "label" and probes.labels is not None:
            targets = probes.labels.to(device)
        with _eager_forward(pl_module):
            report = randomization_check(
                model, images, targets, target_layer=self._engine.target_layers, method=self.method
            )
        summary = {f"sanity/{k}": float(v) for k, v in report.summary().items()}
        step = _log_step(trainer)
        self.history.append(
            {
                "epoch": int(trainer.current_epoch),
                "global_step": step,
                "stage": "sanity_check",
                "metrics": summary,
                "flags": [] if report.passed else ["unfaithful"],
            }
        )
        sinks = self._sinks(trainer)
        scalars = {f"{self.prefix}/{k}": v for k, v in summary.items()}
        _log_metrics_direct(trainer, scalars, step, self._warned)
        if not report.passed:
            flag = Flag(
                kind="unfaithful",
                epoch=int(trainer.current_epoch),
                global_step=step,
                probe=None,
                value=float(report.similarity),
                threshold=float(report.threshold),
                message=(
                    f"the maps barely change when the model's weights are randomised (mean "
                    f"Spearman {report.similarity:.2f} >= {report.threshold:.2f} over "
                    f"{len(report.stages)} stages): they may explain the input, not the model; "
                    f"see '{self.prefix}/sanity/...'"
                ),
                metric="sanity/similarity",
            )
            self.flags.append(flag)
            self._report_flags(trainer, sinks, [flag], step)

    # ------------------------------------------------------------------ a run
    def _run(self, trainer: Any, pl_module: Any, stage: str, use_log: bool = True) -> None:
        if self._disabled or self._probes is None or self._engine is None:
            return
        step = _log_step(trainer)
        key = (stage, int(trainer.current_epoch), step)
        if key == self._last_key:
            return
        self._last_key = key
        try:
            with preserve_rng():
                record, new_flags, media = self._compute(trainer, pl_module, stage, step)
        except ShortcutDetected:
            raise
        except Exception as err:
            _warn(
                trainer,
                f"GradCAMCallback: the Grad-CAM run at step {step} failed and was skipped "
                f"(training goes on): {err!r}",
            )
            return
        self.history.append(record)
        scalars = {f"{self.prefix}/{k}": v for k, v in record["metrics"].items()}
        # Every scalar goes straight to the loggers in guarded calls (a logger that rejects
        # these keys warns once and training goes on; through self.log its failure would come
        # from Lightning's logger connector, outside the callback). The set-level values also go
        # into trainer.callback_metrics on every rank, where EarlyStopping / ModelCheckpoint
        # read them (all ranks compute the same values: no sync needed).
        if use_log:
            _publish_metrics(trainer, {k: v for k, v in scalars.items() if "/class_" not in k})
        if trainer.is_global_zero:
            _log_metrics_direct(trainer, scalars, step, self._warned)
            try:
                sinks = self._sinks(trainer)
                self._log_media(trainer, sinks, media, step)
            except Exception as err:  # a rendering fault never crashes training
                sinks = None
                _warn(
                    trainer,
                    f"GradCAMCallback: could not render or write the overlays of the run at step "
                    f"{step} (its metrics and flags are kept; training goes on): {err!r}",
                )
            try:
                self._report_flags(trainer, sinks or self._sinks(trainer), new_flags, step)
            except Exception as err:
                _warn(trainer, f"GradCAMCallback: could not report the flags: {err!r}")
        self._act_on_flags(trainer, new_flags)

    def _compute(
        self, trainer: Any, pl_module: Any, stage: str, step: int
    ) -> tuple[dict[str, Any], list[Flag], dict[str, Any]]:
        assert self._probes is not None and self._engine is not None
        probes = self.explained_probes  # multi-label: a row per (probe, positive label)
        assert probes is not None
        model = self._model(pl_module)
        device = _module_device(model)
        plugin = _precision_plugin(trainer)
        images = probes.images.to(device)
        labels = probes.labels.to(device) if probes.labels is not None else None
        use_label = self.target == "label" and labels is not None and self.target_fn is None
        maps_l, logits_l, scores_l, targets_l = [], [], [], []
        with _eager_forward(pl_module):
            for start in range(0, len(probes), self.batch_size):
                chunk = slice(start, start + self.batch_size)
                x = plugin.convert_input(images[chunk]) if plugin is not None else images[chunk]
                targets = labels[chunk] if use_label else self.target_fn
                with _forward_context(plugin):
                    res = self._engine.explain(x, targets, upsample=False, normalize=False)
                maps_l.append(res.maps)
                scores_l.append(res.scores)
                if isinstance(res.output, Tensor):
                    logits_l.append(res.output.float())
                if res.targets is not None:
                    targets_l.append(res.targets)
        maps = torch.cat(maps_l)
        scores = torch.cat(scores_l)
        logits = torch.cat(logits_l) if len(logits_l) == len(maps_l) and logits_l else None
        if self.target_fn is not None:
            logits = None  # the causal checks read the target_fn score (see _score_fn)
        raw_images, images = images, images.float()  # uint8 probes: metrics in float
        targets_t = torch.cat(targets_l) if len(targets_l) == len(maps_l) and targets_l else None

        finite = torch.isfinite(maps).flatten(1).all(1)
        skipped = [int(i) for i in torch.nonzero(~finite).flatten().tolist()]
        if skipped:
            _warn(
                trainer,
                f"GradCAMCallback: probe(s) {skipped} gave a NaN or inf map at step {step} and are "
                "skipped in this run (check for overflow under fp16, or a diverging model)",
            )
            maps = torch.where(finite[:, None, None], maps, torch.zeros_like(maps))
        is_baseline = stage == "baseline" or not self.history
        if bool(finite.any()):
            self._check_zero_maps(trainer, maps, stage)
        metrics: dict[str, float] = {}
        pred = conf = None
        if logits is not None and targets_t is not None and self._multilabel:
            # multi-label: sigmoid confidence; pred = 1 where the explained label's logit > 0
            pred, conf = sigmoid_outputs(logits, targets_t)
            metrics["probe/confidence"] = float(conf.mean())
            if labels is not None:
                metrics["probe/accuracy"] = float(pred.float().mean())
        elif logits is not None and targets_t is not None:
            probs = logits.softmax(dim=1)
            pred = logits.argmax(dim=1)
            conf = probs.gather(1, targets_t[:, None])[:, 0]
            metrics["probe/confidence"] = float(conf.mean())
            if labels is not None:
                metrics["probe/accuracy"] = float((pred == labels).float().mean())
        metrics["probe/target_score"] = float(scores.mean())

        # with target_fn the score is read as a binary logit: "class 0" is the target
        watched = targets_t if targets_t is not None else torch.zeros_like(scores).long()
        analysis = self.monitor.analyze(
            maps=maps,
            images=images,
            targets=watched,
            labels=probes.labels,
            scores=scores,
            logits=logits,
            object_masks=_opt(probes.object_masks, device) if self.use_masks else None,
            artifact_masks=_opt(probes.artifact_masks, device) if self.use_masks else None,
            score_fn=self._score_fn(pl_module, plugin, raw_images.dtype) if self.confirm else None,
            epoch=int(trainer.current_epoch),
            global_step=step,
            baseline=is_baseline,
            map_size=self._map_size(),
            multilabel=self._multilabel,  # multi-label: evidence = the target logit
        )

        metrics.update({k: float(v) for k, v in analysis.summary.items()})
        metrics.update(self._quality_metrics(pl_module, plugin, raw_images, maps, watched))
        new_flags = [
            _tidy_flag(f) for f in analysis.flags if f.probe is None or f.probe not in skipped
        ]

        record = {
            "epoch": int(trainer.current_epoch),
            "global_step": step,
            "stage": stage,
            "metrics": metrics,
            "flags": [f.kind for f in new_flags],
        }
        media = {
            "maps": maps,
            "images": raw_images,
            "pred": pred,
            "conf": conf,
            "targets": targets_t,
            "per_probe": analysis.per_probe,
            "skipped": skipped,
        }
        return record, new_flags, media

    def _check_zero_maps(self, trainer: Any, maps: Tensor, stage: str) -> None:
        """Warn once when every probe's map is zero (not at the baseline: an untrained,
        zero-initialised head, as torchvision's ViT has, legitimately gives no gradient)."""
        if "zero_maps" in self._warned or stage == "baseline" or maps.numel() == 0:
            return
        if bool(maps.flatten(1).amax(1).gt(0).any()):
            return
        self._warned.add("zero_maps")
        layers = [i.name for i in self.layer_info]
        _warn(
            trainer,
            f"GradCAMCallback: every probe's Grad-CAM map is zero at layer(s) {layers}. The "
            "likely cause is a layer with no gradient: the target scores do not depend on its "
            "spatial cells (e.g. a vision transformer's block after the last attention, where "
            "only the class token reaches the head, or a layer after global pooling), or all "
            "weighted maps are negative. Pass target_layer=<an earlier layer> (for a ViT the "
            "last block's first norm) or leave target_layer=None for the automatic choice.",
        )

    def _quality_metrics(
        self, pl_module: Any, plugin: Any, images: Tensor, maps: Tensor, targets: Tensor | None
    ) -> dict[str, float]:
        """Opt-in, periodic faithfulness (deletion AUC) and occlusion cross-check."""
        out: dict[str, float] = {}
        run = len(self.history) + 1
        every_del, every_occ = self.faithfulness_every_n_runs, self.occlusion_every_n_runs
        if targets is None or not (
            (every_del and run % every_del == 0) or (every_occ and run % every_occ == 0)
        ):
            return out
        score_fn = self._score_fn(pl_module, plugin, images.dtype)
        if every_del and run % every_del == 0:
            report = deletion_curve(
                score_fn,
                images.float(),
                maps,
                targets,
                steps=self.faithfulness_steps,
                # a target_fn score is used as it is; multi-label: the target logit (log-odds)
                softmax=self.target_fn is None and not self._multilabel,
            )
            out["faithfulness/deletion_auc"] = float(report.auc.mean())
        if every_occ and run % every_occ == 0:
            patch = max(2, min(images.shape[-2:]) // 8)
            occ = occlusion_map(
                score_fn, images.float(), targets, patch=patch, stride=max(1, patch // 2)
            )
            out["attention/occlusion_agreement"] = float(occlusion_agreement(maps, occ).nanmean())
        return out

    def _score_fn(
        self, pl_module: Any, plugin: Any, dtype: torch.dtype = torch.float32
    ) -> Callable[[Tensor], Tensor]:
        """``images [N, C, H, W] -> float32 logits [N, K]`` for the causal checks and the quality
        metrics. With ``target_fn`` its score ``s [N]`` comes as binary logits ``[s, 0]``
        (class 0 is the target: ``log-odds = s``). Images are rounded back to ``dtype`` first
        (uint8 probes: erased and deleted pixels are computed in float)."""
        model = self._model(pl_module)
        target_fn = self.target_fn

        def score(images: Tensor) -> Tensor:
            outs = []
            with eval_mode(model), torch.no_grad(), _eager_forward(pl_module):
                for start in range(0, images.shape[0], self.batch_size):
                    x = _as_dtype(images[start : start + self.batch_size], dtype)
                    x = plugin.convert_input(x) if plugin is not None else x
                    with _forward_context(plugin):
                        out = model(x)
                    outs.append(_as_logits(out, target_fn))
            return torch.cat(outs)

        return score

    # ------------------------------------------------------------------ logging
    def _sinks(self, trainer: Any) -> SinkGroup:
        # One group per trainer, so a failing logger warns once, not at every run.
        if self._sink_group is None or self._sink_trainer != id(trainer):
            self._sink_group = SinkGroup.from_trainer(trainer)
            self._sink_trainer = id(trainer)
        return self._sink_group

    def _log_media(self, trainer: Any, sinks: SinkGroup, media: dict[str, Any], step: int) -> None:
        probes = self.explained_probes  # multi-label: the explained rows
        assert probes is not None
        pred, conf, targets = media["pred"], media["conf"], media["targets"]
        n = len(probes)
        labels = probes.labels.tolist() if probes.labels is not None else [None] * n
        preds = pred.tolist() if pred is not None else [None] * n
        confs = conf.tolist() if conf is not None else [math.nan] * n
        tgts = targets.tolist() if targets is not None else [None] * n

        if self.log_images:
            idx = _shown_probes(probes.labels, n, self.max_images)
            images01 = denormalize(media["images"][idx], self.mean, self.std)
            shown = normalize_maps(media["maps"][idx])
            # Render the panels once: the grid, the per-probe strips and the filmstrip's
            # overlays are all views or layouts of them.
            panels = probe_panels(images01, shown, alpha=self.alpha, colormap=self.colormap)
            grid = tile(panels)
            rows = grid_rows(grid, len(idx))
            captions = [
                f"probe {i} | label {labels[i]} | pred {preds[i]} ({confs[i]:.2f})" for i in idx
            ]
            sinks.log_probe_images(f"{self.prefix}/overlays", grid, rows, captions, step)
            self._thumbs.append(_thumbnail(panels[:, 2]).cpu())
            self._thumb_steps.append(step)

        header = (
            "| probe | label | target | prediction | confidence |\n|---:|---:|---:|---:|---:|\n"
        )
        body = "".join(
            f"| {i} | {labels[i]} | {tgts[i]} | {preds[i]} | {confs[i]:.3f} |\n" for i in range(n)
        )
        sinks.log_text(f"{self.prefix}/probes", header + body, step)

        per_probe = {k: v.tolist() for k, v in media["per_probe"].items()}
        columns = ["probe", "label", "prediction", "confidence", *per_probe]
        table = [
            [i, labels[i], preds[i], confs[i], *(per_probe[k][i] for k in per_probe)]
            for i in range(n)
        ]
        sinks.log_table(f"{self.prefix}/per_probe", columns, table, step)

    def _report_flags(self, trainer: Any, sinks: SinkGroup, flags: list[Flag], step: int) -> None:
        if not flags:
            return
        lines = []
        for flag in flags:
            state = "persists" if flag.persistent else "NEW"
            lines.append(f"- **{flag.kind}** ({state}): {flag.message}")
            if not flag.persistent:
                _warn(
                    trainer,
                    f"GradCAMCallback [{flag.kind}] at epoch {flag.epoch}, step {flag.global_step}:"
                    f" {flag.message} (see '{self.prefix}/overlays' and '{self.prefix}/flags' in "
                    "TensorBoard / W&B)",
                )
        sinks.log_text(f"{self.prefix}/flags", "\n".join(lines), step)

    def _act_on_flags(self, trainer: Any, flags: list[Flag]) -> None:
        self.flags.extend(flags)
        alarming = [f for f in flags if FlagKind(f.kind).alarming]
        if self.on_flag == "stop":
            should_stop = trainer.strategy.reduce_boolean_decision(bool(alarming), all=False)
            if should_stop:
                trainer.should_stop = True
        elif self.on_flag == "raise" and alarming:
            raise ShortcutDetected(alarming)

    def _log_filmstrip(self, trainer: Any) -> None:
        sinks = self._sinks(trainer)
        strip = filmstrip(self._thumbs, max_columns=self.max_filmstrip_runs)
        step = _log_step(trainer)
        out_dir = sinks.log_dir / self.prefix
        write_png(strip, out_dir / "filmstrip.png")
        cols = pick_columns(len(self._thumbs), self.max_filmstrip_runs)
        shown = [self._thumb_steps[i] for i in cols]
        caption = f"a row per probe, a column per run; runs at steps {shown}"
        sinks.log_image(f"{self.prefix}/filmstrip", strip, step, caption=caption)
        frames = [_frame(t) for t in self._thumbs]
        gif = write_gif(frames, out_dir / "evolution.gif")
        sinks.log_gif(f"{self.prefix}/evolution", gif, step)

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


# ---------------------------------------------------------------------- helpers
def _log_metrics_direct(
    trainer: Any, scalars: dict[str, float], step: int, warned: set[str] | None = None
) -> None:
    """The finite scalars of a run straight to each logger; a failing logger warns once per
    set-up (when ``warned`` is given) and is tried again at the next run."""
    finite = {k: v for k, v in scalars.items() if math.isfinite(v)}
    if not finite:
        return
    for i, logger in enumerate(getattr(trainer, "loggers", None) or []):
        try:
            logger.log_metrics(finite, step=step)
        except Exception as err:
            key = f"log_metrics:{i}"
            if warned is not None and key in warned:
                continue
            if warned is not None:
                warned.add(key)
            _warn(
                trainer,
                f"GradCAMCallback: {type(logger).__name__}.log_metrics failed on the callback's "
                f"scalars (training goes on; this logger gets no Grad-CAM scalars while it "
                f"fails, further failures are not reported): {err!r}",
            )


def _publish_metrics(trainer: Any, scalars: dict[str, float]) -> None:
    """Put finite scalars into ``trainer.callback_metrics`` (what EarlyStopping and
    ModelCheckpoint monitor) without going through a logger."""
    try:
        target = trainer.callback_metrics
        for name, value in scalars.items():
            if math.isfinite(value):
                target[name] = torch.tensor(value)
    except Exception:  # a trainer without callback_metrics: nothing to monitor
        return


def _check_mean_std(mean: Any, std: Any) -> None:
    """Set-up check of the display normalisation: finite numbers, std > 0, matching lengths."""
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


@contextmanager
def _model_fault(model: nn.Module, sample: Tensor) -> Iterator[None]:
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


def _as_dtype(x: Tensor, dtype: torch.dtype) -> Tensor:
    """Float images back to an integer input dtype (rounded, clamped); others as they are."""
    if x.dtype == dtype or dtype.is_floating_point or not x.is_floating_point():
        return x
    info = torch.iinfo(dtype)
    return x.round().clamp(info.min, info.max).to(dtype)


def _as_logits(out: Any, target_fn: Callable[[Any], Tensor] | None) -> Tensor:
    """Float32 ``[N, K]`` logits of a model output; ``[s, 0]`` of a ``target_fn`` score ``s``."""
    if target_fn is None:
        return out.float()
    s = target_fn(out).detach().float().reshape(-1)
    return torch.stack([s, torch.zeros_like(s)], dim=1)


_NAN_PERCENT = re.compile(r"\bnan%")
_NEGATIVE_PERCENT = re.compile(r"-\d+(?:\.\d+)?%")


def _tidy_flag(flag: Flag) -> Flag:
    """A flag whose message never reads "nan%" (nothing to measure) or a negative share."""
    message = _NAN_PERCENT.sub("n/a", flag.message)
    message = _NEGATIVE_PERCENT.sub("0%", message)
    return flag if message == flag.message else dataclasses.replace(flag, message=message)


def _shown_probes(labels: Tensor | None, n: int, limit: int) -> list[int]:
    """Probes drawn in the overlay grid: all when ``n <= limit``, else ``limit`` of them taken
    round-robin across classes (in probe order), so every class is shown."""
    if n <= limit:
        return list(range(n))
    if labels is None:
        return list(range(limit))
    queues: dict[int, list[int]] = {}
    for i, c in enumerate(labels.tolist()):
        queues.setdefault(int(c), []).append(i)
    order: list[int] = []
    while len(order) < limit:
        for q in queues.values():
            if q and len(order) < limit:
                order.append(q.pop(0))
    return sorted(order)


def _opt(t: Tensor | None, device: torch.device) -> Tensor | None:
    return None if t is None else t.to(device)


def _module_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def _fn(trainer: Any) -> str:
    fn = getattr(trainer.state, "fn", None)
    return str(getattr(fn, "value", fn))


def _fast_dev_run(trainer: Any) -> bool:
    return bool(getattr(trainer, "fast_dev_run", False))


def _log_step(trainer: Any) -> int:
    """The step Lightning uses for ``val_*`` curves (as LearningRateMonitor does)."""
    try:
        return int(trainer.fit_loop.epoch_loop._batches_that_stepped)
    except AttributeError:
        return int(trainer.global_step)


def _precision_plugin(trainer: Any) -> Any:
    strategy = getattr(trainer, "strategy", None)
    return getattr(strategy, "precision_plugin", None)


def _forward_context(plugin: Any) -> Any:
    if plugin is None:
        from contextlib import nullcontext

        return nullcontext()
    return plugin.forward_context()


@contextmanager
def _eager_forward(pl_module: Any) -> Iterator[None]:
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


def _find_dataloader(trainer: Any, stage: str, idx: int) -> Any:
    """The dataloader to draw probes from: validation for fit/validate, else test."""
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


def _thumbnail(images: Tensor, size: int = 96) -> Tensor:
    """Downscale uint8 ``[N, 3, H, W]`` so the longer side is at most ``size``."""
    h, w = images.shape[-2:]
    scale = size / max(h, w)
    if scale >= 1:
        return images
    out = torch.nn.functional.interpolate(
        images.float(), scale_factor=scale, mode="bilinear", align_corners=False, antialias=True
    )
    return out.round().clamp(0, 255).to(torch.uint8)


def _frame(thumbs: Tensor, padding: int = 2) -> Tensor:
    """One GIF frame: the ``[N, 3, h, w]`` overlays of a run tiled in a near-square grid."""
    n = thumbs.shape[0]
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / cols)
    pad = thumbs.new_zeros((rows * cols - n, *thumbs.shape[1:]))
    cells = torch.cat([thumbs, pad]).view(rows, cols, *thumbs.shape[1:])
    return tile(cells, padding=padding)
