"""ShortcutMonitor: flag logic on hand-made tensors, then on trained planted-shortcut worlds."""

from __future__ import annotations

import io
import math
import pickle

import pytest
import torch

from gradcam_callback.alarms import Flag, ShortcutDetected, ShortcutMonitor

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
    mon = ShortcutMonitor()
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
    mon = ShortcutMonitor()
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


def test_state_dict_round_trip() -> None:
    w = _world()
    mon = ShortcutMonitor()
    _run(mon, w["on_object"], w, 0, baseline=True)
    _run(mon, w["on_corner"], w, 1, score_fn=corner_reader)
    buf = io.BytesIO()
    torch.save(mon.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    fresh = ShortcutMonitor()
    fresh.load_state_dict(state)
    assert torch.equal(fresh.baseline_maps, w["on_object"])
    a = _run(fresh, w["on_corner"], w, 2, score_fn=corner_reader)
    art = next(f for f in a.flags if f.kind == "artifact")
    assert art.persistent and art.since_epoch == 1
    assert a.summary["drift/pearson_baseline"] == pytest.approx(
        _run(mon, w["on_corner"], w, 2, score_fn=corner_reader).summary["drift/pearson_baseline"]
    )


def test_shortcut_detected_carries_flags() -> None:
    f = Flag("artifact", 1, 10, None, 12.0, 3.0, "attention on the watermark")
    err = ShortcutDetected([f])
    assert isinstance(err, RuntimeError) and err.flags == [f]
    assert "watermark" in str(err)
    back = pickle.loads(pickle.dumps(err))
    assert back.flags == [f] and str(back) == str(err)
