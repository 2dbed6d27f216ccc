"""The planted-shortcut world and the ``make demo`` command line (not needed by the callback).

Modules, bottom up:

* :mod:`~gradcam_callback.demos.world`: the image generator (:func:`make_world`, constants);
* :mod:`~gradcam_callback.demos.data`: :class:`ShortcutDataset`, :class:`ShortcutDataModule`;
* :mod:`~gradcam_callback.demos.models`: :class:`SmallCNN`, :class:`ShortcutClassifier`;
* :mod:`~gradcam_callback.demos.training`: :func:`train_world`, :func:`accuracy`,
  :func:`artifact_reliance`;
* :mod:`~gradcam_callback.demos.cli`: ``python -m gradcam_callback.demo`` (``make demo``).

Example::

    ds = ShortcutDataset(1024, artifact="watermark", correlation=1.0, seed=0)
    image, label, object_mask, artifact_mask = ds[0]     # [3,H,W] f32, long, [H,W] bool, [H,W] bool
    ds.variant(artifact="removed")                         # same images, artifact painted over
    ds.variant(artifact="swapped")                         # artifact of a class other than the label
    dm = ShortcutDataModule(artifact="tag", correlation=1.0, shortcut_epochs=2)
    model = ShortcutClassifier(num_classes=2)              # SmallCNN: target layer "model.features"
    world = train_world("watermark", shortcut=True)        # trained on CPU in a few seconds
    model, dm = world                                      # TrainedWorld unpacks like a tuple
    artifact_reliance(model, dm.val_set)                   # {"acc", "acc_removed", "acc_swapped"}
"""

from .data import ShortcutDataModule, ShortcutDataset
from .models import ShortcutClassifier, SmallCNN
from .training import TrainedWorld, accuracy, artifact_reliance, train_world
from .world import (
    ARTIFACT_MODES,
    ARTIFACTS,
    DEFAULT_PLACE,
    MEAN,
    SHAPES,
    STD,
    make_world,
    mix_seed,
    normalize,
    to_unit_range,
)

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
    "make_world",
    "mix_seed",
    "normalize",
    "to_unit_range",
    "train_world",
]
