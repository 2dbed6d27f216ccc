"""Shortcut-learning alarms: Grad-CAM maps of a probe set -> metrics -> :class:`Flag` records.

:class:`ShortcutMonitor` keeps the baseline maps (the untrained model, step 0) and the previous
run's maps, and analyses each run as a short pipeline:

1. **prepare**: bring maps, images and masks to one bounded *analysis grid* (at most
   ``analysis_size`` cells per side: a Grad-CAM map carries no detail finer than its stride, so
   nothing is lost, and a 224-px run costs what a 64-px one does);
2. **measure**: drift against the baseline and the previous run, focus, mask measures and the
   mask-free anchored hot spot (:mod:`gradcam_callback.metrics`), per probe and per explained
   class;
3. **confirm**: erase the region of every rule that is at or near its threshold, for the classes
   concerned only, in one batched forward, and measure the target's lost evidence;
4. **decide**: apply the rule table (:data:`gradcam_callback.rules.RULES`) per explained class,
   one flag per kind naming its classes;
5. **remember**: the maps for drift, the active flags for persistence.

Flag kinds (:class:`~gradcam_callback.rules.FlagKind`):

``"artifact"``
    Attention sits on a label artifact (watermark, text tag, hospital token, ruler, border band,
    stamp) in the probes of some class: with artifact masks, the attention enrichment inside the
    masks; with or without masks, an *anchored hot spot* where the maps of different images of one
    class pile up at the same off-centre place over pixels that barely change between images.
    Confirmed causally by default: erasing the region (filled from its surroundings) takes most of
    the target's evidence from most of the class's probes.
``"background"``
    Attention left the object: with object masks, low attention enrichment on the objects and a
    model that barely notices when they are erased; with or without masks, attention spread over
    the whole image (as over a class-tied texture) and no compact region whose erasure matters.
``"drift"``
    Informational: the maps changed suddenly between two consecutive trained runs.

A rule that keeps firing is reported again with ``persistent=True`` and the epoch its streak began
(``since_epoch``) instead of as new noise. The baseline run never raises a flag, and ``NaN``
values (all-zero maps of an untrained model, empty masks) never count towards one. Spatial rules
are not evaluated on maps with fewer than ``min_map_cells`` cells per side: upsampled, such maps
are near-uniform whatever the model looks at, and cannot localise an artifact.

Metric names (relative; the callback prefixes them): ``drift/{pearson,spearman,js,iou,com_shift}
_{baseline,previous}``, ``attention/{entropy,focus,border_enrichment,corner_enrichment}``,
``attention/{object,artifact}_{share,enrichment}``, ``attention/object_pointing``,
``attention/hotspot_{share,enrichment}`` (per probe) and ``attention/hotspot_{consistency,offset,
stability,area}`` (per class), ``causal/{region}_{flip,drop,evidence,depends}`` for the regions
``artifact, hotspot, object, focus, border`` (``NaN``, hence not logged, where a probe was not
tested: confirmation runs only where a rule needs it), ``causal/hotspot_{flip_rate,score_drop,
evidence_drop,dependence}`` (per class) and the aliases ``causal/{flip,score_drop,evidence_drop,
dependence}`` of the artifact region that was tested (the artifact masks when given, else the hot
spot). Summaries carry set means, per-class means ``<name>/class_<k>`` and, for hot-spot group
values, the group that fired (else the most anchored-looking one).
"""

from __future__ import annotations

import math
import string
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from . import evidence as E
from .rules import RULES, FlagKind, Rule, RuleDecision, evaluate

__all__ = ["FLAG_KINDS", "Analysis", "Flag", "FlagKind", "ShortcutDetected", "ShortcutMonitor"]

#: Every flag kind, as plain strings (``FlagKind`` members compare equal to them).
FLAG_KINDS: tuple[str, ...] = tuple(k.value for k in FlagKind)

# Regions a causal check can erase, and the per-probe measure that ranks a rule's probes.
_PROBE_METRIC = {"attention/hotspot_consistency": "attention/hotspot_enrichment"}
_GROUP_METRICS = (
    "attention/hotspot_consistency",
    "attention/hotspot_offset",
    "attention/hotspot_stability",
    "attention/hotspot_area",
)


