"""A LightningCLI entry point: ``python -m gradcam_callback.cli fit --config configs/gradcam.yaml``.

Model and data come from the config's ``class_path`` entries (any LightningModule and
LightningDataModule), the callback from ``trainer.callbacks``. Needs the ``cli`` extra
(``pip install 'gradcam-callback[cli]'``, i.e. jsonargparse).
"""

from __future__ import annotations

from pytorch_lightning.cli import LightningCLI


def main(args: list[str] | None = None) -> LightningCLI:
    """Run LightningCLI in subclass mode for both the model and the datamodule."""
    return LightningCLI(args=args, save_config_kwargs={"overwrite": True})


if __name__ == "__main__":
    main()
