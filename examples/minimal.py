"""The one-line usage: add ``GradCAMCallback()`` to the Trainer's callbacks.

Zero configuration: the probes come from the first validation dataloader, the target layer is the
last layer with a spatial output, overlays and attention metrics go to the Trainer's logger
(TensorBoard here, under ``lightning_logs/``). Runs on generated data (the planted-shortcut world),
so the artifact flag should fire.

Run::

    python examples/minimal.py            # ~1 min on a CPU
    python examples/minimal.py --fast     # seconds
    tensorboard --logdir lightning_logs
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import pytorch_lightning as pl

from gradcam_callback import GradCAMCallback
from gradcam_callback.demos import ShortcutClassifier, ShortcutDataModule


def main(argv: Sequence[str] | None = None) -> GradCAMCallback:
    """Train with the callback; return it (``cb.history``, ``cb.flags``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="tiny data and 2 epochs")
    parser.add_argument("--root", default=".", help="Trainer default_root_dir")
    args = parser.parse_args(argv)

    n_train, epochs = (256, 2) if args.fast else (1536, 4)
    model = ShortcutClassifier(num_classes=2)
    data = ShortcutDataModule(artifact="watermark", n_train=n_train, n_val=64, batch_size=32)

    cb = GradCAMCallback()  # <- the one line
    trainer = pl.Trainer(max_epochs=epochs, callbacks=[cb], default_root_dir=args.root)
    trainer.fit(model, datamodule=data)

    print(f"{len(cb.history)} Grad-CAM runs; flags: {sorted({f.kind for f in cb.flags}) or 'none'}")
    return cb


if __name__ == "__main__":
    main()
