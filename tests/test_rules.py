"""Rules as data, decided per explained class: hand-made maps and 'models' with a known answer."""

from __future__ import annotations

import io
import math
import re

import pytest
import torch

from gradcam_callback.alarms import Flag, ShortcutMonitor
from gradcam_callback.rules import ALARM_KINDS, RULES, FlagKind

H = W = 32
CORNER = torch.zeros(H, W, dtype=torch.bool)
CORNER[:6, :6] = True


def _bump(cy: float, cx: float, sigma: float = 2.5) -> torch.Tensor:
    ys = torch.arange(H).float()[:, None]
    xs = torch.arange(W).float()[None, :]
    return torch.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * sigma**2))


def _objects(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Object masks (6x6 squares at different places, away from the corner) and their centres."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randint(10, 26, (n, 2), generator=g)
    masks = torch.zeros(n, H, W, dtype=torch.bool)
    for i, (y, x) in enumerate(centres.tolist()):
        masks[i, y - 3 : y + 3, x - 3 : x + 3] = True
    return masks, centres


def _images(objects: torch.Tensor, marked: torch.Tensor, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(objects.shape[0], 3, H, W, generator=g) * 0.2
    images = torch.where(objects[:, None], torch.ones(()), images)
    images[marked, :, :6, :6] = 0.9  # the mark, in the marked images only
    return images


class Reader:
    """A 'model' over K classes: class logits from the object brightness, plus (for the shortcut
    class) the corner brightness. Counts its calls."""

    def __init__(self, k: int, shortcut_class: int | None, objects: bool = True) -> None:
        self.k, self.shortcut_class, self.objects, self.calls = k, shortcut_class, objects, 0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        x = images.clone()
        corner = x[:, :, :6, :6].mean((1, 2, 3))
        x[:, :, :6, :6] = 0
        obj = x.amax((1, 2, 3)) if self.objects else torch.zeros_like(corner)
        logits = torch.zeros(images.shape[0], self.k)
        logits += 0.5 * obj[:, None]
        if self.shortcut_class is not None:
            logits[:, self.shortcut_class] += 10 * (corner - 0.5)  # the mark is at 0.9
        return logits * 4


def _dark_texture(x: torch.Tensor) -> torch.Tensor:
    """``[N]``: the standard deviation of each image's dark pixels (< 0.25, the background of
    :func:`_images`): what a model reading the background *texture* sees (0 once the background
    is one flat colour)."""
    dark = (x < 0.25).float()
    cnt = dark.sum((1, 2, 3)).clamp_min(1)
    mean = (x * dark).sum((1, 2, 3)) / cnt
    var = (((x - mean[:, None, None, None]) * dark) ** 2).sum((1, 2, 3)) / cnt
    return var.sqrt()


def _analyze(mon: ShortcutMonitor, maps, images, targets, **kw):
    return mon.analyze(maps=maps, images=images, targets=targets, epoch=1, global_step=10, **kw)


def test_a_shortcut_in_one_class_of_ten_flags_with_its_class() -> None:
    """10 classes, 4 probes each; only class 7 carries the mark and is read through it."""
    k = 10
    targets, images, maps, artifacts, objects = _ten_classes({})
    reader = Reader(k, shortcut_class=7)
    for masks in (True, False):
        mon = ShortcutMonitor()
        extra = {"artifact_masks": artifacts, "object_masks": objects} if masks else {}
        a = _analyze(mon, maps, images, targets, score_fn=reader, **extra)
        art = [f for f in a.flags if f.kind == "artifact"]
        assert len(art) == 1, (masks, [f.message for f in a.flags])
        assert art[0].classes == (7,) and set(art[0].probes) == set(range(28, 32))
        assert "class 7" in art[0].message
        # set-level values stay as summaries; the class value is reported per class
        assert "attention/hotspot_consistency/class_7" in a.summary


def test_a_background_shortcut_in_one_class_is_not_averaged_away() -> None:
    """Class 0 looks at the background, class 1 at the object: the set mean of object
    enrichment (about 2.3) is above the threshold and the mean evidence lost on erasing the
    objects is about 0.5, so a set-level rule misses class 0; per class it does not."""
    per = 8
    targets = torch.arange(2).repeat_interleave(per)
    n = targets.numel()
    objects, centres = _objects(n, seed=3)
    images = _images(objects, torch.zeros(n, dtype=torch.bool))
    # class 0's objects are dim, class 1's bright
    images = torch.where(objects[:, None] & (targets == 0)[:, None, None, None], 0.3, images)
    on_object = torch.stack([_bump(float(y), float(x)) for y, x in centres])
    off_object = (~objects).float()
    maps = torch.where((targets == 0)[:, None, None], off_object, on_object)

    def model(x: torch.Tensor) -> torch.Tensor:
        # class 0's logit reads the background texture (the spread of the dark pixels), class
        # 1's the object (the brightest pixel); any subset of the probes, erased or not
        fg = x.amax((1, 2, 3))
        return torch.stack([140 * _dark_texture(x), 20 * fg], 1)

    mon = ShortcutMonitor(causal_budget=None)
    a = _analyze(mon, maps, images, targets, object_masks=objects, score_fn=model)
    assert a.summary["attention/object_enrichment"] > 2.0  # the set mean alone would miss it
    bg = [f for f in a.flags if f.kind == "background"]
    assert len(bg) == 1 and bg[0].classes == (0,), [f.message for f in a.flags]
    assert bg[0].metric == "attention/object_enrichment"
    assert a.summary["attention/object_enrichment/class_0"] < 0.1


# ------------------------------------------------------------ issue 19: few probes, multi-label
def _ten_classes(per: dict[int, int]) -> tuple[torch.Tensor, ...]:
    """Probes of 10 classes (``per``: class -> probes, 4 otherwise); class 7 carries the mark
    in the corner and its maps sit on it; every other map sits on its object."""
    targets = torch.cat([torch.full((per.get(c, 4),), c) for c in range(10)])
    n = targets.numel()
    objects, centres = _objects(n)
    marked = targets == 7
    images = _images(objects, marked)
    maps = torch.stack(
        [_bump(2.5, 2.5) if m else _bump(float(y), float(x)) for m, (y, x) in zip(marked, centres)]
    )
    artifacts = CORNER.expand(n, H, W) & marked[:, None, None]
    return targets, images, maps, artifacts, objects


def test_a_class_with_too_few_probes_is_said_in_a_few_probes_note() -> None:
    """Class 7 has 2 probes (the rules need 4): no artifact flag, but a note that names the
    class, its value, the threshold, its probe count and the fix; said once per streak."""
    targets, images, maps, artifacts, objects = _ten_classes({7: 2})
    mon = ShortcutMonitor()
    masks = {"artifact_masks": artifacts, "object_masks": objects}
    a = _analyze(mon, maps, images, targets, score_fn=Reader(10, 7), **masks)
    assert not [f for f in a.flags if f.kind in ALARM_KINDS], [f.message for f in a.flags]
    notes = [f for f in a.flags if f.kind == "few_probes"]
    assert len(notes) == 1, [f.message for f in a.flags]
    note = notes[0]
    assert note.classes == (7,) and note.kind is FlagKind.few_probes and not note.kind.alarming
    assert note.metric == "attention/artifact_enrichment" and note.threshold == 3.0
    assert note.value == pytest.approx(a.summary["attention/artifact_enrichment/class_7"])
    assert note.value > 3.0 and set(note.probes) == {28, 29}
    assert "class 7 (2 probes): attention on the label-artifact masks" in note.message
    assert "(artifact_masks, threshold 3" in note.message
    assert "at least 4 probes" in note.message and "probes_per_class" in note.message
    again = _analyze(mon, maps, images, targets, score_fn=Reader(10, 7), **masks)
    assert [f.persistent for f in again.flags if f.kind == "few_probes"] == [True]
    # with enough probes the class is judged: a flag, and no note
    targets, images, maps, artifacts, objects = _ten_classes({})
    masks = {"artifact_masks": artifacts, "object_masks": objects}
    a = _analyze(ShortcutMonitor(), maps, images, targets, score_fn=Reader(10, 7), **masks)
    assert [f.classes for f in a.flags if f.kind == "artifact"] == [(7,)]
    assert not [f for f in a.flags if f.kind == "few_probes"]
    # a class with enough probes, only two of which carry an artifact mask, is not short of probes
    artifacts[28:30] = False
    masks = {"artifact_masks": artifacts, "object_masks": objects}
    a = _analyze(ShortcutMonitor(), maps, images, targets, score_fn=Reader(10, 7), **masks)
    assert a.summary["attention/artifact_enrichment/class_7"] > 3.0
    assert not [f for f in a.flags if f.kind == "few_probes"], [f.message for f in a.flags]


def test_no_few_probes_note_for_a_class_the_model_has_not_learned() -> None:
    targets, images, maps, artifacts, objects = _ten_classes({7: 2})
    logits = torch.zeros(targets.numel(), 10)
    logits[:, 3] = 5.0  # predicts class 3 for everything: class 7 not learned
    a = _analyze(
        ShortcutMonitor(),
        maps,
        images,
        targets,
        logits=logits,
        artifact_masks=artifacts,
        object_masks=objects,
        score_fn=Reader(10, 7),
    )
    assert not [f for f in a.flags if f.kind == "few_probes"], [f.message for f in a.flags]


_ML_SETS = torch.tensor([[1, 0], [1, 1], [0, 1], [1, 0], [0, 1], [1, 1], [0, 1], [1, 0]]).bool()


def _multilabel_rows() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """8 images with label sets over 2 labels, explained once per positive label (as
    ``expand_positive_labels`` does): ``(images [M, 3, H, W], targets [M], sets [M, 2])``."""
    sets = _ML_SETS
    g = torch.Generator().manual_seed(5)
    pictures = torch.rand(len(sets), 3, H, W, generator=g)
    pos = torch.nonzero(sets)
    return pictures[pos[:, 0]], pos[:, 1], sets[pos[:, 0]]


def test_multilabel_learned_gate_is_a_per_label_youden_index_over_the_images() -> None:
    from gradcam_callback import evidence as E

    images, targets, sets = _multilabel_rows()
    n = targets.numel()
    maps = torch.rand(n, H, W, generator=torch.Generator().manual_seed(1))
    x = E.prepare(ShortcutMonitor(), maps, images, targets, None, None, None, None)
    present, weight = E.label_presence(x)
    assert torch.equal(present, sets)  # each row's image carries exactly its set's labels
    assert float(weight.sum()) == pytest.approx(8.0)  # eight images, each counted once
    # rows whose images differ (as after per-row augmentation) are grouped by the callback's
    # index of the probe each row explains, not by their pixels
    shaded = images + 0.01 * torch.arange(n, dtype=images.dtype)[:, None, None, None]
    probe = torch.nonzero(_ML_SETS)[:, 0]
    x = E.prepare(ShortcutMonitor(), maps, shaded, targets, None, None, None, None, probe)
    present, weight = E.label_presence(x)
    assert torch.equal(present, sets) and float(weight.sum()) == pytest.approx(8.0)
    # label 0 predicted on every image, label 1 exactly where present
    logits = torch.where(sets, 4.0, -4.0)
    logits[:, 0] = 4.0
    x = E.prepare(ShortcutMonitor(), maps, images, targets, logits, None, None, None)
    assert E.learned_classes(x, 0.5, multilabel=True).tolist() == [False, True]
    # every positive label predicted (recall 1): the recall alone would call label 0 learned
    recall_only = (logits.gather(1, targets[:, None])[:, 0] > 0).all()
    assert bool(recall_only)


def test_multilabel_rules_skip_a_label_predicted_everywhere() -> None:
    """Diffuse maps for every row; the 'model' says label 0 is present on every image (it has
    not learned it) and label 1 only where it is. Only label 1 may be judged."""
    images, targets, sets = _multilabel_rows()
    n = targets.numel()
    flat = (1.0 + 0.3 * _bump(2.0, 29.0, 3.0)).expand(n, H, W)  # diffuse, a faint corner focus

    def model(x: torch.Tensor) -> torch.Tensor:  # reads the (uniform noise) texture, no object
        t = x.flatten(1).std(1) / 0.29
        return (8 * t - 4)[:, None].expand(-1, 2)

    logits = torch.where(sets, 4.0, -4.0)
    logits[:, 0] = 4.0
    mon = ShortcutMonitor(min_probes=2)
    a = _analyze(mon, flat, images, targets, logits=logits, score_fn=model, multilabel=True)
    bg = [f for f in a.flags if f.kind == "background"]
    assert [f.classes for f in bg] == [(1,)], [f.message for f in a.flags]
    assert a.summary["probe/learned_classes"] == 1.0
    # confirmed by the background's own effect: flattening everything around the focus
    assert a.summary["causal/surround_evidence/class_1"] >= 0.5
    assert "by its mean colour removes 100%" in bg[0].message


def test_coarse_maps_skip_the_spatial_rules_and_say_why() -> None:
    """2x2 maps upsampled are near-uniform whatever the model reads: no spatial rule fires."""
    n = 8
    targets = torch.zeros(n, dtype=torch.long)
    objects, _ = _objects(n)
    images = _images(objects, torch.ones(n, dtype=torch.bool))
    coarse = torch.rand(n, 2, 2, generator=torch.Generator().manual_seed(0)) + 1.0
    mon = ShortcutMonitor()
    a = _analyze(mon, coarse, images, targets, score_fn=Reader(2, None, objects=False))
    assert not [f for f in a.flags if f.kind in ALARM_KINDS]
    assert a.skipped["background_diffuse"] == "map too coarse to localise"
    assert a.skipped["artifact_hotspot"] == "map too coarse to localise"
    # the same maps, declared fine enough, do trip the diffuse rule
    b = _analyze(ShortcutMonitor(), coarse, images, targets, map_size=(8, 8))
    assert [f.kind for f in b.flags] == ["background"]


def test_with_masks_the_mask_free_evidence_still_counts_once() -> None:
    """A background reader whose maps lean slightly to the object (enrichment > 2): the mask
    rule stays quiet, the diffuse rule fires, and there is one background flag, not two."""
    n = 8
    targets = torch.ones(n, dtype=torch.long)
    objects, _ = _objects(n)
    images = _images(objects, torch.zeros(n, dtype=torch.bool))
    share = objects.float().mean((1, 2))
    maps = 1.0 + objects.float() * (2.0 / (1 - 2 * share))[:, None, None]  # enrichment ~2.9
    maps = maps + 0.3 * torch.rand(n, H, W, generator=torch.Generator().manual_seed(5))

    def background_reader(x: torch.Tensor) -> torch.Tensor:
        bg = _dark_texture(x)
        return torch.stack([torch.zeros_like(bg), 140 * bg], 1)

    mon = ShortcutMonitor(causal_budget=None)
    a = _analyze(mon, maps, images, targets, object_masks=objects, score_fn=background_reader)
    assert a.summary["attention/object_enrichment"] > 2.0
    (flag,) = [f for f in a.flags if f.kind == "background"]
    assert flag.metric == "attention/entropy" and flag.classes == (1,)


def test_causal_checks_run_only_where_a_rule_is_near_its_threshold_in_one_forward() -> None:
    k, per = 2, 6
    targets = torch.arange(k).repeat_interleave(per)
    n = targets.numel()
    objects, centres = _objects(n)
    on_object = torch.stack([_bump(float(y), float(x)) for y, x in centres])
    clean_images = _images(objects, torch.zeros(n, dtype=torch.bool))
    reader = Reader(k, None)
    a = _analyze(
        ShortcutMonitor(causal_budget=None), on_object, clean_images, targets, score_fn=reader
    )
    assert reader.calls == 0 and a.tested == {}  # nothing near a threshold: no forward at all
    assert math.isnan(a.summary["causal/hotspot_evidence"])  # honest: not measured
    assert not [f for f in a.flags if f.kind in ALARM_KINDS]

    marked = targets == 1  # the mark comes with class 1 and is read for it
    images = _images(objects, marked)
    corner = torch.stack([_bump(2.5, 2.5)] * n)
    shortcut = Reader(k, shortcut_class=1)
    b = _analyze(
        ShortcutMonitor(causal_budget=None),
        corner,
        images,
        targets,
        object_masks=objects,
        artifact_masks=CORNER.expand(n, H, W) & marked[:, None, None],
        score_fn=shortcut,
        logits=shortcut(images),
    )
    assert shortcut.calls == 2  # the logits above, then one forward for every erased region
    assert set(b.tested) >= {"artifact", "hotspot", "object"}
    assert {f.kind for f in b.flags} >= {"artifact", "background"}


def test_decisions_do_not_depend_on_the_analysis_grid() -> None:
    """The maps carry no detail finer than their stride: a 16-cell grid decides as a 32-cell one."""
    n = 8
    targets = torch.ones(n, dtype=torch.long)
    objects, centres = _objects(n)
    images = _images(objects, torch.ones(n, dtype=torch.bool))
    cases = {
        "corner": torch.stack([_bump(2.5, 2.5)] * n),
        "object": torch.stack([_bump(float(y), float(x)) for y, x in centres]),
        "frame": (~torch.zeros(H, W, dtype=torch.bool)).float().expand(n, H, W).clone(),
    }
    for name, maps in cases.items():
        kinds = []
        for size in (32, 16):
            mon = ShortcutMonitor(analysis_size=size)
            a = _analyze(
                mon,
                maps,
                images,
                targets,
                object_masks=objects,
                artifact_masks=CORNER.expand(n, H, W),
                score_fn=Reader(2, shortcut_class=1),
            )
            kinds.append(sorted((str(f.kind), f.classes) for f in a.flags))
        assert kinds[0] == kinds[1], name


def test_rule_table_is_data_and_a_threshold_of_none_turns_a_rule_off() -> None:
    names = [r.name for r in RULES]
    assert len(names) == len(set(names))
    assert {r.kind for r in RULES} == {FlagKind.artifact, FlagKind.background, FlagKind.drift}
    mon = ShortcutMonitor()
    for rule in RULES:  # every threshold a rule reads is a monitor setting
        assert all(c.threshold in mon.settings for c in rule.conditions), rule.name
    n = 8
    targets = torch.ones(n, dtype=torch.long)
    objects, _ = _objects(n)
    images = _images(objects, torch.ones(n, dtype=torch.bool))
    corner = torch.stack([_bump(2.5, 2.5)] * n)
    off = ShortcutMonitor(hotspot_consistency=None, diffuse_entropy=None)
    a = _analyze(off, corner, images, targets)
    assert a.skipped["artifact_hotspot"] == "switched off"
    assert not [f for f in a.flags if f.kind == "artifact"]


def test_flag_messages_never_print_nan_or_negative_percentages() -> None:
    n = 8
    targets = torch.ones(n, dtype=torch.long)
    objects, _ = _objects(n)
    images = _images(objects, torch.ones(n, dtype=torch.bool))
    corner = torch.stack([_bump(2.5, 2.5)] * n)

    def gains(x: torch.Tensor) -> torch.Tensor:  # erasing anything *raises* the target's logit
        return torch.stack([torch.zeros(x.shape[0]), 5 - 20 * x.mean((1, 2, 3))], 1)

    # background_drop=-1: a background finding stands whatever the background's erasure does
    for score_fn, bg_drop in ((gains, None), (gains, -1.0), (None, None)):
        mon = ShortcutMonitor(causal_budget=None, object_enrichment=5.0, background_drop=bg_drop)
        a = _analyze(mon, corner, images, targets, object_masks=objects, score_fn=score_fn)
        assert a.flags
        for f in a.flags:
            assert "nan" not in f.message.lower() and not re.search(r"-\d+%", f.message)


def test_flag_kind_is_a_string_enum_and_flags_round_trip_weights_only() -> None:
    f = Flag("artifact", 1, 10, None, 12.0, 3.0, "m", probes=(3, 1), classes=(7,))
    assert f.kind is FlagKind.artifact and f.kind == "artifact" and f"{f.kind}" == "artifact"
    assert {f.kind} == {"artifact"} and FlagKind.artifact.alarming and not FlagKind.drift.alarming
    with pytest.raises(ValueError, match="unknown flag kind 'artefact'"):
        Flag("artefact", 1, 10, None, 1.0, 1.0, "m")
    buf = io.BytesIO()
    torch.save([f.to_dict()], buf)
    buf.seek(0)
    (back,) = torch.load(buf, weights_only=True)
    assert Flag(**back) == f


# ----------------------------------------------------------------------------- causal plan
def _decision(rule_name: str, attention: list[bool], near: list[bool] | None = None):
    from gradcam_callback.rules import RuleDecision

    rule = next(r for r in RULES if r.name == rule_name)
    att = torch.tensor(attention)
    return RuleDecision(
        rule,
        True,
        usable=torch.ones_like(att),
        attention=att,
        near=att if near is None else torch.tensor(near),
    )


def test_the_causal_plan_tests_one_rule_per_kind_and_class_first_and_shares_the_budget() -> None:
    from gradcam_callback.causal import CausalMemory, Finding, regions_to_erase

    decisions = [
        _decision("artifact_masks", [True, True, False]),
        _decision("artifact_hotspot", [True, False, False]),
        _decision("background_masks", [True, False, False], near=[True, False, True]),
    ]
    mem = CausalMemory()
    sizes = [8, 8, 8]
    full = mem.plan(decisions, [3, 5, 7], sizes, None)
    assert full == {
        "artifact_masks": {0: 8, 1: 8},
        "artifact_hotspot": {0: 8},
        "background_masks": {0: 8, 2: 8},  # class 7 is only near: tested when the budget allows
    }
    # 12 probes, 4 pairs that can fire: a share of max(min_probes, 12 // 4) = 4 each, in order:
    # one rule per (kind, class) first; hot spot for class 3 only once artifact is covered
    plan = mem.plan(decisions, [3, 5, 7], sizes, budget=12, min_probes=4)
    assert plan == {"artifact_masks": {0: 4, 1: 4}, "background_masks": {0: 4}}
    assert mem.plan(decisions, [3, 5, 7], sizes, budget=2, min_probes=4) == {
        "artifact_masks": {0: 4}  # the first pair always gets its share
    }
    # a confirmed finding covers its (kind, class): the other rule of the kind goes first
    mem.findings[("artifact_masks", 3)] = Finding(True, 0, 1, {})
    plan = mem.plan(decisions, [3, 5, 7], sizes, budget=8, min_probes=4)
    assert plan == {"artifact_masks": {1: 4}, "background_masks": {0: 4}}
    # partial tests take the class's probes in turn
    groups = torch.tensor([0] * 8 + [1] * 8)
    a = regions_to_erase({"artifact_masks": {0: 4}}, decisions, groups, turn=0)["artifact"]
    b = regions_to_erase({"artifact_masks": {0: 4}}, decisions, groups, turn=1)["artifact"]
    assert a.sum() == b.sum() == 4 and not (a & b).any() and not (a | b)[8:].any()


def _partial_world(share: float) -> tuple[torch.Tensor, ...]:
    """Two classes of 8; class 1 carries the corner mark and its maps put ``share`` of their
    mass on it (the rest on the moving object)."""
    k, per = 2, 8
    targets = torch.arange(k).repeat_interleave(per)
    n = targets.numel()
    objects, centres = _objects(n, seed=4)
    marked = targets == 1
    images = _images(objects, marked)

    def norm(m: torch.Tensor) -> torch.Tensor:
        return m / m.sum()

    maps = torch.stack(
        [
            share * float(m) * norm(_bump(2.5, 2.5)) + (1 - share * float(m)) * norm(_bump(y, x))
            for m, (y, x) in zip(marked.tolist(), centres.float().tolist())
        ]
    )
    return maps, images, targets, CORNER.expand(n, H, W) & marked[:, None, None]


def test_partial_reliance_is_confirmed_by_a_strong_measured_dependence_only() -> None:
    maps, images, targets, arts = _partial_world(0.1)
    mon = ShortcutMonitor(causal_budget=None)
    a = _analyze(mon, maps, images, targets, artifact_masks=arts, score_fn=Reader(2, 1))
    enr = a.summary["attention/artifact_enrichment/class_1"]
    assert mon.partial_enrichment <= enr < mon.artifact_enrichment  # elevated, under threshold
    (flag,) = [f for f in a.flags if f.kind == "artifact"]
    assert flag.classes == (1,) and "partial reliance" in flag.message
    assert flag.threshold == mon.partial_enrichment and a.tested["artifact"] == 8
    # the same attention, a model that does not read the mark: tested, not confirmed
    b = _analyze(
        ShortcutMonitor(causal_budget=None),
        maps,
        images,
        targets,
        artifact_masks=arts,
        score_fn=Reader(2, None),
    )
    assert b.tested.get("artifact") == 8 and not [f for f in b.flags if f.kind == "artifact"]
    # below the partial threshold nothing is tested; switched off, nothing fires
    maps_low, *_ = _partial_world(0.03)
    reader = Reader(2, 1)
    c = _analyze(ShortcutMonitor(), maps_low, images, targets, artifact_masks=arts, score_fn=reader)
    assert "artifact" not in c.tested and not c.flags
    off = ShortcutMonitor(partial_enrichment=None, causal_budget=None)
    d = _analyze(off, maps, images, targets, artifact_masks=arts, score_fn=Reader(2, 1))
    assert not d.flags and d.skipped["artifact_masks_partial"] == "switched off"
    # a dependence short of partial_dependence does not confirm a partial rule
    strict = ShortcutMonitor(causal_budget=None, partial_dependence=1.01)
    e = _analyze(strict, maps, images, targets, artifact_masks=arts, score_fn=Reader(2, 1))
    assert not [f for f in e.flags if f.kind == "artifact"]


def test_without_masks_a_class_tied_mark_in_the_images_stands_in_for_them() -> None:
    """No artifact masks: class 1's fixed corner mark is found in the probe images, and the
    elevated attention on it is judged as on artifact masks (partial reliance, confirmed by a
    strong measured dependence)."""
    maps, images, targets, _ = _partial_world(0.1)
    a = _analyze(ShortcutMonitor(causal_budget=None), maps, images, targets, score_fn=Reader(2, 1))
    assert a.summary["attention/mark_area/class_1"] == pytest.approx(float(CORNER.float().mean()))
    assert a.summary["attention/mark_area/class_0"] == 0.0  # nothing shared by class 0 alone
    assert math.isnan(a.summary["attention/mark_enrichment/class_0"])
    assert a.summary["attention/mark_offset/class_1"] > 0.7  # in the corner
    assert 1.5 <= a.summary["attention/mark_enrichment/class_1"] < 3.0
    assert a.tested["mark"] == 8
    (flag,) = [f for f in a.flags if f.kind == "artifact"]
    assert flag.classes == (1,) and "fixed-place mark" in flag.message
    assert "artifact_mark_partial" in flag.message or flag.metric == "attention/mark_enrichment"
    # the same maps, a model that does not read the mark: tested, not confirmed
    b = _analyze(
        ShortcutMonitor(causal_budget=None), maps, images, targets, score_fn=Reader(2, None)
    )
    assert b.tested["mark"] == 8 and not [f for f in b.flags if f.kind == "artifact"]
    # the mark on half the images of every class (independent of the label): no mark at all
    objects, _ = _objects(targets.numel(), seed=4)
    clean = _images(objects, torch.arange(targets.numel()) % 2 == 0)
    c = _analyze(ShortcutMonitor(causal_budget=None), maps, clean, targets, score_fn=Reader(2, 1))
    assert c.summary["attention/mark_area"] == 0.0 and "mark" not in c.tested
    # artifact masks given: their rules decide; switched off: said
    arts = CORNER.expand(targets.numel(), H, W) & (targets == 1)[:, None, None]
    d = _analyze(ShortcutMonitor(), maps, images, targets, artifact_masks=arts)
    assert d.skipped["artifact_mark_partial"].startswith("artifact masks given")
    e = _analyze(ShortcutMonitor(mark_contrast=None), maps, images, targets)
    assert e.skipped["artifact_mark"] == "no class marks"
    assert "attention/mark_enrichment" not in e.summary


def test_a_class_tied_mark_is_tested_whatever_the_attention_on_it() -> None:
    """A mark found in the data is tied to its class there: the partial mark rule tests it even
    where the maps put no attention on it (a group's mark tells the group while the maps show
    the object), and a strong measured dependence confirms. Artifact masks, which do not say
    that an artifact follows the label, keep their attention bound; ``partial_enrichment=None``
    switches both partial rules off."""
    maps, images, targets, arts = _partial_world(0.0)  # the maps stay on the objects
    a = _analyze(ShortcutMonitor(causal_budget=None), maps, images, targets, score_fn=Reader(2, 1))
    assert a.summary["attention/mark_enrichment/class_1"] < ShortcutMonitor().partial_enrichment
    assert a.tested["mark"] == 8
    (flag,) = [f for f in a.flags if f.kind == "artifact"]
    assert flag.classes == (1,) and "whatever the maps show" in flag.message
    assert flag.threshold == ShortcutMonitor().artifact_enrichment  # under it: "<"
    # a model that does not read the mark: tested, not confirmed
    b = _analyze(
        ShortcutMonitor(causal_budget=None), maps, images, targets, score_fn=Reader(2, None)
    )
    assert b.tested["mark"] == 8 and not [f for f in b.flags if f.kind == "artifact"]
    # the same maps with artifact masks: under the partial bound, nothing tested on them
    c = _analyze(
        ShortcutMonitor(causal_budget=None),
        maps,
        images,
        targets,
        artifact_masks=arts,
        score_fn=Reader(2, 1),
    )
    assert "artifact" not in c.tested and not [f for f in c.flags if f.kind == "artifact"]
    off = ShortcutMonitor(partial_enrichment=None, causal_budget=None)
    d = _analyze(off, maps, images, targets, score_fn=Reader(2, 1))
    assert d.skipped["artifact_mark_partial"] == "switched off" and "mark" not in d.tested
    # without a causal test the mark alone is no evidence: the rule is skipped, never fired
    for mon, fn in ((ShortcutMonitor(confirm=False), Reader(2, 1)), (ShortcutMonitor(), None)):
        e = _analyze(mon, maps, images, targets, score_fn=fn)
        assert e.skipped["artifact_mark_partial"].startswith("needs a causal test")
        assert not [f for f in e.flags if f.kind == "artifact"]


def test_every_metric_a_flag_cites_is_one_the_monitor_logs() -> None:
    """A flag's advice and summary name metrics to open: each must be a logged name."""
    maps, images, targets, arts = _partial_world(0.1)
    objects, _ = _objects(targets.numel(), seed=4)
    logged: set[str] = set()
    for extra in ({}, {"artifact_masks": arts, "object_masks": objects}):
        mon = ShortcutMonitor()
        for _ in range(2):  # the second run has a previous one (drift)
            a = _analyze(mon, maps, images, targets, score_fn=Reader(2, 1), **extra)
            logged |= {re.sub(r"/class_\d+$", "", k) for k in a.summary}
    cited = {
        name
        for rule in RULES
        for name in re.findall(
            r"\b(?:attention|causal|drift)/[a-z_]+[a-z]", rule.advice + rule.summary
        )
    }
    assert cited and cited <= logged, sorted(cited - logged)


def test_partial_hotspot_rule_is_the_band_under_the_hotspot_threshold() -> None:
    from gradcam_callback.rules import evaluate

    rule = next(r for r in RULES if r.name == "artifact_hotspot_partial")
    assert rule.dependence_setting == "partial_dependence" and rule.region == "hotspot"
    mon = ShortcutMonitor()
    cons = torch.tensor([1.2, 1.6, 1.9, 2.5, 1.8])
    stats = {
        "attention/hotspot_consistency": cons,
        "attention/hotspot_offset": torch.tensor([0.6, 0.6, 0.6, 0.6, 0.1]),
        "attention/hotspot_stability": torch.tensor([0.9, 0.9, 0.9, 0.9, 0.9]),
    }
    counts = {"attention/hotspot_consistency": torch.full((5,), 8.0)}
    (d,) = evaluate(
        [rule],
        stats,
        counts,
        mon.settings,
        available=frozenset(),
        can_localise=True,
        after_trained_run=True,
        min_probes=4,
        margin=1.0,
    )
    # in the band [1.5, 2.0), off-centre: classes 1 and 2; 2.5 belongs to the full rule
    assert d.attention.tolist() == [False, True, True, False, False]
    assert "partial_dependence" in mon.settings and "partial_consistency" in mon.settings


def test_an_inconclusive_test_keeps_a_carried_finding() -> None:
    """A confirmed finding stays confirmed through a later test that measured fewer than
    ``min_probes`` probes, and a conclusive test replaces it."""
    from gradcam_callback.causal import CausalMemory
    from gradcam_callback.rules import RuleDecision

    mon = ShortcutMonitor()
    rule = next(r for r in RULES if r.name == "artifact_masks")
    yes = torch.tensor([True])
    d = RuleDecision(rule, True, usable=yes, attention=yes, near=yes)
    memory = CausalMemory()

    def settle(measured: float, depends: float, epoch: int) -> bool:
        stats = {"causal/artifact_depends": torch.tensor([depends])}
        counts = {"causal/artifact_evidence": torch.tensor([measured])}
        out = memory.settle(mon, [7], [d], stats, counts, {rule.name: {0: 8}}, epoch)
        return bool(out[rule.name][0])

    assert settle(8.0, 1.0, 1)  # conclusive, confirmed
    assert settle(2.0, 0.0, 2)  # inconclusive: the epoch-1 finding is carried
    assert memory.findings[(rule.name, 7)].epoch == 1 and memory.conclusive[rule.name] == {}
    assert not settle(8.0, 0.0, 3)  # conclusive, refuted
    assert not settle(2.0, 1.0, 4)  # inconclusive: nothing to carry
    assert not memory.held[rule.name].any()  # attention held throughout: nothing held


def test_a_held_finding_is_kept_by_measurement_and_dropped_by_a_low_one() -> None:
    """Held while measured, at the memory level: once the rule's attention lets go of a class
    whose finding was confirmed, the pair is planned as a ``@held`` re-test of the rule's held
    region; a conclusive re-test at the rule's dependence keeps it, an inconclusive one carries
    it, a conclusive low one drops it; an unusable class (e.g. unlearned) is not held."""
    from gradcam_callback.causal import HELD, CausalMemory, regions_to_erase
    from gradcam_callback.rules import RuleDecision

    mon = ShortcutMonitor()
    rule = next(r for r in RULES if r.name == "artifact_masks_partial")
    assert rule.held_region == "artifact" and rule.dependence_setting == "partial_dependence"
    # the background rules hold by their own test (their own region, the context with it)
    assert all(r.held_region == r.region for r in RULES if r.kind == "background")
    yes, no = torch.tensor([True]), torch.tensor([False])
    memory = CausalMemory()

    def run(
        attention: torch.Tensor, usable: torch.Tensor, measured: float, depends: float, key: str
    ):
        d = RuleDecision(rule, True, usable=usable, attention=attention, near=attention)
        plan = memory.plan([d], [7], [8], budget=4, min_probes=4)
        stats = {"causal/artifact_depends": torch.tensor([depends])}
        counts = {"causal/artifact_evidence": torch.tensor([measured])}
        out = memory.settle(mon, [7], [d], stats, counts, {key: {0: 8}}, 1)
        return plan, bool(out[rule.name][0]), bool(memory.held[rule.name][0])

    plan, confirmed, held = run(yes, yes, 8.0, 1.0, rule.name)
    assert plan == {rule.name: {0: 4}} and confirmed and not held
    # the attention lets go: re-tested on the masks, held at 0.9 (the partial rule's threshold)
    plan, confirmed, held = run(no, yes, 8.0, 0.9, rule.name + HELD)
    assert plan == {rule.name + HELD: {0: 4}} and held
    wanted = regions_to_erase(plan, [RuleDecision(rule, True)], torch.zeros(8, dtype=torch.long))
    assert list(wanted) == ["artifact"] and int(wanted["artifact"].sum()) == 4
    assert run(no, yes, 2.0, 0.0, rule.name + HELD)[2]  # inconclusive: carried
    assert not run(no, yes, 8.0, 0.8, rule.name + HELD)[2]  # conclusive, under 0.9: dropped
    assert not memory.findings
    # a confirmed finding of a class that is no longer usable is neither planned nor held
    run(yes, yes, 8.0, 1.0, rule.name)
    plan, _, held = run(no, no, 8.0, 1.0, rule.name + HELD)
    assert plan == {} and not held and not memory.findings


@pytest.mark.parametrize(
    ("name", "region", "kept"),
    [("artifact_mark_partial", "mark", True), ("background_diffuse", "focus", False)],
)
def test_a_held_finding_outlives_maps_that_stop_carrying_its_measure(
    name: str, region: str, kept: bool
) -> None:
    """A class the model still predicts can get all-zero Grad-CAM maps (its measure then has
    too few probes): a finding held on a region that does not come from the maps (the class's
    mark) is still re-tested and held; one held on the maps' focus region is dropped."""
    from gradcam_callback.causal import HELD, CausalMemory
    from gradcam_callback.rules import RuleDecision

    mon = ShortcutMonitor()
    rule = next(r for r in RULES if r.name == name)
    assert rule.held_region == region
    memory = CausalMemory()
    yes, no = torch.tensor([True]), torch.tensor([False])
    stats = {  # a confirming measurement for either rule
        f"causal/{region}_depends": torch.tensor([1.0]),
        f"causal/{region}_evidence": torch.tensor([1.0 if region == "mark" else 0.1]),
        "causal/surround_evidence": torch.tensor([0.9]),
        "causal/patches_depends": torch.tensor([0.0]),  # spread over the image
    }
    counts = {f"causal/{region}_evidence": torch.tensor([8.0])}
    counts["causal/surround_evidence"] = torch.tensor([8.0])
    counts["causal/patches_evidence"] = torch.tensor([8.0])

    def run(attention: torch.Tensor, usable: torch.Tensor, judged: torch.Tensor, key: str):
        d = RuleDecision(
            rule, True, usable=usable, attention=attention, near=attention, judged=judged
        )
        plan = memory.plan([d], [3], [8], budget=8, min_probes=4)
        memory.settle(mon, [3], [d], stats, counts, {key: {0: 8}}, 1)
        return plan, bool(memory.held[name][0])

    run(yes, yes, yes, name)  # confirmed
    assert memory.findings[(name, 3)].confirmed
    # the maps go all-zero: the measure is unusable, the class still judged
    plan, held = run(no, no, yes, name + HELD)
    assert held is kept and (plan == {name + HELD: {0: 8}}) is kept, plan
    assert bool(memory.findings) is kept
    if kept:  # no longer learned (not judged): dropped
        plan, held = run(no, no, no, name + HELD)
        assert plan == {} and not held and not memory.findings


def test_with_object_masks_a_diffuse_map_flags_only_if_the_objects_are_not_needed() -> None:
    """A coarse, diffuse map of a model that reads its (small) objects: the map's hottest cells
    are elsewhere, so erasing them leaves the evidence; but erasing everything around them (the
    background's own effect) leaves it too, so the mask-free diffuse rule does not fire (before
    0.3.2 it did). Given object masks, the diffuse rule is confirmed by erasing the objects
    instead (``background_diffuse_objects``), which the model needs: no flag. A model that
    reads the background texture under the same maps is flagged."""
    n = 8
    targets = torch.ones(n, dtype=torch.long)
    objects, _ = _objects(n)
    images = _images(objects, torch.zeros(n, dtype=torch.bool))
    g = torch.Generator().manual_seed(7)
    maps = 1.0 + 0.05 * torch.rand(n, H, W, generator=g) + 0.3 * _bump(2.0, 29.0, 3.0)

    def object_reader(x: torch.Tensor) -> torch.Tensor:
        fg = x.amax((1, 2, 3))  # the object is the brightest thing in the image
        return torch.stack([torch.zeros_like(fg), 20 * fg - 10], 1)

    def background_reader(x: torch.Tensor) -> torch.Tensor:
        bg = _dark_texture(x)
        return torch.stack([torch.zeros_like(bg), 140 * bg], 1)

    bare = _analyze(
        ShortcutMonitor(causal_budget=None), maps, images, targets, score_fn=object_reader
    )
    assert bare.summary["attention/entropy"] >= 0.95
    assert not [f for f in bare.flags if f.kind in ALARM_KINDS], bare.flags
    assert bare.summary["causal/focus_evidence"] < 0.5  # the old test alone would confirm
    assert bare.summary["causal/surround_evidence"] < 0.5  # the background's own does not
    assert bare.skipped.get("background_diffuse_objects") == "no object masks"
    masked = _analyze(
        ShortcutMonitor(causal_budget=None),
        maps, images, targets, object_masks=objects, score_fn=object_reader,
    )  # fmt: skip
    assert not [f for f in masked.flags if f.kind in ALARM_KINDS], masked.flags
    assert masked.skipped["background_diffuse"].startswith("object masks given")
    assert masked.summary["causal/object_evidence"] > 0.5  # the objects carry the evidence
    texture = _analyze(
        ShortcutMonitor(causal_budget=None),
        maps, images, targets, object_masks=objects, score_fn=background_reader,
    )  # fmt: skip
    bg = [f for f in texture.flags if f.kind == "background"]
    assert len(bg) == 1 and bg[0].classes == (1,), texture.flags
    assert "also: background_diffuse_objects" in bg[0].message  # the object rule leads


# ------------------------------------------------------- background: the background's own effect
def test_flat_fill_replaces_only_the_region_by_one_colour() -> None:
    from gradcam_callback.metrics import flat_fill

    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 8, 8, generator=g)
    region = torch.zeros(2, 8, 8, dtype=torch.bool)
    region[0, :4] = True  # image 1: an empty region
    own = flat_fill(images, region)
    assert torch.equal(own[1], images[1]) and torch.equal(own[0, :, 4:], images[0, :, 4:])
    mean = images[0, :, :4].mean((1, 2))
    assert torch.allclose(own[0, :, :4], mean[:, None, None].expand(3, 4, 8))
    grey = flat_fill(images, region, torch.tensor([0.5, 0.5, 0.5]))
    assert torch.all(grey[0, :, :4] == 0.5) and torch.equal(grey[1], images[1])


def test_a_background_finding_needs_the_background_to_matter() -> None:
    """Maps off the objects (object enrichment ~0) and erasing the objects leaves the evidence:
    the 0.3.1 test alone confirms a background finding even for a model that relies on nothing
    crisp (constant logits: an early or clean model). The background's own erasure leaves the
    evidence too, so there is no flag; a model that reads the background texture loses its
    evidence when the background is flattened and is flagged. ``background_drop=None`` switches
    the second test off (the 0.3.1 behaviour)."""
    n = 8
    targets = torch.ones(n, dtype=torch.long)
    objects, _ = _objects(n, seed=4)
    images = _images(objects, torch.zeros(n, dtype=torch.bool))
    maps = (~objects).float()

    def nothing_crisp(x: torch.Tensor) -> torch.Tensor:
        return torch.tensor([0.0, 3.0]).expand(x.shape[0], 2)

    def texture_reader(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.zeros(x.shape[0]), 140 * _dark_texture(x)], 1)

    def run(score_fn, **kw):
        mon = ShortcutMonitor(causal_budget=None, **kw)
        a = _analyze(mon, maps, images, targets, object_masks=objects, score_fn=score_fn)
        return a, [f for f in a.flags if f.kind == "background"]

    quiet, bg = run(nothing_crisp)
    assert not bg, [f.message for f in bg]
    assert quiet.summary["causal/object_evidence"] < 0.5  # the absence-of-evidence test passes
    assert quiet.summary["causal/backdrop_evidence"] < 0.5  # the background's own does not
    assert quiet.tested["object"] == quiet.tested["backdrop"] == n  # the same probes
    _, old = run(nothing_crisp, background_drop=None)
    assert [f.classes for f in old] == [(1,)]
    reads, bg = run(texture_reader)
    assert [f.classes for f in bg] == [(1,)], reads.flags
    assert reads.summary["causal/backdrop_evidence"] >= 0.5
    assert "replacing everything around the objects by its mean colour removes" in bg[0].message


