"""Loaded at start-up by every Python process the tests start (``tests/conftest.py`` puts this
folder on ``PYTHONPATH``), so CLI subprocesses get the same torchvision shim as the tests."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import tests.compat.torchvision_cpu  # noqa: F401
