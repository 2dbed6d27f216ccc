"""Shortcut-learning alarms: Grad-CAM maps of a probe set -> metrics -> :class:`Flag` records.

:class:`ShortcutMonitor` keeps the baseline maps (the untrained model, step 0) and the previous
run's maps, and analyses each run as a short pipeline:

1. **prepare**: bring maps, images and masks to one bounded *analysis grid* (at most
   ``analysis_size`` cells per side: a Grad-CAM map carries no detail finer than its stride, so
   nothing is lost, and a 224-px run costs what a 64-px one does);
2. **measure**: drift against the baseline and the previous run, focus, mask measures and the
   mask-free anchored hot spot (:mod:`gradcam_callback.metrics`), per probe and per explained
   class;
3. **confirm**: erase the region of the rules over their thresholds, for the classes concerned
   only, in one batched forward within ``causal_budget``, and measure the target's lost evidence;
   a finding is carried to later runs while its attention holds (:mod:`gradcam_callback.causal`);
4. **decide**: apply the rule table (:data:`gradcam_callback.rules.RULES`) per explained class,
   one flag per kind naming its classes;
5. **remember**: the maps for drift, the active flags for persistence.

Flag kinds (:class:`~gradcam_callback.rules.FlagKind`):

``"artifact"``
    Attention sits on a label artifact (watermark, text tag, hospital token, ruler, border band,
    stamp) in the probes of some class: with artifact masks, the attention enrichment inside the
    masks (as the map's cells see them); with or without masks, an *anchored hot spot* where the
    maps of different images of one class pile up at the same off-centre place over pixels that
    barely change between images (up to a shift of half a map cell); without artifact masks,
    the attention on the class's *fixed-place mark*, found in the probe images themselves
    (off-centre pixels that most of the class's images share and few of the other classes'
    do: :func:`~gradcam_callback.metrics.class_marks`), read as the masks would be. Where the
    attention is only elevated (partial reliance, e.g. an artifact that tells a group of
    classes apart while the maps stay on the object), a strong measured dependence on the
    region confirms; a class's mark, tied to the class in the data, is tested so whatever the
    attention on it.
    Confirmed causally by default: erasing the region (filled from its surroundings) takes most of
    the target's evidence from most of the class's probes. A confirmed finding is *held while
    measured*: when the attention on it fades (Grad-CAM attention can saturate away from a
    region the model still relies on), the region (the masks, or the hot-spot footprint of the
    confirming test, or the class's mark) is re-tested at each run, and the flag stays while the
    measured dependence meets the rule's threshold; a conclusive lower measurement clears it.
``"background"``
    Attention left the object: with object masks, low attention enrichment on the objects and a
    model that barely notices when they are erased; with or without masks, attention spread over
    the whole image (as over a class-tied texture) and no compact region whose erasure matters.
    Either way confirmed by the background's own effect too: replacing the background (outside
    the dilated objects, or outside each map's focus region) by its mean colour takes at least
    ``background_drop`` of the evidence. A model that relies on nothing crisp yet (an early or
    a clean model) passes "erasing the object leaves the evidence", but not this. Without
    object masks that evidence must also be *spread*: erasing each patch of a 4 x 4 grid of the
    image on its own, fewer than ``dependence`` of the tested probes lose ``evidence_drop`` of
    their evidence to one patch (a texture, cast or exposure is shared by many patches; an
    object the diffuse maps miss, faint or small, is in one place and is not the background).
    A confirmed
    background finding is held while measured too, each re-test the rule's whole test again
    (the objects or the map's current focus region, and the background around them; the frame
    band), and cleared by a conclusive re-test that no longer confirms it.
``"drift"``
    Informational: the maps changed suddenly between two consecutive trained runs.
``"few_probes"``
    Informational: a rule's attention conditions hold for a learned class that has fewer than
    ``min_probes`` probes carrying its measure (weak evidence: neither tested causally nor
    flagged); the note names the class, its value, the threshold and the probe count, and asks
    for more probes of the class.

A rule that keeps firing is reported again with ``persistent=True`` and the epoch its streak began
(``since_epoch``) instead of as new noise. The baseline run never raises a flag, and ``NaN``
values (all-zero maps of an untrained model, empty masks) never count towards one. Spatial rules
are not evaluated on maps with fewer than ``min_map_cells`` cells per side: upsampled, such maps
are near-uniform whatever the model looks at, and cannot localise an artifact.

Metric names (relative; the callback prefixes them): ``drift/{pearson,spearman,js,iou,com_shift}
_{baseline,previous}``, ``attention/{entropy,focus,border_enrichment,corner_enrichment}``,
``attention/{object,artifact}_{share,enrichment}``, ``attention/artifact_{pixel,cell}_enrichment``
(the artifact enrichment is the larger of the two: the masks as the map's cells see them),
``attention/object_pointing``, ``attention/hotspot_{share,enrichment}`` (per probe) and
``attention/hotspot_{consistency,offset,stability,pixel_stability,shift_stability,area}`` (per
class; stability is the larger of the pixel and the shift-tolerant reading), without artifact
masks ``attention/mark_{enrichment,pixel_enrichment,cell_enrichment,area}`` (per probe: the
attention on its class's mark, and the mark's area) and ``attention/mark_offset`` (per class),
``causal/{region}_{flip,drop,evidence,depends}`` for the regions ``artifact, hotspot, mark,
object, focus, border, remembered, backdrop, surround, patches`` (``remembered``: a held hot-spot
finding's remembered footprint; ``backdrop`` / ``surround``: the background outside the objects
/ outside the focus region, for the background rules; ``patches``: each patch of a 4 x 4 grid
erased on its own, for the mask-free background rule, the values of the patch that takes the
most evidence; ``NaN``, hence not logged, where a probe
was not tested: confirmation runs only where a rule needs it), ``causal/hotspot_{flip_rate,score_drop,
evidence_drop,dependence}`` (per class) and the aliases ``causal/{flip,score_drop,evidence_drop,
dependence}`` of the artifact region that was tested (the artifact masks when given, else the hot
spot). Summaries carry set means, per-class means ``<name>/class_<k>`` and, for hot-spot group
values, the group that fired (else the most anchored-looking one).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from . import evidence as E
from .causal import CausalMemory, contexts, regions_to_erase
from .flags import FLAG_KINDS, Flag, ShortcutDetected, mark_persistent
from .rules import RULES, FlagKind, Rule, RuleDecision, evaluate, fired
from .wording import word_few_probes, word_flag

__all__ = ["FLAG_KINDS", "Analysis", "Flag", "FlagKind", "ShortcutDetected", "ShortcutMonitor"]


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
        partial_enrichment: partial-reliance artifact rule (masks): where the class's attention
            on the artifact masks is at least this but under ``artifact_enrichment`` (elevated,
            not dominant: an artifact that tells a group of classes apart, the object the class
            within it), the artifact is erased for the class's probes ...
        partial_consistency: ... and likewise, without masks, where the hot-spot consistency is
            at least this but under ``hotspot_consistency`` (offset and stability as for the
            hot-spot rule) ...
        partial_dependence: ... and such a rule is confirmed only by a strong measured
            dependence: at least this share of the class's tested probes depend on the region
            (``dependence`` is the share for the rules over their thresholds).
        mark_contrast: mark rules (no artifact masks needed; ``None`` = off): where no artifact
            masks are given, each class's *fixed-place mark* is looked for in the probe images
            (:func:`~.metrics.class_marks`): pixels that at least this share more of the class's
            images carry than of a typical other class's (a watermark, tag, stamp or ruler on
            one class or a group of classes; a moving object or a varying background has none).
            The attention on a class's mark, as the map sees it, is then read like the
            attention on artifact masks: at least ``artifact_enrichment`` confirmed by
            ``dependence``; under it, partial reliance confirmed by ``partial_dependence``
            with no lower attention bound (a mark is tied to its class in the data, and
            Grad-CAM can under-read it; ``partial_enrichment=None`` switches it off too).
        mark_tolerance: ... an image carries a pixel's value when every channel lies within this
            fraction of the typical pixel spread across the probe images of the class's median.
        diffuse_entropy: diffuse background rule (no masks needed): the class's mean normalised
            map entropy is at least this (attention spread over the whole image) ...
        focus_drop: ... and erasing each map's hottest ``focus_frac`` removes on average less
            than this share of the target's evidence: no compact evidence.
        background_drop: the background rules (all three) are confirmed only where the
            background's own erasure matters too: replacing everything outside the objects
            (dilated by 5 % of the image side; without object masks, everything outside each
            map's dilated focus region) by its mean colour takes on average at least this share
            of the target's evidence. Erased in the same probes and the same forward as the
            rule's own region; ``None``: not tested (the 0.3.1 confirmation).
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
            within this factor of their thresholds (``1``, the default: only when over them, the
            only tests a flag can depend on); the causal values of classes not tested are
            ``NaN`` (not logged).
        causal_budget: the most probes a run erases, as a multiple of the probe-set size (the
            default ``0.5``: at most half a probe-set forward, one when every tested rule is a
            background rule, which erases two images of each probe (the mask-free one also
            erases each of 16 patches: nine forwards); ``None``: every probe of
            every rule that needs it). Tests are shared out and findings carried between runs as
            :mod:`gradcam_callback.causal` describes.
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
        partial_enrichment: float | None = 1.5,
        partial_consistency: float | None = 1.5,
        partial_dependence: float = 0.9,
        mark_contrast: float | None = 0.5,
        mark_tolerance: float = 0.25,
        diffuse_entropy: float | None = 0.95,
        focus_drop: float = 0.5,
        background_drop: float | None = 0.5,
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
        confirm_margin: float = 1.0,
        causal_budget: float | None = 0.5,
        analysis_size: int = 64,
        min_map_cells: int = 7,
        max_classes: int = 20,
        rules: Sequence[Rule] = RULES,
    ) -> None:
        given = {k: v for k, v in locals().items() if k not in ("self", "rules")}
        for name, value in given.items():
            setattr(self, name, _coerce(name, value))
        self.rules: tuple[Rule, ...] = tuple(rules)
        if not 0.0 < self.confirm_margin <= 1.0:
            raise ValueError(f"confirm_margin must lie in (0, 1], got {confirm_margin}")
        if self.causal_budget is not None and self.causal_budget <= 0:
            raise ValueError(f"causal_budget must be > 0 or None, got {causal_budget}")
        if self.min_probes < 1 or self.analysis_size < 2 or self.min_map_cells < 1:
            raise ValueError("min_probes and min_map_cells must be >= 1, analysis_size >= 2")
        self.baseline_maps: Tensor | None = None
        self.previous_maps: Tensor | None = None
        self.previous_is_baseline: bool = False
        # kind -> (since_epoch, since_step, classes)
        self.active: dict[str, tuple[int, int, tuple[int, ...]]] = {}
        self.memory = CausalMemory()
        self.map_cache = E.StatsCache()  # the maps' drift pieces (references read once)
        self.image_cache = E.ImageCache()  # the probe images at the grid, read once

    # ------------------------------------------------------------------ settings and state
    @property
    def settings(self) -> dict[str, float | None]:
        """Threshold name -> value, as the rule table reads them."""
        names = {c.threshold for r in self.rules for c in r.conditions}
        names |= {r.drop_setting for r in self.rules if r.drop_setting}
        names |= {r.dependence_setting for r in self.rules if r.confirm == "depends"}
        names |= {r.context_setting for r in self.rules if r.context_region is not None}
        names |= {r.switch for r in self.rules if r.switch is not None}
        return {n: getattr(self, n) for n in sorted(names)}

    def reset(self) -> None:
        """Forget the baseline, the previous maps, the persistence state and causal findings."""
        self.baseline_maps = None
        self.previous_maps = None
        self.previous_is_baseline = False
        self.active = {}
        self.memory.reset()

    def state_dict(self) -> dict[str, Any]:
        """CPU tensors and plain Python only; loadable with ``torch.load(weights_only=True)``.

        New containers each call; the maps are the monitor's own tensors, which a run replaces
        and never writes into, so a state dict taken before a run stays as it was."""
        return {
            "baseline_maps": None if self.baseline_maps is None else self.baseline_maps.cpu(),
            "previous_maps": None if self.previous_maps is None else self.previous_maps.cpu(),
            "previous_is_baseline": self.previous_is_baseline,
            "active": {
                k: [int(e), int(s), [int(c) for c in cl]] for k, (e, s, cl) in self.active.items()
            },
            "causal": self.memory.state_dict(),
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
        self.memory.load_state_dict(state.get("causal", {}))

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
        probe_index: Tensor | None = None,
    ) -> Analysis:
        """Measure one run's maps, confirm what needs it, and decide the flags.

        Args:
            maps: float ``[N, h, w]``, raw ReLU'd maps (not min-max normalised) at layer
                resolution or upsampled to the image size; resized to the analysis grid.
            images: ``[N, C, H, W]`` probe images as fed to the model.
            targets: long ``[N]``, the class each map explains (rules group by it).
            labels, scores: unused (API compatibility); ``logits``: float ``[N, K]`` outputs
                for the unchanged probes (saves a forward).
            object_masks, artifact_masks: bool ``[N, H, W]`` or ``None``.
            score_fn: ``images -> logits [N, K]`` (eval mode, no grad) for causal confirmation.
            epoch, global_step: recorded in the flags; ``baseline``: this run is the
                reference (step 0, untrained): store it, raise no flags.
            map_size: ``(h, w)`` cells of the layer's map (``None``: read from ``maps``).
            multilabel: sigmoid outputs: evidence is the target logit, a flip its sign change.
            probe_index: long ``[N]``, multi-label: the probe each row explains (rows of one
                probe share its label set; ``None``: rows with identical images are one probe).
        """
        del labels, scores
        x = E.prepare(
            self, maps, images, targets, logits, object_masks, artifact_masks, map_size,
            probe_index,
        )  # fmt: skip
        reference = self._align_references(x, baseline)
        per, group, hot = E.measure(self, x, drift_vs_baseline=not reference)
        stats, counts = E.class_stats(x, per, group, hot.size)
        learned = E.learned_classes(x, self.learned_share, multilabel)
        confirming = self.confirm and score_fn is not None
        decisions = self._evaluate(x, stats, counts, learned, confirming)
        causal = confirming and not baseline
        tested: dict[str, dict[int, int]] = {}  # rule name -> {group: probes tested}
        out = Analysis()
        if causal and score_fn is not None:
            tested, out.tested = self._test(x, decisions, hot, per, score_fn, multilabel)
            cstats, ccounts = E.causal_class_stats(x, per)
            stats, counts = stats | cstats, counts | ccounts
        out.per_probe, out.summary = E.summarize(self, x, per, stats, group, decisions)
        out.summary["probe/learned_classes"] = float(learned.sum())
        out.summary["causal/tested_probes"] = float(sum(out.tested.values()))
        out.hotspot = hot.footprint.cpu()
        out.skipped = {d.rule.name: d.why_not for d in decisions if not d.evaluated}
        if baseline:
            self.active = {}
            self.memory.reset()
        else:
            out.flags = self._decide(
                x, decisions, per, stats, counts, tested, causal, epoch, global_step,
                hot.group_footprint,
            )  # fmt: skip
        # x.maps is this run's own fresh tensor: kept as it is (its ranks stay cached)
        self.previous_maps, self.previous_is_baseline = x.maps, reference
        return out

    # ------------------------------------------------------------------ the steps
    def _decide(
        self,
        x: E.Inputs,
        decisions: list[RuleDecision],
        per: dict[str, Tensor],
        stats: dict[str, Tensor],
        counts: dict[str, Tensor],
        tested: dict[str, dict[int, int]],
        causal: bool,
        epoch: int,
        step: int,
        footprints: Tensor | None = None,
    ) -> list[Flag]:
        """Confirm (this run's tests, carried and held findings), fire, word and mark the
        flags; ``footprints``: bool ``[G, h, w]``, the class hot-spot footprints."""
        confirmed, words = {}, None
        held: dict[str, Tensor] = {}
        if causal:
            confirmed = self.memory.settle(
                self, x.classes, decisions, stats, counts, tested, epoch, footprints
            )
            held = self.memory.held
            words = self.memory.words(x.classes, stats, self.memory.conclusive)
        hits = fired(decisions, confirmed, held)  # the classes flagged: a note does not repeat
        flags = [
            word_flag(self, kind, kind_hits, x, per, stats, words, epoch, step, held)
            for kind, kind_hits in hits.items()
        ]
        note = word_few_probes(self, decisions, hits, x, stats, counts, epoch, step)
        flags += [note] if note is not None else []
        out, self.active = mark_persistent(flags, self.active, epoch, step)
        return out

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """The analysis grid for ``height x width`` images (never larger than the images)."""
        scale = min(1.0, self.analysis_size / max(height, width))
        return max(1, round(height * scale)), max(1, round(width * scale))

    def _align_references(self, x: E.Inputs, baseline: bool) -> bool:
        """Bring the stored maps to this run's grid; store the baseline when this run is the
        reference (``baseline``, or the first run). Returns whether it is."""
        ref = self.baseline_maps
        if ref is not None and ref.shape != x.maps.shape:
            if ref.shape[0] != x.maps.shape[0]:
                self.reset()  # a different probe set: start over
            else:  # references saved at another resolution (an older checkpoint): resize
                self.baseline_maps = E.resize_maps(ref, x.maps.shape[-2:])
                if self.previous_maps is not None:
                    self.previous_maps = E.resize_maps(self.previous_maps, x.maps.shape[-2:])
        reference = baseline or self.baseline_maps is None
        if reference:
            self.baseline_maps = x.maps
        return reference

    def _evaluate(
        self,
        x: E.Inputs,
        stats: dict[str, Tensor],
        counts: dict[str, Tensor],
        learned: Tensor,
        confirming: bool,
    ) -> list[RuleDecision]:
        """The attention half of every rule, per class (:func:`~.rules.evaluate`);
        ``confirming``: the run tests causally."""
        masks = (
            ("object_masks", x.object_masks),
            ("artifact_masks", x.artifact_masks),
            ("class_marks", x.mark_masks),
        )
        return evaluate(
            self.rules,
            stats,
            counts,
            self.settings,
            available=frozenset(n for n, m in masks if m is not None),
            can_localise=x.can_localise,
            after_trained_run=not self.previous_is_baseline and self.previous_maps is not None,
            min_probes=self.min_probes,
            margin=self.confirm_margin,
            learned=learned,
            sizes=x.onehot.sum(0),
            confirming=confirming,
        )

    def _test(
        self,
        x: E.Inputs,
        decisions: list[RuleDecision],
        hot: Any,
        per: dict[str, Tensor],
        score_fn: Callable[[Tensor], Tensor],
        multilabel: bool,
    ) -> tuple[dict[str, dict[int, int]], dict[str, int]]:
        """Plan this run's causal tests within the budget and run them in one forward.
        Returns the plan (rule name -> groups) and region -> probes tested."""
        n = x.maps.shape[0]
        budget = None if self.causal_budget is None else max(1, math.ceil(self.causal_budget * n))
        sizes = [int(s) for s in x.onehot.sum(0).tolist()]
        plan = self.memory.plan(decisions, x.classes, sizes, budget, self.min_probes)
        wanted = regions_to_erase(
            plan, decisions, x.groups, self.memory.run, contexts(self, decisions)
        )
        grid = tuple(x.maps.shape[-2:])

        def remembered() -> Tensor:
            return self.memory.remembered(x.groups, x.classes, grid)

        return plan, E.confirm(self, x, wanted, hot, per, score_fn, multilabel, remembered)


_INTS = frozenset({"min_probes", "analysis_size", "min_map_cells", "max_classes"})
_OPTIONAL = frozenset(
    {
        "artifact_enrichment",
        "object_enrichment",
        "hotspot_consistency",
        "partial_enrichment",
        "partial_consistency",
        "mark_contrast",
        "diffuse_entropy",
        "background_drop",
        "focus_mass",
        "border_enrichment",
        "flip_rate",
        "score_drop",
        "drift_pearson",
        "learned_share",
        "causal_budget",
    }
)


def _coerce(name: str, value: Any) -> Any:
    """A monitor setting as its type: ``bool`` (``confirm``), ``int``, or ``float`` (``None``
    only where it switches something off)."""
    if name == "confirm":
        return bool(value)
    if value is None:
        if name in _OPTIONAL:
            return None
        raise TypeError(f"ShortcutMonitor({name}=None): {name} needs a number")
    return int(value) if name in _INTS else float(value)
