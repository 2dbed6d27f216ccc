"""Probe selection: the per-class default policy, its cap, and the fixed-count policy."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from gradcam_callback.probes import choose_probes, select_probes


def _loader(labels: list[int], batch_size: int = 7) -> DataLoader:
    n = len(labels)
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 4, 4).clone()
    return DataLoader(TensorDataset(images, torch.tensor(labels)), batch_size=batch_size)


def test_default_policy_gives_every_class_per_class_probes_and_reports_counts() -> None:
    labels = [i % 10 for i in range(300)]
    choice = choose_probes(_loader(labels))
    assert choice.counts == {c: 8 for c in range(10)} and choice.unwatched == []
    assert len(choice.probes) == 80 and "8 probes per class for 10 classes" in choice.policy
    # the earliest samples of each class, in dataset order
    first = choice.probes.images[:, 0, 0, 0].long().tolist()
    assert first == sorted(first) and first[:10] == list(range(10))


def test_a_rare_class_gets_what_it_has() -> None:
    labels = [0] * 50 + [1] * 3 + [2] * 50
    choice = choose_probes(_loader(labels), per_class=8)
    assert choice.counts == {0: 8, 1: 3, 2: 8}


def test_more_classes_than_the_cap_watch_the_most_frequent_and_name_the_rest() -> None:
    labels = [c for c in range(6) for _ in range(10 + c)]  # class 5 is the most frequent
    choice = choose_probes(_loader(labels), per_class=4, max_probes=12)
    assert sorted(choice.counts) == [3, 4, 5] and choice.unwatched == [0, 1, 2]
    picked = choose_probes(_loader(labels), per_class=4, max_probes=12, classes=[0, 2])
    assert sorted(picked.counts) == [0, 2] and picked.unwatched == [1, 3, 4, 5]
    with pytest.raises(ValueError, match="none of classes"):
        choose_probes(_loader(labels), classes=[9])


def test_a_dataset_sorted_by_class_is_scanned_end_to_end() -> None:
    labels = [c for c in range(4) for _ in range(100)]  # like an image folder: sorted by class
    choice = choose_probes(_loader(labels), per_class=2, scan=40)
    assert choice.scanned == 40 and sorted(choice.counts) == [0, 1, 2, 3]


def test_fixed_count_policy_is_balanced_and_deterministic() -> None:
    labels = [0] * 20 + [1] * 20
    a = select_probes(_loader(labels), 6)
    b = select_probes(_loader(labels), 6)
    assert torch.equal(a.images, b.images) and a.labels.tolist().count(1) == 3
    first = select_probes(_loader(labels), 6, balanced=False)
    assert first.labels.tolist() == [0] * 6


def test_without_labels_the_first_samples_are_taken() -> None:
    images = torch.rand(50, 1, 4, 4)
    choice = choose_probes(DataLoader(TensorDataset(images), batch_size=8), unlabeled=12)
    assert len(choice.probes) == 12 and choice.probes.labels is None and choice.counts == {}
