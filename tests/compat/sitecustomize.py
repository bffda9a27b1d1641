"""Loaded at start-up by every Python process the tests start (``tests/conftest.py`` puts this
folder on ``PYTHONPATH``), so CLI subprocesses get the same torchvision shim as the tests.

Lazily: the shim is installed just before ``torchvision`` is first imported (transformers
imports it for image utilities), so processes that never touch it do not pay for importing
torch at start-up.
"""

import importlib.abc
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _ShimBeforeTorchvision(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torchvision":
            sys.meta_path.remove(self)
            if _ROOT not in sys.path:
                sys.path.insert(0, _ROOT)
            import tests.compat.torchvision_cpu  # noqa: F401
        return None  # the regular finders import the module itself


sys.meta_path.insert(0, _ShimBeforeTorchvision())
