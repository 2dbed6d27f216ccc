"""ShortcutMonitor: flag logic on hand-made tensors, then on trained planted-shortcut worlds."""

from __future__ import annotations

import copy
import io
import math
import pickle

import pytest
import pytorch_lightning as pl
import torch

from gradcam_callback.alarms import Flag, ShortcutDetected, ShortcutMonitor
from gradcam_callback.engine import GradCAM
from gradcam_callback.probes import select_probes
from gradcam_callback.synthetic import ShortcutClassifier, train_world

H = W = 32
N = 8


def _bump(cy: float, cx: float, sigma: float = 2.5) -> torch.Tensor:
    ys = torch.arange(H).float()[:, None]
    xs = torch.arange(W).float()[None, :]
    return torch.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * sigma**2))


# Objects at eight different places; the "watermark" always in the top-left corner.
SPOTS = [(10, 10), (10, 22), (22, 10), (22, 22), (16, 16), (12, 20), (20, 12), (16, 10)]
CORNER = torch.zeros(H, W, dtype=torch.bool)
CORNER[:6, :6] = True


def _world() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(N, 3, H, W, generator=g) * 0.2
    objects = torch.zeros(N, H, W, dtype=torch.bool)
    for i, (y, x) in enumerate(SPOTS):
        objects[i, y - 3 : y + 3, x - 3 : x + 3] = True
    images = torch.where(objects[:, None], torch.ones(()), images)
    images[:, :, :6, :6] = 0.9  # the same mark in every image
    return {
        "images": images,
        "targets": torch.ones(N, dtype=torch.long),
        "object_masks": objects,
        "artifact_masks": CORNER.expand(N, H, W).clone(),
        "on_object": torch.stack([_bump(y, x) for y, x in SPOTS]),
        "on_corner": torch.stack([_bump(2.5, 2.5)] * N),
    }


def corner_reader(images: torch.Tensor) -> torch.Tensor:
    """A 'model' whose class-1 logit is the brightness of the top-left corner."""
    c = images[:, :, :6, :6].mean((1, 2, 3))
    return torch.stack([torch.full_like(c, 0.5), c], dim=1) * 10


def object_reader(images: torch.Tensor) -> torch.Tensor:
    """A 'model' whose class-1 logit is the brightest pixel outside the corner."""
    x = images.clone()
    x[:, :, :6, :6] = 0
    m = x.amax((1, 2, 3))
    return torch.stack([torch.full_like(m, 0.5), m], dim=1) * 10


def _run(
    mon: ShortcutMonitor,
    maps: torch.Tensor,
    w: dict,
    epoch: int,
    masks: bool = True,
    score_fn=None,
    baseline: bool = False,
):
    return mon.analyze(
        maps=maps,
        images=w["images"],
        targets=w["targets"],
        labels=w["targets"],
        scores=None,
        logits=None,
        object_masks=w["object_masks"] if masks else None,
        artifact_masks=w["artifact_masks"] if masks else None,
        score_fn=score_fn,
        epoch=epoch,
        global_step=10 * epoch,
        baseline=baseline,
    )


def test_no_flags_at_baseline_then_artifact_flag_with_masks() -> None:
    w = _world()
    mon = ShortcutMonitor(causal_budget=None)
    a0 = _run(mon, w["on_corner"], w, 0, baseline=True)
    assert a0.flags == []
    a1 = _run(mon, w["on_corner"], w, 1, score_fn=corner_reader)
    kinds = {f.kind for f in a1.flags}
    assert "artifact" in kinds and "background" in kinds
    art = next(f for f in a1.flags if f.kind == "artifact")
    # the bump at (2.5, 2.5) keeps ~all its mass inside the 6x6 corner: enrichment ~ 1024/36
    assert art.value == pytest.approx(a1.summary["attention/artifact_enrichment"])
    assert 20 < art.value <= 1024 / 36
    assert art.metric == "attention/artifact_enrichment" and art.probe is None
    assert sorted(art.probes) == list(range(N)) and not art.persistent
    assert a1.summary["causal/flip"] == 1.0  # erasing the mark flips every prediction
    assert "attention/artifact_share/class_1" in a1.summary


