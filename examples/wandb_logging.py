"""GradCAMCallback with Weights & Biases (offline by default) next to TensorBoard.

The callback writes to every logger of the Trainer: on W&B one image per probe (with its caption),
the whole grid, the per-probe table, the flags and the evolution GIF; on TensorBoard the grid.
Offline runs need no account and no network; upload one later with ``wandb sync <run folder>``.

Run::

    python examples/wandb_logging.py --fast             # offline, under ./wandb_logs
    python examples/wandb_logging.py --online           # needs `wandb login`
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger

from gradcam_callback import GradCAMCallback
from gradcam_callback.demos import MEAN, STD, ShortcutClassifier, ShortcutDataModule


def main(argv: Sequence[str] | None = None) -> tuple[GradCAMCallback, Path]:
    """Train with both loggers; return the callback and the W&B run folder."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="tiny data and 2 epochs")
    parser.add_argument("--online", action="store_true", help="sync to wandb.ai as it runs")
    parser.add_argument("--project", default="gradcam-callback-demo")
    parser.add_argument("--root", default="wandb_logs", help="where both loggers write")
    args = parser.parse_args(argv)

    if not args.online:
        os.environ["WANDB_MODE"] = "offline"
    Path(args.root).mkdir(parents=True, exist_ok=True)
    wandb_logger = WandbLogger(project=args.project, save_dir=args.root, offline=not args.online)
    tensorboard = TensorBoardLogger(args.root, name="tensorboard")

    n_train, epochs = (256, 2) if args.fast else (1536, 4)
    data = ShortcutDataModule(artifact="border", n_train=n_train, n_val=64, batch_size=32)
    cb = GradCAMCallback(num_probes=8, mean=list(MEAN), std=list(STD))
    trainer = pl.Trainer(
        max_epochs=epochs,
        callbacks=[cb],
        logger=[wandb_logger, tensorboard],
        default_root_dir=args.root,
    )
    trainer.fit(ShortcutClassifier(), datamodule=data)

    run_dir = Path(wandb_logger.experiment.dir).parent
    wandb_logger.experiment.finish()
    hint = "" if args.online else f"; upload with: wandb sync {run_dir}"
    print(f"W&B run folder: {run_dir}{hint}")
    print(f"flags: {sorted({f.kind for f in cb.flags}) or 'none'}")
    return cb, run_dir


if __name__ == "__main__":
    main()
