"""GradCAMCallback with real Lightning Trainers: schedule, probes, state, training undisturbed."""

from __future__ import annotations

import warnings

import pytest
import pytorch_lightning as pl
import torch
from lit_helpers import blob_data, loaders, make_module_class, trainer_kwargs
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from gradcam_callback import GradCAMCallback, ProbeSet
from gradcam_callback.probes import BatchKeys, select_probes

TinyModule = make_module_class(pl)


def fit(tmp_path, cb=None, layout="xy", model=None, **kw):
    pl.seed_everything(0, workers=True)
    train, val = loaders(layout)
    model = model if model is not None else TinyModule()
    callbacks = [cb] if cb is not None else []
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, callbacks=callbacks, logger=False, **kw))
    trainer.fit(model, train, val)
    return trainer, model


# ---------------------------------------------------------------------------- schedule
def test_zero_config_baseline_then_every_validation(tmp_path):
    cb = GradCAMCallback(num_probes=8, verbose=False)
    trainer, _ = fit(tmp_path, cb, max_epochs=3)
    stages = [(r["stage"], r["epoch"], r["global_step"]) for r in cb.history]
    assert stages == [("baseline", 0, 0), ("fit", 0, 3), ("fit", 1, 7), ("fit", 2, 11)]
    assert len(cb.probes) == 8
    assert cb.probes.labels.tolist().count(0) == 4  # balanced
    assert not cb.probes.images.is_inference()
    assert cb.probes.images.device.type == "cpu"
    # the probes are the first samples of the validation set (balanced: 4 of each class)
    val = blob_data(32, seed=2)
    torch.testing.assert_close(cb.probes.images, val["image"][:8])
    assert trainer.callback_metrics["gradcam/probe/confidence"].numel() == 1


def test_every_n_epochs_and_sanity_check_do_nothing(tmp_path):
    cb = GradCAMCallback(num_probes=4, every_n_epochs=2, baseline=False, verbose=False)
    fit(tmp_path, cb, max_epochs=4, num_sanity_val_steps=2)
    assert [r["epoch"] for r in cb.history] == [1, 3]
    assert cb.monitor.baseline_maps is not None


def test_sanity_check_alone_changes_nothing(tmp_path):
    cb = GradCAMCallback(num_probes=4, baseline=False, verbose=False)
    fit(tmp_path, cb, max_epochs=1, limit_train_batches=0, num_sanity_val_steps=2)
    assert cb.history == [] or all(r["stage"] != "sanity" for r in cb.history)
    assert all(r["stage"] == "fit" for r in cb.history)


def test_fast_dev_run_runs_once(tmp_path):
    cb = GradCAMCallback(num_probes=4, verbose=False)
    fit(tmp_path, cb, fast_dev_run=True)
    assert len(cb.history) == 1 and cb.history[0]["stage"] == "fit"


def test_several_validations_per_epoch_are_told_apart(tmp_path):
    cb = GradCAMCallback(num_probes=4, baseline=False, verbose=False)
    fit(tmp_path, cb, max_epochs=1, val_check_interval=0.5)
    steps = [r["global_step"] for r in cb.history]
    assert steps == [1, 3]  # _batches_that_stepped, the step of Lightning's val_* curves


def test_validate_and_test_run_under_inference_mode(tmp_path):
    cb = GradCAMCallback(num_probes=4, verbose=False)
    trainer, model = fit(tmp_path, cb, max_epochs=1)
    n = len(cb.history)
    _, val = loaders()
    trainer.validate(model, val, verbose=False)
    trainer.test(model, val, verbose=False)
    assert [r["stage"] for r in cb.history[n:]] == ["validate", "test"]
    for r in cb.history[n:]:
        assert r["metrics"]["probe/confidence"] > 0
        assert r["metrics"]["attention/entropy"] > 0  # a real, non-empty map