def test_flags_persist_rather_than_repeat_and_come_back_new() -> None:
    w = _world()
    mon = ShortcutMonitor(causal_budget=None)
    _run(mon, w["on_corner"], w, 0, baseline=True)
    first = _run(mon, w["on_corner"], w, 1, score_fn=corner_reader).flags
    second = _run(mon, w["on_corner"], w, 2, score_fn=corner_reader).flags
    assert all(not f.persistent for f in first)
    assert {f.kind for f in second} >= {"artifact"}
    for f in second:
        if f.kind != "drift":
            assert f.persistent and f.since_epoch == 1 and f.epoch == 2
    # the model lets go of the shortcut (epochs 3-4): no artifact or background flag
    for epoch in (3, 4):
        flags = _run(mon, w["on_object"], w, epoch, score_fn=object_reader).flags
        assert not [f for f in flags if f.kind in ("artifact", "background")]
    # ... and takes it again at epoch 5: a new flag, not a continuation
    again = [
        f
        for f in _run(mon, w["on_corner"], w, 5, score_fn=corner_reader).flags
        if f.kind == "artifact"
    ]
    assert again and not again[0].persistent and again[0].since_epoch == 5


def test_causal_confirmation_silences_a_look_without_dependence() -> None:
    w = _world()
    mon = ShortcutMonitor()
    _run(mon, w["on_corner"], w, 0, baseline=True)
    # the maps look at the corner, but the model reads the objects: erasing the corner does nothing
    a = _run(mon, w["on_corner"], w, 1, score_fn=object_reader)
    assert a.summary["causal/flip"] == 0.0
    assert not [f for f in a.flags if f.kind == "artifact"]
    # without a score_fn (or confirm=False) the attention alone decides
    b = _run(ShortcutMonitor(), w["on_corner"], w, 1)
    assert [f for f in b.flags if f.kind == "artifact"]


def test_mask_free_anchored_hotspot() -> None:
    w = _world()
    mon = ShortcutMonitor()
    _run(mon, w["on_object"], w, 0, masks=False, baseline=True)
    a = _run(mon, w["on_corner"], w, 1, masks=False, score_fn=corner_reader)
    art = [f for f in a.flags if f.kind == "artifact"]
    assert len(art) == 1 and art[0].metric == "attention/hotspot_consistency"
    assert a.summary["attention/hotspot_offset"] > 0.7
    assert a.summary["causal/hotspot_flip_rate"] == 1.0
    assert a.hotspot is not None and a.hotspot[:, 2, 2].all()
    # objects that move: no anchored hot spot
    mon2 = ShortcutMonitor()
    _run(mon2, w["on_object"], w, 0, masks=False, baseline=True)
    b = _run(mon2, w["on_object"], w, 1, masks=False, score_fn=object_reader)
    assert not [f for f in b.flags if f.kind == "artifact"]
    assert b.summary["attention/hotspot_consistency"] < a.summary["attention/hotspot_consistency"]


def test_background_flag_with_object_masks() -> None:
    w = _world()
    mon = ShortcutMonitor()
    _run(mon, w["on_object"], w, 0, baseline=True)
    # maps spread uniformly over the image except the objects
    off = (~w["object_masks"]).float()
    a = _run(mon, off, w, 1)
    bg = [f for f in a.flags if f.kind == "background"]
    assert len(bg) == 1 and bg[0].value == 0.0 and bg[0].metric == "attention/object_enrichment"
    on = _run(mon, w["on_object"], w, 2)
    assert not [f for f in on.flags if f.kind == "background"]
    assert on.summary["attention/object_enrichment"] > 5


def test_optional_frame_flag_mask_free() -> None:
    w = _world()
    frame = torch.zeros(N, H, W)
    frame[:, :2, :] = frame[:, -2:, :] = frame[:, :, :2] = frame[:, :, -2:] = 1.0
    band_share = 1 - (24 * 24) / (32 * 32)  # the default 0.125 band is 4 px wide
    off = _run(ShortcutMonitor(), frame, w, 1, masks=False)
    assert not off.flags  # off by default; the maps are neither anchored nor diffuse enough
    on = _run(ShortcutMonitor(border_enrichment=1.5), frame, w, 1, masks=False)
    (flag,) = on.flags
    assert flag.kind == "background" and flag.metric == "attention/border_enrichment"
    assert flag.value == pytest.approx(1 / band_share, rel=1e-4)