def test_without_masks_a_background_finding_needs_evidence_spread_over_the_image() -> None:
    """Diffuse maps whose focus misses a faint object, no object masks: erasing the focus leaves
    the evidence and replacing everything around it takes it (the fill takes the object too),
    so the 0.3.6 test read the object as background. The object sits in one place: erasing the
    patch of a 4 x 4 grid that holds it takes the evidence, so there is no flag. A model that
    reads the background texture loses little of it to any one patch and is flagged, the
    message saying that the evidence is spread."""
    n = 8
    targets = torch.ones(n, dtype=torch.long)
    g = torch.Generator().manual_seed(3)
    images = torch.rand(n, 3, H, W, generator=g) * 0.2
    rows = torch.randint(1, 4, (n,), generator=g)
    for i, r in enumerate(rows.tolist()):  # a faint square inside a patch on the right
        images[i, :, 8 * r + 1 : 8 * r + 7, 25:31] = 0.45
    maps = 1.0 + 0.05 * torch.rand(n, H, W, generator=g) + 0.3 * _bump(3.0, 3.0, 6.0)

    def faint_object_reader(x: torch.Tensor) -> torch.Tensor:
        fg = x.amax((1, 2, 3))  # the faint object is still the brightest thing in the image
        return torch.stack([torch.zeros_like(fg), 20 * fg - 6], 1)

    def texture_reader(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.zeros(x.shape[0]), 140 * _dark_texture(x)], 1)

    def run(score_fn):
        a = _analyze(ShortcutMonitor(causal_budget=None), maps, images, targets, score_fn=score_fn)
        return a, [f for f in a.flags if f.kind == "background"]

    obj, bg = run(faint_object_reader)
    assert obj.summary["attention/entropy"] >= 0.95
    assert obj.summary["causal/focus_evidence"] < 0.5  # the focus test alone confirms
    assert obj.summary["causal/surround_evidence"] >= 0.5  # and so does the background's own
    assert obj.summary["causal/patches_depends"] == 1.0  # but the evidence is in one place
    assert obj.tested["patches"] == obj.tested["surround"] == n  # the same probes
    assert not bg, [f.message for f in bg]
    tex, bg = run(texture_reader)
    assert [f.classes for f in bg] == [(1,)], tex.flags
    assert tex.summary["causal/patches_depends"] == 0.0
    assert "spread over the image: only 0% of the probes lose 50% of it to one patch" in (
        bg[0].message
    )


