"""``python -m gradcam_callback.demos``: the same as ``python -m gradcam_callback.demo``."""

import sys

from .cli import main

sys.exit(main())
