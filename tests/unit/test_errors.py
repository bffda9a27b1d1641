"""``compressor.errors.explain``: environment failures become typed errors that name the cause,
carry the fix, and exit with the documented code."""

from __future__ import annotations

import errno

import pytest
import torch
from safetensors import SafetensorError

from compressor.errors import (
    EXIT_BAD_INPUT,
    EXIT_RUNTIME,
    ExportError,
    PathError,
    ResourceError,
    disk_full_in,
    explain,
)


@pytest.mark.parametrize(
    "error",
    [
        MemoryError(),
        getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)("CUDA out of memory"),
        RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9e12"),
    ],
)
def test_out_of_memory_is_a_runtime_failure_with_the_batch_size_fix(error):
    explained = explain(error)
    assert isinstance(explained, ResourceError) and explained.exit_code == EXIT_RUNTIME
    assert explained.message.startswith("out of memory") and "batch_size" in explained.hint


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device", "/out/model.onnx"),
        OSError(errno.EDQUOT, "Disk quota exceeded", "/out/model.onnx"),
        SafetensorError(
            "Error while serializing: I/O error: No space left on device (os error 28)"
        ),
    ],
)
def test_disk_full_is_a_runtime_failure_that_says_resume(error):
    explained = explain(error)
    assert isinstance(explained, ResourceError) and explained.exit_code == EXIT_RUNTIME
    assert explained.message.startswith("disk full") and "--resume" in explained.hint


@pytest.mark.parametrize("code", [errno.EACCES, errno.EPERM, errno.EROFS])
def test_permission_denied_is_bad_input_naming_the_path(code):
    explained = explain(OSError(code, "Permission denied", "/srv/out"))
    assert isinstance(explained, PathError) and explained.exit_code == EXIT_BAD_INPUT
    assert "/srv/out" in explained.message and "writable --out" in explained.hint


def test_other_os_errors_name_the_file_and_are_runtime_failures():
    explained = explain(FileNotFoundError(errno.ENOENT, "No such file or directory", "/x/y"))
    assert isinstance(explained, ResourceError) and "/x/y" in explained.message
    assert isinstance(explain(OSError("no errno at all")), ResourceError)


def test_programming_errors_are_not_explained_away():
    assert explain(KeyError("x")) is None and explain(RuntimeError("shape mismatch")) is None


def test_an_exporter_that_ran_out_of_disk_gets_the_disk_full_fix():
    wrapped = ExportError("ONNX export failed: legacy exporter failed: [Errno 28] No space left")
    assert isinstance(disk_full_in(wrapped), ResourceError)
    other = ExportError("ONNX export failed: differs from torch")
    assert disk_full_in(other) is other
