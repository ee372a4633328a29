"""zolog_client: log ML training runs to zolog without blocking the training loop.

Standard library only (Python >= 3.9). See ``ZologClient``; ``ZOTrainingCallback`` is a drop-in
for the zo platform's callback of that name.
"""

from .cadence import should_checkpoint
from .client import ZologClient, ZologWarning, ZOTrainingCallback, find_store

__all__ = ["ZologClient", "ZOTrainingCallback", "ZologWarning", "find_store", "should_checkpoint"]
__version__ = "0.1.0"
