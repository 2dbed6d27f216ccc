"""Run by tests/test_ddp.py: a 2-process CPU DDP fit (gloo) with GradCAMCallback.

Lightning's DDP launcher re-runs this script for rank 1; each rank writes what it saw to
``<out>/rank<r>.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import pytorch_lightning as pl
from lit_helpers import loaders, make_module_class, trainer_kwargs
from pytorch_lightning.loggers import TensorBoardLogger

from gradcam_callback import GradCAMCallback


def main(out: Path) -> None:
    pl.seed_everything(0)
    cb = GradCAMCallback(num_probes=4, verbose=False)
    train, val = loaders()
    logger = TensorBoardLogger(str(out), name="tb", version=0)
    trainer = pl.Trainer(
        **trainer_kwargs(
            out,
            strategy="ddp",
            devices=2,
            logger=logger,
            callbacks=[cb],
            max_epochs=2,
            use_distributed_sampler=True,
        )
    )
    trainer.fit(make_module_class(pl)(), train, val)
    record = {
        "rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "history": cb.history,
        "flags": [f.kind for f in cb.flags],
        "probe_sum": float(cb.probes.images.sum()),
    }
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record, default=str))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