def test_the_patches_and_the_one_that_takes_the_most_evidence() -> None:
    from gradcam_callback.evidence import patch_dependence, patches
    from gradcam_callback.metrics import Erasure

    tiles = patches((10, 7), torch.device("cpu"), grid=2)
    assert tiles.shape == (4, 10, 7) and (tiles.sum(0) == 1).all()  # every pixel in one patch
    assert tiles[0, :5, :4].all() and tiles[3, 5:, 4:].all()  # 7 = 4 + 3 columns
    ev = torch.tensor([[0.1, 0.9, 0.2, 0.0], [0.3, 0.2, 0.3, 0.1], [math.nan] * 4])
    flips = torch.tensor([[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0] * 4])
    out = patch_dependence(Erasure(flips.flatten(), ev.flatten() / 2, ev.flatten()), 3)
    assert torch.allclose(out.evidence_drop[:2], torch.tensor([0.9, 0.3]))
    assert math.isnan(out.evidence_drop[2])
    assert out.flipped[:2].tolist() == [1.0, 1.0]  # of the patch that takes the most
    assert torch.allclose(out.score_drop[:2], torch.tensor([0.45, 0.15]))


def test_the_background_test_keeps_the_objects_and_skips_probes_without_one() -> None:
    from gradcam_callback import evidence as E

    n = 4
    objects, _ = _objects(n, seed=2)
    objects[3] = False  # no object in the last probe: no background to speak of
    images = _images(objects, torch.zeros(n, dtype=torch.bool))
    mon = ShortcutMonitor()
    x = E.prepare(mon, torch.rand(n, 8, 8), images, torch.zeros(n), None, objects, None, None)
    back = E.regions(mon, x, None)["backdrop"]()  # type: ignore[arg-type]
    assert not (back & objects).any() and not back[3].any()
    grown = F_dilate(objects[:3], 2)  # 5 % of a 32-px side: a 2-px margin stays
    assert torch.equal(back[:3], ~grown)


