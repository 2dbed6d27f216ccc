"""Rules that turn Grad-CAM metrics into :class:`Flag` records (shortcut-learning alarms).

:class:`ShortcutMonitor` keeps the baseline maps (the untrained model, step 0) and the previous
run's maps, computes the measures of :mod:`gradcam_callback.metrics` for a probe batch in one go,
and raises three kinds of flags:

``"artifact"``
    Attention sits on a label artifact (watermark, text tag, hospital token, ruler, border band,
    stamp). With artifact masks: the attention enrichment inside the masks. Without masks (and
    also with them, for artifacts nobody masked): an *anchored hot spot*, where the maps of
    different probe images of one class pile up at the same off-centre place over pixels that
    barely change between images. Either way, by default only when erasing the region (filled
    from its surroundings) takes most of the target's evidence from most probes: "the map looks
    at the corner" is confirmed as "the model depends on the corner".
``"background"``
    Attention left the object. With object masks: low attention enrichment on the objects and a
    model that barely notices when the objects are erased. Without masks: attention spread over
    the whole image (near-uniform maps, as over a class-tied texture) and no compact region whose
    erasure matters.
``"drift"``
    Informational: the maps changed suddenly between two consecutive trained runs.

A rule that keeps firing run after run is reported again with ``persistent=True`` and the epoch
its streak began (``since_epoch``) instead of as new noise; when it stops firing and later fires
again it is new again. The baseline run (``baseline=True``) never raises a flag, and ``NaN``
values (all-zero maps of an untrained model, empty masks) never count towards one.

Metric names (relative; the callback prefixes them): ``drift/{pearson,spearman,js,iou,com_shift}
_{baseline,previous}``, ``attention/{entropy,focus,border_enrichment,corner_enrichment}``,
``attention/{object,artifact}_{share,enrichment}``, ``attention/object_pointing``,
``attention/hotspot_{share,enrichment,consistency,offset,stability,area}``,
``causal/{hotspot,focus,border,object,artifact}_{flip,drop,evidence,depends}``,
``causal/hotspot_{flip_rate,score_drop,evidence_drop,dependence}`` and the aliases
``causal/{flip,score_drop,evidence_drop,dependence}`` for the artifact region that was tested
(the artifact masks when given, else the hot spot).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from . import metrics as M

__all__ = ["FLAG_KINDS", "Analysis", "Flag", "ShortcutDetected", "ShortcutMonitor"]

FLAG_KINDS: tuple[str, ...] = ("artifact", "background", "drift")


@dataclass(frozen=True)
class Flag:
    """One alarm.

    Attributes:
        kind: ``"artifact"``, ``"background"`` or ``"drift"``.
        epoch, global_step: when the analysis ran.
        probe: the probe index when one probe is at fault, ``None`` for the whole set.
        value: the measured value that crossed ``threshold`` (see ``metric``).
        threshold: the threshold it crossed.
        message: one human-readable sentence or two: what, which probes, how much, what to do.
        persistent: ``True`` when the same rule also fired at the previous analysis.
        since_epoch, since_step: when this streak of the rule began (this run when new).
        probes: indices of the probes that carry the finding (most affected first).
        metric: the metric name (relative, e.g. ``"attention/artifact_enrichment"``) whose
            plot shows it; the callback prefixes it (``gradcam/...``).
    """

    kind: str
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
            undefined, e.g. no mask, an all-zero map, or a probe not tested causally).
        summary: name -> float: set means (``nanmean`` of ``per_probe``), per-class means named
            ``"<name>/class_<k>"`` (classes of ``labels``, else ``targets``), and hot-spot group
            values (``attention/hotspot_*`` and ``causal/hotspot_*`` of the group that fired, or
            the most anchored-looking one; per explained class as ``.../class_<k>``).
        flags: the flags of this analysis (new and persistent).
        hotspot: bool ``[N, H, W]`` CPU, the footprint of each probe's class-group hot spot (the
            region the causal check erases), for overlays.
    """

    per_probe: dict[str, Tensor] = field(default_factory=dict)
    summary: dict[str, float] = field(default_factory=dict)
    flags: list[Flag] = field(default_factory=list)
    hotspot: Tensor | None = None


def _fmt_probes(idx: Sequence[int], limit: int = 8) -> str:
    shown = ", ".join(str(i) for i in idx[:limit])
    more = f" and {len(idx) - limit} more" if len(idx) > limit else ""
    return f"{shown}{more}"


