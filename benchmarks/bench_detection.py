"""Held-out shortcut-detection benchmark: does the alarm fire on worlds it was not tuned on?

For each selected world of :mod:`detection_worlds` (real handwritten digits with a planted label
artifact; see that module for the worlds and the fixed CALIBRATION / HELD-OUT split) this trains
the world's model twice, once on the shortcut world and once on its clean control. Each fit has
two ``GradCAMCallback`` instances attached, at their defaults except for media and verbosity:

* ``gc_masks``: ``GradCAMCallback(prefix="gc_masks")``: zero-config probes from the validation
  dataloader, whose batches carry object and artifact masks;
* ``gc_nomask``: ``GradCAMCallback(prefix="gc_nomask", use_masks=False)``.

(``log_images=False, filmstrip=False, verbose=False`` in both.) Only the public API is used:
``cb.flags`` and ``cb.history``.

Ground truth (a small callback of this script, after every validation epoch): validation accuracy
on the ``present``, ``removed`` and ``swapped`` variants. Epochs are 0-based, as
``Trainer.current_epoch`` and ``Flag.epoch`` are.

* A shortcut world is VALID when at the final epoch ``acc_present >= chance + 0.7 * (1 -
  chance)`` (0.85 for 2 classes, 0.73 for 10) and ``acc_present - acc_swapped >= 0.3``. Its first reliance epoch is the first epoch where
  ``acc_present - acc_swapped >= 0.3``.
* A clean control is VALID when at the final epoch ``|acc_present - acc_swapped| <= 0.1`` and
  ``acc_present >= chance + 0.5 * (1 - chance)`` (the model learned the digits).
* INVALID worlds are reported and not scored.

Scores per case (world x {shortcut, clean} x {masks, nomask}): flagged at the final epoch (an
``artifact`` or ``background`` flag raised at the callback's last run, new or persistent), the
flag kinds, the first flag epoch, the first reliance epoch; a final flag counts when it names a
class whose images carry the artifact (for a one-class token or a group shortcut: that class or
a class of the group); on clean controls a false alarm is
any ``artifact`` / ``background`` flag at any trained epoch. W4 (moving artifact) counts only with
masks. Multi-label worlds (W15, W16, W20, W22) are judged on the tied label's balanced accuracy; a
few-probe world (W17, W18: an annotated ProbeSet with fewer probes of the shortcut class than the
rules need) counts as caught when a ``few_probes`` note names that class at the final run. The
report's last table lists, for these worlds, whether the flags name the right class or label.

Usage::

    .venv/bin/python benchmarks/bench_detection.py --split all --threads 2 \\
        --json detection.json --out-md detection_report.md
    .venv/bin/python benchmarks/bench_detection.py --worlds W1,W3 --epochs 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import CosineAnnealingLR
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
import detection_worlds as dw

from gradcam_callback import GradCAMCallback, ProbeSet

ALARM_KINDS = ("artifact", "background")
RELIANCE_DROP = 0.3
SHORTCUT_MIN_ACC = 0.7  # of the way from chance to 1: 0.85 for 2 classes, 0.73 for 10
CLEAN_MAX_GAP = 0.1
MODES = {"masks": "gc_masks", "nomask": "gc_nomask"}


# --------------------------------------------------------------------------- training pieces
class LitClassifier(pl.LightningModule):
    """Cross-entropy classifier around ``model``; ``forward`` returns logits ``[N, K]``."""

    def __init__(self, model: nn.Module, lr: float) -> None:
        super().__init__()
        self.model = model
        self.lr = lr

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        x, y = batch[0], batch[1]
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        x, y = batch[0], batch[1]
        acc = (self(x).argmax(1) == y).float().mean()
        self.log("val_acc", acc, on_step=False, on_epoch=True)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.Adam(self.parameters(), lr=self.lr)
        epochs = max(int(self.trainer.max_epochs or 1), 1)
        return {"optimizer": opt, "lr_scheduler": CosineAnnealingLR(opt, T_max=epochs)}


class LitMultiLabel(LitClassifier):
    """Binary cross-entropy on ``[N, K]`` sigmoid logits (a multi-label world's findings)."""

    def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        x, y = batch[0], batch[1]
        loss = nn.functional.binary_cross_entropy_with_logits(self(x), y.float())
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        x, y = batch[0], batch[1]
        acc = ((self(x) > 0) == (y > 0)).float().mean()
        self.log("val_acc", acc, on_step=False, on_epoch=True)


@torch.no_grad()
def balanced_accuracies(
    model: nn.Module, data: torch.utils.data.TensorDataset, batch: int = 256
) -> Tensor:
    """Per-label balanced accuracy ``[K]`` (mean of the true-positive and true-negative rates,
    a label predicted present when its logit is positive) of a multi-label model."""
    x, y = data.tensors[0], data.tensors[1] > 0
    pred = torch.cat([model(x[i : i + batch]) > 0 for i in range(0, len(y), batch)])
    tpr = (pred & y).sum(0) / y.sum(0).clamp_min(1)
    tnr = (~pred & ~y).sum(0) / (~y).sum(0).clamp_min(1)
    return ((tpr + tnr) / 2).float()


@torch.no_grad()
def accuracy(model: nn.Module, data: torch.utils.data.TensorDataset, batch: int = 256) -> float:
    """Top-1 accuracy of ``model`` (in its current mode) on a TensorDataset."""
    x, y = data.tensors[0], data.tensors[1]
    correct = 0
    for i in range(0, len(y), batch):
        correct += int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum())
    return correct / max(len(y), 1)