@dataclass(frozen=True)
class Flag:
    """One alarm.

    Attributes:
        kind: a :class:`~gradcam_callback.rules.FlagKind` (compares equal to its name:
            ``"artifact"``, ``"background"``, ``"drift"``, ``"unfaithful"``).
        epoch, global_step: when the analysis ran.
        probe: the probe index when one probe is at fault, ``None`` for several.
        value: the measured value that crossed ``threshold`` (see ``metric``), for the class
            that shows it most.
        threshold: the threshold it crossed.
        message: what, which classes and probes, how much, what to do.
        persistent: ``True`` when the same kind also fired for these classes at the previous run.
        since_epoch, since_step: when this streak began (this run when new).
        probes: indices of the probes that carry the finding (most affected first).
        metric: the metric name (relative, e.g. ``"attention/artifact_enrichment"``) whose plot
            shows it; the callback prefixes it (``gradcam/...``).
        classes: the explained classes the flag is about (empty for set-level flags).
    """

    kind: FlagKind
    epoch: int
    global_step: int
    probe: int | None
    value: float
    threshold: float
    message: str
    persistent: bool = False
    since_epoch: int | None = None
    since_step: int | None = None
    probes: tuple[int, ...] = ()
    metric: str = ""
    classes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.kind, FlagKind):
            try:
                object.__setattr__(self, "kind", FlagKind(str(self.kind)))
            except ValueError:
                raise ValueError(
                    f"unknown flag kind {self.kind!r}; one of {', '.join(FLAG_KINDS)}"
                ) from None
        object.__setattr__(self, "probes", tuple(int(p) for p in self.probes))
        object.__setattr__(self, "classes", tuple(int(c) for c in self.classes))

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (``kind`` as a ``str``): safe for ``torch.load(weights_only=True)``."""
        out = asdict(self)
        out["kind"] = str(self.kind)
        return out


class ShortcutDetected(RuntimeError):
    """Raised (with ``on_flag="raise"``) when a shortcut-learning flag fires.

    Attributes:
        flags: the flags that triggered it.
    """

    def __init__(self, flags: Sequence[Flag], message: str | None = None) -> None:
        self.flags: list[Flag] = list(flags)
        if message is None:
            message = "shortcut learning detected: " + " | ".join(f.message for f in self.flags)
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across processes
        return (type(self), (self.flags, str(self)))


@dataclass
class Analysis:
    """Result of :meth:`ShortcutMonitor.analyze`.

    Attributes:
        per_probe: name -> float32 ``[N]`` CPU tensor, one value per probe (``NaN`` where
            undefined: no mask, an all-zero map, a probe not tested causally).
        summary: name -> float: set means, per-class means ``"<name>/class_<k>"`` (explained
            classes), and hot-spot group values (see the module docstring).
        flags: the flags of this analysis (new and persistent).
        hotspot: bool ``[N, h, w]`` CPU at the analysis grid: each probe's class hot-spot
            footprint (the region the causal check erases), for overlays.
        skipped: rule name -> why it was not evaluated (masks missing, map too coarse, off).
        tested: region -> number of probes erased in this run's causal checks.
    """

    per_probe: dict[str, Tensor] = field(default_factory=dict)
    summary: dict[str, float] = field(default_factory=dict)
    flags: list[Flag] = field(default_factory=list)
    hotspot: Tensor | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    tested: dict[str, int] = field(default_factory=dict)


class _Fmt(string.Formatter):
    """``{name:pct}`` -> ``"42%"`` (clamped to [0, 100] %); ``NaN`` -> ``"n/a"`` for any spec."""

    def format_field(self, value: Any, format_spec: str) -> str:
        if isinstance(value, float) and math.isnan(value):
            return "n/a"
        if format_spec == "pct":
            return _pct(float(value))
        return super().format_field(value, format_spec)


_FMT = _Fmt()


def _pct(x: float) -> str:
    if math.isnan(x):
        return "n/a"
    return f"{min(max(x, 0.0), 1.0):.0%}"


def _fmt_list(idx: Sequence[int], limit: int = 8) -> str:
    shown = ", ".join(str(i) for i in idx[:limit])
    more = f" and {len(idx) - limit} more" if len(idx) > limit else ""
    return f"{shown}{more}"


class ShortcutMonitor:
    """Turns probe-set Grad-CAM maps into metrics and shortcut-learning flags.

    All thresholds are keyword arguments. The README's flag table gives each default and the
    held-out detection results behind it. Rules decide per explained class (a shortcut usually
    lives in one class), each needing at least ``min_probes`` usable probes of that class.

    Args:
        artifact_enrichment: artifact rule (masks): the class's mean attention enrichment inside
            the artifact masks is at least this ...
        evidence_drop: a probe *depends* on an erased region when erasing it (filled from the
            surroundings) takes at least this share of the target's evidence (log-odds,
            :func:`~.metrics.evidence_drop`) ...
        dependence: ... and a region is confirmed when at least this share of the class's tested
            probes depend on it.
        object_enrichment: background rule (masks): the class's mean attention enrichment on the
            objects is at most this (1 = what a uniform map puts there) ...
        object_drop: ... and erasing the objects removes on average less than this share of the
            target's evidence: the model barely needs them.
        hotspot_consistency: hot-spot artifact rule (no masks needed): the class's probes put at
            least this enrichment on the hot spot they share (1 = chance) ...
        hotspot_offset: ... at least this far from the image centre (fraction of half the
            diagonal; 1 = a corner) ...
        hotspot_stability: ... over image pixels at least this stable across the class's images
            (pasted marks are; moving objects and random backgrounds score 0); confirmed by
            ``dependence`` on its footprint.
        diffuse_entropy: diffuse background rule (no masks needed): the class's mean normalised
            map entropy is at least this (attention spread over the whole image) ...
        focus_drop: ... and erasing each map's hottest ``focus_frac`` removes on average less
            than this share of the target's evidence: no compact evidence.
        hotspot_frac: hot-spot area as a fraction of the image.
        focus_frac: the hottest area fraction of each map that the focus erasure removes, when
            ``focus_mass`` is ``None``.
        focus_mass: the focus erasure removes each map's hottest pixels holding this share of
            its mass (the region the map itself points at; ``None``: a fixed ``focus_frac``).
        border_width: width of the image-frame band (fraction of each side).
        border_enrichment: optional frame rule (``None`` = off): the frame's enrichment is at
            least this, confirmed by ``dependence`` on it. Catches frames, rulers and scanner
            borders along the whole edge; single-edge bands are caught as hot spots already.
        flip_rate: optional extra confirmation (``None`` = off): a share of tested probes whose
            prediction flips that also confirms a ``"depends"`` rule.
        score_drop: optional extra confirmation (``None`` = off): a mean drop of the target's
            probability that also confirms one.
        drift_pearson: drift flag when the mean Pearson correlation of the maps with the previous
            run's maps falls below this (never right after the baseline).
        min_probes: the fewest usable probes of a class a rule needs.
        learned_share: rules decide only about classes the model has learned on the probes:
            the share of the class's probes it predicts as the class, minus the share of the other
            probes it predicts as the class (Youden's index), is at least this (``None``: every
            class).
        confirm: run the causal checks when :meth:`analyze` gets a ``score_fn``.
        confirm_margin: a rule is tested causally for a class when its attention statistics are
            within this factor of their thresholds (``1`` = only when over them); the causal
            values of classes not tested are ``NaN`` (not logged).
        analysis_size: the analysis grid's longer side, in cells (maps, masks and images are
            resized to it; never larger than the images).
        min_map_cells: spatial rules need maps with at least this many cells per side.
        max_classes: per-class means are reported for at most this many classes.
    """

    def __init__(
        self,
        *,
        artifact_enrichment: float | None = 3.0,
        evidence_drop: float = 0.5,
        dependence: float = 0.75,
        object_enrichment: float | None = 2.0,
        object_drop: float = 0.5,
        hotspot_consistency: float | None = 2.0,
        hotspot_offset: float = 0.3,
        hotspot_stability: float = 0.15,
        diffuse_entropy: float | None = 0.95,
        focus_drop: float = 0.5,
        hotspot_frac: float = 0.05,
        focus_frac: float = 0.1,
        focus_mass: float | None = None,
        border_width: float = 0.125,
        border_enrichment: float | None = None,
        flip_rate: float | None = None,
        score_drop: float | None = None,
        drift_pearson: float | None = 0.5,
        min_probes: int = 4,
        learned_share: float | None = 0.5,
        confirm: bool = True,
        confirm_margin: float = 0.8,
        analysis_size: int = 64,
        min_map_cells: int = 7,
        max_classes: int = 20,
        rules: Sequence[Rule] = RULES,
    ) -> None:
        def opt(v: float | None) -> float | None:
            return None if v is None else float(v)

        self.artifact_enrichment = opt(artifact_enrichment)
        self.evidence_drop = float(evidence_drop)
        self.dependence = float(dependence)
        self.object_enrichment = opt(object_enrichment)
        self.object_drop = float(object_drop)
        self.hotspot_consistency = opt(hotspot_consistency)
        self.hotspot_offset = float(hotspot_offset)
        self.hotspot_stability = float(hotspot_stability)
        self.diffuse_entropy = opt(diffuse_entropy)
        self.focus_drop = float(focus_drop)
        self.hotspot_frac = float(hotspot_frac)
        self.focus_frac = float(focus_frac)
        self.focus_mass = opt(focus_mass)
        self.border_width = float(border_width)
        self.border_enrichment = opt(border_enrichment)
        self.flip_rate = opt(flip_rate)
        self.score_drop = opt(score_drop)
        self.drift_pearson = opt(drift_pearson)
        self.min_probes = int(min_probes)
        self.learned_share = opt(learned_share)
        self.confirm = bool(confirm)
        self.confirm_margin = float(confirm_margin)
        self.analysis_size = int(analysis_size)
        self.min_map_cells = int(min_map_cells)
        self.max_classes = int(max_classes)
        self.rules: tuple[Rule, ...] = tuple(rules)
        if not 0.0 < self.confirm_margin <= 1.0:
            raise ValueError(f"confirm_margin must lie in (0, 1], got {confirm_margin}")
        if self.min_probes < 1 or self.analysis_size < 2 or self.min_map_cells < 1:
            raise ValueError("min_probes and min_map_cells must be >= 1, analysis_size >= 2")
        self.baseline_maps: Tensor | None = None
        self.previous_maps: Tensor | None = None
        self.previous_is_baseline: bool = False
        # kind -> (since_epoch, since_step, classes)
        self.active: dict[str, tuple[int, int, tuple[int, ...]]] = {}

    # ------------------------------------------------------------------ settings and state
    @property
    def settings(self) -> dict[str, float | None]:
        """Threshold name -> value, as the rule table reads them."""
        names = {c.threshold for r in self.rules for c in r.conditions}
        names |= {r.drop_setting for r in self.rules if r.drop_setting}
        return {n: getattr(self, n) for n in sorted(names)}

    def reset(self) -> None:
        """Forget the baseline, the previous maps and the persistence state."""
        self.baseline_maps = None
        self.previous_maps = None
        self.previous_is_baseline = False
        self.active = {}

    def state_dict(self) -> dict[str, Any]:
        """CPU tensors and plain Python only; loadable with ``torch.load(weights_only=True)``."""
        return {
            "baseline_maps": None if self.baseline_maps is None else self.baseline_maps.cpu(),
            "previous_maps": None if self.previous_maps is None else self.previous_maps.cpu(),
            "previous_is_baseline": self.previous_is_baseline,
            "active": {
                k: [int(e), int(s), [int(c) for c in cl]] for k, (e, s, cl) in self.active.items()
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (maps move to the device at the next run)."""
        self.baseline_maps = state.get("baseline_maps")
        self.previous_maps = state.get("previous_maps")
        self.previous_is_baseline = bool(state.get("previous_is_baseline", False))
        self.active = {
            str(k): (int(v[0]), int(v[1]), tuple(int(c) for c in (v[2] if len(v) > 2 else ())))
            for k, v in state.get("active", {}).items()
        }

    # ------------------------------------------------------------------ the pipeline
    def analyze(
        self,
        *,
        maps: Tensor,
        images: Tensor,
        targets: Tensor,
        labels: Tensor | None = None,
        scores: Tensor | None = None,
        logits: Tensor | None = None,
        object_masks: Tensor | None = None,
        artifact_masks: Tensor | None = None,
        score_fn: Callable[[Tensor], Tensor] | None = None,
        epoch: int = 0,
        global_step: int = 0,
        baseline: bool = False,
        map_size: tuple[int, int] | None = None,
        multilabel: bool = False,
    ) -> Analysis:
        """Measure one run's maps, confirm what needs it, and decide the flags.

        Args:
            maps: float ``[N, h, w]``, raw ReLU'd maps (not min-max normalised) at layer
                resolution or upsampled to the image size; resized to the analysis grid.
            images: ``[N, C, H, W]`` probe images as fed to the model.
            targets: long ``[N]``, the class each map explains (rules group by it).
            labels: unused by the rules (kept for API compatibility: rules group by the
                explained class).
            scores: float ``[N]`` target scores (kept for the record; unused by the rules).
            logits: float ``[N, K]`` outputs for the unchanged probes (saves a forward).
            object_masks, artifact_masks: bool ``[N, H, W]`` or ``None``.
            score_fn: ``images -> logits [N, K]`` (eval mode, no grad) for causal confirmation.
            epoch, global_step: recorded in the flags.
            baseline: this run is the reference (step 0, untrained): store it, raise no flags.
            map_size: ``(h, w)`` cells of the target layer's map; ``None`` reads it from
                ``maps`` when they are smaller than the images (else: assumed fine enough).
            multilabel: the outputs are independent sigmoid logits: evidence is the target
                logit (its log-odds), a flip is a change of its sign.

        Returns:
            :class:`Analysis`.
        """
        del labels, scores  # rules group by the explained class
        x = E.prepare(self, maps, images, targets, logits, object_masks, artifact_masks, map_size)
        if self.baseline_maps is not None and self.baseline_maps.shape != x.maps.shape:
            if self.baseline_maps.shape[0] != x.maps.shape[0]:
                self.reset()  # a different probe set: start over
            else:  # references saved at another resolution (an older checkpoint): resize
                self.baseline_maps = E.resize_maps(self.baseline_maps, x.maps.shape[-2:])
                if self.previous_maps is not None:
                    self.previous_maps = E.resize_maps(self.previous_maps, x.maps.shape[-2:])
        first = self.baseline_maps is None
        if baseline or first:
            self.baseline_maps = x.maps.clone()
        per, group, hot = E.measure(self, x, drift_vs_baseline=not (baseline or first))
        stats, counts = E.class_stats(x, per, group, hot.size)
        learned = E.learned_classes(x, self.learned_share, multilabel)
        decisions = evaluate(
            self.rules,
            stats,
            counts,
            self.settings,
            available=frozenset(
                n
                for n, m in (("object_masks", x.object_masks), ("artifact_masks", x.artifact_masks))
                if m is not None
            ),
            can_localise=x.can_localise,
            after_trained_run=not self.previous_is_baseline and self.previous_maps is not None,
            min_probes=self.min_probes,
            margin=self.confirm_margin,
            learned=learned,
        )
        causal = self.confirm and score_fn is not None and not baseline
        tested: dict[str, int] = {}
        if causal:
            assert score_fn is not None
            tested = E.confirm(self, x, decisions, hot, per, score_fn, multilabel)
            cstats, ccounts = E.causal_class_stats(x, per)
            stats.update(cstats)
            counts.update(ccounts)
        out = Analysis(*E.summarize(self, x, per, stats, group, decisions))
        out.summary["probe/learned_classes"] = float(learned.sum())
        out.hotspot = hot.footprint.cpu()
        out.tested = tested
        out.skipped = {d.rule.name: d.why_not for d in decisions if not d.evaluated}
        if baseline:
            self.active = {}
        else:
            flags = self._decide(x, per, stats, counts, decisions, causal, epoch, global_step)
            out.flags = self._remember_flags(flags, epoch, global_step)
        self.previous_maps = x.maps.clone()
        self.previous_is_baseline = baseline or first
        return out

    # ------------------------------------------------------------------ 1. prepare
    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """The analysis grid for ``height x width`` images (never larger than the images)."""
        scale = min(1.0, self.analysis_size / max(height, width))
        return max(1, round(height * scale)), max(1, round(width * scale))

    # ------------------------------------------------------------------ 4. decide
    def _confirmed(
        self, rule: Rule, stats: dict[str, Tensor], counts: dict[str, Tensor], settings: dict
    ) -> Tensor:
        """Bool ``[G]``: the class's causal evidence confirms ``rule`` (see :class:`Rule`).

        Only measured evidence counts: at least ``min_probes`` of the class's probes must have a
        defined evidence drop (a positive target log-odds before the erasure: a model that does
        not yet predict the class has no evidence to lose, and says nothing about shortcuts).
        """
        r = rule.region
        measured = counts[f"causal/{r}_evidence"] >= self.min_probes
        return measured & self._confirmed_where_measured(rule, stats, settings)

    def _confirmed_where_measured(
        self, rule: Rule, stats: dict[str, Tensor], settings: dict
    ) -> Tensor:
        r = rule.region
        if rule.confirm == "depends":
            ok = stats[f"causal/{r}_depends"] >= self.dependence  # NaN fails
            if self.flip_rate is not None:
                ok |= stats[f"causal/{r}_flip"] >= self.flip_rate
            if self.score_drop is not None:
                ok |= stats[f"causal/{r}_drop"] >= self.score_drop
            return ok
        drop = float(settings[rule.drop_setting])
        return stats[f"causal/{r}_evidence"] < drop

    def _decide(
        self,
        x: E.Inputs,
        per: dict[str, Tensor],
        stats: dict[str, Tensor],
        counts: dict[str, Tensor],
        decisions: list[RuleDecision],
        causal: bool,
        epoch: int,
        step: int,
    ) -> list[Flag]:
        settings = self.settings
        fired: dict[FlagKind, list[tuple[RuleDecision, list[int]]]] = {}
        for d in decisions:
            if not d.evaluated or d.attention is None:
                continue
            ok = d.attention
            if causal and d.rule.confirm is not None and d.rule.per_class:
                ok = ok & self._confirmed(d.rule, stats, counts, settings)
            groups = [int(g) for g in torch.nonzero(ok).flatten().tolist()]
            if groups:
                fired.setdefault(d.rule.kind, []).append((d, groups))
        flags = []
        for kind, hits in fired.items():
            flags.append(_word_flag(self, kind, hits, x, per, stats, causal, epoch, step))
        return flags

    # ------------------------------------------------------------------ 5. remember
    def _remember_flags(self, flags: list[Flag], epoch: int, step: int) -> list[Flag]:
        """Mark flags whose kind (for the same classes) also fired at the previous run."""
        out: list[Flag] = []
        active: dict[str, tuple[int, int, tuple[int, ...]]] = {}
        for f in flags:
            prev = self.active.get(str(f.kind))
            if prev is not None and set(f.classes) <= set(prev[2]):
                since = (prev[0], prev[1])
                f = replace(f, persistent=True, since_epoch=since[0], since_step=since[1])
            else:
                since = (epoch, step)
                f = replace(f, since_epoch=epoch, since_step=step)
            active[str(f.kind)] = (since[0], since[1], f.classes)
            out.append(f)
        self.active = active
        return out

    # ------------------------------------------------------------------ summaries


