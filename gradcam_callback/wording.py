"""What a flag says: the words of a :class:`~gradcam_callback.flags.Flag` from a run's statistics.

:func:`word_flag` turns the rules that fired for one kind (:class:`~gradcam_callback.rules.
RuleDecision` and their class groups) into one flag: the first firing rule leads, the class that
shows it most gives the numbers, every firing class and its probes are named, and the causal
evidence (this run's, or the earlier test a confirmation is carried from) is spelled out.
"""

from __future__ import annotations

import math
import string
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from .causal import CausalValues
from .evidence import PATCH_GRID, Inputs
from .flags import Flag
from .rules import FlagKind, Rule, RuleDecision

__all__ = ["fmt_list", "pct", "word_few_probes", "word_flag"]

# the per-probe measure that ranks a rule's probes (group statistics have none of their own)
_PROBE_METRIC = {"attention/hotspot_consistency": "attention/hotspot_enrichment"}


class _Fmt(string.Formatter):
    """``{name:pct}`` -> ``"42%"`` (clamped to [0, 100] %); ``NaN`` -> ``"n/a"`` for any spec."""

    def format_field(self, value: Any, format_spec: str) -> str:
        if isinstance(value, float) and math.isnan(value):
            return "n/a"
        if format_spec == "pct":
            return pct(float(value))
        return super().format_field(value, format_spec)


_FMT = _Fmt()


def pct(x: float) -> str:
    """``0.423 -> "42%"``, clamped to [0, 100] %; ``NaN -> "n/a"``."""
    if math.isnan(x):
        return "n/a"
    return f"{min(max(x, 0.0), 1.0):.0%}"


def fmt_list(idx: Sequence[int], limit: int = 8) -> str:
    """``"3, 5, 9"``, with ``" and k more"`` past ``limit`` items."""
    shown = ", ".join(str(i) for i in idx[:limit])
    more = f" and {len(idx) - limit} more" if len(idx) > limit else ""
    return f"{shown}{more}"


def word_flag(
    mon: Any,
    kind: FlagKind,
    hits: list[tuple[RuleDecision, list[int]]],
    x: Inputs,
    per: dict[str, Tensor],
    stats: dict[str, Tensor],
    causal: CausalValues | None,
    epoch: int,
    step: int,
    held: Mapping[str, Tensor] | None = None,
) -> Flag:
    """One flag for a kind: the first firing rule leads; every firing class is named.

    ``causal`` gives the causal evidence of a rule for a group (``None``: the run was not
    confirmed causally); ``per`` holds ``[N]`` per-probe values, ``stats`` ``[G]`` class values;
    ``held``: rule name -> bool ``[G]``, the groups whose finding is held while measured (the
    attention let go; the words say so).
    """
    lead, groups = hits[0]
    rule = lead.rule
    suffix = "" if rule.per_class else "@set"
    head = stats[rule.headline.metric + suffix]
    all_groups = sorted({g for _, gs in hits for g in gs})
    vals = head[groups] if rule.per_class else head  # the class that shows it most leads
    best = groups[int(vals.argmax() if rule.headline.op == ">=" else vals.argmin())]
    best = best if rule.per_class else 0
    fields = {
        k.removesuffix(suffix): float(v[best])
        for k, v in stats.items()
        if (k.endswith("@set") if suffix else not k.endswith("@set"))
    }
    fields["value"] = value = float(head[best])
    fields.update(_run_fields(x))
    text = _FMT.format(rule.summary, **fields)
    if held and rule.name in held and bool(held[rule.name][best]):
        # held because the attention let go, or because too few maps carry the measure at all
        # (all-zero maps of a class the model still predicts): say which
        blank = lead.usable is not None and not bool(lead.usable[best])
        why = (
            f"{rule.name} was confirmed earlier and too few of the class's maps carry its "
            "measure now"
            if blank
            else f"the attention has moved since {rule.name} was confirmed"
        )
        text = (
            f"{why}, and the finding is held while its causal test confirms it (the attention "
            f"now: {text})"
        )
    if rule.per_class:
        classes = tuple(x.classes[g] for g in all_groups)
        sel = (x.groups[:, None] == torch.tensor(all_groups, device=x.groups.device)).any(1)
        text = _who(classes) + text + _per_class(groups, head, x.classes)
    else:
        classes, sel = (), torch.ones_like(x.groups, dtype=torch.bool)
        text = text[0].upper() + text[1:]
    if rule.confirm is not None and rule.per_class:
        text += _causal_words(mon, rule, best, causal)
    others = [d.rule.name for d, _ in hits[1:]]
    if others:
        text += f"; also: {', '.join(others)}"
    probes = _ranked_probes(per, rule, sel)
    text += f". Probes: {fmt_list(probes)}. {rule.advice}"
    return Flag(
        kind=kind,
        epoch=int(epoch),
        global_step=int(step),
        probe=probes[0] if len(probes) == 1 else None,
        value=value,
        threshold=float(rule.threshold(mon.settings)),  # type: ignore[arg-type]
        message=text,
        probes=tuple(probes),
        metric=rule.headline.metric,
        classes=classes,
    )


