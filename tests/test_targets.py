"""The one target resolver (gradcam_callback.targets) and its users agreeing on it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradcam_callback.engine import GradCAM
from gradcam_callback.guided import guided_backprop
from gradcam_callback.quality import deletion_curve, occlusion_map
from gradcam_callback.targets import class_indices, freeze_targets, target_scores


def _logits() -> torch.Tensor:
    return torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 0.5]], requires_grad=True)


def test_class_indices_forms() -> None:
    assert torch.equal(class_indices(2, 3), torch.tensor([2, 2, 2]))
    assert torch.equal(class_indices([0, 2, 1], 3), torch.tensor([0, 2, 1]))
    t = class_indices(torch.tensor([1, 0], dtype=torch.int32), 2)
    assert t.dtype == torch.long and torch.equal(t, torch.tensor([1, 0]))
    assert class_indices([5, 7], 2).tolist() == [5, 7]  # no range check without num_classes


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        ([0, 1], "one class per image: expected shape \\[3\\], got \\(2,\\)"),
        (torch.zeros(3, 1, dtype=torch.long), "one class per image"),
        (torch.tensor([0.0, 1.0, 2.0]), "must be integers, got dtype torch.float32"),
        (3, "target class 3 is outside \\[0, 3\\)"),
        ([0, -1, 2], "must lie in \\[0, 3\\), got min -1 and max 2"),
    ],
)
def test_class_indices_errors(targets: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        class_indices(targets, 3, num_classes=3)


def test_target_scores_predicted_fixed_per_image() -> None:
    out = _logits()
    res = target_scores(out, None, 2)
    assert res.indices.tolist() == [1, 0] and res.scores.tolist() == [2.0, 3.0]
    assert res.scores.requires_grad and res.scores.dtype == torch.float32
    assert target_scores(out, 2, 2).scores.tolist() == [-1.0, 0.5]
    assert target_scores(out, [2, 1], 2).indices.tolist() == [2, 1]
    probs = target_scores(out, [2, 1], 2, softmax=True).scores
    torch.testing.assert_close(probs, out.detach().softmax(1)[[0, 1], [2, 1]])


def test_target_scores_callable() -> None:
    out = {"logits": _logits()}
    res = target_scores(out, lambda o: o["logits"][:, 0] * 2, 2, softmax=True)
    assert res.indices is None and res.scores.tolist() == pytest.approx([0.2, 6.0])
    with pytest.raises(ValueError, match=r"shape \[N\] = \[2\].*got \(2, 3\)"):
        target_scores(out, lambda o: o["logits"], 2)
    with pytest.raises(ValueError, match="got dict"):
        target_scores(out, lambda o: {"x": 1}, 2)
    with pytest.raises(ValueError, match=r"\[N, num_classes\], got dict; pass targets=callable"):
        target_scores(out, None, 2)


def test_freeze_targets_predicts_only_for_none() -> None:
    calls = []

    def predict() -> torch.Tensor:
        calls.append(1)
        return _logits()

    assert freeze_targets(None, 2, predict).tolist() == [1, 0] and len(calls) == 1
    assert freeze_targets(1, 2, predict).tolist() == [1, 1] and len(calls) == 1
    fn = lambda o: o[:, 0]  # noqa: E731
    assert freeze_targets(fn, 2, predict) is fn and len(calls) == 1


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        ([0, 3], r"must lie in \[0, 3\)"),
        ([0, 1, 2], "one class per image"),
        (torch.tensor([0.5, 1.0]), "must be integers"),
        (lambda out: out, r"shape \[N\] = \[\d+\]"),  # quality scores chunks
    ],
)
def test_engine_guided_and_quality_share_the_errors(targets: object, message: str) -> None:
    model, x = _net(), torch.randn(2, 3, 8, 8)
    maps = torch.rand(2, 8, 8)
    calls = [
        lambda: GradCAM(model, "0")(x, targets),
        lambda: guided_backprop(model, x, targets),
        lambda: deletion_curve(model, x, maps, targets, steps=2),
        lambda: occlusion_map(model, x, targets, patch=4),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=message):
            call()


def test_users_score_the_same_classes() -> None:
    model, x = _net(), torch.randn(2, 3, 8, 8)
    res = GradCAM(model, "0").explain(x)
    assert torch.equal(res.targets, model(x).argmax(1))
    torch.testing.assert_close(guided_backprop(model, x), guided_backprop(model, x, res.targets))
    torch.testing.assert_close(
        occlusion_map(model, x, patch=4), occlusion_map(model, x, res.targets, patch=4)
    )