class GroundTruth(pl.Callback):
    """After each validation epoch: accuracy on the world's present / removed / swapped sets."""

    def __init__(self, world: dw.DigitWorld | dw.MultiLabelWorld) -> None:
        self.world = world
        self.records: list[dict[str, float]] = []

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        was_training = pl_module.training
        pl_module.eval()
        record: dict[str, Any] = {"epoch": int(trainer.current_epoch)}
        for mode in dw.MODES:
            if isinstance(self.world, dw.MultiLabelWorld):  # the tied label; all labels' mean
                bal = balanced_accuracies(pl_module, self.world.variant(mode))
                record[f"acc_{mode}"] = float(bal[self.world.spec.token_class])
                record[f"labels_{mode}"] = float(bal.mean())
            else:
                record[f"acc_{mode}"] = accuracy(pl_module, self.world.variant(mode))
        pl_module.train(was_training)
        self.records.append(record)


def annotated_probes(world: dw.DigitWorld) -> ProbeSet | None:
    """The explicit annotated :class:`ProbeSet` of a few-probe world (``None``: zero-config)."""
    if not isinstance(world.spec, dw.FewProbeSpec):
        return None
    image, label, obj, art = (t[dw.annotated_probe_index(world)] for t in world.val.tensors)
    return ProbeSet(image, label, object_masks=obj, artifact_masks=art)


def fit_world(
    world: dw.DigitWorld | dw.MultiLabelWorld, epochs: int, seed: int = 0
) -> tuple[list[dict[str, Any]], dict[str, GradCAMCallback], float]:
    """Train the world's model once with both Grad-CAM callbacks and the ground-truth callback.

    Returns:
        ``(ground_truth_records, {"masks": cb, "nomask": cb}, fit_seconds)``.
    """
    spec = world.spec
    lit = LitMultiLabel if isinstance(world, dw.MultiLabelWorld) else LitClassifier
    model = lit(dw.build_model(spec, seed=seed), lr=spec.lr)
    probes = annotated_probes(world) if isinstance(world, dw.DigitWorld) else None
    train = DataLoader(
        world.train,
        batch_size=spec.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    val = DataLoader(world.val, batch_size=128)
    truth = GroundTruth(world)
    cbs = {
        "masks": GradCAMCallback(
            prefix=MODES["masks"], probes=probes, log_images=False, filmstrip=False, verbose=False
        ),
        "nomask": GradCAMCallback(
            prefix=MODES["nomask"],
            probes=probes,
            use_masks=False,
            log_images=False,
            filmstrip=False,
            verbose=False,
        ),
    }
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        num_sanity_val_steps=0,
        callbacks=[truth, *cbs.values()],
    )
    was_det = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(model, train_dataloaders=train, val_dataloaders=val)
    finally:
        torch.use_deterministic_algorithms(was_det, warn_only=warn_only)
    return truth.records, cbs, time.perf_counter() - start


