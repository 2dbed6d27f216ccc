"""Tests of the planted-shortcut world (gradcam_callback.demos; old path gradcam_callback.synthetic)."""

from __future__ import annotations

import math
from collections.abc import Callable
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from gradcam_callback.demos import (
    ARTIFACTS,
    MEAN,
    STD,
    ShortcutClassifier,
    ShortcutDataModule,
    ShortcutDataset,
    SmallCNN,
    TrainedWorld,
    accuracy,
    artifact_reliance,
    make_world,
    normalize,
    to_unit_range,
    train_world,
)

KINDS = [a for a in ARTIFACTS if a != "none"]


# ---------------------------------------------------------------- determinism and streams


def test_same_seed_identical_different_seed_different() -> None:
    a = make_world(64, artifact="tag", num_classes=3, seed=5)
    b = make_world(64, artifact="tag", num_classes=3, seed=5)
    c = make_world(64, artifact="tag", num_classes=3, seed=6)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert not torch.equal(a["images"], c["images"])
    assert not torch.equal(a["object_masks"], c["object_masks"])


def test_no_global_rng_used() -> None:
    state = torch.random.get_rng_state()
    ShortcutDataset(32, artifact="texture", seed=1)
    SmallCNN(seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_model_init_is_seeded() -> None:
    a, b, c = SmallCNN(seed=1), SmallCNN(seed=1), SmallCNN(seed=2)
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb), name
        if pa.dim() > 1:
            assert not torch.equal(pa, pc), name


def test_correlation_only_changes_the_artifact() -> None:
    shortcut = ShortcutDataset(128, artifact="watermark", correlation=1.0, seed=3)
    clean = ShortcutDataset(128, artifact="watermark", correlation=None, seed=3)
    assert torch.equal(shortcut.labels, clean.labels)
    assert torch.equal(shortcut.object_masks, clean.object_masks)
    outside = ~(shortcut.artifact_masks | clean.artifact_masks).unsqueeze(1).expand_as(clean.images)
    assert torch.equal(shortcut.images[outside], clean.images[outside])
    assert not torch.equal(shortcut.variants, clean.variants)


@pytest.mark.parametrize("num_classes", [2, 4])
def test_variant_correlation(num_classes: int) -> None:
    n, small = 4000, 24  # tiny images: only the variants matter here
    perfect = make_world(
        n, artifact="border", num_classes=num_classes, correlation=1.0, image_size=small
    )
    assert torch.equal(perfect["variants"], perfect["labels"])
    clean = make_world(
        n, artifact="border", num_classes=num_classes, correlation=None, image_size=small
    )
    match = (clean["variants"] == clean["labels"]).float().mean().item()
    assert abs(match - 1 / num_classes) < 0.04
    counts = torch.bincount(clean["variants"], minlength=num_classes).float() / n
    assert torch.allclose(counts, torch.full_like(counts, 1 / num_classes), atol=0.04)
    partial = make_world(
        n, artifact="border", num_classes=num_classes, correlation=0.7, image_size=small
    )
    assert abs((partial["variants"] == partial["labels"]).float().mean().item() - 0.7) < 0.04
    swapped = make_world(
        n, artifact="border", num_classes=num_classes, artifact_mode="swapped", image_size=small
    )
    assert (swapped["variants"] != swapped["labels"]).all()
    labels = torch.bincount(perfect["labels"], minlength=num_classes)
    assert labels.max() - labels.min() <= 1  # balanced


# ---------------------------------------------------------------- masks


@pytest.mark.parametrize("artifact", KINDS)
@pytest.mark.parametrize("size", [64, (48, 80)])
def test_artifact_mask_is_exact(artifact: str, size: int | tuple[int, int]) -> None:
    ds = ShortcutDataset(48, artifact=artifact, num_classes=4, image_size=size, seed=2)
    removed = ds.variant(artifact="removed")
    changed = (ds.images != removed.images).any(dim=1)  # [N, H, W]
    assert torch.equal(changed, ds.artifact_masks)  # every artifact pixel changed, nothing else
    assert torch.equal(removed.artifact_masks, ds.artifact_masks)  # footprint kept
    assert (removed.variants == -1).all()
    assert ds.artifact_masks.flatten(1).any(1).all()  # never empty
    assert not (ds.artifact_masks & ds.object_masks).any()  # disjoint
    swapped = ds.variant(artifact="swapped")
    diff = (ds.images != swapped.images).any(dim=1)
    assert not (diff & ~(ds.artifact_masks | swapped.artifact_masks)).any()
    assert torch.equal(swapped.object_masks, ds.object_masks)


