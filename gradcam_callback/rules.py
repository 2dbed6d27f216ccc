"""Shortcut rules as data: one small :class:`Rule` per flag kind, evaluated per explained class.

A rule is a list of :class:`Condition` on *class statistics* (the mean of a per-probe measure over
the probes explained as one class, or a statistic of the class's probes as a group, such as the
hot spot they share), the masks it needs, whether it needs a map that can localise, and the region
whose erasure confirms it causally. :func:`evaluate` is the one loop that applies every rule to
every class; :class:`~gradcam_callback.alarms.ShortcutMonitor` turns its decisions into flags.

Conditions read their thresholds by name from a settings mapping (the monitor's attributes), so
one rule table serves every configuration and a threshold set to ``None`` turns its rule off.
Every comparison treats ``NaN`` as "not met": an undefined value never raises an alarm.

No Lightning import, no host synchronisation: decisions are bool tensors ``[G]``.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "ALARM_KINDS",
    "INFO_KINDS",
    "RULES",
    "Condition",
    "FlagKind",
    "Rule",
    "RuleDecision",
    "evaluate",
    "fired",
]


class FlagKind(str, Enum):
    """The kinds of :class:`~gradcam_callback.Flag`.

    A ``str`` enum: ``FlagKind.artifact == "artifact"``, so code that compares kinds with plain
    strings keeps working, and ``str(kind)`` is the plain name.
    """

    artifact = "artifact"
    background = "background"
    drift = "drift"
    unfaithful = "unfaithful"
    few_probes = "few_probes"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def alarming(self) -> bool:
        """``True`` for the kinds that mean "the model or its explanation is not to be trusted"
        (``on_flag="stop"`` / ``"raise"`` act on these); ``drift`` and ``few_probes`` are
        informational."""
        return self in ALARM_KINDS


ALARM_KINDS: frozenset[FlagKind] = frozenset(
    {FlagKind.artifact, FlagKind.background, FlagKind.unfaithful}
)
INFO_KINDS: frozenset[FlagKind] = frozenset({FlagKind.drift, FlagKind.few_probes})

_OPS: dict[str, Callable[[Tensor, float], Tensor]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "<": operator.lt,
}


@dataclass(frozen=True)
class Condition:
    """``statistic <op> settings[threshold]`` for every class at once.

    Attributes:
        metric: name of a class statistic (``"attention/artifact_enrichment"``, ...).
        op: ``">="``, ``"<="`` or ``"<"``.
        threshold: name of the setting that holds the threshold.
    """

    metric: str
    op: Literal[">=", "<=", "<"]
    threshold: str

    def holds(self, value: Tensor, threshold: float) -> Tensor:
        """Bool ``[G]``: the condition holds (``NaN`` never does)."""
        return _OPS[self.op](value, threshold) & ~torch.isnan(value)

    def near(self, value: Tensor, threshold: float, margin: float) -> Tensor:
        """Bool ``[G]``: the value is within ``margin`` (a factor in ``(0, 1]``) of holding.

        ``>=`` rules are near from ``margin * threshold`` up, ``<=`` / ``<`` rules up to
        ``threshold / margin`` (both thresholds are positive for every rule here).
        """
        relaxed = threshold * margin if self.op == ">=" else threshold / margin
        return _OPS[self.op](value, relaxed) & ~torch.isnan(value)


@dataclass(frozen=True)
class Rule:
    """One way a flag kind can fire.

    Attributes:
        name: short identifier (``"artifact_masks"``), used in summaries and messages.
        kind: the :class:`FlagKind` it raises.
        conditions: all must hold for a class; the first is the headline (its value and threshold
            go into the flag).
        needs: what the probes must carry: ``"artifact_masks"``, ``"object_masks"``,
            ``"class_marks"`` (the classes' fixed-place marks were looked for in the probe
            images: no artifact masks, ``mark_contrast`` set) or nothing.
        unless: not evaluated when the probes carry this (``"object_masks"``): a rule that reads
            it measures the same thing more directly and decides instead.
        spatial: needs a map that can localise (not evaluated on maps coarser than the monitor's
            ``min_map_cells``).
        region: the region erased to confirm the rule causally (see
            :class:`~gradcam_callback.alarms.ShortcutMonitor`), or ``None``.
        confirm: ``"depends"``: confirmed when at least ``dependence`` of the class's tested probes
            lose at least ``evidence_drop`` of the target's evidence once the region is erased.
            ``"indifferent"``: confirmed when erasing the region removes on average less than the
            setting named by ``drop_setting`` (the model does not need what the map should show).
        drop_setting: the setting of an ``"indifferent"`` confirmation.
        context_region: a second region erased in the same probes (same forward, same budget),
            whose *own* causal effect must confirm too: erasing it must take on average at
            least the setting named by ``context_setting`` of the target's evidence. The
            background rules use it: "erasing the object leaves the evidence" is an absence of
            evidence that a model relying on nothing crisp yet (an early, weak or clean model)
            passes too; a model that relies on the background loses its evidence when the
            background goes (``"backdrop"``: everything outside the dilated object masks;
            ``"surround"``: everything outside each map's dilated focus region). ``None``: no
            second test; a context setting set to ``None`` switches the test off.
        context_setting: the setting of the ``context_region`` test.
        spread_region: where a rule without object masks asks whether the evidence its context
            test found is *spread* over the image or sits in one place (``"patches"``: each
            patch of a 4 x 4 grid of the image erased on its own, by its mean colour, in the
            same forward as the context region, only when the context test is on). A background
            texture, colour cast or exposure is shared by many patches, so no one patch takes
            much of the evidence; an object the maps do not localise (a faint or small object
            under diffuse maps) is in one place, and the patch that holds it takes the evidence.
            A probe depends on one place when one patch takes at least ``evidence_drop`` of its
            evidence (:func:`~gradcam_callback.evidence.patch_dependence`), and the rule is
            confirmed only where fewer than ``dependence`` of the tested probes do: the
            thresholds of every dependence test. ``None``: no such test.
        dependence_setting: the setting that holds the share of tested probes a ``"depends"``
            confirmation needs (``"dependence"``; the partial-reliance rules ask for more).
        held_region: where a finding this rule confirmed is re-tested once the rule's attention
            condition stops holding for the class (``None``: it is not; the finding is
            forgotten). Grad-CAM attention on a region the model relies on can fade (the
            evidence saturates) while the reliance stays, and the causal test is the stronger
            evidence, so the finding is *held while measured*: re-tested on this region at
            every run (within the causal budget), the flag stays while the measured dependence
            meets the rule's ``dependence_setting`` and clears on a conclusive lower
            measurement. ``"artifact"``: the artifact masks (they do not move with the
            attention); ``"remembered"``: the class's hot-spot footprint as it was when the
            finding was confirmed; the rule's own ``region``: its whole test again, the
            context region included (the mark rules: the class's mark, fixed by the probe
            images; the background rules: the objects or the map's focus, and the background
            around them; the image frame).
        switch: a setting that switches the rule off when ``None``, besides its thresholds
            (the partial mark rule has no lower attention bound: it is switched with the other
            partial-reliance rules, by ``partial_enrichment``).
        tested_only: the conditions only say where to test, and are no evidence on their own
            (the partial mark rule: a mark exists, whatever the attention on it): the rule is
            evaluated only in runs that confirm causally (``confirm=True`` and a
            ``score_fn``), never fired on its conditions alone.
        per_class: decide per explained class (``False``: on the whole probe set, as one group).
        after_trained_run: evaluate only when the previous run was a trained run (drift).
        summary: what the flag says, a format string of the per-class values (see
            :meth:`~gradcam_callback.alarms.ShortcutMonitor.analyze`).
        advice: what to look at or do.
    """

    name: str
    kind: FlagKind
    conditions: tuple[Condition, ...]
    needs: str | None = None
    unless: str | None = None
    spatial: bool = True
    region: str | None = None
    confirm: Literal["depends", "indifferent"] | None = None
    drop_setting: str | None = None
    context_region: str | None = None
    context_setting: str = "background_drop"
    spread_region: str | None = None
    dependence_setting: str = "dependence"
    held_region: str | None = None
    switch: str | None = None
    tested_only: bool = False
    per_class: bool = True
    after_trained_run: bool = False
    summary: str = ""
    advice: str = ""

    @property
    def headline(self) -> Condition:
        """The first condition: its metric and threshold describe the flag."""
        return self.conditions[0]

    def threshold(self, settings: Mapping[str, float | None]) -> float | None:
        """The headline threshold, ``None`` when the rule is switched off."""
        return settings.get(self.headline.threshold)

    def enabled(self, settings: Mapping[str, float | None]) -> bool:
        """A rule whose thresholds (and :attr:`switch`) are all set (``None`` switches a rule
        off)."""
        names = [c.threshold for c in self.conditions]
        if self.switch is not None:
            names.append(self.switch)
        return all(settings.get(n) is not None for n in names)


#: The rule table. Order matters only for the headline of a flag that several rules of one kind
#: raise at once (the first firing rule of the kind leads, the others are named in the message).
RULES: tuple[Rule, ...] = (
    Rule(
        name="artifact_masks",
        kind=FlagKind.artifact,
        conditions=(Condition("attention/artifact_enrichment", ">=", "artifact_enrichment"),),
        needs="artifact_masks",
        region="artifact",
        confirm="depends",
        held_region="artifact",
        summary=(
            "attention on the label-artifact masks is {value:.1f}x their area share "
            "({attention/artifact_share:pct} of the maps' mass; compared as the map sees them: "
            "the larger of {attention/artifact_pixel_enrichment:.1f}x on the mask pixels and "
            "{attention/artifact_cell_enrichment:.1f}x on the cells of the {map_cells} map they "
            "touch)"
        ),
        advice=(
            "The model reads the artifact, not the object: see attention/artifact_enrichment "
            "and the overlays."
        ),
    ),
    Rule(
        name="artifact_hotspot",
        kind=FlagKind.artifact,
        conditions=(
            Condition("attention/hotspot_consistency", ">=", "hotspot_consistency"),
            Condition("attention/hotspot_offset", ">=", "hotspot_offset"),
            Condition("attention/hotspot_stability", ">=", "hotspot_stability"),
        ),
        region="hotspot",
        confirm="depends",
        held_region="remembered",
        summary=(
            "the probes pile their attention on one off-centre spot ({value:.1f}x its area "
            "share, {attention/hotspot_offset:pct} of the way from the centre to a corner) over "
            "pixels that are {attention/hotspot_stability:pct} stable across images (allowing "
            "a shift of {hotspot_shift} px)"
        ),
        advice=(
            "A watermark, tag, token or border at a fixed place is a likely shortcut: see "
            "attention/hotspot_consistency and the overlays."
        ),
    ),
    Rule(
        name="artifact_masks_partial",
        kind=FlagKind.artifact,
        conditions=(
            Condition("attention/artifact_enrichment", ">=", "partial_enrichment"),
            Condition("attention/artifact_enrichment", "<", "artifact_enrichment"),
        ),
        needs="artifact_masks",
        region="artifact",
        confirm="depends",
        held_region="artifact",
        dependence_setting="partial_dependence",
        summary=(
            "attention on the label-artifact masks is elevated but under the artifact threshold "
            "({value:.1f}x their area share, as the map sees them: the larger of "
            "{attention/artifact_pixel_enrichment:.1f}x on the mask pixels and "
            "{attention/artifact_cell_enrichment:.1f}x on the cells of the {map_cells} map they "
            "touch), and the model depends on them (partial reliance)"
        ),
        advice=(
            "The model uses the artifact for part of its decision (e.g. to tell a group of "
            "classes from the others): see attention/artifact_enrichment and "
            "causal/artifact_depends."
        ),
    ),
    Rule(
        name="artifact_hotspot_partial",
        kind=FlagKind.artifact,
        conditions=(
            Condition("attention/hotspot_consistency", ">=", "partial_consistency"),
            Condition("attention/hotspot_consistency", "<", "hotspot_consistency"),
            Condition("attention/hotspot_offset", ">=", "hotspot_offset"),
            Condition("attention/hotspot_stability", ">=", "hotspot_stability"),
        ),
        region="hotspot",
        confirm="depends",
        held_region="remembered",
        dependence_setting="partial_dependence",
        summary=(
            "the probes put elevated attention on one off-centre spot ({value:.1f}x its area "
            "share, under the hot-spot threshold; {attention/hotspot_offset:pct} of the way from "
            "the centre to a corner, over pixels {attention/hotspot_stability:pct} stable across "
            "images), and the model depends on it (partial reliance)"
        ),
        advice=(
            "A fixed-place mark may tell a group of classes apart even where the maps do not "
            "pile up on it: see attention/hotspot_consistency, causal/hotspot_dependence and "
            "the overlays."
        ),
    ),
    # Without artifact masks, a class's fixed-place mark found in the probe images (pixels most
    # of the class's images share and few of the others' do) stands in for them: the same
    # attention thresholds, the same confirmations. Off the centre, as the hot spot: in aligned
    # images (centred objects) an object's own pixels can be shared by its class's images.
    Rule(
        name="artifact_mark",
        kind=FlagKind.artifact,
        conditions=(
            Condition("attention/mark_enrichment", ">=", "artifact_enrichment"),
            Condition("attention/mark_offset", ">=", "hotspot_offset"),
        ),
        needs="class_marks",
        unless="artifact_masks",
        region="mark",
        confirm="depends",
        held_region="mark",
        summary=(
            "the class's probes share a fixed-place mark that the other classes' lack "
            "({attention/mark_area:pct} of the image, {attention/mark_offset:pct} of the way from "
            "the centre to a corner), and the attention on it is {value:.1f}x "
            "its area share (as the map sees it: the larger of "
            "{attention/mark_pixel_enrichment:.1f}x on its pixels and "
            "{attention/mark_cell_enrichment:.1f}x on the cells of the {map_cells} map it touches)"
        ),
        advice=(
            "A watermark, tag, stamp or ruler that comes with the class is a likely shortcut: "
            "see attention/mark_enrichment and the overlays."
        ),
    ),
    # A mark is tied to its class in the data itself (unlike artifact masks, which say where an
    # artifact is, not that it follows the label), so the partial rule tests it whatever the
    # attention on it: Grad-CAM under-reads a thin mark on a coarse map, and a group's mark
    # tells the group while the maps show what tells the classes inside it apart.
    Rule(
        name="artifact_mark_partial",
        kind=FlagKind.artifact,
        conditions=(
            Condition("attention/mark_enrichment", "<", "artifact_enrichment"),
            Condition("attention/mark_offset", ">=", "hotspot_offset"),
        ),
        switch="partial_enrichment",
        tested_only=True,
        needs="class_marks",
        unless="artifact_masks",
        region="mark",
        confirm="depends",
        held_region="mark",
        dependence_setting="partial_dependence",
        summary=(
            "the class's probes share a fixed-place mark that the other classes' lack "
            "({attention/mark_area:pct} of the image, {attention/mark_offset:pct} of the way from "
            "the centre to a corner); the attention on it is under the artifact threshold "
            "({value:.1f}x its area share, as the map sees it), and the model depends on it "
            "(partial reliance: a mark tied to the class in the data is tested whatever the "
            "maps show)"
        ),
        advice=(
            "The model uses the mark for part of its decision (e.g. to tell a group of classes "
            "from the others): see attention/mark_enrichment and causal/mark_depends."
        ),
    ),
    Rule(
        name="background_masks",
        kind=FlagKind.background,
        conditions=(Condition("attention/object_enrichment", "<=", "object_enrichment"),),
        needs="object_masks",
        region="object",
        confirm="indifferent",
        drop_setting="object_drop",
        context_region="backdrop",
        held_region="object",
        summary=(
            "attention left the objects: {attention/object_share:pct} of the maps' mass is on "
            "them, {value:.2f}x their area share"
        ),
        advice=(
            "The model relies on something else (background, artifact): see "
            "attention/object_enrichment."
        ),
    ),
    Rule(
        name="background_diffuse",
        kind=FlagKind.background,
        conditions=(Condition("attention/entropy", ">=", "diffuse_entropy"),),
        unless="object_masks",
        region="focus",
        confirm="indifferent",
        drop_setting="focus_drop",
        context_region="surround",
        spread_region="patches",
        held_region="focus",
        summary="attention is spread over the whole image (normalised entropy {value:.3f})",
        advice=(
            "The model may read a background texture or colour instead of an object: see "
            "attention/entropy and the overlays."
        ),
    ),
    # With object masks a diffuse map is weak evidence on its own: a coarse map spreads the
    # attention of a model that reads a small object, and erasing the map's hottest cells then
    # misses the object. Where the objects are known, the diffuse rule is confirmed by what
    # the model does without them (the measure of background_masks), not by the focus region.
    Rule(
        name="background_diffuse_objects",
        kind=FlagKind.background,
        conditions=(Condition("attention/entropy", ">=", "diffuse_entropy"),),
        needs="object_masks",
        region="object",
        confirm="indifferent",
        drop_setting="object_drop",
        context_region="backdrop",
        held_region="object",
        summary="attention is spread over the whole image (normalised entropy {value:.3f})",
        advice=(
            "The model reads something other than the objects (a background texture or "
            "colour?): see attention/entropy, attention/object_enrichment and the overlays."
        ),
    ),
    Rule(
        name="background_border",
        kind=FlagKind.background,
        conditions=(Condition("attention/border_enrichment", ">=", "border_enrichment"),),
        region="border",
        confirm="depends",
        held_region="border",
        summary="attention sits on the image frame: {value:.2f}x its area share",
        advice=(
            "A border, ruler or scanner frame may be a shortcut: see attention/border_enrichment."
        ),
    ),
    Rule(
        name="drift",
        kind=FlagKind.drift,
        conditions=(Condition("drift/pearson_previous", "<", "drift_pearson"),),
        spatial=False,
        per_class=False,
        after_trained_run=True,
        summary="the maps changed suddenly since the last run (mean correlation {value:.2f})",
        advice="Informational: see drift/pearson_previous and compare the overlays.",
    ),
)


@dataclass
class RuleDecision:
    """What :func:`evaluate` found for one rule; tensors are ``[G]`` over the class groups.

    Attributes:
        rule: the rule.
        evaluated: the rule applied (its masks were there, the map could localise, it was on).
        why_not: when not evaluated, the reason in a few words.
        usable: bool ``[G]``: groups with at least ``min_probes`` usable probes.
        attention: bool ``[G]``: every condition holds (before causal confirmation).
        near: bool ``[G]``: usable and within the margin of holding (worth a causal test).
        weak: bool ``[G]``: every condition holds, but on fewer than ``min_probes`` probes of
            a (learned) class: weak evidence, never flagged, said in a ``few_probes`` note.
        judged: bool ``[G]``: the class is judged at all (learned, with at least
            ``min_probes`` probes), whatever its maps: a finding held while measured on a
            region that does not come from the maps is kept for such a class even when too few
            of its maps carry the rule's measure (e.g. all-zero maps).
    """

    rule: Rule
    evaluated: bool
    why_not: str = ""
    usable: Tensor | None = None
    attention: Tensor | None = None
    near: Tensor | None = None
    weak: Tensor | None = None
    judged: Tensor | None = None


def evaluate(
    rules: Sequence[Rule],
    stats: Mapping[str, Tensor],
    counts: Mapping[str, Tensor],
    settings: Mapping[str, float | None],
    *,
    available: frozenset[str],
    can_localise: bool,
    after_trained_run: bool,
    min_probes: int,
    margin: float,
    learned: Tensor | None = None,
    sizes: Tensor | None = None,
    confirming: bool = True,
) -> list[RuleDecision]:
    """Apply every rule's conditions to every class group (the attention half of a decision).

    Args:
        rules: the rule table (e.g. :data:`RULES`).
        stats: class statistic name -> float ``[G]`` (per-class rules) or ``[1]`` (set rules,
            under the same name with the suffix ``"@set"``).
        counts: metric name -> float ``[G]``, number of usable (non-NaN) probes behind it.
        settings: threshold name -> value (``None`` switches the rule off).
        available: what the probes carry (``{"artifact_masks", "object_masks", "class_marks"}``
            or fewer).
        can_localise: the map has enough cells for spatial rules.
        after_trained_run: the previous run was a trained run (drift is evaluated only then).
        min_probes: the fewest usable probes a group needs.
        margin: see :meth:`Condition.near`.
        learned: bool ``[G]``, the classes the model has learned (per-class rules skip the
            others); ``None``: all.
        sizes: float ``[G]``, the probes of each class: weak evidence
            (:attr:`RuleDecision.weak`) is kept for classes with fewer than ``min_probes``
            probes (a class with enough probes, of which few carry the measure, is not short
            of probes); ``None``: judged on the measure's count alone.
        confirming: the run confirms causally (a :attr:`Rule.tested_only` rule is skipped
            otherwise).

    Returns:
        One :class:`RuleDecision` per rule, in order.
    """
    out: list[RuleDecision] = []
    for rule in rules:
        suffix = "" if rule.per_class else "@set"
        why = _why_not(
            rule, settings, stats, available, can_localise, after_trained_run, confirming
        )
        if why:
            out.append(RuleDecision(rule, False, why))
            continue
        head = rule.headline.metric + suffix
        usable = counts[head] >= min_probes
        few = (counts[head] > 0) & ~usable if rule.per_class else torch.zeros_like(usable)
        if sizes is not None and rule.per_class:
            few = few & (sizes < min_probes)
        if rule.per_class and learned is not None:
            usable, few = usable & learned, few & learned
        judged = usable.clone() if sizes is None else sizes >= min_probes
        if learned is not None and rule.per_class:
            judged = judged & learned
        attention, near, weak = usable.clone(), usable.clone(), few.clone()
        for cond in rule.conditions:
            value = stats[cond.metric + suffix]
            thr = float(settings[cond.threshold])  # type: ignore[arg-type]
            holds = cond.holds(value, thr)
            attention &= holds
            weak &= holds
            near &= cond.near(value, thr, margin)
        out.append(
            RuleDecision(
                rule, True, usable=usable, attention=attention, near=near, weak=weak, judged=judged
            )
        )
    return out


def _why_not(
    rule: Rule,
    settings: Mapping[str, float | None],
    stats: Mapping[str, Tensor],
    available: frozenset[str],
    can_localise: bool,
    after_trained_run: bool,
    confirming: bool,
) -> str:
    """Why ``rule`` cannot be evaluated in this run, in a few words (``""``: it can)."""
    if not rule.enabled(settings):
        return "switched off"
    if rule.unless is not None and rule.unless in available:
        return f"{rule.unless.replace('_', ' ')} given: a rule that reads them decides"
    if rule.needs is not None and rule.needs not in available:
        return f"no {rule.needs.replace('_', ' ')}"
    if rule.tested_only and not confirming:
        return "needs a causal test (confirm=False, or no score_fn)"
    if rule.spatial and not can_localise:
        return "map too coarse to localise"
    if rule.after_trained_run and not after_trained_run:
        return "needs two trained runs"
    suffix = "" if rule.per_class else "@set"
    if any(c.metric + suffix not in stats for c in rule.conditions):
        return "metric not measured"
    return ""


def fired(
    decisions: Sequence[RuleDecision],
    confirmed: Mapping[str, Tensor],
    held: Mapping[str, Tensor] | None = None,
) -> dict[FlagKind, list[tuple[RuleDecision, list[int]]]]:
    """Kind -> the rules that fired and their groups, in table order.

    A rule fires for a group when its attention conditions hold and, where ``confirmed`` has an
    entry for the rule (bool ``[G]``, its causal confirmation), that holds too; or when
    ``held`` (bool ``[G]``) says a finding the rule confirmed earlier is held while measured
    (see :attr:`Rule.held_region`), whatever the attention says now.
    """
    out: dict[FlagKind, list[tuple[RuleDecision, list[int]]]] = {}
    held = held or {}
    for d in decisions:
        if not d.evaluated or d.attention is None:
            continue
        ok = d.attention & confirmed[d.rule.name] if d.rule.name in confirmed else d.attention
        if d.rule.name in held:
            ok = ok | held[d.rule.name]
        groups = [int(g) for g in torch.nonzero(ok).flatten().tolist()]
        if groups:
            out.setdefault(d.rule.kind, []).append((d, groups))
    return out