def test_target_label_versus_predicted(tmp_path):
    data = blob_data(8, seed=3)
    probes = ProbeSet(data["image"], 1 - data["label"])  # wrong labels: never all predicted
    by_label = GradCAMCallback(probes=probes, target="label", baseline=False, verbose=False)
    fit(tmp_path / "a", by_label, max_epochs=1)
    by_pred = GradCAMCallback(probes=probes, target="predicted", baseline=False, verbose=False)
    fit(tmp_path / "b", by_pred, max_epochs=1)
    # the probability of the (wrong) label is below that of the predicted class
    assert (
        by_label.history[-1]["metrics"]["probe/confidence"]
        < by_pred.history[-1]["metrics"]["probe/confidence"]
    )
    assert by_pred.history[-1]["metrics"]["probe/confidence"] >= 0.5


# ---------------------------------------------------------------------------- probes
@pytest.mark.parametrize("layout", ["x", "xy", "xyo", "xyoa", "dict"])
def test_batch_layouts(layout):
    keys = {"image": "img", "label": "y", "object_mask": "om", "artifact_mask": "am"}
    from lit_helpers import TupleDataset

    ds = TupleDataset(blob_data(12, seed=4), layout, keys=keys if layout == "dict" else None)
    bk = BatchKeys("img", "y", "om", "am") if layout == "dict" else BatchKeys()
    probes = select_probes(DataLoader(ds, batch_size=5), 6, keys=bk)
    assert probes.images.shape == (6, 3, 32, 32)
    assert (probes.labels is not None) == (layout != "x")
    assert (probes.object_masks is not None) == (layout in ("xyo", "xyoa", "dict"))
    assert (probes.artifact_masks is not None) == (layout in ("xyoa", "dict"))
    if probes.object_masks is not None:
        assert probes.object_masks.dtype == torch.bool and probes.object_masks.shape == (6, 32, 32)


def test_probe_selection_keeps_global_rng_and_shuffled_loader():
    from lit_helpers import TupleDataset

    ds = TupleDataset(blob_data(40, seed=5), "xy")
    loader = DataLoader(ds, batch_size=8, shuffle=True)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = select_probes(loader, 8)
    assert torch.equal(torch.get_rng_state(), before)
    b = select_probes(loader, 8)
    torch.testing.assert_close(a.images, b.images)  # deterministic, not the shuffled order
    torch.testing.assert_close(a.images, ds.data["image"][:8])


def test_probeset_validation_messages():
    x = torch.randn(4, 3, 8, 8)
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        ProbeSet(torch.randn(3, 8, 8))
    with pytest.raises(ValueError, match=r"labels must have shape \[N\] = \[4\], got \(3,\)"):
        ProbeSet(x, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"object_masks must have shape \[N, H, W\] = \[4, 8, 8\]"):
        ProbeSet(x, object_masks=torch.zeros(4, 7, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="floating point or uint8"):
        ProbeSet(torch.zeros(4, 3, 8, 8, dtype=torch.int32))
    with pytest.raises(ValueError, match="integer class indices"):
        ProbeSet(x, torch.zeros(4))
    with torch.inference_mode():
        inf = torch.randn(4, 3, 8, 8)
    assert not ProbeSet(inf).images.is_inference()


# ---------------------------------------------------------------------------- bad input
def test_no_validation_dataloader_warns_and_disables(tmp_path):
    cb = GradCAMCallback(verbose=False)
    train, _ = loaders()
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, callbacks=[cb], logger=False, max_epochs=1))
    with pytest.warns(UserWarning, match="no validation dataloader and no probes"):
        trainer.fit(TinyModule(), train)
    assert cb.history == []


def test_unknown_layer_fails_at_setup_with_close_names(tmp_path):
    cb = GradCAMCallback(target_layer="net.0.4x", verbose=False)
    model = TinyModule()
    with pytest.raises(ValueError, match=r"net\.0\.4"):
        fit(tmp_path, cb, model=model)
    assert model.global_step == 0  # raised before any training step


def test_model_without_spatial_layer_fails_clearly(tmp_path):
    class Flat(TinyModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 2))

    with pytest.raises(ValueError, match="no layer with a 4-D spatial output"):
        fit(tmp_path, GradCAMCallback(verbose=False), model=Flat())