def F_dilate(mask: torch.Tensor, px: int) -> torch.Tensor:
    k = 2 * px + 1
    return torch.nn.functional.max_pool2d(mask[:, None].float(), k, 1, px)[:, 0] > 0


def test_a_rule_with_a_context_region_counts_its_probes_once_in_the_budget() -> None:
    from gradcam_callback.causal import CausalMemory, regions_to_erase

    decisions = [
        _decision("artifact_masks", [True, False]),
        _decision("background_masks", [False, True]),
    ]
    mem = CausalMemory()
    # the budget counts tested probes: 4 of the artifact pair and 4 of the background pair fit
    # in 8, although the background test erases two images of each of its probes
    plan = mem.plan(decisions, [0, 1], [8, 8], budget=8, min_probes=4)
    assert plan == {"artifact_masks": {0: 4}, "background_masks": {1: 4}}
    assert mem.plan(decisions, [0, 1], [8, 8], budget=7, min_probes=4) == {"artifact_masks": {0: 4}}
    groups = torch.tensor([0] * 8 + [1] * 8)
    wanted = regions_to_erase(plan, decisions, groups, contexts={"background_masks": ("backdrop",)})
    assert set(wanted) == {"artifact", "object", "backdrop"}
    assert torch.equal(wanted["object"], wanted["backdrop"]) and int(wanted["object"].sum()) == 4