def _nanmean(x: Tensor) -> Tensor:
    """``nanmean`` that stays NaN (without a warning) for an all-NaN or empty input."""
    ok = ~torch.isnan(x)
    return torch.where(ok.any(), torch.nan_to_num(x).sum() / ok.sum().clamp_min(1), torch.nan)


class ShortcutMonitor:
    """Turns probe-set Grad-CAM maps into metrics and shortcut-learning flags.

    All thresholds are keyword arguments; the defaults were calibrated on synthetic worlds
    (a small CNN trained with a planted artifact that predicts the label versus one that is
    independent of it) and the README explains each. Probes with an undefined value (``NaN``)
    never count towards a flag.

    Args:
        artifact_enrichment: artifact flag (masks): the mean attention enrichment inside the
            artifact masks, over the probes that show an artifact, is at least this ...
        evidence_drop: a probe *depends* on an erased region when erasing it (filled from the
            surroundings) takes at least this share of the target's evidence (log-odds,
            :func:`~.metrics.evidence_drop`; a flip takes all of it) ...
        dependence: ... and a region is confirmed causally when at least this share of the
            tested probes depend on it.
        object_enrichment: background flag (masks): the mean attention enrichment on the objects
            is at most this (1 = as much as a uniform map puts there) ...
        object_drop: ... and (causal confirmation) erasing the objects removes less than this
            share of the target's evidence on average: the model barely needs them.
        hotspot_consistency: mask-free artifact flag: a class group whose probes put at least
            this enrichment on the group's shared hot spot (1 = chance) ...
        hotspot_offset: ... at least this far from the image centre (fraction of half the
            diagonal; 1 = a corner) ...
        hotspot_stability: ... with image pixels under it at least this stable across the
            group's images (pasted marks are; moving objects and random backgrounds score 0) ...
            and, with causal confirmation, ``dependence`` on its footprint.
        diffuse_entropy: mask-free background flag: the maps' mean normalised entropy is at least
            this (attention spread over the whole image, as over a class-tied texture) ...
        focus_drop: ... and (causal confirmation) erasing each map's hottest ``focus_frac``
            removes less than this share of the target's evidence: no compact evidence.
        hotspot_frac: hot-spot area as a fraction of the image.
        focus_frac: the hottest fraction of each map that the focus erasure removes.
        border_width: width of the image-frame band of ``attention/border_enrichment`` and of
            the ``causal/border_*`` erasure (fraction of each side).
        border_enrichment: optional mask-free background flag (off by default): the frame's
            mean attention enrichment is at least this (and, causally, ``dependence`` on it).
            Catches frames, rulers and scanner borders along the whole edge; single-edge bands
            are caught as hot spots already.
        flip_rate: optional extra causal confirmation (off by default): the share of tested
            probes whose prediction flips is at least this.
        score_drop: optional extra causal confirmation (off by default): the mean drop of the
            target's softmax probability is at least this. Probabilities saturate for confident
            models, which is why the log-odds ``evidence_drop`` decides by default.
        drift_pearson: drift flag when the mean Pearson correlation of the maps with the previous
            run's maps falls below this (never against the baseline run: training moves the
            maps away from the untrained model's by design).
        min_probes: the fewest usable probes (per class group for hot spots) a flag needs.
        confirm: run the causal checks when :meth:`analyze` gets a ``score_fn``.
        max_classes: per-class means are reported for at most this many classes.
    """

    def __init__(
        self,
        *,
        artifact_enrichment: float = 3.0,
        evidence_drop: float = 0.5,
        dependence: float = 0.75,
        object_enrichment: float = 2.0,
        object_drop: float = 0.5,
        hotspot_consistency: float = 3.0,
        hotspot_offset: float = 0.3,
        hotspot_stability: float = 0.15,
        diffuse_entropy: float = 0.95,
        focus_drop: float = 0.5,
        hotspot_frac: float = 0.05,
        focus_frac: float = 0.1,
        border_width: float = 0.125,
        border_enrichment: float | None = None,
        flip_rate: float | None = None,
        score_drop: float | None = None,
        drift_pearson: float = 0.5,
        min_probes: int = 4,
        confirm: bool = True,
        max_classes: int = 20,
    ) -> None:
        self.artifact_enrichment = float(artifact_enrichment)
        self.evidence_drop = float(evidence_drop)
        self.dependence = float(dependence)
        self.flip_rate = None if flip_rate is None else float(flip_rate)
        self.object_enrichment = float(object_enrichment)
        self.object_drop = float(object_drop)
        self.hotspot_consistency = float(hotspot_consistency)
        self.hotspot_offset = float(hotspot_offset)
        self.hotspot_stability = float(hotspot_stability)
        self.diffuse_entropy = float(diffuse_entropy)
        self.focus_drop = float(focus_drop)
        self.hotspot_frac = float(hotspot_frac)
        self.focus_frac = float(focus_frac)
        self.border_width = float(border_width)
        self.border_enrichment = None if border_enrichment is None else float(border_enrichment)
        self.score_drop = None if score_drop is None else float(score_drop)
        self.drift_pearson = float(drift_pearson)
        self.min_probes = int(min_probes)
        self.confirm = bool(confirm)
        self.max_classes = int(max_classes)
        self.baseline_maps: Tensor | None = None
        self.previous_maps: Tensor | None = None
        self.previous_is_baseline: bool = False
        self.active: dict[str, tuple[int, int]] = {}  # kind -> (since_epoch, since_step)

    # ------------------------------------------------------------------ state
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
            "active": {k: [int(e), int(s)] for k, (e, s) in self.active.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (maps move to the device at the next run)."""
        self.baseline_maps = state.get("baseline_maps")
        self.previous_maps = state.get("previous_maps")
        self.previous_is_baseline = bool(state.get("previous_is_baseline", False))
        self.active = {str(k): (int(v[0]), int(v[1])) for k, v in state.get("active", {}).items()}

    # ------------------------------------------------------------------ analysis
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
    ) -> Analysis:
        """Measure one run's maps and decide the flags.

        Args:
            maps: float32 ``[N, H, W]``, raw ReLU'd maps upsampled to the image size.
            images: ``[N, C, H, W]`` probe images as fed to the model.
            targets: long ``[N]``, the class each map explains.
            labels: long ``[N]`` true classes (per-class means group by these, else by targets).
            scores: float ``[N]`` target scores (kept for the record; unused by the rules).
            logits: float ``[N, K]`` model outputs for the unchanged probes (saves a forward in
                the causal checks).
            object_masks, artifact_masks: bool ``[N, H, W]`` or ``None``.
            score_fn: ``images -> logits [N, K]`` (eval mode, no grad) for causal confirmation.
            epoch, global_step: recorded in the flags.
            baseline: this run is the reference (step 0, untrained): store it, raise no flags.

        Returns:
            :class:`Analysis`.
        """
        maps = maps.detach().float()
        n, h, w = maps.shape
        dev = maps.device
        images = images.detach()
        targets = targets.detach().to(dev, torch.long)
        group_of = (labels if labels is not None else targets).detach().to(dev, torch.long)
        if self.baseline_maps is not None and self.baseline_maps.shape != maps.shape:
            self.reset()  # a different probe set: start over
        first = self.baseline_maps is None
        if baseline or first:
            self.baseline_maps = maps.clone()
        per: dict[str, Tensor] = {}

        # ---- drift
        for ref_name, ref in (("baseline", self.baseline_maps), ("previous", self.previous_maps)):
            if ref is None or (ref_name == "baseline" and (baseline or first)):
                continue
            ref = ref.to(dev)
            per[f"drift/pearson_{ref_name}"] = M.pearson(maps, ref)
            per[f"drift/spearman_{ref_name}"] = M.spearman(maps, ref)
            per[f"drift/js_{ref_name}"] = M.js_divergence(maps, ref)
            per[f"drift/iou_{ref_name}"] = M.topk_iou(maps, ref)
            per[f"drift/com_shift_{ref_name}"] = M.com_shift(maps, ref)

        # ---- focus and frame
        entropy = M.focus_entropy(maps)
        per["attention/entropy"] = entropy
        per["attention/focus"] = 1.0 - entropy
        per["attention/border_enrichment"] = M.border_enrichment(maps, self.border_width)
        per["attention/corner_enrichment"] = M.corner_enrichment(maps)

        # ---- masks
        has_obj = has_art = None
        if object_masks is not None:
            om = object_masks.to(dev, torch.bool)
            has_obj = om.flatten(1).any(1)
            per["attention/object_share"] = torch.where(has_obj, M.mass_share(maps, om), torch.nan)
            per["attention/object_enrichment"] = M.enrichment(maps, om)
            per["attention/object_pointing"] = torch.where(
                has_obj, M.pointing_game(maps, om), torch.nan
            )
        if artifact_masks is not None:
            am = artifact_masks.to(dev, torch.bool)
            has_art = am.flatten(1).any(1)
            per["attention/artifact_share"] = torch.where(
                has_art, M.mass_share(maps, am), torch.nan
            )
            per["attention/artifact_enrichment"] = M.enrichment(maps, am)

        # ---- anchored hot spot (mask-free), grouped by the explained class
        uniq, inv = torch.unique(targets, return_inverse=True)
        n_grp = int(uniq.numel())
        hot = M.anchored_hotspot(
            maps,
            images,
            inv,
            num_groups=n_grp,
            frac=self.hotspot_frac,
            min_group=self.min_probes,
        )
        per["attention/hotspot_share"] = hot.share
        per["attention/hotspot_enrichment"] = hot.enrichment
        oh = F.one_hot(inv, n_grp).float()  # [N, G]
        group: dict[str, Tensor] = {  # [G] each
            "attention/hotspot_consistency": hot.consistency,
            "attention/hotspot_offset": hot.offset,
            "attention/hotspot_stability": hot.stability,
            "attention/hotspot_area": hot.group_footprint.flatten(1).float().mean(1),
        }

        # ---- causal confirmation: one batched forward of the probes per erased region kind
        causal = score_fn is not None and self.confirm
        if causal:
            assert score_fn is not None
            # Erase only the regions a rule can use: the focus region serves the mask-free
            # background rule (object masks take its place), the frame only the optional
            # border rule. Each region costs an inpainting pass and a forward of the probes.
            regions: dict[str, tuple[Tensor, Tensor | None]] = {
                "hotspot": (_dilate(hot.footprint, 1), None),
            }
            if object_masks is None:
                regions["focus"] = (_dilate(M.top_region(maps, self.focus_frac), 1), None)
            if self.border_enrichment is not None:
                regions["border"] = (
                    M.border_mask(h, w, self.border_width, dev).expand(n, h, w),
                    None,
                )
            if object_masks is not None:
                regions["object"] = (_dilate(om, 1), has_obj)
            if artifact_masks is not None:
                regions["artifact"] = (_dilate(am, 1), has_art)
            with torch.no_grad():
                base = logits if logits is not None else score_fn(images)
                base = base.detach().float().to(dev)
                for name, (reg, valid) in regions.items():
                    eff = M.erasure_effect(score_fn, images, reg, targets, base)
                    tested = reg.flatten(1).any(1) & (valid if valid is not None else True)
                    per[f"causal/{name}_flip"] = torch.where(tested, eff.flipped, torch.nan)
                    per[f"causal/{name}_drop"] = torch.where(tested, eff.score_drop, torch.nan)
                    ev = torch.where(tested, eff.evidence_drop, torch.nan)
                    per[f"causal/{name}_evidence"] = ev
                    per[f"causal/{name}_depends"] = torch.where(
                        torch.isnan(ev), ev, (ev >= self.evidence_drop).float()
                    )
            for key, src in (
                ("flip_rate", "flip"),
                ("score_drop", "drop"),
                ("evidence_drop", "evidence"),
                ("dependence", "depends"),
            ):
                v = per[f"causal/hotspot_{src}"]
                ok = (~torch.isnan(v)).float()
                cnt = ok @ oh
                group[f"causal/hotspot_{key}"] = torch.where(
                    cnt > 0, (torch.nan_to_num(v) @ oh) / cnt.clamp_min(1), torch.nan
                )
            src = "artifact" if artifact_masks is not None else "hotspot"
            per["causal/flip"] = per[f"causal/{src}_flip"]
            per["causal/score_drop"] = per[f"causal/{src}_drop"]
            per["causal/evidence_drop"] = per[f"causal/{src}_evidence"]
            per["causal/dependence"] = per[f"causal/{src}_depends"]

        # ---- one transfer to the host
        names = list(per)
        stacked = torch.stack([per[k].float() for k in names])  # [M, N]
        means = torch.stack([_nanmean(row) for row in stacked])
        cls_uniq, cls_inv = torch.unique(group_of, return_inverse=True)
        n_cls = int(cls_uniq.numel())
        if n_cls <= self.max_classes:
            oh_cls = F.one_hot(cls_inv, n_cls).float()  # [N, C]
            cnt = (~torch.isnan(stacked)).float() @ oh_cls
            cmeans = torch.where(
                cnt > 0, (torch.nan_to_num(stacked) @ oh_cls) / cnt.clamp_min(1), torch.nan
            )
        else:
            cmeans = torch.empty(0, 0)
        gnames = list(group)
        host = {
            "stacked": stacked,
            "means": means,
            "cls": cls_uniq,
            "cmeans": cmeans,
            "group": torch.stack([group[k].float() for k in gnames]),  # [K, G]
            "group_size": hot.size,
            "group_cls": uniq,
            "inv": inv,
            "hotspot": hot.footprint,
        }
        host = {k: v.cpu() for k, v in host.items()}
        out = Analysis(hotspot=host["hotspot"])
        out.per_probe = {k: host["stacked"][i] for i, k in enumerate(names)}
        out.summary = {k: float(host["means"][i]) for i, k in enumerate(names)}
        classes = host["cls"].tolist()
        if host["cmeans"].numel():
            for i, k in enumerate(names):
                for j, c in enumerate(classes):
                    out.summary[f"{k}/class_{c}"] = float(host["cmeans"][i, j])
        gstats = {k: host["group"][i] for i, k in enumerate(gnames)}
        gcls = host["group_cls"].tolist()
        if len(gcls) <= self.max_classes:
            for k, v in gstats.items():
                for j, c in enumerate(gcls):
                    out.summary[f"{k}/class_{c}"] = float(v[j])
        passing = self._hotspot_groups(gstats, host["group_size"], causal)
        cons = torch.nan_to_num(gstats["attention/hotspot_consistency"], nan=-1.0)
        off_ok = gstats["attention/hotspot_offset"] >= self.hotspot_offset
        if passing:
            best = max(passing, key=lambda j: float(cons[j]))
        else:  # report the most anchored-looking group: off-centre first, then consistent
            best = int((cons + 1e6 * off_ok.float()).argmax())
        for k, v in gstats.items():
            out.summary[k] = float(v[best])

        if baseline:
            self.active = {}
        else:
            raw = self._rules(out, host["inv"], gcls, passing, causal, epoch, global_step)
            out.flags = self._mark_persistence(raw, epoch, global_step)
        self.previous_maps = maps.clone()
        self.previous_is_baseline = baseline or first
        return out

    # ------------------------------------------------------------------ rules
    def _confirms(self, dependence: float, flip_rate: float, score_drop: float) -> bool:
        """Causal confirmation from the share of dependent probes (and the optional extras)."""
        if self.flip_rate is not None and flip_rate >= self.flip_rate:
            return True
        if self.score_drop is not None and score_drop >= self.score_drop:
            return True
        return dependence >= self.dependence  # NaN fails

    def _hotspot_groups(self, g: dict[str, Tensor], size: Tensor, causal: bool) -> list[int]:
        """Class groups whose hot spot is consistent, off-centre, and confirmed."""
        out = []
        for j in range(size.numel()):
            cons = float(g["attention/hotspot_consistency"][j])
            off = float(g["attention/hotspot_offset"][j])
            if int(size[j]) < self.min_probes or not (
                cons >= self.hotspot_consistency and off >= self.hotspot_offset
            ):
                continue
            stab = float(g["attention/hotspot_stability"][j])
            ok = stab >= self.hotspot_stability  # NaN fails
            if ok and causal:
                ok = self._confirms(
                    float(g["causal/hotspot_dependence"][j]),
                    float(g["causal/hotspot_flip_rate"][j]),
                    float(g["causal/hotspot_score_drop"][j]),
                )
            if ok:
                out.append(j)
        return out

    def _rules(
        self,
        a: Analysis,
        inv: Tensor,
        gcls: list[int],
        passing: list[int],
        causal: bool,
        epoch: int,
        step: int,
    ) -> list[Flag]:
        p, s = a.per_probe, a.summary
        flags: list[Flag] = []

        def flag(kind: str, metric: str, value: float, thr: float, probes: list[int], msg: str):
            flags.append(
                Flag(
                    kind=kind,
                    epoch=epoch,
                    global_step=step,
                    probe=probes[0] if len(probes) == 1 else None,
                    value=float(value),
                    threshold=float(thr),
                    message=msg,
                    probes=tuple(probes),
                    metric=metric,
                )
            )

        def ranked(values: Tensor, mask: Tensor, descending: bool = True) -> list[int]:
            idx = torch.nonzero(mask & ~torch.isnan(values)).flatten()
            order = values[idx].argsort(descending=descending, stable=True)
            return idx[order].tolist()

        def causal_note(region: str, usable: Tensor) -> tuple[bool, str]:
            if not causal:
                return True, " (not confirmed causally: no score_fn)"
            dep = float(_nanmean(p[f"causal/{region}_depends"][usable]))
            fr = float(_nanmean(p[f"causal/{region}_flip"][usable]))
            sd = float(_nanmean(p[f"causal/{region}_drop"][usable]))
            return self._confirms(dep, fr, sd), (
                f"; erasing it takes at least {self.evidence_drop:.0%} of the target's evidence "
                f"(log-odds) from {dep:.0%} of them and flips {fr:.0%} of their predictions"
            )

        # -- artifact, with masks
        if "attention/artifact_enrichment" in p:
            enr = p["attention/artifact_enrichment"]
            usable = ~torch.isnan(enr)
            value = s["attention/artifact_enrichment"]
            if int(usable.sum()) >= self.min_probes and value >= self.artifact_enrichment:
                ok, why = causal_note("artifact", usable)
                if ok:
                    probes = ranked(enr, enr >= self.artifact_enrichment)
                    share = s["attention/artifact_share"]
                    flag(
                        "artifact",
                        "attention/artifact_enrichment",
                        value,
                        self.artifact_enrichment,
                        probes,
                        f"attention on the label-artifact masks is {value:.1f}x their area share "
                        f"({share:.0%} of the maps' mass, {int(usable.sum())} probes with an "
                        f"artifact){why}. Most affected probes: {_fmt_probes(probes)}. The model "
                        "reads the artifact, not the object: see attention/artifact_enrichment "
                        "and the overlays.",
                    )

        # -- artifact, mask-free: an anchored hot spot (also with masks: it may be unlisted)
        if passing and not any(f.kind == "artifact" for f in flags):
            sel = torch.zeros_like(inv, dtype=torch.bool)
            for j in passing:
                sel |= inv == j
            enr = p["attention/hotspot_enrichment"]
            probes = ranked(enr, sel)
            cons = s["attention/hotspot_consistency"]
            off = s["attention/hotspot_offset"]
            cls = ", ".join(str(gcls[j]) for j in passing)
            why = f"; the pixels there are {s['attention/hotspot_stability']:.0%} stable across images"
            if causal:
                why += (
                    f"; erasing it takes at least {self.evidence_drop:.0%} of the target's "
                    f"evidence (log-odds) from {s['causal/hotspot_dependence']:.0%} of them and "
                    f"flips {s['causal/hotspot_flip_rate']:.0%} of their predictions"
                )
            else:
                why += " (not confirmed causally: no score_fn)"
            flag(
                "artifact",
                "attention/hotspot_consistency",
                cons,
                self.hotspot_consistency,
                probes,
                f"probes explained as class {cls} pile their attention on one off-centre spot "
                f"({cons:.1f}x its area share, {off:.0%} of the way from the centre to a corner)"
                f"{why}. Probes: {_fmt_probes(probes)}. A watermark, tag, token or border at a "
                "fixed place is a likely shortcut: see attention/hotspot_consistency and the "
                "overlays.",
            )

        # -- background, with object masks
        if "attention/object_enrichment" in p:
            enr = p["attention/object_enrichment"]
            usable = ~torch.isnan(enr)
            value = s["attention/object_enrichment"]
            if int(usable.sum()) >= self.min_probes and value <= self.object_enrichment:
                ok, why = True, " (not confirmed causally: no score_fn)"
                if causal:
                    od = float(_nanmean(p["causal/object_evidence"][usable]))
                    ok = not od >= self.object_drop  # NaN (nothing to lose) passes
                    why = f"; erasing the objects removes only {od:.0%} of the target's evidence"
                if ok:
                    probes = ranked(enr, enr <= self.object_enrichment, descending=False)
                    share = s["attention/object_share"]
                    flag(
                        "background",
                        "attention/object_enrichment",
                        value,
                        self.object_enrichment,
                        probes,
                        f"attention left the objects: {share:.0%} of the maps' mass is on them, "
                        f"{value:.2f}x their area share{why}. Probes: {_fmt_probes(probes)}. "
                        "The model relies on something else (background, artifact): see "
                        "attention/object_enrichment.",
                    )
        # -- background, mask-free: attention spread over the whole image
        else:
            ent = p["attention/entropy"]
            usable = ~torch.isnan(ent)
            value = s["attention/entropy"]
            if int(usable.sum()) >= self.min_probes and value >= self.diffuse_entropy:
                ok, why = True, " (not confirmed causally: no score_fn)"
                if causal:
                    fd = float(_nanmean(p["causal/focus_evidence"][usable]))
                    ok = not fd >= self.focus_drop  # NaN (nothing to lose) passes
                    why = (
                        f"; erasing the hottest {self.focus_frac:.0%} of each map removes only "
                        f"{fd:.0%} of the target's evidence"
                    )
                if ok:
                    probes = ranked(ent, ent >= self.diffuse_entropy)
                    flag(
                        "background",
                        "attention/entropy",
                        value,
                        self.diffuse_entropy,
                        probes,
                        f"attention is spread over the whole image (normalised entropy "
                        f"{value:.3f}){why}. Probes: {_fmt_probes(probes)}. The model may read "
                        "a background texture or colour instead of an object: see "
                        "attention/entropy and the overlays.",
                    )
            # optional: attention on the image frame (a frame, ruler or scanner border)
            enr = p["attention/border_enrichment"]
            usable = ~torch.isnan(enr)
            value = s["attention/border_enrichment"]
            if (
                self.border_enrichment is not None
                and not any(f.kind in ("background", "artifact") for f in flags)
                and int(usable.sum()) >= self.min_probes
                and value >= self.border_enrichment
            ):
                ok, why = causal_note("border", usable)
                if ok:
                    probes = ranked(enr, enr >= self.border_enrichment)
                    flag(
                        "background",
                        "attention/border_enrichment",
                        value,
                        self.border_enrichment,
                        probes,
                        f"attention sits on the image frame: {value:.2f}x its area share on the "
                        f"outer {self.border_width:.0%} band{why}. Probes: {_fmt_probes(probes)}. "
                        "A border, ruler or scanner frame may be a shortcut: see "
                        "attention/border_enrichment.",
                    )

        # -- drift (informational), only between two trained runs
        if not self.previous_is_baseline and "drift/pearson_previous" in p:
            r = p["drift/pearson_previous"]
            usable = ~torch.isnan(r)
            value = s["drift/pearson_previous"]
            if int(usable.sum()) >= self.min_probes and value < self.drift_pearson:
                probes = ranked(r, r < self.drift_pearson, descending=False)
                flag(
                    "drift",
                    "drift/pearson_previous",
                    value,
                    self.drift_pearson,
                    probes,
                    f"the maps changed suddenly since the last run (mean correlation "
                    f"{value:.2f}); probes: {_fmt_probes(probes)}. Informational: see "
                    "drift/pearson_previous and compare the overlays.",
                )
        return flags

    def _mark_persistence(self, flags: list[Flag], epoch: int, step: int) -> list[Flag]:
        out: list[Flag] = []
        active: dict[str, tuple[int, int]] = {}
        for f in flags:
            if f.kind in self.active:
                since = self.active[f.kind]
                f = _replace(f, persistent=True, since_epoch=since[0], since_step=since[1])
            else:
                since = (epoch, step)
                f = _replace(f, since_epoch=epoch, since_step=step)
            active.setdefault(f.kind, since)
            out.append(f)
        self.active = active
        return out


def _dilate(mask: Tensor, px: int) -> Tensor:
    """Grow bool ``[N, H, W]`` masks by ``px`` pixels (3x3-connected)."""
    if px <= 0:
        return mask
    k = 2 * px + 1
    return F.max_pool2d(mask[:, None].float(), k, 1, px)[:, 0] > 0


def _replace(f: Flag, **kw: Any) -> Flag:
    from dataclasses import replace

    return replace(f, **kw)
