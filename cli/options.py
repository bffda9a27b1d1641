"""Option types shared by the CLI commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

PlanArg = Annotated[Path, typer.Argument(help="The plan file (YAML).", show_default=False)]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set", help="Override a plan field: PATH=VALUE, e.g. stages.0.prune.amount=0.3."
    ),
]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks.")]
SafeOpt = Annotated[
    bool,
    typer.Option(
        "--safe",
        help="For plans you do not trust (CI on pull requests): refuse trust_pickle and every "
        "'module:function' import (architecture, data) not allowed with --allow-import.",
    ),
]
AllowImportOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--allow-import",
        metavar="PREFIX",
        help="In safe mode, allow imports from this package (repeat, or comma-separate), "
        "e.g. --allow-import mypkg.models. Also: COMPRESS_ALLOW_IMPORTS=mypkg.",
    ),
]
