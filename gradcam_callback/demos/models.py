"""Models of the planted-shortcut world: a small CNN and its Lightning classifier.

:class:`SmallCNN` has an obvious Grad-CAM target layer (``features``, stride 4) and initialises
from a local generator; :class:`ShortcutClassifier` trains it (or any logits model) with
cross-entropy and logs ``train_loss``, ``val_loss`` / ``val_acc`` and ``test_loss`` / ``test_acc``.
"""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..probes import unpack_batch
from .world import mix_seed

__all__ = ["ShortcutClassifier", "SmallCNN"]


def _block(cin: int, cout: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


class SmallCNN(nn.Module):
    """Small conv net with an obvious Grad-CAM target layer.

    ``features`` (``nn.Sequential`` of three conv-BN-ReLU blocks, total stride 4: ``[N, 2w, H/4,
    W/4]``, i.e. 16x16 for 64x64 inputs) -> ``pool`` (global average) -> ``head``
    (``nn.Linear(2w, num_classes)``). The target layer is ``"features"`` (or its last block
    ``"features.2"``); no in-place ops.

    Args:
        in_channels: input channels ``C``.
        num_classes: output logits ``K``.
        width: channels of the first block ``w`` (the others have ``2w``).
        seed: parameter initialisation seed (local generator; the global RNG is not used).
    """

    def __init__(
        self, in_channels: int = 3, num_classes: int = 2, width: int = 16, seed: int = 0
    ) -> None:
        super().__init__()
        # Built on the meta device (PyTorch's default init would draw from the global RNG), then
        # materialised and initialised from a local generator.
        with torch.device("meta"):
            self.features = nn.Sequential(
                _block(in_channels, width, 5, 2),
                _block(width, 2 * width, 3, 2),
                _block(2 * width, 2 * width, 3, 1),
            )
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.head = nn.Linear(2 * width, num_classes)
        self.to_empty(device="cpu")
        self.reset_parameters(seed)

    @torch.no_grad()
    def reset_parameters(self, seed: int = 0) -> None:
        """Kaiming-uniform init (PyTorch's default scheme) drawn from a local generator."""
        gen = torch.Generator().manual_seed(mix_seed(seed, 1234))
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=gen)
                if m.bias is not None:
                    fan_in = m.weight[0].numel()
                    bound = 1.0 / math.sqrt(fan_in)
                    nn.init.uniform_(m.bias, -bound, bound, generator=gen)
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        """``x`` float ``[N, C, H, W]`` -> logits float ``[N, K]``."""
        return self.head(self.pool(self.features(x)).flatten(1))


class ShortcutClassifier(pl.LightningModule):
    """Cross-entropy classifier around :class:`SmallCNN` (or any ``nn.Module`` giving logits).

    Logs ``train_loss`` (per step and epoch), ``val_loss``, ``val_acc``, ``test_loss``,
    ``test_acc`` (epoch means). Batches: tuples ``(x, y, ...)`` or dicts with ``"image"`` /
    ``"label"``. With the default network the Grad-CAM target layer is ``"model.features"``.

    Args:
        num_classes: number of classes ``K``.
        in_channels: input channels.
        width: :class:`SmallCNN` width.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        seed: initialisation seed of the default network.
        model: a network to train instead of :class:`SmallCNN` (``[N, C, H, W] -> [N, K]``).
    """

    def __init__(
        self,
        num_classes: int = 2,
        in_channels: int = 3,
        width: int = 16,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        seed: int = 0,
        model: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        self.model = model if model is not None else SmallCNN(in_channels, num_classes, width, seed)

    def forward(self, x: Tensor) -> Tensor:
        """``x`` float ``[N, C, H, W]`` (normalised) -> logits float ``[N, K]``."""
        return self.model(x)

    def _step(self, batch: Any, stage: str) -> Tensor:
        x, y, _, _ = unpack_batch(batch)
        if y is None:
            raise ValueError(
                "ShortcutClassifier trains on labelled batches: (x, y, ...) or a dict with an "
                "'image' and a 'label' key"
            )
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        n = y.shape[0]
        if stage == "train":
            self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n)
        else:
            acc = (logits.argmax(dim=1) == y).float().mean()
            self.log(f"{stage}_loss", loss, prog_bar=False, batch_size=n)
            self.log(f"{stage}_acc", acc, prog_bar=True, batch_size=n)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Cross-entropy on one batch; returns the loss."""
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Logs ``val_loss`` and ``val_acc``."""
        return self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Logs ``test_loss`` and ``test_acc``."""
        return self._step(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam with ``lr`` and ``weight_decay``."""
        return torch.optim.Adam(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