def test_none_artifact_has_empty_masks() -> None:
    ds = ShortcutDataset(16, artifact="none", seed=0)
    assert not ds.artifact_masks.any()
    assert (ds.variants == -1).all()
    assert torch.equal(ds.variant(artifact="swapped").images, ds.images)


@pytest.mark.parametrize("artifact", ["watermark", "texture"])
def test_object_mask_matches_drawn_shape(artifact: str) -> None:
    ds = ShortcutDataset(200, artifact=artifact, num_classes=4, seed=4)
    pixels = to_unit_range(ds.images)  # [N, 3, H, W] in [0, 1]
    assert ds.object_masks.flatten(1).any(1).all()
    for i in range(len(ds)):
        inside = pixels[i][:, ds.object_masks[i]]  # [3, P]: exactly the object colour
        torch.testing.assert_close(inside, ds.colours[i].view(3, 1).expand_as(inside))
    # Area over r^2 is each shape's constant (disc pi, square 1.7^2, triangle 3 sqrt(3)/4 1.3^2,
    # cross 2.4 - 0.36), up to pixelisation; the mask's centroid is the drawn centre.
    expected = torch.tensor([math.pi, 1.7**2, 3 * math.sqrt(3) / 4 * 1.3**2, 2.4 - 0.36])
    ratio = ds.object_masks.flatten(1).sum(1) / ds.radii**2
    for k in range(4):
        sel = ds.labels == k
        assert abs(ratio[sel].mean().item() - expected[k].item()) < 0.06 * expected[k].item()
    h, w = ds.object_masks.shape[1:]
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    m = ds.object_masks.float()
    area = m.sum((1, 2))
    cy, cx = (m * ys).sum((1, 2)) / area, (m * xs).sum((1, 2)) / area
    not_triangle = ds.labels != 2  # a triangle's centroid is below its circumcentre
    assert (cy - ds.centres[:, 0])[not_triangle].abs().max() < 1.0
    assert (cx - ds.centres[:, 1]).abs().max() < 1.0


@pytest.mark.parametrize(
    ("artifact", "place", "region"),
    [
        ("watermark", "top-left", (slice(0, 16), slice(0, 16))),
        ("watermark", "bottom-right", (slice(32, 48), slice(64, 80))),
        ("tag", "top-right", (slice(0, 12), slice(56, 80))),
        ("border", "right", (slice(0, 48), slice(76, 80))),
        ("stamp", "bottom", (slice(32, 48), slice(30, 50))),
    ],
)
def test_placement(artifact: str, place: str, region: tuple[slice, slice]) -> None:
    ds = ShortcutDataset(32, artifact=artifact, image_size=(48, 80), place=place, seed=0)
    outside = ds.artifact_masks.clone()
    outside[:, region[0], region[1]] = False
    assert not outside.any()
    assert ds.artifact_masks[:, region[0], region[1]].flatten(1).any(1).all()


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        make_world(4, artifact="logo")
    with pytest.raises(ValueError):
        make_world(4, artifact="border", place="top-left")
    with pytest.raises(ValueError):
        make_world(4, artifact="texture", place="left")
    with pytest.raises(ValueError):
        make_world(4, num_classes=5)
    with pytest.raises(ValueError):
        make_world(4, correlation=1.5)


def test_normalisation_round_trip() -> None:
    ds = ShortcutDataset(8, seed=0)
    x = to_unit_range(ds.images)
    assert x.min() >= 0.0 and x.max() <= 1.0
    torch.testing.assert_close(normalize(x), ds.images)
    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)
    torch.testing.assert_close(ds.images * std + mean, x)


# ---------------------------------------------------------------- dataset / datamodule / model


