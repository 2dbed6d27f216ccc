"""Fine-tune a torchvision ResNet-18 with GradCAMCallback.

Weights: ``--weights auto`` (the default) uses the ImageNet weights when they are already in the
torch hub cache (``~/.cache/torch/hub/checkpoints/resnet18-f37072fd.pth``) and otherwise falls
back to ``weights=None`` (random initialisation) without touching the network; ``--weights
imagenet`` downloads them if needed (falling back to ``weights=None`` with a message when the
download fails); ``--weights none`` always starts from scratch. The model takes the
planted-shortcut images (normalised with the synthetic world's constants) and re-normalises them
to ImageNet statistics inside ``forward``, so the callback's ``mean``/``std`` are the world's.

Target layer: ``model.layer3`` (stride 16: 4x4 maps for 64x64 inputs, 6x6 for 96x96). The
usual ``model.layer4`` (stride 32) suits 224x224 images (7x7 maps); on these small images it
gives 2x2 or 3x3 maps, too coarse to tell a corner watermark from the object (in a 64x64 run the
artifact alarm stayed silent while the ResNet learned the shortcut). Pass ``--target-layer
model.layer4 --image-size 224`` for the classic setting.

Run::

    python examples/resnet_finetune.py --fast          # < 1 min on a CPU, 64x64 images
    python examples/resnet_finetune.py --weights imagenet --image-size 224 --target-layer model.layer4
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradcam_callback import GradCAMCallback
from gradcam_callback.demos import MEAN, STD, ShortcutDataModule

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_resnet18(weights: str = "auto", num_classes: int = 2) -> tuple[nn.Module, str]:
    """ResNet-18 with a new ``num_classes`` head, and a sentence saying which weights it got.

    Args:
        weights: ``"auto"`` (ImageNet weights if cached, never downloads), ``"imagenet"``
            (download when missing), ``"none"`` (``weights=None``).
        num_classes: outputs of the new ``fc`` head.
    """
    from torchvision.models import ResNet18_Weights, resnet18

    default = ResNet18_Weights.DEFAULT
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(default.url)
    note = "weights=None (random initialisation)"
    model: nn.Module | None = None
    if weights == "imagenet" or (weights == "auto" and cached.is_file()):
        try:
            model = resnet18(weights=default)
            note = f"pretrained weights {default} ({cached})"
        except Exception as err:  # offline, proxy, corrupt file: keep going from scratch
            note = f"could not load {default} ({type(err).__name__}: {err}); using weights=None"
    elif weights == "auto":
        note += f": no cached ImageNet weights at {cached} (pass --weights imagenet to download)"
    if model is None:
        model = resnet18(weights=None)
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model, note


class ResNetClassifier(pl.LightningModule):
    """Cross-entropy fine-tuning of a ResNet on ``(image, label, ...)`` tuple batches."""

    def __init__(self, weights: str = "auto", lr: float = 1e-3) -> None:
        super().__init__()
        self.model, self.weights_note = load_resnet18(weights)
        self.lr = lr
        scale = torch.tensor(STD) / torch.tensor(IMAGENET_STD)
        shift = (torch.tensor(MEAN) - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
        self.register_buffer("scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", shift.view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """World-normalised images -> ImageNet-normalised -> logits ``[N, 2]``."""
        return self.model(x * self.scale + self.shift)

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        x, y = batch[0], batch[1]
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        x, y = batch[0], batch[1]
        self.log("val_acc", (self(x).argmax(1) == y).float().mean(), prog_bar=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def main(argv: Sequence[str] | None = None) -> GradCAMCallback:
    """Fine-tune; return the callback."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="64x64, 128 images, 2 epochs")
    parser.add_argument("--weights", choices=("auto", "imagenet", "none"), default="auto")
    parser.add_argument("--image-size", type=int, default=None, help="default 96 (64 with --fast)")
    parser.add_argument("--target-layer", default="model.layer3")
    parser.add_argument("--epochs", type=int, default=None, help="default 3 (2 with --fast)")
    parser.add_argument("--n-train", type=int, default=None, help="default 1024 (128 with --fast)")
    parser.add_argument("--root", default=".", help="Trainer default_root_dir")
    args = parser.parse_args(argv)

    size = args.image_size or (64 if args.fast else 96)
    n_train, epochs = (128, 2) if args.fast else (1024, 3)
    n_train, epochs = args.n_train or n_train, args.epochs or epochs
    model = ResNetClassifier(weights=args.weights)
    print(f"ResNet-18: {model.weights_note}")
    data = ShortcutDataModule(
        artifact="watermark", image_size=size, n_train=n_train, n_val=32, batch_size=32
    )
    cb = GradCAMCallback(
        num_probes=8, target_layer=args.target_layer, mean=list(MEAN), std=list(STD)
    )
    trainer = pl.Trainer(max_epochs=epochs, callbacks=[cb], default_root_dir=args.root)
    trainer.fit(model, datamodule=data)
    print(f"flags: {sorted({f.kind for f in cb.flags}) or 'none'}")
    return cb


if __name__ == "__main__":
    main()
