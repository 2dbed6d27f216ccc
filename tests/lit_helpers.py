"""Small, fast Lightning pieces for the callback tests (both Lightning namespaces)."""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset


def blob_data(n: int = 64, size: int = 32, seed: int = 0) -> dict[str, Tensor]:
    """Images with one bright blob; class 0 = blob in the left half, 1 = right half.

    Returns dict of ``image [n,3,H,W]`` (normalised around 0), ``label [n]``, ``object_mask``
    ``[n,H,W]`` (the blob) and ``artifact_mask`` ``[n,H,W]`` (a fixed 4x4 corner patch).
    """
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    cx = torch.where(labels == 0, size * 0.25, size * 0.75) + torch.randn(n, generator=g) * 1.5
    cy = size * 0.5 + torch.randn(n, generator=g) * size * 0.15
    d2 = (xx[None] - cx[:, None, None]) ** 2 + (yy[None] - cy[:, None, None]) ** 2
    blob = d2 < (size * 0.12) ** 2
    images = 0.2 * torch.randn(n, 3, size, size, generator=g) + blob[:, None].float() * 1.5
    artifact = torch.zeros(n, size, size, dtype=torch.bool)
    artifact[:, :4, :4] = True
    return {"image": images, "label": labels, "object_mask": blob, "artifact_mask": artifact}


class TupleDataset(Dataset):
    """Yields ``(x, y)``, ``(x, y, om)``, ``(x, y, om, am)`` or dicts, by ``layout``."""

    def __init__(self, data: dict[str, Tensor], layout: str = "xy", keys: dict | None = None):
        self.data = data
        self.layout = layout
        self.keys = keys or {}

    def __len__(self) -> int:
        return len(self.data["label"])

    def __getitem__(self, i: int) -> Any:
        d = self.data
        if self.layout == "x":
            return d["image"][i]
        if self.layout == "xy":
            return d["image"][i], d["label"][i]
        if self.layout == "xyo":
            return d["image"][i], d["label"][i], d["object_mask"][i]
        if self.layout == "xyoa":
            return d["image"][i], d["label"][i], d["object_mask"][i], d["artifact_mask"][i]
        if self.layout == "dict":
            return {self.keys.get(k, k): v[i] for k, v in d.items()}
        raise ValueError(self.layout)


def tiny_net(num_classes: int = 2, in_channels: int = 3) -> nn.Module:
    """conv-relu-conv-relu (stride 2: 16x16 maps for 32x32 input) + GAP + linear."""
    return nn.Sequential(
        nn.Sequential(
            nn.Conv2d(in_channels, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
        ),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.1),
        nn.Linear(16, num_classes),
    )


def make_module_class(L: types.ModuleType) -> type:
    """A LightningModule class of namespace ``L`` (``pytorch_lightning`` or ``lightning.pytorch``)."""

    class TinyModule(L.LightningModule):
        def __init__(self, num_classes: int = 2, lr: float = 0.05, layout_keys: str = "image"):
            super().__init__()
            self.net = tiny_net(num_classes)
            self.lr = lr
            self.image_key = layout_keys

        def forward(self, x: Tensor) -> Tensor:
            return self.net(x)

        def _xy(self, batch: Any) -> tuple[Tensor, Tensor]:
            if isinstance(batch, dict):
                keys = list(batch)
                return batch[keys[0]], batch[keys[1]]
            return batch[0], batch[1]

        def training_step(self, batch: Any, _i: int) -> Tensor:
            x, y = self._xy(batch)
            loss = nn.functional.cross_entropy(self(x), y)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch: Any, _i: int) -> None:
            x, y = self._xy(batch)
            logits = self(x)
            self.log("val_loss", nn.functional.cross_entropy(logits, y))
            self.log("val_acc", (logits.argmax(1) == y).float().mean())

        def test_step(self, batch: Any, _i: int) -> None:
            x, y = self._xy(batch)
            self.log("test_acc", (self(x).argmax(1) == y).float().mean())

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)

    return TinyModule


def loaders(
    layout: str = "xy", n_train: int = 64, n_val: int = 32, batch_size: int = 16, **kw: Any
) -> tuple[DataLoader, DataLoader]:
    train = TupleDataset(blob_data(n_train, seed=1), layout, **kw)
    val = TupleDataset(blob_data(n_val, seed=2), layout, **kw)
    return (
        DataLoader(train, batch_size=batch_size, shuffle=True),
        DataLoader(val, batch_size=batch_size),
    )


def trainer_kwargs(tmp_path: Any, **kw: Any) -> dict[str, Any]:
    base = dict(
        default_root_dir=str(tmp_path),
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    base.update(kw)
    return base


def make_datamodule_class(L: types.ModuleType) -> type:
    """A LightningDataModule class of namespace ``L`` over :func:`blob_data` (for CLI tests)."""

    class BlobDataModule(L.LightningDataModule):
        def __init__(self, layout: str = "xy", batch_size: int = 16):
            super().__init__()
            self.layout = layout
            self.batch_size = batch_size

        def train_dataloader(self) -> DataLoader:
            return loaders(self.layout, batch_size=self.batch_size)[0]

        def val_dataloader(self) -> DataLoader:
            return loaders(self.layout, batch_size=self.batch_size)[1]

    return BlobDataModule


def _lightning_classes() -> tuple[type, type]:
    import lightning.pytorch as L

    return make_module_class(L), make_datamodule_class(L)


# importable class paths for lightning.pytorch LightningCLI tests (lightning is a dev dependency)
LightningTinyModule, LightningBlobDataModule = _lightning_classes()