def _run_fields(x: Inputs) -> dict[str, Any]:
    """The run's own fields of a rule's summary: the map grid the mask measure compared with,
    and the hot spot's shift tolerance in image pixels (measured on the analysis grid)."""
    return {
        "map_cells": f"{x.cells[0]}x{x.cells[1]}",
        "hotspot_shift": round(x.shift * x.images.shape[-2] / x.maps.shape[-2]),
    }


def word_few_probes(
    mon: Any,
    decisions: Sequence[RuleDecision],
    hits: dict[FlagKind, list[tuple[RuleDecision, list[int]]]],
    x: Inputs,
    stats: dict[str, Tensor],
    counts: dict[str, Tensor],
    epoch: int,
    step: int,
) -> Flag | None:
    """The ``few_probes`` note of a run: the rules whose attention conditions hold for a learned
    class with fewer than ``mon.min_probes`` probes (``RuleDecision.weak``), unless a flag of
    the rule's kind already names the class. ``None`` when there is none.

    One note per run names every such class with its first rule's value, threshold and probe
    count (and the other rules that hold); the first class gives the note's value, threshold
    and metric.
    """
    flagged = {(kind, g) for kind, kind_hits in hits.items() for _, gs in kind_hits for g in gs}
    items: list[tuple[int, RuleDecision]] = []
    for d in decisions:
        if d.weak is None:
            continue
        for g in torch.nonzero(d.weak).flatten().tolist():
            if (d.rule.kind, int(g)) not in flagged:
                items.append((int(g), d))
    if not items:
        return None
    items.sort(key=lambda item: item[0])  # by class, rules in table order
    parts = []
    for g in sorted({g for g, _ in items}):
        rules = [d for h, d in items if h == g]
        lead = rules[0]
        fields = {k: float(v[g]) for k, v in stats.items() if not k.endswith("@set")}
        fields["value"] = float(stats[lead.rule.headline.metric][g])
        fields.update(_run_fields(x))
        n = int(counts[lead.rule.headline.metric][g])
        also = f"; also {', '.join(d.rule.name for d in rules[1:])}" if len(rules) > 1 else ""
        thr = float(lead.rule.threshold(mon.settings))  # type: ignore[arg-type]
        parts.append(
            f"class {x.classes[g]} ({n} probe{'s' if n != 1 else ''}): "
            + _FMT.format(lead.rule.summary, **fields)
            + f" ({lead.rule.name}, threshold {thr:g}{also})"
        )
    groups = sorted({g for g, _ in items})
    classes = tuple(x.classes[g] for g in groups)
    sel = (x.groups[:, None] == torch.tensor(groups, device=x.groups.device)).any(1)
    probes = [int(i) for i in torch.nonzero(sel).flatten().tolist()]
    which = f"class {classes[0]}" if len(classes) == 1 else f"classes {fmt_list(list(classes))}"
    g0, d0 = items[0]
    text = (
        f"Weak evidence, not judged: {'; '.join(parts)}. A rule needs at least "
        f"{mon.min_probes} probes of a class, so this was neither tested causally nor flagged. "
        f"Give more probes of {which} (more annotated probes in the ProbeSet, or "
        f"GradCAMCallback(probes_per_class=...) for probes from the validation data). "
        f"Probes: {fmt_list(probes)}."
    )
    return Flag(
        kind=FlagKind.few_probes,
        epoch=int(epoch),
        global_step=int(step),
        probe=probes[0] if len(probes) == 1 else None,
        value=float(stats[d0.rule.headline.metric][g0]),
        threshold=float(d0.rule.threshold(mon.settings)),  # type: ignore[arg-type]
        message=text,
        probes=tuple(probes),
        metric=d0.rule.headline.metric,
        classes=classes,
    )


