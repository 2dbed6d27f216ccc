"""LightningCLI with GradCAMCallback as a first-class argument group (``--gradcam.*``).

``add_lightning_class_args`` puts the callback's arguments on the command line and in configs,
next to ``--trainer.*``, ``--model.*`` and ``--data.*``. The defaults here are small (2 epochs,
256 images), so the script runs in well under a minute on a CPU. (For the config-only route,
without a script, see ``configs/gradcam.yaml`` and ``python -m gradcam_callback.cli``.)

Run::

    python examples/lightning_cli.py fit
    python examples/lightning_cli.py fit --gradcam.method gradcam++ --data.artifact stamp
    python examples/lightning_cli.py fit --data.correlation null        # clean control
    python examples/lightning_cli.py fit --print_config                  # the full YAML
"""

from __future__ import annotations

from collections.abc import Sequence

from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from gradcam_callback import GradCAMCallback
from gradcam_callback.demos import MEAN, STD, ShortcutClassifier, ShortcutDataModule


class GradCAMCLI(LightningCLI):
    """LightningCLI with a ``gradcam`` argument group and small defaults."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(GradCAMCallback, "gradcam")
        parser.set_defaults(
            {
                "gradcam.num_probes": 8,
                "gradcam.mean": list(MEAN),
                "gradcam.std": list(STD),
                "trainer.max_epochs": 2,
                "data.n_train": 256,
                "data.n_val": 64,
                "data.batch_size": 32,
            }
        )


def main(args: Sequence[str] | None = None) -> GradCAMCLI:
    """Run the CLI (``args=None``: from ``sys.argv``); return it (``cli.trainer``, ...)."""
    cli = GradCAMCLI(
        ShortcutClassifier,
        ShortcutDataModule,
        args=list(args) if args is not None else None,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
    )
    cbs = [c for c in cli.trainer.callbacks if isinstance(c, GradCAMCallback)]
    if cbs and cbs[0].history:
        print(f"flags: {sorted({f.kind for f in cbs[0].flags}) or 'none'}")
    return cli


if __name__ == "__main__":
    main()