def test_drift_only_between_trained_runs() -> None:
    w = _world()
    mon = ShortcutMonitor()
    assert _run(mon, w["on_object"], w, 0, baseline=True).flags == []
    # a total change right after the baseline is training, not drift
    a1 = _run(mon, w["on_object"].flip(1, 2), w, 1)
    assert not [f for f in a1.flags if f.kind == "drift"]
    a2 = _run(mon, w["on_object"], w, 2)
    drift = [f for f in a2.flags if f.kind == "drift"]
    assert len(drift) == 1 and drift[0].value < 0.5
    assert a2.summary["drift/pearson_previous"] == pytest.approx(drift[0].value)
    assert a2.summary["drift/pearson_baseline"] == pytest.approx(1.0)
    a3 = _run(mon, w["on_object"], w, 3)
    assert not [f for f in a3.flags if f.kind == "drift"]


def test_all_zero_maps_untrained_model() -> None:
    w = _world()
    mon = ShortcutMonitor()
    zeros = torch.zeros(N, H, W)
    for epoch, base in ((0, True), (1, False), (2, False)):
        a = _run(mon, zeros, w, epoch, score_fn=corner_reader, baseline=base)
        assert a.flags == []
        assert math.isnan(a.summary["attention/entropy"])
        assert all(v.shape == (N,) for v in a.per_probe.values())


def _after_a_corner_run(w: dict[str, torch.Tensor]) -> ShortcutMonitor:
    """A monitor after a baseline on the objects and a run of a corner-reading model."""
    mon = ShortcutMonitor()
    _run(mon, w["on_object"], w, 0, baseline=True)
    _run(mon, w["on_corner"], w, 1, score_fn=corner_reader)
    return mon


