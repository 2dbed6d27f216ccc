"""A LightningModule with dict batches and object/artifact masks.

Masks make the alarms exact: with ``artifact_mask`` in the batches the callback measures how much
of the attention falls on the artifact itself (``gradcam/attention/artifact_enrichment``), with
``object_mask`` how much stays on the object; without masks it falls back to mask-free measures.
Here the batches use their own key names, told to the callback with ``image_key``, ``label_key``,
``object_mask_key`` and ``artifact_mask_key``. (Alternatively, give the probes explicitly:
``GradCAMCallback(probes=ProbeSet(images, labels, object_masks, artifact_masks))``.)

Run::

    python examples/dict_batches_masks.py --fast
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from gradcam_callback import GradCAMCallback
from gradcam_callback.demos import MEAN, STD, ShortcutDataset, SmallCNN


class Renamed(Dataset):
    """A :class:`ShortcutDataset` whose items are dicts with this project's own key names."""

    def __init__(self, base: ShortcutDataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        image, label, object_mask, artifact_mask = self.base[i]
        return {"pixels": image, "target": label, "obj": object_mask, "tag": artifact_mask}


class DictClassifier(pl.LightningModule):
    """Reads ``batch["pixels"]`` and ``batch["target"]``; the masks ride along unused."""

    def __init__(self, lr: float = 3e-3) -> None:
        super().__init__()
        self.net = SmallCNN(num_classes=2)  # Grad-CAM layer found automatically: net.features
        self.lr = lr

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = F.cross_entropy(self(batch["pixels"]), batch["target"])
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        logits = self(batch["pixels"])
        self.log("val_acc", (logits.argmax(1) == batch["target"]).float().mean(), prog_bar=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def main(argv: Sequence[str] | None = None) -> GradCAMCallback:
    """Train with dict batches; return the callback."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="tiny data and 2 epochs")
    parser.add_argument("--artifact", default="tag", help="watermark, tag, border, stamp, texture")
    parser.add_argument("--root", default=".", help="Trainer default_root_dir")
    args = parser.parse_args(argv)

    n_train, epochs = (256, 2) if args.fast else (1536, 4)
    train = Renamed(ShortcutDataset(n_train, artifact=args.artifact, seed=1))
    val = Renamed(ShortcutDataset(64, artifact=args.artifact, seed=2))

    cb = GradCAMCallback(
        num_probes=8,
        image_key="pixels",
        label_key="target",
        object_mask_key="obj",
        artifact_mask_key="tag",
        mean=list(MEAN),  # show the probes in true colour
        std=list(STD),
    )
    trainer = pl.Trainer(max_epochs=epochs, callbacks=[cb], default_root_dir=args.root)
    trainer.fit(
        DictClassifier(),
        DataLoader(train, batch_size=32, shuffle=True),
        DataLoader(val, batch_size=64),
    )
    masks = cb.probes is not None and cb.probes.artifact_masks is not None
    last = cb.history[-1]["metrics"]
    print(
        f"artifact masks found: {masks}; artifact enrichment "
        f"{last.get('attention/artifact_enrichment', float('nan')):.1f}; "
        f"flags: {sorted({f.kind for f in cb.flags}) or 'none'}"
    )
    return cb


if __name__ == "__main__":
    main()
