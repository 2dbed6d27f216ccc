"""Training-time Grad-CAM for PyTorch Lightning: heatmap drift and shortcut-learning alarms.

>>> from gradcam_callback import GradCAM, GradCAMCallback, ProbeSet, Flag
"""

from .alarms import Flag, ShortcutDetected, ShortcutMonitor
from .callback import GradCAMCallback
from .engine import METHODS, CAMResult, GradCAM, normalize_maps
from .guided import guided_backprop, guided_gradcam  # also installs GradCAM.guided
from .layers import LayerInfo
from .probes import BatchKeys, ProbeSet, choose_probes, select_probes
from .rules import FlagKind

__version__ = "0.3.7"

__all__ = [
    "METHODS",
    "BatchKeys",
    "CAMResult",
    "Flag",
    "FlagKind",
    "GradCAM",
    "GradCAMCallback",
    "LayerInfo",
    "ProbeSet",
    "ShortcutDetected",
    "ShortcutMonitor",
    "__version__",
    "choose_probes",
    "guided_backprop",
    "guided_gradcam",
    "normalize_maps",
    "select_probes",
]
