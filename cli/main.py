"""The ``compress`` command line. Thin: parse arguments, call the library, print, exit.

Exit codes: 0 success, 1 a quality gate failed, 2 bad input, 3 runtime failure,
130 interrupted.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from cli.options import AllowImportOpt, DebugOpt, PlanArg, SafeOpt, SetOpt
from cli.output import (
    console,
    fail,
    handle_errors,
    print_plan_summary,
    sigterm_as_interrupt,
)

app = typer.Typer(
    name="compress",
    help="Make a saved PyTorch checkpoint physically smaller and faster, and measure it.\n\n"
    "Exit codes: 0 ok, 1 a quality gate failed, 2 bad input, 3 runtime failure, 130 interrupted.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from compressor.version import __version__

        typer.echo(f"compress {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """compress: checkpoint in, smaller and faster model out, with measurements."""


@app.command()
def run(
    plan: PlanArg,
    set_: SetOpt = None,
    out: Annotated[Path | None, typer.Option("--out", help="Output directory.")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the resolved plan; load nothing heavy.")
    ] = False,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue an interrupted run from its last finished stage (same plan and "
            "checkpoint; results identical to an uninterrupted run).",
        ),
    ] = False,
    gate: Annotated[
        list[str] | None,
        typer.Option("--gate", help="Extra gate NAME=VALUE, e.g. min_speedup=1.5."),
    ] = None,
    no_bench: Annotated[bool, typer.Option("--no-bench", help="Skip latency measurement.")] = False,
    safe: SafeOpt = False,
    allow_import: AllowImportOpt = None,
    nproc: Annotated[
        int, typer.Option("--nproc", min=1, help="Train on N local processes (runs torchrun).")
    ] = 1,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Less output.")] = False,
    debug: DebugOpt = False,
) -> None:
    """Run a plan: load, compress, export, measure, check gates."""
    if nproc > 1 and "LOCAL_RANK" not in os.environ:
        from compressor.training.distributed import launch

        raise typer.Exit(launch(nproc, _without_option(sys.argv[1:], "--nproc")))
    with sigterm_as_interrupt(), handle_errors(debug):
        from compressor.plan.load import load_plan

        overrides = list(set_ or [])
        if safe:
            overrides.append("safe=true")  # last, so that no --set can turn it off again
        allowed = list(allow_import or [])
        loaded = load_plan(plan, overrides, allowed_imports=allowed)
        extra_gates = _parse_gates(gate or [])
        if dry_run:
            print_plan_summary(loaded, out)
            return
        from compressor.run.runner import run_plan

        result = run_plan(
            loaded,
            out_dir=out,
            resume=resume,
            console=console,
            quiet=quiet,
            extra_gates=extra_gates,
            skip_bench=no_bench,
            allowed_imports=allowed,
        )
        from cli.output import print_run_result

        print_run_result(result)
        if result.error is not None:
            raise result.error  # printed by handle_errors, after the summary it explains
        raise typer.Exit(result.exit_code)


def _without_option(argv: list[str], option: str) -> list[str]:
    """``argv`` without ``option`` and its value (``--nproc 2`` or ``--nproc=2``)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            out.append(arg)
    return out


def _parse_gates(items: list[str]) -> dict[str, float]:
    from compressor.spec.sections import GatesSpec

    gates: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in GatesSpec.model_fields:
            fail(
                f"--gate {item!r}: expected NAME=VALUE with NAME one of "
                f"{', '.join(GatesSpec.model_fields)}"
            )
        try:
            gates[name] = float(value)
        except ValueError:
            fail(f"--gate {item!r}: {value!r} is not a number")
    return gates


@app.command()
def validate(
    plan: PlanArg,
    set_: SetOpt = None,
    safe: SafeOpt = False,
    allow_import: AllowImportOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Check a plan against the schema and its files; do no work. Exit 2 lists every problem."""
    with handle_errors(debug):
        from compressor.plan.load import load_plan

        overrides = [*(set_ or []), *(["safe=true"] if safe else [])]
        loaded = load_plan(plan, overrides, allowed_imports=list(allow_import or []))
        stages = ", ".join(name for name, _ in loaded.plan.stage_list()) or "no stages"
        console.print(f"[green]ok[/] {plan}: valid ({stages})")


@app.command()
def schema(
    out: Annotated[Path | None, typer.Option("--out", help="Write to this file.")] = None,
) -> None:
    """Print the plan's JSON Schema (for editor autocompletion)."""
    from compressor.plan.schema import Plan

    text = json.dumps(Plan.model_json_schema(), indent=2)
    if out:
        from compressor.files.atomic import write_text_atomic

        write_text_atomic(out, text + "\n")
        console.print(f"wrote {out}")
    else:
        typer.echo(text)


@app.command()
def init(
    checkpoint: Annotated[Path, typer.Argument(help="The checkpoint to compress.")],
    architecture: Annotated[
        str | None, typer.Option("--architecture", "-a", help="'package.module:factory'.")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the plan.")] = Path(
        "plan.yaml"
    ),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing plan.")] = False,
    debug: DebugOpt = False,
) -> None:
    """Write a commented starter plan for CHECKPOINT."""
    with handle_errors(debug):
        from compressor.plan.starter import starter_plan

        if out.exists() and not force:
            fail(f"{out} already exists (use --force to overwrite)")
        text = starter_plan(checkpoint, architecture, plan_dir=out.resolve().parent)
        from compressor.files.atomic import write_text_atomic

        write_text_atomic(out, text)
        console.print(f"wrote {out}; check it with: compress validate {out}")


@app.command()
def inspect(
    target: Annotated[Path, typer.Argument(help="A checkpoint file, an hf folder or a plan.")],
    architecture: Annotated[
        str | None, typer.Option("--architecture", "-a", help="'package.module:factory'.")
    ] = None,
    input_shape: Annotated[
        list[str] | None,
        typer.Option("--input", help="Example input NAME=SHAPE[:DTYPE], e.g. x=1x1x8x8."),
    ] = None,
    trust_pickle: Annotated[
        bool, typer.Option("--trust-pickle", help="Allow unpickling (runs code in the file).")
    ] = False,
    debug: DebugOpt = False,
) -> None:
    """Show modules, parameters, MACs at the example input, and file size."""
    with handle_errors(debug):
        from cli.output import print_inspection
        from compressor.measure.inspect import inspect_target

        print_inspection(
            inspect_target(
                target,
                architecture=architecture,
                inputs=list(input_shape or []),
                trust_pickle=trust_pickle,
            )
        )


from cli.bench import bench  # noqa: E402  (registered below; lives in its own module)

app.command()(bench)


if __name__ == "__main__":
    app()
