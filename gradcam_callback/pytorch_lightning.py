"""``GradCAMCallback`` for the ``pytorch_lightning`` namespace (``LightningCLI`` type checks).

``gradcam_callback.GradCAMCallback`` already is a ``pytorch_lightning.Callback``; this module
exists so configs can name the namespace explicitly:
``class_path: gradcam_callback.pytorch_lightning.GradCAMCallback``.
"""

from .callback import GradCAMCallback

__all__ = ["GradCAMCallback"]
