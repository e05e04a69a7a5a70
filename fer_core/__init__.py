"""fer_core: facial-expression-recognition training library (data checks, augmentation, timm models,
one train function with checkpoints and resume, evaluation). Free of Ray: sweeps drive it from outside.

The train function is ``fer_core.train.train`` (``from fer_core.train import train``); it is not
re-exported here so that ``python -m fer_core.train`` runs its module cleanly and the package import
stays light for the sweep driver.
"""

from .config import TrainConfig, make_config
from .data import CLASS_NAMES
from .errors import CheckpointError, ConfigError, DataError, FerError

__all__ = [
    "CLASS_NAMES",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "FerError",
    "TrainConfig",
    "make_config",
]
__version__ = "0.1.0"