def test_state_dict_round_trip() -> None:
    w = _world()
    mon = _after_a_corner_run(w)
    buf = io.BytesIO()
    torch.save(mon.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    fresh = ShortcutMonitor()
    fresh.load_state_dict(state)
    assert torch.equal(fresh.baseline_maps, w["on_object"])
    # the causal findings come back too: the resumed monitor tests and says what the original does
    assert fresh.memory.findings == mon.memory.findings and fresh.memory.run == 1
    a = _run(fresh, w["on_corner"], w, 2, score_fn=corner_reader)
    art = next(f for f in a.flags if f.kind == "artifact")
    assert art.persistent and art.since_epoch == 1
    b = _run(mon, w["on_corner"], w, 2, score_fn=corner_reader)
    assert a.summary["drift/pearson_baseline"] == pytest.approx(b.summary["drift/pearson_baseline"])
    assert [f.message for f in a.flags] == [f.message for f in b.flags] and a.tested == b.tested


def test_shortcut_detected_carries_flags() -> None:
    f = Flag("artifact", 1, 10, None, 12.0, 3.0, "attention on the watermark")
    err = ShortcutDetected([f])
    assert isinstance(err, RuntimeError) and err.flags == [f]
    assert "watermark" in str(err)
    back = pickle.loads(pickle.dumps(err))
    assert back.flags == [f] and str(back) == str(err)


# ----------------------------------------------------------------------------- trained worlds
ARTIFACT_KINDS = ["watermark", "tag", "border", "stamp"]
NUM_PROBES = 16


def _probes(world, masks: bool) -> dict[str, torch.Tensor | None]:
    """Zero-config style probes: balanced picks from the validation loader."""
    probes = select_probes(world.datamodule.val_dataloader(), NUM_PROBES)
    return {
        "images": probes.images,
        "labels": probes.labels,
        "object_masks": probes.object_masks if masks else None,
        "artifact_masks": probes.artifact_masks if masks else None,
    }


def _analyze_world(world, masks: bool, confirm: bool = True):
    model = world.model.eval()
    p = _probes(world, masks)
    mon = ShortcutMonitor(causal_budget=None, confirm=confirm)

    def score_fn(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(x)

    # step 0: the untrained network of the same architecture is the baseline: never a flag
    untrained = ShortcutClassifier(num_classes=2, seed=world.seed).eval()
    r0 = GradCAM(untrained, target_layer="model.features").explain(
        p["images"], p["labels"], normalize=False
    )
    base = mon.analyze(
        maps=r0.maps,
        images=p["images"],
        targets=p["labels"],
        labels=p["labels"],
        scores=r0.scores,
        logits=r0.output,
        object_masks=p["object_masks"],
        artifact_masks=p["artifact_masks"],
        score_fn=lambda x: untrained(x).detach(),
        epoch=0,
        global_step=0,
        baseline=True,
    )
    assert base.flags == []
    r = GradCAM(model, target_layer="model.features").explain(
        p["images"], p["labels"], normalize=False
    )
    return mon.analyze(
        maps=r.maps,
        images=p["images"],
        targets=p["labels"],
        labels=p["labels"],
        scores=r.scores,
        logits=r.output,
        object_masks=p["object_masks"],
        artifact_masks=p["artifact_masks"],
        score_fn=score_fn if confirm else None,
        epoch=3,
        global_step=100,
    )


def _kinds(analysis) -> set[str]:
    return {f.kind for f in analysis.flags}


@pytest.mark.slow
@pytest.mark.parametrize("masks", [True, False], ids=["masks", "mask_free"])
@pytest.mark.parametrize("kind", ARTIFACT_KINDS)
def test_artifact_flag_fires_in_shortcut_worlds(trained_world, kind: str, masks: bool) -> None:
    a = _analyze_world(trained_world(kind, shortcut=True), masks)
    art = [f for f in a.flags if f.kind == "artifact"]
    assert len(art) == 1, a.summary
    assert len(art[0].probes) >= NUM_PROBES // 4 and not art[0].persistent
    if masks:
        assert a.summary["attention/artifact_enrichment"] >= 3.0
        assert a.summary["causal/artifact_evidence"] >= 0.5
        assert "background" in _kinds(a)  # the attention also left the object
    else:
        assert art[0].metric == "attention/hotspot_consistency"
        assert a.summary["attention/hotspot_offset"] >= 0.3
        assert a.summary["causal/hotspot_evidence_drop"] >= 0.5


@pytest.mark.slow
@pytest.mark.parametrize("masks", [True, False], ids=["masks", "mask_free"])
@pytest.mark.parametrize("kind", [*ARTIFACT_KINDS, "texture"])
def test_silent_in_clean_worlds(trained_world, kind: str, masks: bool) -> None:
    world = trained_world(kind, shortcut=False)
    a = _analyze_world(world, masks)
    assert not _kinds(a) & {"artifact", "background"}, [f.message for f in a.flags]
    if masks and kind != "texture":
        assert a.summary["attention/object_enrichment"] > 3.0
        # confirmation is lazy: the artifact is erased only when its rule is near its threshold,
        # and a value that was not measured is NaN (never a stale number)
        evidence = a.summary["causal/artifact_evidence"]
        assert math.isnan(evidence) or evidence < 0.2
        assert math.isnan(evidence) == ("artifact" not in a.tested)


@pytest.mark.slow
@pytest.mark.parametrize("masks", [True, False], ids=["masks", "mask_free"])
def test_background_flag_fires_for_texture_shortcut(trained_world, masks: bool) -> None:
    a = _analyze_world(trained_world("texture", shortcut=True), masks)
    bg = [f for f in a.flags if f.kind == "background"]
    assert len(bg) == 1 and "artifact" not in _kinds(a)
    if masks:
        assert bg[0].metric == "attention/object_enrichment" and bg[0].value <= 2.0
        assert a.summary["causal/object_evidence"] < 0.5
    else:
        assert bg[0].metric == "attention/entropy" and bg[0].value >= 0.95
        assert a.summary["causal/focus_evidence"] < 0.5


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["watermark", "texture"])
def test_flags_without_causal_confirmation(trained_world, kind: str) -> None:
    """confirm=False (no extra forwards): attention and pixel stability alone decide."""
    expected = "artifact" if kind == "watermark" else "background"
    fired = _analyze_world(trained_world(kind, shortcut=True), masks=False, confirm=False)
    assert expected in _kinds(fired)
    quiet = _analyze_world(trained_world(kind, shortcut=False), masks=False, confirm=False)
    assert not _kinds(quiet) & {"artifact", "background"}


class _Watch(pl.Callback):
    """Runs the monitor at step 0 (baseline) and after every validation epoch."""

    def __init__(self) -> None:
        self.monitor = ShortcutMonitor()
        self.flags: dict[int, list[Flag]] = {}
        self.summary: dict[int, dict[str, float]] = {}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.probes = select_probes(trainer.datamodule.val_dataloader(), NUM_PROBES)
        self._run(trainer, pl_module, baseline=True)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._run(trainer, pl_module, baseline=False)

    def _run(self, trainer: pl.Trainer, pl_module: pl.LightningModule, baseline: bool) -> None:
        images, labels = self.probes.images, self.probes.labels
        r = GradCAM(pl_module, target_layer="model.features").explain(
            images, labels, normalize=False
        )
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.no_grad():
                a = self.monitor.analyze(
                    maps=r.maps,
                    images=images,
                    targets=labels,
                    labels=labels,
                    scores=r.scores,
                    logits=r.output,
                    object_masks=None,
                    artifact_masks=None,
                    score_fn=pl_module,
                    epoch=trainer.current_epoch,
                    global_step=trainer.global_step,
                    baseline=baseline,
                )
        finally:
            pl_module.train(was_training)
        if not baseline:
            self.flags[trainer.current_epoch] = a.flags
            self.summary[trainer.current_epoch] = a.summary


@pytest.mark.slow
def test_shortcut_taken_early_and_dropped_later_is_caught_while_it_lasts() -> None:
    """Mask-free: the watermark predicts the label for 2 epochs, then is decorrelated."""
    watch = _Watch()
    world = train_world("watermark", shortcut=True, shortcut_epochs=2, epochs=10, callbacks=[watch])
    assert world.metrics["val_acc"] > 0.9
    artifact = {e: [f for f in fl if f.kind == "artifact"] for e, fl in watch.flags.items()}
    first = min(e for e, fl in artifact.items() if fl)  # caught while it lasts ...
    assert first < 2 and not artifact[first][0].persistent
    for e in range(first + 1, 10):  # ... marked persistent rather than repeated as new ...
        if artifact[e] and artifact[e - 1]:
            assert artifact[e][0].persistent and artifact[e][0].since_epoch == first
    assert not artifact[9], watch.summary[9]  # ... and silent once the model let go of it


# ----------------------------------------------------------------------------- causal budget
def test_the_causal_budget_spreads_tests_over_runs_and_carries_findings() -> None:
    w = _world()
    mon = ShortcutMonitor()  # causal_budget=0.5: 4 of the 8 probes a run, min_probes=4
    calls = []

    def reader(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return corner_reader(x)

    _run(mon, w["on_corner"], w, 0, baseline=True)
    a1 = _run(mon, w["on_corner"], w, 1, score_fn=reader)
    # one forward for the logits, one for the erased probes: half the probe set
    assert calls == [N, N // 2] and a1.tested == {"artifact": N // 2}
    assert a1.summary["causal/tested_probes"] == N // 2
    assert {f.kind for f in a1.flags} == {"artifact"}  # the first kind to test leads
    assert int((~torch.isnan(a1.per_probe["causal/artifact_flip"])).sum()) == N // 2
    assert math.isnan(a1.summary["causal/object_evidence"])  # not tested: NaN, not stale

    a2 = _run(mon, w["on_corner"], w, 2, score_fn=reader)
    # the untested kind comes next: the objects erased, and the background erased in the same
    # probes (its own effect confirms a background finding); a first pair gets its share even
    # where its two erasures exceed the budget (a test needs min_probes probes to decide)
    assert a2.tested == {"object": N // 2, "backdrop": N // 2}
    art = next(f for f in a2.flags if f.kind == "artifact")
    bg = next(f for f in a2.flags if f.kind == "background")
    # artifact: carried from epoch 1 (attention held), said so, and nothing stale is logged
    assert art.persistent and art.since_epoch == 1 and "(tested at epoch 1)" in art.message
    assert math.isnan(a2.summary["causal/artifact_flip"])
    assert not bg.persistent and "tested at epoch" not in bg.message
    assert calls == [N, N // 2, N, N]  # the logits, then one forward of the erased probes

    # the model lets go of the mark: its findings are forgotten with the attention ...
    _run(mon, w["on_object"], w, 3, score_fn=object_reader)
    assert not any(k[0] == "artifact_masks" for k in mon.memory.findings)
    # ... and come back: tested afresh before any flag is raised again
    a4 = _run(mon, w["on_corner"], w, 4, score_fn=reader)
    assert "artifact" in a4.tested
    again = [f for f in a4.flags if f.kind == "artifact"]
    assert again and not again[0].persistent and "tested at epoch" not in again[0].message


def test_an_unlimited_budget_tests_everything_in_one_run() -> None:
    w = _world()
    mon = ShortcutMonitor(causal_budget=None)
    _run(mon, w["on_corner"], w, 0, baseline=True)
    a = _run(mon, w["on_corner"], w, 1, score_fn=corner_reader)
    assert a.tested == {"artifact": N, "hotspot": N, "object": N, "backdrop": N}
    assert {f.kind for f in a.flags} >= {"artifact", "background"}
    with pytest.raises(ValueError, match="causal_budget must be > 0"):
        ShortcutMonitor(causal_budget=0)
    with pytest.raises(TypeError, match="evidence_drop needs a number"):
        ShortcutMonitor(evidence_drop=None)  # type: ignore[arg-type]


# ------------------------------------------------------------------- held while measured
@pytest.mark.parametrize("masks", [True, False])
def test_a_confirmed_finding_is_held_while_the_model_still_depends_on_it(masks: bool) -> None:
    """Attention fades from the mark (the maps move to the objects) while the model still reads
    it: the finding is re-tested on its region (the masks; without masks the hot-spot footprint
    remembered from the confirming test) and the flag stays; it clears once the model lets go."""
    w = _world()
    mon = ShortcutMonitor(causal_budget=None)
    _run(mon, w["on_corner"], w, 0, baseline=True)
    first = _run(mon, w["on_corner"], w, 1, masks=masks, score_fn=corner_reader)
    assert "artifact" in {f.kind for f in first.flags}
    # epoch 2: nothing in the maps is on the corner any more, yet the model reads only it
    faded = _run(mon, w["on_object"], w, 2, masks=masks, score_fn=corner_reader)
    art = [f for f in faded.flags if f.kind == "artifact"]
    region = "artifact" if masks else "remembered"
    assert art and art[0].persistent and art[0].since_epoch == 1, faded.flags
    assert "held while its causal test confirms it" in art[0].message
    assert faded.tested.get(region) == N
    assert faded.summary[f"causal/{region}_depends"] == 1.0
    if not masks:  # the class's current hot spot sits on the objects: not what is re-tested
        assert faded.summary["attention/hotspot_offset"] < mon.hotspot_offset
    # epoch 3: the model lets go; a conclusive low re-test clears the flag and the finding
    gone = _run(mon, w["on_object"], w, 3, masks=masks, score_fn=object_reader)
    assert not [f for f in gone.flags if f.kind == "artifact"], gone.flags
    assert not [k for k in mon.memory.findings if k[0].startswith("artifact")]
    assert not mon.memory.footprints


def test_a_held_finding_whose_maps_went_blank_says_so() -> None:
    """A class the model still predicts can get all-zero maps: a finding held on the artifact
    masks stays, and its words say why it is held (too few maps carry the measure), not that
    the attention moved."""
    w = _world()
    mon = ShortcutMonitor(causal_budget=None)
    _run(mon, w["on_corner"], w, 0, baseline=True)
    first = _run(mon, w["on_corner"], w, 1, score_fn=corner_reader)
    assert "artifact" in {f.kind for f in first.flags}
    blank = _run(mon, torch.zeros_like(w["on_corner"]), w, 2, score_fn=corner_reader)
    art = [f for f in blank.flags if f.kind == "artifact"]
    assert art and art[0].persistent, blank.flags
    assert "artifact_masks was confirmed earlier and too few of the class's maps carry" in (
        art[0].message
    )
    assert "the attention has moved" not in art[0].message
    assert blank.tested.get("artifact") == N


def texture_reader(images: torch.Tensor) -> torch.Tensor:
    """A 'model' whose class-1 logit is the spread of the dark (background) pixels' values: it
    reads the background's texture, which a flat fill removes and inpainting the objects keeps."""
    x = images.mean(1)
    dark = (x < 0.5).float()
    n = dark.sum((1, 2))
    mean = (x * dark).sum((1, 2)) / n
    spread = ((((x - mean[:, None, None]) ** 2) * dark).sum((1, 2)) / n).sqrt()
    return torch.stack([torch.full_like(spread, 0.5), 300 * spread], dim=1)


def constant_reader(images: torch.Tensor) -> torch.Tensor:
    """A 'model' that reads nothing: the same confident class-1 logits for every image."""
    return torch.tensor([0.5, 5.0]).expand(images.shape[0], 2)


@pytest.mark.parametrize(
    "rule, later",
    [
        ("background_masks", object_reader),
        ("background_masks", constant_reader),
        ("background_border", object_reader),
    ],
)
def test_a_confirmed_background_finding_is_held_by_its_own_test(rule: str, later) -> None:
    """The background rules re-test a held finding with their own test: with object masks the
    objects and the background around them in the same probes (both must still confirm: a model
    that needs the objects again, or that no longer needs the background, clears it), the frame
    rule its frame band."""
    w = _world()
    masks = rule == "background_masks"
    mon = ShortcutMonitor(causal_budget=None, border_enrichment=None if masks else 1.5)
    reader = texture_reader if masks else corner_reader
    frame = torch.zeros(N, H, W)
    frame[:, :2, :] = frame[:, -2:, :] = frame[:, :, :2] = frame[:, :, -2:] = 1.0
    looks = (~w["object_masks"]).float() if masks else frame
    _run(mon, w["on_object"], w, 0, masks=masks, baseline=True)
    first = _run(mon, looks, w, 1, masks=masks, score_fn=reader)
    (bg,) = [f for f in first.flags if f.kind == "background"]
    metric = "attention/object_enrichment" if masks else "attention/border_enrichment"
    assert bg.metric == metric and not bg.persistent, first.flags
    # epoch 2: the maps are on the objects, the model still reads the background
    faded = _run(mon, w["on_object"], w, 2, masks=masks, score_fn=reader)
    (bg,) = [f for f in faded.flags if f.kind == "background"]
    assert bg.persistent and bg.since_epoch == 1
    assert "held while its causal test confirms it" in bg.message, bg.message
    region, context = ("object", "backdrop") if masks else ("border", None)
    assert faded.tested[region] == N and faded.tested.get(context) == (N if masks else None)
    assert bool(mon.memory.held[rule].all())
    if masks:  # the objects' erasure leaves the evidence, the background's takes it
        assert faded.summary["causal/object_evidence"] < mon.object_drop
        assert faded.summary["causal/backdrop_evidence"] >= mon.background_drop
    # epoch 3: the model reads the objects, or nothing; a conclusive re-test clears the flag
    gone = _run(mon, w["on_object"], w, 3, masks=masks, score_fn=later)
    assert not [f for f in gone.flags if f.kind == "background"], gone.flags
    assert not [k for k in mon.memory.findings if k[0] == rule]


def test_an_unconfirmed_finding_is_not_held_and_held_state_round_trips() -> None:
    w = _world()
    # never confirmed (the model reads the objects): nothing is held once the attention moves
    mon = ShortcutMonitor(causal_budget=None)
    _run(mon, w["on_corner"], w, 0, baseline=True)
    _run(mon, w["on_corner"], w, 1, masks=False, score_fn=object_reader)
    assert mon.memory.findings and not any(f.confirmed for f in mon.memory.findings.values())
    later = _run(mon, w["on_object"], w, 2, masks=False, score_fn=corner_reader)
    assert "remembered" not in later.tested and not mon.memory.findings
    # a held finding and its remembered footprint survive a state_dict round trip
    held = ShortcutMonitor(causal_budget=None)
    _run(held, w["on_corner"], w, 0, baseline=True)
    _run(held, w["on_corner"], w, 1, masks=False, score_fn=corner_reader)
    state = pickle.loads(pickle.dumps(held.state_dict()))
    again = ShortcutMonitor(causal_budget=None)
    again.load_state_dict(state)
    spot = again.memory.footprints[1]
    assert spot.dtype == torch.bool and spot.equal(held.memory.footprints[1]) and spot[:4, :4].all()
    faded = _run(again, w["on_object"], w, 2, masks=False, score_fn=corner_reader)
    assert [f for f in faded.flags if f.kind == "artifact"] and faded.tested["remembered"] == N


def test_a_state_dict_taken_before_a_run_is_not_changed_by_it() -> None:
    # the callback keeps it, uncopied, for a checkpoint saved while the run is in flight
    w = _world()
    mon = _after_a_corner_run(w)
    before = mon.state_dict()
    kept = copy.deepcopy(before)
    _run(mon, w["on_object"], w, 2, score_fn=corner_reader)
    assert not torch.equal(mon.previous_maps, kept["previous_maps"])  # the run changed the monitor
    assert torch.equal(before["previous_maps"], kept["previous_maps"])
    assert torch.equal(before["baseline_maps"], kept["baseline_maps"])
    assert before["causal"] == kept["causal"] and before["active"] == kept["active"]


def test_the_image_cache_reads_a_probe_set_once_and_notices_changes() -> None:
    from gradcam_callback.evidence import ImageCache
    from gradcam_callback.metrics import local_extremes

    cache = ImageCache()
    images = torch.rand(4, 3, 16, 16)
    grid = cache.grid(images, (8, 8))
    assert grid.shape == (4, 3, 8, 8) and cache.grid(images, (8, 8)) is grid  # read once
    kept = cache.extremes(grid, 1)
    assert kept is not None and cache.extremes(grid, 1) is kept
    assert all(torch.equal(k, e) for k, e in zip(kept, local_extremes(grid, 1)))
    assert cache.extremes(grid.clone(), 1) is None and cache.extremes(grid, 0) is None
    images[0] = 0.0  # changed in place: read afresh
    again = cache.grid(images, (8, 8))
    assert again is not grid and float(again[0].abs().sum()) == 0.0
    assert cache.grid(images, (16, 16)).shape == (4, 3, 16, 16)
    with torch.inference_mode():  # a monitor called on inference tensors: read every time
        frozen = torch.rand(4, 3, 16, 16)
    first = cache.grid(frozen, (8, 8))
    assert cache.grid(frozen, (8, 8)) is not first and cache.extremes(first, 1) is None


def test_the_image_cache_keeps_the_class_marks_while_images_and_classes_stay() -> None:
    from gradcam_callback.evidence import ImageCache
    from gradcam_callback.metrics import class_marks

    cache = ImageCache()
    # seeded: a few random pixels can agree by chance in most of a class's 4 images
    images = torch.rand(12, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    groups = torch.arange(3).repeat_interleave(4)
    images[groups == 1, :, :3, :4] = 2.0  # class 1's mark
    grid = cache.grid(images, (16, 16))
    params = (0.25, 0.5, 4)
    marks = cache.marks(grid, groups, 3, params)
    assert torch.equal(marks, class_marks(grid, groups, 3, 0.25, 0.5, 4))
    assert marks[1, :3, :4].all() and int(marks.sum()) == 12
    assert cache.marks(grid, groups, 3, params) is marks  # computed once
    other = groups.flip(0)  # other classes: computed afresh
    assert cache.marks(grid, other, 3, params) is not marks
    assert cache.marks(grid, other, 3, (0.25, 0.9, 4)) is not marks  # other parameters too
    images[0] = 0.0  # the images changed in place: the grid, then the marks, are read afresh
    assert cache.marks(cache.grid(images, (16, 16)), groups, 3, params) is not marks
