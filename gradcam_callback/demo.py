"""``python -m gradcam_callback.demo`` (``make demo``): kept at its old path.

The command line lives in :mod:`gradcam_callback.demos.cli`; run ``--help`` for its options.
"""

import sys

from .demos.cli import (
    DEFAULTS,
    DEMO_ARTIFACTS,
    FAST,
    DemoResult,
    FlagPrinter,
    build_parser,
    main,
    run,
)

__all__ = [
    "DEFAULTS",
    "DEMO_ARTIFACTS",
    "FAST",
    "DemoResult",
    "FlagPrinter",
    "build_parser",
    "main",
    "run",
]

if __name__ == "__main__":
    sys.exit(main())