# ---------------------------------------------------------------------------------- scoring
def judge_truth(
    records: list[dict[str, Any]], shortcut: bool, num_classes: int, multilabel: bool = False
) -> dict[str, Any]:
    """Validity and first reliance epoch from the per-epoch ground-truth records.

    Multi-label worlds: the accuracies are the tied label's balanced accuracy (chance 0.5), and
    a clean control is valid only when the mean balanced accuracy of all labels is at least
    0.75 too (every finding learned, not only the tied one).
    """
    if multilabel:
        num_classes = 2
    final = records[-1] if records else {}
    present, swapped = final.get("acc_present", float("nan")), final.get("acc_swapped", 0.0)
    gap = present - swapped
    reliance = next(
        (r["epoch"] for r in records if r["acc_present"] - r["acc_swapped"] >= RELIANCE_DROP),
        None,
    )
    chance = 1.0 / num_classes
    if not records:
        valid, why = False, "no validation epoch ran"
    elif shortcut:
        high = chance + SHORTCUT_MIN_ACC * (1 - chance)
        valid = present >= high and gap >= RELIANCE_DROP
        why = "" if valid else f"acc_present {present:.2f}, drop on swapped {gap:.2f}"
    else:
        learned = present >= chance + 0.5 * (1 - chance)
        if multilabel:
            learned = learned and final.get("labels_present", 0.0) >= 0.75
        valid = learned and abs(gap) <= CLEAN_MAX_GAP
        why = "" if valid else f"acc_present {present:.2f}, gap to swapped {gap:.2f}"
        if multilabel and not valid:
            why += f", all labels {final.get('labels_present', float('nan')):.2f}"
    return {"valid": bool(valid), "invalid_reason": why, "first_reliance_epoch": reliance}


def _kind(flag: Any) -> str:
    """A flag's kind as a plain string (``Flag.kind`` may be a str or a str-valued enum)."""
    return str(getattr(flag.kind, "value", flag.kind))


def _detail(flag: Any) -> str:
    """``kind`` or ``kind(c1,c2)`` when the flag names its classes (``Flag.classes``)."""
    classes = [int(c) for c in getattr(flag, "classes", None) or ()]
    return _kind(flag) + (f"({','.join(map(str, classes))})" if classes else "")


def score_callback(
    cb: GradCAMCallback, shortcut_classes: Sequence[int] | None = None
) -> dict[str, Any]:
    """What one callback said: flags at its last run, first flag epoch, kinds, all flags.

    ``shortcut_classes``: the classes whose images carry an artifact (``None``: all). A final
    flag counts when it names one of them (or names no class); the classes final flags name
    besides them are listed in ``final_wrong_classes``.
    """
    runs = [h for h in cb.history if h.get("stage") != "baseline"]
    last = cb.history[-1] if cb.history else None
    alarms = [f for f in cb.flags if _kind(f) in ALARM_KINDS and f.global_step > 0]
    final = [
        f
        for f in alarms
        if last is not None and (f.epoch, f.global_step) == (last["epoch"], last["global_step"])
    ]
    right = None if shortcut_classes is None else {int(c) for c in shortcut_classes}

    def names(f: Any) -> set[int]:
        return {int(c) for c in getattr(f, "classes", None) or ()}

    hits = [f for f in final if right is None or not names(f) or names(f) & right]
    wrong = sorted(set().union(*(names(f) for f in final)) - right) if right is not None else []
    return {
        "runs": len(runs),
        "last_run_epoch": None if last is None else int(last["epoch"]),
        "flagged_final": bool(hits),
        "final_wrong_classes": wrong,
        "final_kinds": sorted({_kind(f) for f in final}),
        "final_detail": sorted({_detail(f) for f in final}),
        "final_classes": sorted({int(c) for f in final for c in getattr(f, "classes", ()) or ()}),
        "final_notes": sorted(
            {
                _detail(f)
                for f in cb.flags
                if _kind(f) not in ALARM_KINDS
                and last is not None
                and (f.epoch, f.global_step) == (last["epoch"], last["global_step"])
            }
        ),
        "note_epochs": sorted(
            {int(f.epoch) for f in cb.flags if _kind(f) == "few_probes" and f.global_step > 0}
        ),
        "kinds": sorted({_kind(f) for f in cb.flags}),
        "first_flag_epoch": min((int(f.epoch) for f in alarms), default=None),
        "alarm_epochs": sorted({int(f.epoch) for f in alarms}),
        "any_alarm": bool(alarms),
        "flags": [
            {
                "kind": _kind(f),
                "epoch": int(f.epoch),
                "global_step": int(f.global_step),
                "persistent": bool(f.persistent),
                "classes": [int(c) for c in getattr(f, "classes", None) or ()],
                "message": f.message,
            }
            for f in cb.flags
        ],
    }


