"""Which causal tests a run makes, within a budget, and what the earlier tests found.

A causal test erases a rule's region in the probes of one explained class and measures the
evidence the model loses (:func:`~gradcam_callback.evidence.confirm`). It costs one forward per
erased probe, as much as the Grad-CAM pass itself, so a run spends at most ``budget`` probes on
it (by default one probe-set forward). :class:`CausalMemory` decides what to test first and
carries a test's result while the rule's attention condition keeps holding for the class:

1. a (rule, class) whose flag kind is not yet confirmed for the class and that was never tested
   (at most one rule per kind and class, in table order: one confirmed rule is enough to flag);
2. the other untested (rule, class) pairs;
3. pairs tested before, the longest ago first (so every finding is re-tested in turn);
4. pairs that are only near their thresholds (``confirm_margin`` < 1): logged, never flagged.

The pairs whose attention holds share the budget (each at least ``min_probes`` probes of its
class, taken in turn from run to run), and a run tests at least one pair. A finding
is forgotten as soon as its attention condition stops holding (the next test starts afresh), and
it never reaches the logs: the causal values of a run are those it measured, ``NaN`` elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .rules import Rule, RuleDecision

__all__ = ["CausalMemory", "CausalValues", "Finding", "measured", "regions_to_erase", "verdict"]

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
    mon: Any, rule: Rule, stats: Mapping[str, Tensor], counts: Mapping[str, Tensor]
) -> Tensor:
    """Bool ``[G]``: the class's causal evidence of this run confirms ``rule``.

    Only measured evidence counts: at least ``mon.min_probes`` of the class's probes must have a
    defined evidence drop (a positive target log-odds before the erasure: a model that does not
    yet predict the class has no evidence to lose, and says nothing about shortcuts).
    ``"depends"``: at least the rule's ``dependence_setting`` (``mon.dependence``, or
    ``mon.partial_dependence`` for a partial-reliance rule) of them depend on the region (or the
    optional ``flip_rate`` / ``score_drop`` confirm); ``"indifferent"``: the mean evidence lost is
    below the rule's ``drop_setting``.
    """
    r = rule.region
    tested = measured(mon, rule, counts)
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


def measured(mon: Any, rule: Rule, counts: Mapping[str, Tensor]) -> Tensor:
    """Bool ``[G]``: this run measured the rule's region on at least ``mon.min_probes`` probes
    of the class (a defined evidence drop: the probe had the region and evidence to lose)."""
    return counts[f"causal/{rule.region}_evidence"] >= mon.min_probes


def regions_to_erase(
    plan: Mapping[str, Mapping[int, int]],
    decisions: Sequence[RuleDecision],
    groups: Tensor,
    turn: int = 0,
) -> dict[str, Tensor]:
    """Region -> bool ``[N]``: the probes whose region a run erases.

    ``plan`` (from :meth:`CausalMemory.plan`) gives, per rule and group, how many of the group's
    probes (``groups``: long ``[N]`` group ids) to test; a partial test takes them in turn, from
    probe ``turn * k`` on (cyclically, in probe order), so that successive runs test different
    probes of the class.
    """
    region_of = {d.rule.name: str(d.rule.region) for d in decisions}
    wanted: dict[str, Tensor] = {}
    for name, quota in plan.items():
        region = region_of[name]
        sel = wanted.get(region, torch.zeros_like(groups, dtype=torch.bool))
        for g, k in quota.items():
            idx = torch.nonzero(groups == g).flatten()
            start = (turn * k) % max(int(idx.numel()), 1)
            sel[idx.roll(-start)[:k]] = True
        wanted[region] = sel
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

    def reset(self) -> None:
        """Forget every finding (a new baseline, a new probe set)."""
        self.findings = {}

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
        ``max(min_probes, budget // pairs)`` of its class's probes (all of them when fewer),
        in priority order, until the budget is spent; the first pair always gets its share.

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
                if not near[g]:
                    continue
                found = self.findings.get((d.rule.name, c))
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
    ) -> None:
        """Store the findings of this run's tests, and forget those whose attention let go.

        ``confirmed``: rule name -> bool ``[G]`` (this run's verdict where tested); ``stats``:
        the run's class statistics (their ``causal/<region>_*`` entries are kept).
        """
        for d in decisions:
            groups = list(tested.get(d.rule.name, {}))
            if not groups:
                continue
            verdict = confirmed[d.rule.name].tolist()
            prefix = f"causal/{d.rule.region}_"
            mine = {k: v for k, v in stats.items() if k.startswith(prefix)}
            for g in groups:
                values = {k: float(v[g]) for k, v in mine.items()}
                self.findings[(d.rule.name, classes[g])] = Finding(
                    bool(verdict[g]), self.run, int(epoch), values
                )
        held = {
            (d.rule.name, c)
            for d in decisions
            if _testable(d) and d.attention is not None
            for c, h in zip(classes, d.attention.tolist())
            if h
        }
        self.findings = {k: f for k, f in self.findings.items() if k in held}

    def settle(
        self,
        mon: Any,
        classes: Sequence[int],
        decisions: Sequence[RuleDecision],
        stats: Mapping[str, Tensor],
        counts: Mapping[str, Tensor],
        tested: Mapping[str, Mapping[int, int]],
        epoch: int = 0,
    ) -> dict[str, Tensor]:
        """Rule name -> bool ``[G]``: confirmed by this run's test where it tested the class
        conclusively (at least ``mon.min_probes`` probes measured, :func:`measured`), else by a
        carried finding; then :meth:`record` this run's conclusive findings (kept in
        :attr:`conclusive` for :meth:`words`)."""
        self.run += 1
        out: dict[str, Tensor] = {}
        verdicts: dict[str, Tensor] = {}
        conclusive: dict[str, dict[int, int]] = {}
        for d in decisions:
            if not _testable(d):
                continue
            name = d.rule.name
            verdicts[name] = verdict(mon, d.rule, stats, counts)
            # a test with too few measured probes (no artifact in them, or no evidence to lose)
            # is inconclusive: it neither confirms nor refutes a finding carried from before
            ok = (measured(mon, d.rule, counts)).tolist()
            conclusive[name] = {g: k for g, k in tested.get(name, {}).items() if ok[g]}
            now = torch.zeros_like(verdicts[name])
            now[list(conclusive[name])] = True
            carried = torch.tensor(self.carried(name, classes), device=now.device)
            out[name] = torch.where(now, verdicts[name], carried)
        self.record(decisions, classes, conclusive, verdicts, stats, epoch)
        self.conclusive = conclusive
        return out

    def words(
        self,
        classes: Sequence[int],
        stats: Mapping[str, Tensor],
        tested: Mapping[str, Mapping[int, int]],
    ) -> CausalValues:
        """The causal evidence a flag's words cite: this run's test, else the carried finding."""

        def values(rule: Rule, g: int) -> tuple[Mapping[str, float], int | None]:
            if g in tested.get(rule.name, ()):
                prefix = f"causal/{rule.region}_"
                return {k: float(v[g]) for k, v in stats.items() if k.startswith(prefix)}, None
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
        values], ...]}``."""
        rows = [
            [name, int(c), f.confirmed, f.run, f.epoch, dict(f.values)]
            for (name, c), f in self.findings.items()
        ]
        return {"run": self.run, "findings": rows}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (an empty or missing state starts afresh)."""
        self.run = int(state.get("run", 0))
        self.findings = {
            (str(name), int(c)): Finding(
                bool(ok), int(run), int(epoch), {str(k): float(v) for k, v in values.items()}
            )
            for name, c, ok, run, epoch, values in state.get("findings", [])
        }
