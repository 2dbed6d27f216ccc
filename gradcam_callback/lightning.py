"""``GradCAMCallback`` for the ``lightning.pytorch`` namespace.

Both Trainers call any callback's hooks, but ``LightningCLI`` refuses a callback class that is not
a subclass of *its* package's ``Callback``. Use this class in ``lightning.pytorch`` CLI configs::

    trainer:
      callbacks:
        - class_path: gradcam_callback.lightning.GradCAMCallback
"""

from lightning.pytorch.callbacks import Callback as _LightningCallback

from .callback import GradCAMCallback as _GradCAMCallback

__all__ = ["GradCAMCallback"]


class GradCAMCallback(_GradCAMCallback, _LightningCallback):
    __doc__ = _GradCAMCallback.__doc__