def run_world(
    spec: dw.WorldSpec,
    epochs: int | None = None,
    seed: int = 0,
    n_train: int | None = None,
    n_val: int | None = None,
) -> list[dict[str, Any]]:
    """Both fits of one world (shortcut, clean); one result dict per fit, with both modes."""
    out = []
    for shortcut in (True, False):
        start = time.perf_counter()
        world = dw.make_world(spec, shortcut=shortcut, seed=seed, n_train=n_train, n_val=n_val)
        n_epochs = spec.epochs if epochs is None else epochs
        records, cbs, fit_s = fit_world(world, n_epochs, seed=seed)
        multilabel = isinstance(spec, dw.MultiLabelSpec)
        truth = judge_truth(records, shortcut, spec.num_classes, multilabel)
        out.append(
            {
                "world": spec.name,
                "title": spec.title,
                "split": spec.split,
                "arch": spec.arch,
                "classes": spec.num_classes,
                "image_size": spec.image_size,
                "case": "shortcut" if shortcut else "clean",
                "epochs": n_epochs,
                "masks_only": spec.masks_only,
                "family": _family(spec),
                "few_class": getattr(spec, "few_class", None),
                "expected_class": spec.token_class if spec.artifact == "token" else None,
                **truth,
                "final_truth": records[-1] if records else {},
                "truth_per_epoch": records,
                "shortcut_classes": list(dw.shortcut_classes(spec)),
                "modes": {
                    mode: score_callback(cb, dw.shortcut_classes(spec)) for mode, cb in cbs.items()
                },
                "fit_s": fit_s,
                "total_s": time.perf_counter() - start,
            }
        )
    return out


def _family(spec: dw.WorldSpec) -> str | None:
    """``"multilabel"`` / ``"few_probes"`` for the worlds of issue 19 (parts 4-5), else ``None``."""
    if isinstance(spec, dw.MultiLabelSpec):
        return "multilabel"
    return "few_probes" if isinstance(spec, dw.FewProbeSpec) else None


FAMILY_HEADER = (
    "| world | case | mode | valid | final flags | right class | final notes | alarm epochs "
    "| note epochs | tied acc present / removed / swapped | all labels present |"
)


def family_rows(results: list[dict[str, Any]]) -> list[str]:
    """The multi-label and few-probe worlds: the class or label each flag names, and the notes.

    'right class': a multi-label shortcut is flagged (artifact/background) for its tied label;
    a few-probe shortcut gets a ``few_probes`` note for its few-probe class (its flags cannot
    fire: the class has fewer probes than the rules' minimum)."""
    rows = [FAMILY_HEADER, "|" + "---|" * 11]
    for r in results:
        if r["family"] is None:
            continue
        t = r["final_truth"]
        for mode in MODES:
            m = r["modes"][mode]
            counted = not (mode == "nomask" and r["masks_only"])
            valid = ("yes" if r["valid"] else "INVALID") + ("" if counted else " (not counted)")
            right = "-"
            if r["case"] == "shortcut":
                right = _fmt(_right_class(r, m))
            acc = "/".join(_fmt(t.get(f"acc_{k}")) for k in dw.MODES)
            rows.append(
                f"| {r['world']} | {r['case']} | {mode} | {valid} | {_fmt(m['final_detail'])} | "
                f"{right} | {_fmt(m['final_notes'])} | {_fmt(m['alarm_epochs'])} | "
                f"{_fmt(m['note_epochs'])} | {acc} | {_fmt(t.get('labels_present'))} |"
            )
    return rows


