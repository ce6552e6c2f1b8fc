"""flashgru: the GRU of torch.nn.GRU (same arguments, weights and numbers), the GRU of the
original paper with one flag, backends behind one dispatch point, and the gates in view."""

from . import functional
from .backends import BACKENDS, BackendChoice, BackendUnavailableError, select_backend
from .backends.reference import GateTrace
from .mingru import MinGRU, MinGRUCell
from .modules import GRU, GRUCell

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "GRU",
    "BackendChoice",
    "BackendUnavailableError",
    "GRUCell",
    "GateTrace",
    "MinGRU",
    "MinGRUCell",
    "__version__",
    "functional",
    "select_backend",
]