def test_items_tuple_and_dict() -> None:
    ds = ShortcutDataset(10, image_size=(40, 56), seed=0)
    image, label, obj, art = ds[3]
    assert image.shape == (3, 40, 56) and image.dtype == torch.float32
    assert label.dtype == torch.long and label.dim() == 0
    assert obj.shape == art.shape == (40, 56) and obj.dtype == art.dtype == torch.bool
    dict_ds = ds.variant(artifact="present")
    dict_ds.as_dict = True
    batch = next(iter(DataLoader(dict_ds, batch_size=4)))
    assert set(batch) == {"image", "label", "object_mask", "artifact_mask"}
    assert batch["image"].shape == (4, 3, 40, 56)
    assert torch.equal(batch["image"], ds.images[:4])
    t = ds.tensors(5)
    assert t["images"].shape[0] == 5 and set(t) == {
        "images",
        "labels",
        "object_masks",
        "artifact_masks",
    }


def test_datamodule_splits_and_shortcut_epochs() -> None:
    dm = ShortcutDataModule(n_train=64, n_val=32, n_test=32, batch_size=16, shortcut_epochs=2)
    dm.setup()
    assert len({dm.split_seed(s) for s in ("train", "val", "test")}) == 3
    assert not torch.equal(dm.train_set.images[:32], dm.val_set.images)
    assert torch.equal(dm.val_set.variants, dm.val_set.labels)  # val keeps the shortcut
    dm.trainer = SimpleNamespace(current_epoch=1)
    assert dm.current_train_set() is dm.train_set
    early = next(iter(dm.train_dataloader()))
    assert torch.equal(dm.train_set.variants, dm.train_set.labels)
    dm.trainer = SimpleNamespace(current_epoch=2)
    late_set = dm.current_train_set()
    assert late_set is dm.decorrelated_train_set
    assert torch.equal(late_set.object_masks, dm.train_set.object_masks)  # same images
    assert not torch.equal(late_set.variants, late_set.labels)  # decorrelated
    assert len(early) == 4 and early[0].shape == (16, 3, 64, 64)
    honest = ShortcutDataModule(n_val=200, val_correlation=None)
    assert (honest.val_set.variants == honest.val_set.labels).float().mean() < 0.65


