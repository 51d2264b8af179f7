"""Executors of work units, by name (`harness run --executor NAME`): importing this package registers the
built-in ones; an executor of one's own is a module that calls `register_executor`."""

from harness.run.executors import local, ray
from harness.run.executors.base import EXECUTORS, Execution, Executor, Progress, get_executor, register_executor

__all__ = ["EXECUTORS", "Execution", "Executor", "Progress", "get_executor", "local", "ray", "register_executor"]
