"""Entry point of the predict command: ``python sweeps/predict.py RUN_OR_CHECKPOINT INPUT...`` (also
``python -m sweeps.predict`` and the ``fer-predict`` script). The command is ``fer_core.apps.predict_cli``.
"""

import sys

from fer_core.apps.predict_cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
