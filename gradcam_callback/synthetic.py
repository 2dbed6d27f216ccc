"""Former home of the planted-shortcut world, kept so old import and config paths work.

The code lives in :mod:`gradcam_callback.demos` (``world``, ``data``, ``models``, ``training``);
``gradcam_callback.synthetic.ShortcutClassifier`` and the like still resolve (configs, scripts).
``denormalize`` is the old name of :func:`gradcam_callback.demos.world.to_unit_range` (renamed:
it is not :func:`gradcam_callback.render.denormalize`, which also clamps and picks channels).
"""

from .demos.data import ShortcutDataModule, ShortcutDataset
from .demos.models import ShortcutClassifier, SmallCNN
from .demos.training import TrainedWorld, accuracy, artifact_reliance, train_world
from .demos.world import (
    ARTIFACT_MODES,
    ARTIFACTS,
    DEFAULT_PLACE,
    MEAN,
    SHAPES,
    STD,
    make_world,
    normalize,
    to_unit_range,
)

denormalize = to_unit_range

__all__ = [
    "ARTIFACTS",
    "ARTIFACT_MODES",
    "DEFAULT_PLACE",
    "MEAN",
    "SHAPES",
    "STD",
    "ShortcutClassifier",
    "ShortcutDataModule",
    "ShortcutDataset",
    "SmallCNN",
    "TrainedWorld",
    "accuracy",
    "artifact_reliance",
    "denormalize",
    "make_world",
    "normalize",
    "train_world",
]
