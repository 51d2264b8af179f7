"""Runtime backends behind one interface (see `runtimes.base`).

Importing this package registers every backend; a backend's own library is
imported only when one of its runtimes is opened or probed.
"""

from runtimes import openvino, ort, tensorrt, torch_eager  # noqa: F401  (registration)
from runtimes.base import RUNTIMES, RuntimeSpec, Session, get_runtime

__all__ = ["RUNTIMES", "RuntimeSpec", "Session", "get_runtime"]
