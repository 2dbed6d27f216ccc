"""Which causal tests a run makes, within a budget, and what the earlier tests found.

A causal test erases a rule's region in the probes of one explained class and measures the
evidence the model loses (:func:`~gradcam_callback.evidence.confirm`). It costs one forward per
erased image, so a run spends at most ``budget`` tested probes on it (the monitor's default:
half the probe set); a background rule erases two images of each of its probes (its target
region and the background around it; the mask-free one also each patch of a 4 x 4 grid, to
tell a spread background from one place), counted once. :class:`CausalMemory` decides what to
test first and carries a test's result while the rule's attention condition keeps holding for
the class:

1. a (rule, class) whose flag kind is not yet confirmed for the class and that was never tested
   (at most one rule per kind and class, in table order: one confirmed rule is enough to flag);
2. the other untested (rule, class) pairs;
3. pairs tested before, the longest ago first (so every finding is re-tested in turn);
4. pairs that are only near their thresholds (``confirm_margin`` < 1): logged, never flagged.

The pairs whose attention holds share the budget (each at least ``min_probes`` probes of its
class, taken in turn from run to run), and a run tests at least one pair. A finding
is forgotten as soon as its attention condition stops holding (the next test starts afresh), and
it never reaches the logs: the causal values of a run are those it measured, ``NaN`` elsewhere.

**Held while measured.** A *confirmed* finding of a rule with a
:attr:`~gradcam_callback.rules.Rule.held_region` is not forgotten when the rule's attention lets
go of the class (Grad-CAM attention on a region the model relies on can fade while the reliance
stays): it is re-tested on that region (the artifact masks, or the hot-spot footprint remembered
from the confirming test; for the background rules, their own test again: the objects or the
map's focus and the background around them, or the image frame) among the re-tests of tier 3,
under the plan key ``"<rule>@held"``, and keeps its flag while the re-test confirms it as the
rule's own test would. A conclusive lower measurement, or the class no longer judged (unlearned,
too few probes; for a region read off the maps, too few maps that carry the rule's measure),
drops it; an inconclusive or postponed re-test carries it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .rules import Rule, RuleDecision

__all__ = [
    "HELD",
    "CausalMemory",
    "CausalValues",
    "Finding",
    "context_of",
    "contexts",
    "measured",
    "regions_to_erase",
    "spread_of",
    "verdict",
]

#: suffix of the plan key of a held finding's re-test (``"artifact_masks@held"``)
HELD = "@held"
#: regions read off this run's maps (the others come from masks, the images, the frame or a
#: stored footprint): a held re-test there needs a class whose maps carry the rule's measure
_FROM_MAPS = frozenset({"focus", "surround", "hotspot"})

#: ``(rule, group) -> (the group's causal statistics, epoch of the test or None for this run)``
CausalValues = Callable[[Rule, int], tuple[Mapping[str, float], "int | None"]]


@dataclass(frozen=True)
class Finding:
    """The result of one causal test of a rule on one class.

    Attributes:
        confirmed: the test confirmed the rule for the class.
        run: the monitor's run counter at the test; ``epoch``: the training epoch.
        values: the class's causal statistics then (``causal/<region>_<part>`` -> float).
    """

    confirmed: bool
    run: int
    epoch: int
    values: dict[str, float]


def _testable(d: RuleDecision) -> bool:
    r = d.rule
    return d.evaluated and r.per_class and r.region is not None and r.confirm is not None


def verdict(
    mon: Any,
    rule: Rule,
    stats: Mapping[str, Tensor],
    counts: Mapping[str, Tensor],
    region: str | None = None,
) -> Tensor:
    """Bool ``[G]``: the class's causal evidence of this run confirms ``rule``.

    Only measured evidence counts: at least ``mon.min_probes`` of the class's probes must have a
    defined evidence drop (a positive target log-odds before the erasure: a model that does not
    yet predict the class has no evidence to lose, and says nothing about shortcuts).
    ``"depends"``: at least the rule's ``dependence_setting`` (``mon.dependence``, or
    ``mon.partial_dependence`` for a partial-reliance rule) of them depend on the region (or the
    optional ``flip_rate`` / ``score_drop`` confirm); ``"indifferent"``: the mean evidence lost is
    below the rule's ``drop_setting``. A rule with a :attr:`~gradcam_callback.rules.Rule.
    context_region` (when its setting is on) needs, besides, that region measured on at least
    ``mon.min_probes`` probes and its mean evidence lost at least the rule's ``context_setting``
    (the background's own causal effect), and with a
    :attr:`~gradcam_callback.rules.Rule.spread_region`, that evidence spread: fewer than
    ``mon.dependence`` of the tested probes lose ``evidence_drop`` of it to one patch of the
    image (else the evidence sits in one place, an object the maps miss, not the background).
    ``region``: read another region's measurements (a held finding's
    :attr:`~gradcam_callback.rules.Rule.held_region`; default the rule's own). The context
    region is read with the rule's own region only: a held re-test on another region (the
    artifact masks, a remembered footprint) is a dependence test alone.
    """
    r = rule.region if region is None else region
    tested = _conclusive(mon, rule, counts, r)
    ctx = context_of(mon, rule) if r == rule.region else None
    if ctx is not None:  # the background's own effect: erasing it must take the evidence
        need = float(getattr(mon, rule.context_setting))
        tested = tested & (stats[f"causal/{ctx}_evidence"] >= need)  # NaN fails
        if (spread := spread_of(mon, rule)) is not None:  # ... and not from one place
            tested = tested & (stats[f"causal/{spread}_depends"] < float(mon.dependence))
    if rule.confirm == "depends":
        need = float(getattr(mon, rule.dependence_setting))
        ok = stats[f"causal/{r}_depends"] >= need  # NaN fails
        if mon.flip_rate is not None:
            ok |= stats[f"causal/{r}_flip"] >= mon.flip_rate
        if mon.score_drop is not None:
            ok |= stats[f"causal/{r}_drop"] >= mon.score_drop
        return tested & ok
    drop = float(mon.settings[rule.drop_setting])
    return tested & (stats[f"causal/{r}_evidence"] < drop)


def context_of(mon: Any, rule: Rule) -> str | None:
    """The rule's :attr:`~gradcam_callback.rules.Rule.context_region` when its test is on (its
    ``context_setting`` is set on ``mon``), else ``None``."""
    if rule.context_region is None or getattr(mon, rule.context_setting, None) is None:
        return None
    return rule.context_region


def spread_of(mon: Any, rule: Rule) -> str | None:
    """The rule's :attr:`~gradcam_callback.rules.Rule.spread_region` when its context test is
    on (:func:`context_of`), else ``None``."""
    return rule.spread_region if context_of(mon, rule) is not None else None


def _side_regions(mon: Any, rule: Rule) -> tuple[str, ...]:
    """The regions erased with the rule's own test: its context and spread regions (if on)."""
    return tuple(r for r in (context_of(mon, rule), spread_of(mon, rule)) if r is not None)


def contexts(mon: Any, decisions: Sequence[RuleDecision]) -> dict[str, tuple[str, ...]]:
    """Plan key -> the regions erased with it (:func:`context_of`, :func:`spread_of`): a rule's
    own test, and its held re-test where that is the rule's own test again (its
    ``held_region`` is its ``region``)."""
    return {
        key: side
        for d in decisions
        if (side := _side_regions(mon, d.rule))
        for key in (d.rule.name, d.rule.name + HELD)
        if _own_test(d.rule, key)
    }


def _own_test(rule: Rule, key: str) -> bool:
    """The plan key ``key`` runs the rule's own test: its name, or a held re-test on the
    rule's own region."""
    return key == rule.name or (key == rule.name + HELD and rule.held_region == rule.region)


def _context_stats(rule: Rule, key: str, stats: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The ``causal/<context_region>_*`` and ``causal/<spread_region>_*`` rows of ``stats`` for
    the rule's own test (``key``, see :func:`_own_test`; none for a held re-test on another
    region or a rule without a context region)."""
    if not _own_test(rule, key) or rule.context_region is None:
        return {}
    sides = [r for r in (rule.context_region, rule.spread_region) if r is not None]
    prefixes = tuple(f"causal/{r}_" for r in sides)
    return {k: v for k, v in stats.items() if k.startswith(prefixes)}


def measured(
    mon: Any, rule: Rule, counts: Mapping[str, Tensor], region: str | None = None
) -> Tensor:
    """Bool ``[G]``: this run measured the rule's region (or ``region``) on at least
    ``mon.min_probes`` probes of the class (a defined evidence drop: the probe had the region
    and evidence to lose)."""
    return counts[f"causal/{rule.region if region is None else region}_evidence"] >= mon.min_probes


def _conclusive(mon: Any, rule: Rule, counts: Mapping[str, Tensor], region: str | None) -> Tensor:
    """Bool ``[G]``: this run measured ``region`` conclusively for the class (:func:`measured`),
    and the rule's context region too where ``region`` is the rule's own (see :func:`verdict`)."""
    ok = measured(mon, rule, counts, region)
    if region == rule.region:
        for side in _side_regions(mon, rule):
            ok = ok & measured(mon, rule, counts, side)
    return ok


def regions_to_erase(
    plan: Mapping[str, Mapping[int, int]],
    decisions: Sequence[RuleDecision],
    groups: Tensor,
    turn: int = 0,
    contexts: Mapping[str, tuple[str, ...]] | None = None,
) -> dict[str, Tensor]:
    """Region -> bool ``[N]``: the probes whose region a run erases.

    ``plan`` (from :meth:`CausalMemory.plan`) gives, per rule and group, how many of the group's
    probes (``groups``: long ``[N]`` group ids) to test; a partial test takes them in turn, from
    probe ``turn * k`` on (cyclically, in probe order), so that successive runs test different
    probes of the class. A held finding's re-test (key ``"<rule>@held"``) erases the rule's
    ``held_region``. ``contexts``: plan key -> its context and spread regions (see
    :func:`contexts`), erased in the same probes as the key's own region.
    """
    region_of = {d.rule.name: str(d.rule.region) for d in decisions}
    region_of |= {d.rule.name + HELD: str(d.rule.held_region) for d in decisions}
    contexts = contexts or {}
    wanted: dict[str, Tensor] = {}
    for name, quota in plan.items():
        chosen = torch.zeros_like(groups, dtype=torch.bool)
        for g, k in quota.items():
            idx = torch.nonzero(groups == g).flatten()
            start = (turn * k) % max(int(idx.numel()), 1)
            chosen[idx.roll(-start)[:k]] = True
        for region in (region_of[name], *contexts.get(name, ())):
            wanted[region] = wanted.get(region, torch.zeros_like(chosen)) | chosen
    return wanted


class CausalMemory:
    """Plans each run's causal tests within a budget and remembers their findings.

    Keys are ``(rule name, class id)``; everything is plain Python (``state_dict`` is
    ``weights_only``-safe).
    """

    def __init__(self) -> None:
        self.findings: dict[tuple[str, int], Finding] = {}
        self.run = 0
        #: rule name -> {group: probes} of the last :meth:`settle`'s conclusive tests
        self.conclusive: dict[str, dict[int, int]] = {}
        #: class id -> bool ``[h, w]`` (analysis grid, CPU): the hot-spot footprint of the
        #: class's last confirmed hot-spot finding (the ``"remembered"`` region)
        self.footprints: dict[int, Tensor] = {}
        #: rule name -> bool ``[G]``: the groups the last :meth:`settle` held while measured
        self.held: dict[str, Tensor] = {}

    def reset(self) -> None:
        """Forget every finding (a new baseline, a new probe set)."""
        self.findings = {}
        self.footprints = {}
        self.held = {}

    def remembered(self, groups: Tensor, classes: Sequence[int], size: Sequence[int]) -> Tensor:
        """Bool ``[N, h, w]``: each probe's class's remembered hot-spot footprint (all
        ``False`` for a class without one, or one stored at another grid); ``groups``: long
        ``[N]`` group ids, ``size``: the analysis grid ``(h, w)``."""
        h, w = int(size[0]), int(size[1])
        table = torch.zeros(len(classes), h, w, dtype=torch.bool)
        for g, c in enumerate(classes):
            f = self.footprints.get(c)
            if f is not None and tuple(f.shape) == (h, w):
                table[g] = f
        return table.to(groups.device)[groups]

    def _holdable(self, d: RuleDecision, g: int, c: int) -> bool:
        """A confirmed finding of ``d``'s rule for class ``c`` (group ``g``) that is held while
        measured: the rule has a held region (and, for ``"remembered"``, a stored footprint),
        the class is still judged (learned, enough probes; for a held region read off the maps,
        usable: enough of its maps carry the rule's measure), and the rule's attention no
        longer holds for it. A region that does not come from the maps (masks, the class's
        mark, a stored footprint, the frame) is re-tested whatever the maps show: Grad-CAM maps
        can turn all-zero for a class the model still predicts."""
        f = self.findings.get((d.rule.name, c))
        if d.rule.held_region is None or f is None or not f.confirmed:
            return False
        from_maps = d.rule.held_region in _FROM_MAPS
        kept = d.usable if from_maps or d.judged is None else d.judged
        if kept is None or d.attention is None or not bool(kept[g]):
            return False
        if d.rule.held_region == "remembered" and c not in self.footprints:
            return False
        return not bool(d.attention[g])

    def plan(
        self,
        decisions: Sequence[RuleDecision],
        classes: Sequence[int],
        sizes: Sequence[int],
        budget: int | None,
        min_probes: int = 1,
    ) -> dict[str, dict[int, int]]:
        """Rule name -> {group (index into ``classes``): probes of it to test in this run}.

        The budget is shared among the pairs whose attention holds: each gets
        ``max(min_probes, budget // pairs)`` of its class's probes (all of them when fewer), in
        priority order, until the budget is spent; the first pair always gets its share. The
        budget counts tested probes: a rule with a context region (a background rule) erases two
        images of each tested probe in the same forward (18 with a spread region: the 16
        patches too), counted once, so that its test does not take another pair's turn.

        Args:
            decisions: this run's :func:`~gradcam_callback.rules.evaluate` output.
            classes: class id of each group; ``sizes``: probes in each group.
            budget: most probes to erase (``None``: every probe of every pair).
            min_probes: the fewest probes a test needs to decide (the monitor's ``min_probes``).
        """
        cands = sorted(self._candidates(decisions, classes))
        wanted = sum(1 for c in cands if c[0] < 3)
        share = None if budget is None else max(min_probes, budget // max(wanted, 1))
        out: dict[str, dict[int, int]] = {}
        spent = 0
        for _, _, _, name, g in cands:
            k = sizes[g] if share is None else min(sizes[g], share)
            if budget is not None and spent and spent + k > budget:
                continue
            out.setdefault(name, {})[g] = k
            spent += k
        return out

    def _candidates(
        self, decisions: Sequence[RuleDecision], classes: Sequence[int]
    ) -> list[tuple[int, int, int, str, int]]:
        """``(tier, last test run, rule order, rule name, group)`` of every pair worth testing."""
        covered = {  # (kind, class) already confirmed by a finding
            (d.rule.kind, c)
            for d in decisions
            if _testable(d)
            for c in classes
            if (f := self.findings.get((d.rule.name, c))) is not None and f.confirmed
        }
        out = []
        for order, d in enumerate(decisions):
            if not _testable(d) or d.near is None or d.attention is None:
                continue
            near, held = d.near.tolist(), d.attention.tolist()
            for g, c in enumerate(classes):
                found = self.findings.get((d.rule.name, c))
                if found is not None and self._holdable(d, g, c):  # re-test where it was
                    out.append((2, found.run, order, d.rule.name + HELD, g))
                    continue
                if not near[g]:
                    continue
                if not held[g]:
                    tier = 3
                elif found is not None:
                    tier = 2
                elif (d.rule.kind, c) in covered:
                    tier = 1
                else:  # the first untested rule of its kind for the class: it covers it
                    tier = 0
                    covered.add((d.rule.kind, c))
                out.append((tier, -1 if found is None else found.run, order, d.rule.name, g))
        return out

    def record(
        self,
        decisions: Sequence[RuleDecision],
        classes: Sequence[int],
        tested: Mapping[str, Mapping[int, int]],
        confirmed: Mapping[str, Tensor],
        stats: Mapping[str, Tensor],
        epoch: int,
        footprints: Tensor | None = None,
    ) -> None:
        """Store the findings of this run's tests, and forget those whose attention let go
        (unless held while measured: see the module docstring).

        ``confirmed``: rule name (and ``"<rule>@held"``) -> bool ``[G]`` (this run's verdict
        where tested); ``stats``: the run's class statistics (their ``causal/<region>_*``
        entries are kept, a held re-test's under the rule's own region names);
        ``footprints``: bool ``[G, h, w]``, the classes' hot-spot footprints (remembered for a
        confirmed hot-spot finding).
        """
        holding = {
            (d.rule.name, c)
            for d in decisions
            if _testable(d)
            for g, c in enumerate(classes)
            if self._holdable(d, g, c)
        }
        for d in decisions:
            for key, region in (
                (d.rule.name, d.rule.region),
                (d.rule.name + HELD, d.rule.held_region),
            ):
                groups = list(tested.get(key, {}))
                if not groups:
                    continue
                verdict = confirmed[key].tolist()
                prefix = f"causal/{region}_"
                mine = {
                    f"causal/{d.rule.region}_" + k.removeprefix(prefix): v
                    for k, v in stats.items()
                    if k.startswith(prefix)
                }
                mine |= _context_stats(d.rule, key, stats)
                for g in groups:
                    values = {k: float(v[g]) for k, v in mine.items()}
                    self.findings[(d.rule.name, classes[g])] = Finding(
                        bool(verdict[g]), self.run, int(epoch), values
                    )
                    if region == "hotspot" and verdict[g] and footprints is not None:
                        self.footprints[classes[g]] = footprints[g].detach().cpu().clone()
        keep = holding | {
            (d.rule.name, c)
            for d in decisions
            if _testable(d) and d.attention is not None
            for c, h in zip(classes, d.attention.tolist())
            if h
        }
        self.findings = {
            k: f
            for k, f in self.findings.items()
            if k in keep and (f.confirmed or k not in holding)
        }
        remembering = {d.rule.name for d in decisions if d.rule.held_region == "remembered"}
        spots = {c for (name, c) in self.findings if name in remembering}
        self.footprints = {c: f for c, f in self.footprints.items() if c in spots}

    def settle(
        self,
        mon: Any,
        classes: Sequence[int],
        decisions: Sequence[RuleDecision],
        stats: Mapping[str, Tensor],
        counts: Mapping[str, Tensor],
        tested: Mapping[str, Mapping[int, int]],
        epoch: int = 0,
        footprints: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Rule name -> bool ``[G]``: confirmed by this run's test where it tested the class
        conclusively (at least ``mon.min_probes`` probes measured, :func:`measured`), else by a
        carried finding; then :meth:`record` this run's conclusive findings (kept in
        :attr:`conclusive` for :meth:`words`). The findings held while measured (the rule's
        attention let go, its held region re-tested: confirmed by a conclusive re-test, else
        carried) are left in :attr:`held` (rule name -> bool ``[G]``) for
        :func:`~gradcam_callback.rules.fired`. ``footprints``: bool ``[G, h, w]``, this run's
        class hot-spot footprints (see :meth:`record`)."""
        self.run += 1
        out: dict[str, Tensor] = {}
        held: dict[str, Tensor] = {}
        verdicts: dict[str, Tensor] = {}
        conclusive: dict[str, dict[int, int]] = {}
        for d in decisions:
            if not _testable(d):
                continue
            name = d.rule.name
            verdicts[name] = verdict(mon, d.rule, stats, counts)
            # a test with too few measured probes (no artifact in them, or no evidence to lose)
            # is inconclusive: it neither confirms nor refutes a finding carried from before
            ok = _conclusive(mon, d.rule, counts, d.rule.region).tolist()
            conclusive[name] = {g: k for g, k in tested.get(name, {}).items() if ok[g]}
            now = torch.zeros_like(verdicts[name])
            now[list(conclusive[name])] = True
            carried = torch.tensor(self.carried(name, classes), device=now.device)
            out[name] = torch.where(now, verdicts[name], carried)
            if d.rule.held_region is None:
                continue
            key, region = name + HELD, d.rule.held_region
            verdicts[key] = verdict(mon, d.rule, stats, counts, region)
            ok = _conclusive(mon, d.rule, counts, region).tolist()
            conclusive[key] = {g: k for g, k in tested.get(key, {}).items() if ok[g]}
            keep = torch.zeros_like(verdicts[name])
            for g, c in enumerate(classes):
                if self._holdable(d, g, c):
                    keep[g] = bool(verdicts[key][g]) if g in conclusive[key] else True
            held[name] = keep
        self.record(decisions, classes, conclusive, verdicts, stats, epoch, footprints)
        self.conclusive = conclusive
        self.held = held
        return out

    def words(
        self,
        classes: Sequence[int],
        stats: Mapping[str, Tensor],
        tested: Mapping[str, Mapping[int, int]],
    ) -> CausalValues:
        """The causal evidence a flag's words cite: this run's test, else the carried finding."""

        def values(rule: Rule, g: int) -> tuple[Mapping[str, float], int | None]:
            for key, region in ((rule.name, rule.region), (rule.name + HELD, rule.held_region)):
                if g in tested.get(key, ()):
                    prefix, own = f"causal/{region}_", f"causal/{rule.region}_"
                    out = {
                        own + k.removeprefix(prefix): float(v[g])
                        for k, v in stats.items()
                        if k.startswith(prefix)
                    }
                    out |= {k: float(v[g]) for k, v in _context_stats(rule, key, stats).items()}
                    return out, None
            return self.values(rule.name, classes[g])

        return values

    def carried(self, rule: str, classes: Sequence[int]) -> list[bool]:
        """Per group: an earlier finding confirms ``rule`` for the class (its attention held)."""
        return [(f := self.findings.get((rule, c))) is not None and f.confirmed for c in classes]

    def values(self, rule: str, cls: int) -> tuple[dict[str, float], int | None]:
        """The causal statistics of the finding for ``(rule, cls)`` and the epoch it was made."""
        f = self.findings.get((rule, cls))
        return ({}, None) if f is None else (f.values, f.epoch)

    def state_dict(self) -> dict[str, Any]:
        """Plain Python: ``{"run": int, "findings": [[rule, class, confirmed, run, epoch,
        values], ...], "footprints": [[class, [[0/1, ...], ...]], ...]}``."""
        rows = [
            [name, int(c), f.confirmed, f.run, f.epoch, dict(f.values)]
            for (name, c), f in self.findings.items()
        ]
        spots = [[int(c), f.int().tolist()] for c, f in self.footprints.items()]
        return {"run": self.run, "findings": rows, "footprints": spots}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (an empty or missing state starts afresh)."""
        self.run = int(state.get("run", 0))
        self.footprints = {
            int(c): torch.tensor(f, dtype=torch.bool) for c, f in state.get("footprints", [])
        }
        self.findings = {
            (str(name), int(c)): Finding(
                bool(ok), int(run), int(epoch), {str(k): float(v) for k, v in values.items()}
            )
            for name, c, ok, run, epoch, values in state.get("findings", [])
        }