def _right_class(r: dict[str, Any], m: dict[str, Any]) -> bool:
    """The shortcut's class or label is named at the final run (see :func:`family_rows`)."""
    want = r["expected_class"] if r["family"] == "multilabel" else r.get("few_class")
    if r["family"] == "multilabel":
        return want in m["final_classes"]
    return any(n.startswith("few_probes(") and want in _classes(n) for n in m["final_notes"])


def _classes(detail: str) -> list[int]:
    """``"kind(1,2)" -> [1, 2]``."""
    inner = detail.partition("(")[2].rstrip(")")
    return [int(c) for c in inner.split(",") if c]


def _caught(r: dict[str, Any], mode: str) -> bool:
    """A shortcut is caught at the final run: a flag (an artifact/background flag; in a
    few-probe world, whose class cannot be flagged, the ``few_probes`` note for its class)."""
    m = r["modes"][mode]
    if r.get("family") == "few_probes":
        return _right_class(r, m)
    return bool(m["flagged_final"])


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts over valid, scored cases: shortcuts flagged at the final epoch, false alarms."""
    s: dict[str, Any] = {}
    for mode in MODES:
        scored = [r for r in results if r["valid"] and not (mode == "nomask" and r["masks_only"])]
        short = [r for r in scored if r["case"] == "shortcut"]
        clean = [r for r in scored if r["case"] == "clean"]
        s[mode] = {
            "flagged": sum(_caught(r, mode) for r in short),
            "shortcuts": len(short),
            "false_alarms": sum(r["modes"][mode]["any_alarm"] for r in clean),
            "clean": len(clean),
        }
    s["invalid"] = [f"{r['world']} {r['case']}" for r in results if not r["valid"]]
    return s


def summary_line(s: dict[str, Any]) -> str:
    m, n = s["masks"], s["nomask"]
    fa = m["false_alarms"] + n["false_alarms"]
    fc = m["clean"] + n["clean"]
    return (
        f"shortcuts flagged at final epoch: {m['flagged']}/{m['shortcuts']} (masks), "
        f"{n['flagged']}/{n['shortcuts']} (no masks); false alarms on clean controls: "
        f"{fa}/{fc} ({m['false_alarms']}/{m['clean']} masks, {n['false_alarms']}/{n['clean']} "
        "no masks)"
    )


# ---------------------------------------------------------------------------------- report
def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.2f}"
    if isinstance(v, list | tuple):
        return ",".join(map(str, v)) or "-"
    return str(v)


def _flagged_cell(m: dict[str, Any]) -> str:
    """``yes`` / ``no``, and the classes the final flags name that carry no artifact."""
    wrong = m.get("final_wrong_classes") or []
    extra = f" (also names {','.join(map(str, wrong))})" if wrong else ""
    return _fmt(m["flagged_final"]) + extra


def _alarm_cell(m: dict[str, Any]) -> str:
    """``no``, or ``yes (epochs ...)`` with the epochs at which artifact/background flags fired."""
    if not m["any_alarm"]:
        return "no"
    return f"yes (epochs {','.join(map(str, m['alarm_epochs']))})"


HEADER = (
    "| world | case | mode | valid | flagged final | final flags | first flag | first reliance "
    "| false alarm | acc present | acc removed | acc swapped |"
)


def case_rows(results: list[dict[str, Any]]) -> list[str]:
    rows = [HEADER, "|" + "---|" * 12]
    for r in results:
        t = r["final_truth"]
        for mode in MODES:
            m = r["modes"][mode]
            counted = not (mode == "nomask" and r["masks_only"])
            valid = ("yes" if r["valid"] else f"INVALID ({r['invalid_reason']})") + (
                "" if counted else " (not counted)"
            )
            clean = r["case"] == "clean"
            rows.append(
                "| "
                + " | ".join(
                    [
                        r["world"],
                        r["case"],
                        mode,
                        valid,
                        "-" if clean else _flagged_cell(m),
                        _fmt(m["final_detail"]),
                        _fmt(m["first_flag_epoch"]),
                        "-" if clean else _fmt(r["first_reliance_epoch"]),
                        _alarm_cell(m) if clean else "-",
                        _fmt(t.get("acc_present")),
                        _fmt(t.get("acc_removed")),
                        _fmt(t.get("acc_swapped")),
                    ]
                )
                + " |"
            )
    return rows


def report(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The markdown report: worlds, one table and one summary line per split, runtimes."""
    lines = ["# Shortcut-detection benchmark", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items()]
    lines += [
        "",
        "Epochs are 0-based (`Trainer.current_epoch`, as `Flag.epoch`). 'flagged final': an "
        "artifact/background flag at the callback's last run that names a class carrying the "
        "artifact (a group shortcut: a class of the group; '(also names ...)': other classes a "
        "final flag names); 'final flags': their kinds (and "
        "`Flag.classes` where given, as label indices). 'first reliance': first epoch with "
        f"acc_present - acc_swapped >= {RELIANCE_DROP}. 'false alarm': any artifact/background "
        "flag at a trained epoch of a clean control.",
        "",
    ]
    for split, title in (("calibration", "Calibration split"), ("heldout", "Held-out split")):
        part = [r for r in results if r["split"] == split]
        if not part:
            continue
        lines += [f"## {title}", "", *case_rows(part), "", summary_line(summarise(part)), ""]
    lines += ["## All worlds", "", summary_line(summarise(results)), ""]
    if any(r["family"] for r in results):
        lines += ["## Multi-label and few-probe worlds", "", *family_rows(results), ""]
    invalid = summarise(results)["invalid"]
    if invalid:
        lines += [f"INVALID (not scored): {', '.join(invalid)}", ""]
    lines += ["## Runtime per world", "", "| world | arch | px | epochs | shortcut s | clean s |"]
    lines += ["|---|---|---|---|---|---|"]
    by_world: dict[str, dict[str, Any]] = {}
    for r in results:
        by_world.setdefault(r["world"], {"r": r})[r["case"]] = r["total_s"]
    for name, d in by_world.items():
        r = d["r"]
        lines.append(
            f"| {name} | {r['arch']} | {r['image_size']} | {r['epochs']} | "
            f"{d.get('shortcut', float('nan')):.1f} | {d.get('clean', float('nan')):.1f} |"
        )
    lines.append("")
    return "\n".join(lines)