def _word_flag(
    mon: ShortcutMonitor,
    kind: FlagKind,
    hits: list[tuple[RuleDecision, list[int]]],
    x: E.Inputs,
    per: dict[str, Tensor],
    stats: dict[str, Tensor],
    causal: bool,
    epoch: int,
    step: int,
) -> Flag:
    """One flag for a kind: the first firing rule leads; every firing class is named."""
    lead, groups = hits[0]
    rule = lead.rule
    thr = float(rule.threshold(mon.settings))  # type: ignore[arg-type]
    suffix = "" if rule.per_class else "@set"
    head = stats[rule.headline.metric + suffix]
    all_groups = sorted({g for _, gs in hits for g in gs})
    # the class that shows it most leads the wording
    vals = head[groups] if rule.per_class else head
    best = groups[int(vals.argmax() if rule.headline.op == ">=" else vals.argmin())]
    best = best if rule.per_class else 0
    value = float(head[best])
    fields = {
        k.removesuffix(suffix): float(v[best])
        for k, v in stats.items()
        if (k.endswith("@set") if suffix else not k.endswith("@set"))
    }
    fields["value"] = value
    text = _FMT.format(rule.summary, **fields)
    if rule.per_class:
        classes = tuple(x.classes[g] for g in all_groups)
        sel = torch.zeros_like(x.groups, dtype=torch.bool)
        for g in all_groups:
            sel |= x.groups == g
        listed = (
            ", ".join(f"{x.classes[g]}: {float(head[g]):.2f}" for g in groups)
            if len(groups) > 1
            else ""
        )
        who = (
            f"Probes explained as class {classes[0]}"
            if len(classes) == 1
            else f"Probes explained as classes {_fmt_list(list(classes))}"
        )
        text = f"{who}: {text}" + (f" (per class: {listed})" if listed else "")
    else:
        classes = ()
        sel = torch.ones_like(x.groups, dtype=torch.bool)
        text = text[0].upper() + text[1:]
    if rule.confirm is not None and rule.per_class:
        text += _causal_words(mon, rule, stats, best, causal)
    others = [d.rule.name for d, _ in hits[1:]]
    if others:
        text += f"; also: {', '.join(others)}"
    metric = _PROBE_METRIC.get(rule.headline.metric, rule.headline.metric)
    values = per[metric]
    desc = rule.headline.op == ">="
    idx = torch.nonzero(sel & ~torch.isnan(values)).flatten()
    order = values[idx].argsort(descending=desc, stable=True)
    probes = [int(i) for i in idx[order].tolist()]
    text += f". Probes: {_fmt_list(probes)}. {rule.advice}"
    return Flag(
        kind=kind,
        epoch=int(epoch),
        global_step=int(step),
        probe=probes[0] if len(probes) == 1 else None,
        value=value,
        threshold=thr,
        message=text,
        probes=tuple(probes),
        metric=rule.headline.metric,
        classes=classes,
    )


def _causal_words(
    mon: ShortcutMonitor, rule: Rule, stats: dict[str, Tensor], g: int, causal: bool
) -> str:
    if not causal:
        return " (not confirmed causally: no score_fn, or confirm=False)"
    r = rule.region
    if rule.confirm == "depends":
        dep = float(stats[f"causal/{r}_depends"][g])
        flip = float(stats[f"causal/{r}_flip"][g])
        return (
            f"; erasing it takes at least {_pct(mon.evidence_drop)} of the target's evidence "
            f"(log-odds) from {_pct(dep)} of them and flips {_pct(flip)} of their predictions"
        )
    ev = float(stats[f"causal/{r}_evidence"][g])
    if r == "object":
        what = "the objects"
    elif mon.focus_mass is not None:
        what = f"the part of each map holding {_pct(mon.focus_mass)} of its attention"
    else:
        what = f"the hottest {_pct(mon.focus_frac)} of each map"
    if math.isnan(ev) or ev <= 0:
        return f"; erasing {what} removes none of the target's evidence"
    return f"; erasing {what} removes only {_pct(ev)} of the target's evidence"