@pytest.mark.parametrize("size", [(64, 64), (48, 80)])
def test_small_cnn_shapes(size: tuple[int, int]) -> None:
    model = SmallCNN(num_classes=3, width=8)
    x = torch.randn(2, 3, *size)
    feats = model.features(x)
    assert feats.shape == (2, 16, size[0] // 4, size[1] // 4)
    assert model(x).shape == (2, 3)
    assert isinstance(model.head, torch.nn.Linear)


@pytest.mark.parametrize("as_dict", [False, True])
def test_classifier_runs_on_tuple_and_dict_batches(as_dict: bool) -> None:
    dm = ShortcutDataModule(n_train=32, n_val=32, n_test=32, batch_size=16, as_dict=as_dict)
    model = ShortcutClassifier(num_classes=2, width=4)
    trainer = pl.Trainer(
        accelerator="cpu",
        fast_dev_run=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=dm)
    assert {"train_loss", "val_loss", "val_acc"} <= set(trainer.callback_metrics)
    trainer.test(model, datamodule=dm, verbose=False)
    assert 0.0 <= float(trainer.callback_metrics["test_acc"]) <= 1.0


# ---------------------------------------------------------------- ground truth of trained worlds


def _report(world: TrainedWorld, record: Callable[[str, object], None]) -> dict[str, float]:
    rel = artifact_reliance(world.model, world.datamodule.val_set)
    tag = f"{world.artifact}/{'shortcut' if world.shortcut else 'clean'}"
    summary = {k: round(v, 3) for k, v in rel.items()} | {"seconds": round(world.seconds, 1)}
    print(f"\n[world {tag}] {summary}")
    record(tag, summary)
    return rel


@pytest.mark.parametrize("artifact", KINDS)
def test_shortcut_world_relies_on_artifact(
    artifact: str,
    trained_world: Callable[..., TrainedWorld],
    record_property: Callable[[str, object], None],
) -> None:
    world = trained_world(artifact, shortcut=True)
    rel = _report(world, record_property)
    assert world.metrics["val_acc"] == pytest.approx(rel["acc"], abs=1e-6)
    assert rel["acc"] >= 0.97  # val looks perfect...
    assert rel["acc_removed"] <= 0.7  # ...but without the artifact it falls toward chance (0.5)
    assert rel["acc_swapped"] <= 0.1  # and a lying artifact fools it


@pytest.mark.parametrize("artifact", ["watermark", "texture"])
def test_clean_world_learns_the_object(
    artifact: str,
    trained_world: Callable[..., TrainedWorld],
    record_property: Callable[[str, object], None],
) -> None:
    world = trained_world(artifact, shortcut=False)
    rel = _report(world, record_property)
    assert rel["acc"] >= 0.85
    assert rel["acc_removed"] >= 0.85
    assert rel["acc_swapped"] >= 0.85


def test_fixtures_share_worlds(
    shortcut_world: TrainedWorld,
    clean_world: TrainedWorld,
    trained_world: Callable[..., TrainedWorld],
) -> None:
    assert trained_world("watermark", shortcut=True) is shortcut_world
    model, dm = clean_world
    assert model is clean_world.model and dm.correlation is None
    assert shortcut_world.datamodule.correlation == 1.0
    assert not model.training


class _RelianceRecorder(pl.Callback):
    """Accuracy on val as drawn / artifact removed / swapped at the end of every training epoch."""

    def __init__(self) -> None:
        self.history: list[tuple[float, float, float]] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        val = trainer.datamodule.val_set
        if not self.history:
            self._removed, self._swapped = val.variant("removed"), val.variant("swapped")
        self.history.append(
            (
                accuracy(pl_module, val),
                accuracy(pl_module, self._removed),
                accuracy(pl_module, self._swapped),
            )
        )


def test_shortcut_taken_early_and_dropped_later(
    record_property: Callable[[str, object], None],
) -> None:
    recorder = _RelianceRecorder()
    world = train_world("watermark", shortcut=True, shortcut_epochs=2, callbacks=[recorder])
    history = [tuple(round(a, 3) for a in h) for h in recorder.history]
    print(f"\n[world watermark/shortcut_epochs=2] (acc, removed, swapped) per epoch: {history}")
    record_property("drift_history", history)
    assert len(history) == 12  # default epochs: shortcut_epochs + 10
    acc, removed, swapped = history[1]  # end of the last shortcut epoch: relies on the artifact
    assert acc >= 0.95 and swapped <= 0.1
    acc, removed, swapped = history[-1]  # decorrelated since epoch 2: learned the object
    assert acc >= 0.85 and removed >= 0.85 and swapped >= 0.85
    assert world.datamodule.val_set.variants.eq(world.datamodule.val_set.labels).all()


# ---------------------------------------------------------------- old paths (configs, scripts)


def test_old_module_paths_resolve_to_the_demos_package() -> None:
    import importlib

    from gradcam_callback import demo, demos, synthetic
    from gradcam_callback.demos import cli

    for name in synthetic.__all__:
        new = "to_unit_range" if name == "denormalize" else name
        assert getattr(synthetic, name) is getattr(demos, new), name
    for name in demo.__all__:
        assert getattr(demo, name) is getattr(cli, name), name
    for path in ("synthetic.ShortcutClassifier", "synthetic.ShortcutDataModule"):
        module, cls = f"gradcam_callback.{path}".rsplit(".", 1)  # the configs' class paths
        assert getattr(importlib.import_module(module), cls) is getattr(demos, cls)


@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")  # imported above
@pytest.mark.parametrize("module", ["gradcam_callback.demo", "gradcam_callback.demos"])
def test_demo_module_runs_as_a_script(
    module: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import runpy
    import sys

    monkeypatch.setattr(sys, "argv", [module, "--help"])  # what `python -m <module> --help` runs
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module(module, run_name="__main__")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--clean" in out and "python -m gradcam_callback.demo" in out


def test_classifier_needs_labels() -> None:
    model = ShortcutClassifier(num_classes=2, width=4)
    with pytest.raises(ValueError, match="labelled batches"):
        model.training_step(torch.zeros(2, 3, 32, 32), 0)
    with pytest.raises(ValueError, match="labelled batches"):
        model.training_step({"image": torch.zeros(2, 3, 32, 32)}, 0)