def loadavg() -> str:
    with contextlib.suppress(OSError):
        return Path("/proc/loadavg").read_text().strip()
    return "n/a"


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worlds", default=None, help="comma-separated names, e.g. W1,W3")
    p.add_argument("--split", default="all", choices=["calibration", "heldout", "all"])
    p.add_argument("--epochs", type=int, default=None, help="override every world's epochs")
    p.add_argument("--n-train", type=int, default=None, help="override the train size")
    p.add_argument("--n-val", type=int, default=None, help="override the val size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--json", default=None, help="write the raw results here")
    p.add_argument("--out-md", default=None, help="write the markdown report here")
    args = p.parse_args(argv)
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)  # no "GPU available" lines
    if args.threads:
        torch.set_num_threads(args.threads)
    specs = dw.select_worlds(args.worlds, args.split)
    load_start, start = loadavg(), time.perf_counter()
    results: list[dict[str, Any]] = []
    for spec in specs:
        world_results = run_world(spec, args.epochs, args.seed, args.n_train, args.n_val)
        results += world_results
        for r in world_results:
            t = r["final_truth"]
            print(
                f"[{r['world']} {r['case']}] {r['total_s']:.0f}s valid={r['valid']} "
                f"present={t.get('acc_present', 0):.2f} removed={t.get('acc_removed', 0):.2f} "
                f"swapped={t.get('acc_swapped', 0):.2f} "
                f"masks={r['modes']['masks']['final_kinds']} "
                f"nomask={r['modes']['nomask']['final_kinds']}",
                file=sys.stderr,
                flush=True,
            )
    meta = {
        "command": "benchmarks/bench_detection.py "
        + " ".join(sys.argv[1:] if argv is None else list(argv)),
        "worlds": ",".join(s.name for s in specs),
        "seed": args.seed,
        "torch threads": torch.get_num_threads(),
        "cores": os.cpu_count(),
        "runtime": f"{time.perf_counter() - start:.0f} s",
        "loadavg at start": load_start,
        "loadavg at end": loadavg(),
    }
    text = report(results, meta)
    print(text)
    if args.out_md:
        Path(args.out_md).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    return results


if __name__ == "__main__":
    main()
