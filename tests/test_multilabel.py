"""Multi-label classifiers: label sets, one explanation per positive label, a planted shortcut.

The world: 32x32 images with 0-3 objects (label 0: a red square, 1: a green disc, 2: a blue bar),
each present with probability 1/2, trained with BCE. In the shortcut world a white corner mark is
present exactly when label 2 is, so a model can read label 2 off the corner; in the clean world
the mark is drawn independently of the labels. The callback must flag an ``artifact`` for label 2
only in the first, and raise no shortcut flag in the second.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from gradcam_callback import GradCAMCallback, ProbeSet
from gradcam_callback.multilabel import expand_positive_labels, plan_task, sigmoid_outputs
from gradcam_callback.probes import choose_probes

SIZE, LABELS, MARK = 32, 3, 5  # image side, labels, corner mark side


def world(n: int, seed: int, shortcut: bool, mark: str = "planted") -> dict[str, Tensor]:
    """``image [n, 3, S, S]``, multi-hot ``label [n, 3]`` (float), ``artifact_mask [n, S, S]``.

    ``mark``: ``"planted"`` (with label 2 in the shortcut world, at random in the clean one),
    ``"swapped"`` (exactly where label 2 is absent) or ``"none"``.
    """
    g = torch.Generator().manual_seed(seed)
    labels = (torch.rand(n, LABELS, generator=g) < 0.5).float()
    images = 0.15 * torch.randn(n, 3, SIZE, SIZE, generator=g)
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    cells = [(8, 8), (8, 24), (24, 8), (24, 24)]  # centres of the 2x2 cells
    colours = torch.tensor([[1.2, -0.3, -0.3], [-0.3, 1.2, -0.3], [-0.3, -0.3, 1.2]])
    for i in range(n):
        order = torch.randperm(4, generator=g).tolist()
        for k in range(LABELS):
            if labels[i, k] == 0:
                continue
            cy, cx = cells[order[k]]
            cy += int(torch.randint(-2, 3, (1,), generator=g))
            cx += int(torch.randint(-2, 3, (1,), generator=g))
            if k == 0:
                shape = ((yy - cy).abs() <= 3) & ((xx - cx).abs() <= 3)
            elif k == 1:
                shape = (yy - cy) ** 2 + (xx - cx) ** 2 <= 12
            else:
                shape = ((yy - cy).abs() <= 1) & ((xx - cx).abs() <= 5)
            images[i, :, shape] += colours[k][:, None]
    if mark == "planted":
        has = labels[:, 2] > 0 if shortcut else torch.rand(n, generator=g) < 0.5
    elif mark == "swapped":
        has = labels[:, 2] == 0
    else:
        has = torch.zeros(n, dtype=torch.bool)
    artifact = torch.zeros(n, SIZE, SIZE, dtype=torch.bool)
    artifact[has, :MARK, :MARK] = True
    images = torch.where(artifact[:, None], torch.full_like(images, 1.5), images)
    return {"image": images, "label": labels, "artifact_mask": artifact}


class Dicts(Dataset):
    def __init__(self, data: dict[str, Tensor]) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data["label"])

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {k: v[i] for k, v in self.data.items()}


class MultiLabelNet(pl.LightningModule):
    """A tiny CNN with 3 sigmoid outputs, trained with BCEWithLogits."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
            nn.Linear(32, LABELS),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: dict[str, Tensor], _i: int) -> Tensor:
        loss = nn.functional.binary_cross_entropy_with_logits(self(batch["image"]), batch["label"])
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: dict[str, Tensor], _i: int) -> None:
        logits = self(batch["image"])
        self.log("val_loss", nn.functional.binary_cross_entropy_with_logits(logits, batch["label"]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=3e-3)


def label_accuracy(model: nn.Module, data: dict[str, Tensor]) -> Tensor:
    """Per-label accuracy ``[3]`` (logit > 0 against the labels)."""
    model.eval()
    with torch.no_grad():
        pred = model(data["image"]) > 0
    return (pred == (data["label"] > 0)).float().mean(0)


def fit(
    tmp_path: Path,
    shortcut: bool,
    use_masks: bool = True,
    epochs: int = 6,
    task: str = "multilabel",
):
    """Train in the (shortcut or clean) world with the callback and a TensorBoardLogger."""
    pl.seed_everything(0)
    train = DataLoader(Dicts(world(768, 1, shortcut)), batch_size=32, shuffle=True)
    val = DataLoader(Dicts(world(160, 2, shortcut)), batch_size=64)
    cb = GradCAMCallback(task=task, every_n_epochs=epochs, use_masks=use_masks, verbose=False)
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    trainer = pl.Trainer(
        default_root_dir=str(tmp_path),
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        logger=logger,
        callbacks=[cb],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        log_every_n_steps=5,
    )
    model = MultiLabelNet()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, train, val)
    messages = [str(w.message) for w in caught if "GradCAMCallback" in str(w.message)]
    return cb, model, logger, messages