def _who(classes: tuple[int, ...]) -> str:
    """``"Probes explained as class 3: "`` (or classes ...)."""
    if len(classes) == 1:
        return f"Probes explained as class {classes[0]}: "
    return f"Probes explained as classes {fmt_list(list(classes))}: "


def _per_class(groups: list[int], head: Tensor, ids: list[int]) -> str:
    """``" (per class: 3: 4.20, 5: 3.10)"`` when the lead rule fired for several classes."""
    if len(groups) <= 1:
        return ""
    return " (per class: " + ", ".join(f"{ids[g]}: {float(head[g]):.2f}" for g in groups) + ")"


def _ranked_probes(per: dict[str, Tensor], rule: Rule, sel: Tensor) -> list[int]:
    """The selected probes with a defined headline measure, most affected first."""
    values = per[_PROBE_METRIC.get(rule.headline.metric, rule.headline.metric)]
    idx = torch.nonzero(sel & ~torch.isnan(values)).flatten()
    order = values[idx].argsort(descending=rule.headline.op == ">=", stable=True)
    return [int(i) for i in idx[order].tolist()]


def _causal_words(mon: Any, rule: Rule, g: int, causal: CausalValues | None) -> str:
    """The causal evidence behind a confirmed rule, in words (``g``: the leading group)."""
    if causal is None:
        return " (not confirmed causally: no score_fn, or confirm=False)"
    values, tested_epoch = causal(rule, g)
    when = "" if tested_epoch is None else f" (tested at epoch {tested_epoch})"
    r = rule.region
    if rule.confirm == "depends":
        dep = float(values.get(f"causal/{r}_depends", math.nan))
        flip = float(values.get(f"causal/{r}_flip", math.nan))
        return (
            f"; erasing it takes at least {pct(mon.evidence_drop)} of the target's evidence "
            f"(log-odds) from {pct(dep)} of them and flips {pct(flip)} of their predictions{when}"
        )
    ev = float(values.get(f"causal/{r}_evidence", math.nan))
    if r == "object":
        what = "the objects"
    elif mon.focus_mass is not None:
        what = f"the part of each map holding {pct(mon.focus_mass)} of its attention"
    else:
        what = f"the hottest {pct(mon.focus_frac)} of each map"
    if math.isnan(ev) or ev <= 0:
        text = f"; erasing {what} removes none of the target's evidence"
    else:
        text = f"; erasing {what} removes only {pct(ev)} of the target's evidence"
    ctx = rule.context_region
    if ctx is not None and f"causal/{ctx}_evidence" in values:
        bg = float(values[f"causal/{ctx}_evidence"])
        around = "the objects" if ctx == "backdrop" else "each map's focus"
        text += (
            f", while replacing everything around {around} by its mean colour removes "
            f"{pct(bg)} of it"
        )
    spread = rule.spread_region
    if spread is not None and f"causal/{spread}_depends" in values:
        one = float(values[f"causal/{spread}_depends"])
        text += (
            f", and it is spread over the image: only {pct(one)} of the probes lose "
            f"{pct(mon.evidence_drop)} of it to one patch of a {PATCH_GRID} x {PATCH_GRID} grid"
        )
    return text + when