def test_wrong_masks_labels_and_non_images_fail_at_setup(tmp_path):
    data = blob_data(4)
    with pytest.raises(ValueError, match="out of range for a model with 2 outputs"):
        fit(tmp_path, GradCAMCallback(probes=ProbeSet(data["image"], torch.tensor([0, 1, 2, 1]))))
    from lit_helpers import TupleDataset

    class Vectors(TupleDataset):
        def __getitem__(self, i):
            return torch.randn(10), torch.tensor(0)

    cb = GradCAMCallback(verbose=False)
    train, _ = loaders()
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, callbacks=[cb], logger=False))
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        trainer.fit(TinyModule(), train, DataLoader(Vectors(data), batch_size=2))


class NanForMarkedImages(TinyModule):
    """NaN logits for images whose first pixel is > 100 (NaN pixels fail at set-up instead)."""

    def forward(self, x):
        out = self.net(x)
        marked = x.flatten(1)[:, :1] > 100
        return out * torch.where(marked, float("nan"), 1.0)  # NaN gradients too


def test_nan_map_is_skipped_with_a_warning(tmp_path):
    data = blob_data(4)
    images = data["image"].clone()
    images[1, 0, 0, 0] = 1000.0
    cb = GradCAMCallback(probes=ProbeSet(images, data["label"]), baseline=False, verbose=False)
    with pytest.warns(UserWarning, match=r"probe\(s\) \[1\] gave a NaN or inf map"):
        fit(tmp_path, cb, max_epochs=1, model=NanForMarkedImages())
    assert len(cb.history) == 1


def test_monitor_fault_is_a_warning_not_a_crash(tmp_path, monkeypatch):
    cb = GradCAMCallback(num_probes=4, verbose=False)

    def boom(**_):
        raise RuntimeError("metric exploded")

    monkeypatch.setattr(cb.monitor, "analyze", boom)
    with pytest.warns(UserWarning, match="metric exploded"):
        trainer, _ = fit(tmp_path, cb, max_epochs=1)
    assert trainer.current_epoch == 1 and cb.history == []


# ---------------------------------------------------------------------------- undisturbed
def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("accumulate", [1, 2])
def test_training_is_bit_identical_with_and_without_callback(tmp_path, accumulate):
    kw = dict(max_epochs=2, deterministic=True, accumulate_grad_batches=accumulate)
    _, plain = fit(tmp_path / "a", None, **kw)
    cb = GradCAMCallback(num_probes=8, verbose=False, sanity_check=False)
    _, with_cb = fit(tmp_path / "b", cb, **kw)
    assert len(cb.history) == 3
    a, b = _weights(plain), _weights(with_cb)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # every parameter and buffer, bit for bit


def test_modes_and_grads_restored_after_a_run(tmp_path):
    cb = GradCAMCallback(num_probes=4, verbose=False)
    trainer, model = fit(tmp_path, cb, max_epochs=1)
    model.train()
    model.net[3].eval()  # a submodule deliberately in eval
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    cb._run(trainer, model, stage="validate", use_log=False)
    assert model.training and not model.net[3].training and model.net[0].training
    assert all(torch.equal(p.grad, torch.full_like(p, 7.0)) for p in model.parameters())
    assert all(not m._forward_hooks for m in model.modules())