def _events(log_dir: str) -> EventAccumulator:
    acc = EventAccumulator(log_dir, size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def _text(acc: EventAccumulator, tag: str) -> str:
    return acc.Tensors(tag)[-1].tensor_proto.string_val[0].decode()


# ---------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("use_masks", [True, False], ids=["masks", "mask-free"])
def test_a_shortcut_in_one_label_is_flagged_for_that_label_only(tmp_path, use_masks):
    cb, model, logger, messages = fit(tmp_path, shortcut=True, use_masks=use_masks)
    # the world is what it claims: label 2 is read off the mark (ground truth)
    assert label_accuracy(model, world(300, 3, True)).min() > 0.95
    swapped = label_accuracy(model, world(300, 3, True, mark="swapped"))
    assert swapped[:2].min() > 0.95 and swapped[2] < 0.2

    probes, explained, index = cb.probes, cb.explained_probes, cb.explained_index
    assert probes.is_multilabel and probes.labels is None
    # one row per (probe, positive label); each label gets at least probes_per_class rows
    assert len(explained) == int(probes.label_sets.sum())
    assert torch.equal(explained.images, probes.images[index])
    assert bool(explained.label_sets[torch.arange(len(explained)), explained.labels].all())
    assert torch.bincount(explained.labels, minlength=LABELS).min() >= 8

    shortcut = [f for f in cb.flags if f.kind in ("artifact", "background")]
    assert shortcut and {f.kind for f in shortcut} == {"artifact"}
    assert all(f.classes == (2,) for f in shortcut), [(f.kind, f.classes) for f in shortcut]
    assert any("class 2" in m and "[artifact]" in m for m in messages)

    # confidence is the explained label's sigmoid, accuracy the share predicted present
    model.eval()
    with torch.no_grad():
        pred, conf = sigmoid_outputs(model(explained.images), explained.labels)
    last = cb.history[-1]["metrics"]
    assert last["probe/confidence"] == pytest.approx(float(conf.mean()), abs=1e-5)
    assert last["probe/accuracy"] == pytest.approx(float(pred.float().mean()), abs=1e-6)
    assert 0.0 < last["probe/confidence"] <= 1.0

    # read back what was written
    acc = _events(logger.log_dir)
    steps = [e.step for e in acc.Scalars("gradcam/probe/confidence")]
    assert len(steps) == 2 and steps[0] == 0  # the baseline and the last epoch's run
    assert acc.Scalars("gradcam/probe/confidence")[-1].value == pytest.approx(
        last["probe/confidence"], abs=1e-5
    )
    grid = np.array(Image.open(io.BytesIO(acc.Images("gradcam/overlays")[-1].encoded_image_string)))
    rows = min(len(explained), cb.max_images)
    assert grid.shape[:2] == (rows * (SIZE + 2) + 2, 3 * (SIZE + 2) + 2) and grid.std() > 10
    table = _text(acc, "gradcam/probes/text_summary")
    assert table.count("\n") >= len(explained)  # a row per explained label
    assert "class 2" in _text(acc, "gradcam/flags/text_summary")
    if use_masks:
        assert last["attention/artifact_enrichment/class_2"] > 3.0
        assert max(last[f"attention/artifact_enrichment/class_{c}"] for c in (0, 1)) < 1.0


def test_the_clean_world_raises_no_shortcut_flag_and_auto_says_multilabel(tmp_path):
    cb, model, _, messages = fit(tmp_path, shortcut=False, task="auto")
    assert label_accuracy(model, world(300, 3, False, mark="swapped")).min() > 0.95
    assert cb.probes.is_multilabel
    assert not [f for f in cb.flags if f.kind in ("artifact", "background")], cb.flags
    said = [m for m in messages if "multi-hot" in m]
    assert len(said) == 1 and "task='multilabel'" in said[0], messages


# ---------------------------------------------------------------------------- the pieces
def _images(n: int) -> Tensor:
    return torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 4, 4).clone()


def test_probe_set_reads_multi_hot_rows_as_label_sets_and_keeps_them_across_a_checkpoint():
    rows = torch.tensor([[1, 0, 1], [0, 0, 0], [0, 1, 0], [1, 1, 1]]).float()
    probes = ProbeSet(_images(4), rows, artifact_masks=torch.zeros(4, 4, 4, dtype=torch.bool))
    assert probes.labels is None and probes.is_multilabel
    assert probes.label_sets.dtype == torch.bool and torch.equal(probes.label_sets, rows.bool())
    back = ProbeSet.from_state_dict(probes.state_dict())
    assert back.is_multilabel and torch.equal(back.label_sets, probes.label_sets)
    # one-hot rows stay class indices; soft rows are no label sets
    assert ProbeSet(_images(2), torch.eye(2)).labels.tolist() == [0, 1]
    with pytest.raises(ValueError, match="bool or 0/1"):
        ProbeSet(_images(2), label_sets=torch.tensor([[0.3, 0.7], [1.0, 0.0]]))
    with pytest.raises(ValueError, match=r"\[N, K\] = \[2, K\]"):
        ProbeSet(_images(2), label_sets=torch.ones(3, 2))
    with pytest.raises(ValueError, match="positive in its probe's label set"):
        ProbeSet(_images(2), torch.tensor([1, 0]), label_sets=torch.tensor([[1, 0], [1, 0]]))
    with pytest.raises(ValueError, match="3 labels, the model 2 outputs"):
        probes.check_num_classes(2)


