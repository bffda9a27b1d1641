"""Test-only shim: import the PyPI torchvision wheel next to the CPU build of torch.

The torchvision wheel on PyPI is linked against CUDA torch; with the CPU torch used here its
C++ operators (``torchvision::nms``, ``roi_align``, ...) do not load, and
``torchvision/_meta_registrations.py`` then raises ``RuntimeError: operator torchvision::nms
does not exist`` while registering fake (meta) kernels for them, so ``import torchvision``
(and ``import timm``) fails. The classification model definitions are pure Python and need
none of those operators, so for tests and benchmarks we let that one registration fail
quietly. Users with a matching torchvision build never need this, and nothing in
``compressor/`` imports it.

Usage: ``import tests.compat.torchvision_cpu`` (or call :func:`install`) before importing
torchvision or timm. Detection ops (``nms``, ``roi_align``) stay unusable.
"""

from __future__ import annotations

import functools

import torch.library

_INSTALLED = False


def install() -> None:
    """Wrap ``torch.library.register_fake`` so a missing torchvision operator is skipped."""
    global _INSTALLED
    if _INSTALLED:
        return
    original = torch.library.register_fake

    @functools.wraps(original)
    def register_fake(op, *args, **kwargs):
        name = op if isinstance(op, str) else getattr(op, "__name__", "")
        try:
            decorator = original(op, *args, **kwargs)
        except RuntimeError:
            if not str(name).startswith("torchvision::"):
                raise
            return lambda fn: fn
        if not str(name).startswith("torchvision::") or not callable(decorator):
            return decorator

        def apply(fn):
            # The error is raised here, when the decorator registers the kernel.
            try:
                return decorator(fn)
            except RuntimeError as exc:
                if "does not exist" not in str(exc):
                    raise
                return fn

        return apply

    torch.library.register_fake = register_fake
    _INSTALLED = True


install()