def test_frozen_backbone(tmp_path):
    model = TinyModule()
    for p in model.net[0].parameters():
        p.requires_grad_(False)
    cb = GradCAMCallback(num_probes=4, verbose=False)
    fit(tmp_path, cb, model=model, max_epochs=1)
    assert cb.history[-1]["metrics"]["attention/entropy"] > 0


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true", "16-mixed"])
def test_precision(tmp_path, precision):
    cb = GradCAMCallback(num_probes=4, verbose=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fit(tmp_path, cb, max_epochs=1, precision=precision)
        except Exception as err:  # a Lightning/CPU combination that does not exist
            if "not supported" in str(err).lower():
                pytest.skip(f"{precision} on CPU: {err}")
            raise
    assert len(cb.history) == 2
    m = cb.history[-1]["metrics"]
    assert m["attention/entropy"] > 0 and m["probe/confidence"] > 0


def test_compiled_model(tmp_path):
    model = TinyModule()
    compiled = torch.compile(model, backend="eager")
    cb = GradCAMCallback(num_probes=4, verbose=False)
    fit(tmp_path, cb, model=compiled, max_epochs=1)
    assert len(cb.history) == 2
    assert cb.history[-1]["metrics"]["attention/entropy"] > 0


# ---------------------------------------------------------------------------- state
def test_state_dict_round_trip_weights_only(tmp_path):
    cb = GradCAMCallback(num_probes=4, verbose=False)
    fit(tmp_path, cb, max_epochs=1)
    path = tmp_path / "state.pt"
    torch.save(cb.state_dict(), path)
    state = torch.load(path, weights_only=True)
    assert state["version"] == 2 and state["in_flight"] is None  # nothing in flight after a fit
    other = GradCAMCallback(num_probes=4, verbose=False)
    other.load_state_dict(state)
    other.load_state_dict(state)  # tolerant of being called twice
    torch.testing.assert_close(other.probes.images, cb.probes.images)
    assert _same_history(other.history, cb.history)
    torch.testing.assert_close(other.monitor.baseline_maps, cb.monitor.baseline_maps)
    assert "GradCAMCallback" in cb.state_key and "gradcam" in cb.state_key


def _same_history(a, b):
    def norm(r):
        return {**r, "metrics": {k: (None if v != v else v) for k, v in r["metrics"].items()}}

    return [norm(r) for r in a] == [norm(r) for r in b]


def test_resume_keeps_probes_and_baseline(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    cb = GradCAMCallback(num_probes=6, verbose=False)
    train, val = loaders()
    pl.seed_everything(0)
    kw = trainer_kwargs(tmp_path, callbacks=[cb, ckpt], logger=False, enable_checkpointing=True)
    trainer = pl.Trainer(**{**kw, "max_epochs": 2})
    trainer.fit(TinyModule(), train, val)
    baseline = cb.monitor.baseline_maps.clone()

    # resume with a *different* validation set: the probes must come from the checkpoint
    cb2 = GradCAMCallback(num_probes=6, verbose=False)
    _, other_val = loaders(n_val=32)
    other_val = DataLoader(other_val.dataset.__class__(blob_data(32, seed=99)), batch_size=16)
    kw2 = {**kw, "callbacks": [cb2, ModelCheckpoint(dirpath=tmp_path / "ckpt2")], "max_epochs": 3}
    trainer2 = pl.Trainer(**kw2)
    trainer2.fit(TinyModule(), train, other_val, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    torch.testing.assert_close(cb2.probes.images, cb.probes.images)
    torch.testing.assert_close(cb2.monitor.baseline_maps, baseline)
    assert [r["stage"] for r in cb2.history] == ["baseline", "fit", "fit", "fit"]
    assert "drift/pearson_baseline" in cb2.history[-1]["metrics"]
    loaded = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert any("GradCAMCallback" in k for k in loaded["callbacks"])


def test_invalid_arguments():
    with pytest.raises(ValueError, match="every_n_epochs"):
        GradCAMCallback(every_n_epochs=0)
    with pytest.raises(ValueError, match=r"[Uu]nknown method"):
        GradCAMCallback(method="gradcamm")
    with pytest.raises(ValueError, match="on_flag"):
        GradCAMCallback(on_flag="explode")
    with pytest.raises(ValueError, match="both mean and std"):
        GradCAMCallback(mean=[0.5, 0.5, 0.5])


def test_opt_in_quality_checks(tmp_path):
    cb = GradCAMCallback(
        num_probes=4,
        verbose=False,
        sanity_check=True,
        faithfulness_every_n_runs=1,
        faithfulness_steps=4,
        occlusion_every_n_runs=2,
    )
    fit(tmp_path, cb, max_epochs=2)
    runs = [r for r in cb.history if r["stage"] != "sanity_check"]
    assert all(0 <= r["metrics"]["faithfulness/deletion_auc"] <= 1 for r in runs)
    assert ["attention/occlusion_agreement" in r["metrics"] for r in runs] == [False, True, False]
    sanity = cb.history[-1]
    assert sanity["stage"] == "sanity_check"
    assert -1 <= sanity["metrics"]["sanity/similarity"] <= 1
    assert sanity["flags"] == ([] if sanity["metrics"]["sanity/passed"] else ["unfaithful"])
