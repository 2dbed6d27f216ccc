"""Run by tests/test_ddp.py: a 2-process CPU DDP fit (gloo) with GradCAMCallback.

Lightning's DDP launcher re-runs this script for rank 1; each rank writes what it saw to
``<out>/rank<r>.json`` (and rank 0 the final weights and the probes to ``<out>/final.pt``, so the
test can compare the last run with a single-process run of the same model).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import pytorch_lightning as pl
import torch
from lit_helpers import loaders, make_module_class, trainer_kwargs
from pytorch_lightning.loggers import TensorBoardLogger

from gradcam_callback import GradCAMCallback
from gradcam_callback.engine import GradCAM

explained: list[int] = []  # probes this rank explained per engine call
_explain = GradCAM.explain


def counting_explain(self, images, *args, **kwargs):  # type: ignore[no-untyped-def]
    explained.append(int(images.shape[0]))
    return _explain(self, images, *args, **kwargs)


GradCAM.explain = counting_explain  # type: ignore[method-assign]


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
    model = make_module_class(pl)()
    trainer.fit(model, train, val)
    record = {
        "rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "history": cb.history,
        "flags": [str(f.kind) for f in cb.flags],
        "probe_sum": float(cb.probes.images.sum()),
        "explained": explained,
    }
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record, default=str))
    if trainer.global_rank == 0:
        torch.save(
            {"model": model.state_dict(), "probes": cb.probes.state_dict()}, out / "final.pt"
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