def test_each_probe_is_explained_once_per_positive_label():
    rows = torch.tensor([[1, 0, 1], [0, 0, 0], [0, 1, 0], [1, 1, 1]]).bool()
    masks = torch.zeros(4, 4, 4, dtype=torch.bool)
    masks[3, 0, 0] = True
    probes = ProbeSet(_images(4), label_sets=rows, artifact_masks=masks)
    out = expand_positive_labels(probes)
    assert out.index.tolist() == [0, 0, 2, 3, 3, 3]
    assert out.probes.labels.tolist() == [0, 2, 1, 0, 1, 2]
    assert torch.equal(out.probes.images, probes.images[out.index])
    assert out.probes.artifact_masks[3:].flatten(1).any(1).all()  # masks follow their image
    only = expand_positive_labels(probes, classes=[2])
    assert only.index.tolist() == [0, 3] and only.probes.labels.tolist() == [2, 2]
    with pytest.raises(ValueError, match="nothing to explain"):
        expand_positive_labels(ProbeSet(_images(2), label_sets=torch.zeros(2, 3)))


def test_plan_task_auto_multiclass_predicted():
    multi = ProbeSet(_images(3), label_sets=torch.tensor([[1, 1], [0, 0], [0, 1]]))
    auto = plan_task("auto", multi)
    assert auto.multilabel and auto.explained.labels.tolist() == [0, 1, 1]
    assert (
        "task='multilabel'" in auto.message and "1 probe(s) with no positive label" in auto.message
    )
    assert plan_task("multilabel", multi).multilabel
    assert (
        plan_task("multilabel", ProbeSet(_images(3), label_sets=torch.ones(3, 2))).message is None
    )
    top = plan_task("multilabel", multi, target="predicted")
    assert top.multilabel and top.explained.labels is None and len(top.explained) == 3
    with pytest.raises(ValueError, match="task='multilabel'"):
        plan_task("multiclass", multi)
    single = ProbeSet(_images(3), torch.tensor([0, 1, 1]))
    assert not plan_task("auto", single).multilabel
    assert plan_task("multilabel", single).multilabel  # class indices: one label each, sigmoid
    with pytest.raises(ValueError, match="task must be one of"):
        GradCAMCallback(task="multi-label")


def test_label_sets_survive_the_callback_checkpoint(tmp_path):
    cb = GradCAMCallback(probes=ProbeSet(_images(3), label_sets=torch.eye(3)[[0, 1, 1]] > 0))
    torch.save(cb.state_dict(), tmp_path / "cb.pt")
    fresh = GradCAMCallback(task="multilabel")
    fresh.load_state_dict(torch.load(tmp_path / "cb.pt", weights_only=True))
    assert fresh.probes.is_multilabel and torch.equal(fresh.probes.label_sets, cb.probes.label_sets)


def test_sigmoid_outputs_read_the_target_logit():
    logits = torch.tensor([[2.0, -1.0], [0.0, -3.0]])
    pred, conf = sigmoid_outputs(logits, torch.tensor([1, 0]))
    assert pred.tolist() == [0, 0]
    assert conf.tolist() == pytest.approx([torch.sigmoid(torch.tensor(-1.0)).item(), 0.5])


def test_probe_choice_per_label_with_the_cap():
    data = world(200, 5, shortcut=True)
    loader = DataLoader(Dicts(data), batch_size=50)
    choice = choose_probes(loader, per_class=4, max_probes=64, multilabel=None)
    sets = choice.probes.label_sets
    assert choice.probes.is_multilabel and sets.any(1).all()  # no probe without a label
    assert all(choice.counts[c] >= 4 for c in range(LABELS))
    assert sum(choice.counts.values()) == int(sets.sum()) <= 64
    assert choice.probes.artifact_masks is not None
    capped = choose_probes(loader, per_class=8, max_probes=10, multilabel=True)
    assert int(capped.probes.label_sets.sum()) <= 10
    fixed = choose_probes(loader, num_probes=5, multilabel=True)
    assert len(fixed.probes) == 5
    # task="multiclass": multi-hot rows are no class indices
    with pytest.warns(UserWarning, match="no integer label"):
        assert choose_probes(loader, per_class=4, multilabel=False).probes.labels is None