def test_a_held_background_finding_is_re_tested_with_its_context() -> None:
    """A background rule's held re-test is its whole test: the focus region and the background
    around it erased in the same probes, and both verdicts needed (focus indifferent, the
    background's own erasure taking at least ``background_drop``); a re-test that measured
    either region on too few probes is inconclusive and carries the finding."""
    from gradcam_callback.causal import HELD, CausalMemory, contexts, regions_to_erase
    from gradcam_callback.rules import RuleDecision

    mon = ShortcutMonitor()
    rule = next(r for r in RULES if r.name == "background_diffuse")
    assert (rule.region, rule.context_region, rule.held_region) == ("focus", "surround", "focus")
    yes, no = torch.tensor([True]), torch.tensor([False])
    memory = CausalMemory()

    def run(
        attention: torch.Tensor,
        focus: float,
        surround: float,
        n_surround: float = 8.0,
        one_place: float = 0.0,
    ):
        d = RuleDecision(rule, True, usable=yes, attention=attention, near=attention)
        plan = memory.plan([d], [3], [8], budget=8, min_probes=4)
        stats = {
            "causal/focus_evidence": torch.tensor([focus]),
            "causal/surround_evidence": torch.tensor([surround]),
            "causal/patches_depends": torch.tensor([one_place]),
        }
        counts = {
            "causal/focus_evidence": torch.tensor([8.0]),
            "causal/surround_evidence": torch.tensor([n_surround]),
            "causal/patches_evidence": torch.tensor([8.0]),
        }
        (key,) = plan
        out = memory.settle(mon, [3], [d], stats, counts, {key: {0: 8}}, 1)
        return plan, bool(out[rule.name][0]), bool(memory.held[rule.name][0])

    # confirmed by its own test: the focus's erasure leaves the evidence, the surround's takes it
    plan, confirmed, held = run(yes, 0.1, 0.9)
    assert plan == {rule.name: {0: 8}} and confirmed and not held
    assert contexts(mon, [RuleDecision(rule, True)]) == {
        rule.name: ("surround", "patches"),
        rule.name + HELD: ("surround", "patches"),
    }
    # the maps are no longer diffuse: re-tested as a whole, both regions in the same probes
    plan, _, held = run(no, 0.1, 0.9)
    assert plan == {rule.name + HELD: {0: 8}} and held
    d = [RuleDecision(rule, True)]
    wanted = regions_to_erase(plan, d, torch.zeros(8, dtype=torch.long), 0, contexts(mon, d))
    assert sorted(wanted) == ["focus", "patches", "surround"] and all(
        int(w.sum()) == 8 for w in wanted.values()
    )
    assert run(no, 0.1, 0.9, n_surround=2.0)[2]  # the surround measured on 2 probes: carried
    assert not run(no, 0.1, 0.2)[2]  # the background no longer matters: dropped
    assert not memory.findings
    # and a re-test where the focus matters again drops it too
    run(yes, 0.1, 0.9)
    assert run(no, 0.1, 0.9)[2] and not run(no, 0.8, 0.9)[2]
    # evidence in one place (an object the maps miss): not confirmed, and a held finding whose
    # re-test finds it so is dropped
    assert not run(yes, 0.1, 0.9, one_place=0.8)[1]
    assert run(yes, 0.1, 0.9)[1]
    assert run(no, 0.1, 0.9)[2] and not run(no, 0.1, 0.9, one_place=0.8)[2]
