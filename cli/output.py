"""Rendering and error handling for the CLI (no torch logic here)."""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from compressor.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_RUNTIME

console = Console()
err_console = Console(stderr=True, soft_wrap=True)


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a cancelled CI job), handled like Ctrl-C: clean up, keep finished stages."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated`, so a cancelled job releases its
    lock and removes its temporary files like Ctrl-C does. The previous handler is restored
    afterwards; outside the main thread (where signals cannot be handled) a no-op."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _print_error(error: Any) -> None:
    err_console.print("[bold red]error:[/] " + _escape(str(error)), highlight=False)


@contextlib.contextmanager
def handle_errors(debug: bool) -> Iterator[None]:
    """Turn every failure into one clear message and the documented exit code.

    Typed library errors keep their own code (2 bad input, 3 runtime failure, 1 gate);
    out-of-memory and a full disk exit 3, permission denied exits 2 (a path to fix), Ctrl-C
    or SIGTERM 130. ``debug`` also prints the traceback. No other exception escapes: an
    unexpected one is reported as an internal error with exit 3.
    """
    from compressor.errors import CompressError, explain

    try:
        yield
    except typer.Exit:
        raise
    except KeyboardInterrupt as e:
        what = "terminated" if isinstance(e, Terminated) else "interrupted"
        err_console.print(
            f"[yellow]{what}[/]; finished stages are kept: rerun with --resume", highlight=False
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except CompressError as e:
        if debug:
            traceback.print_exc()
        _print_error(e)
        raise typer.Exit(e.exit_code) from None
    except Exception as e:  # MemoryError and OSError are Exceptions too
        if debug:
            traceback.print_exc()
        explained = explain(e)
        if explained is not None:
            _print_error(explained)
            raise typer.Exit(explained.exit_code) from None
        # An internal error: still no traceback unless asked.
        err_console.print(
            f"[bold red]internal error:[/] {type(e).__name__}: {_escape(str(e))[:500]}",
            highlight=False,
        )
        err_console.print("  rerun with --debug for the traceback, and please report it")
        raise typer.Exit(EXIT_RUNTIME) from None


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def print_plan_summary(loaded: Any, out: Path | None) -> None:
    import yaml

    from compressor.run.runner import default_out_dir

    plan = loaded.plan
    data = plan.model_dump(mode="json", exclude_none=True)
    console.print(f"[bold]resolved plan[/] ({loaded.path})")
    console.print(yaml.safe_dump(data, sort_keys=False), highlight=False, markup=False)
    console.print(f"output directory: {out or default_out_dir(loaded)}")


def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n}"


def _fmt_num(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def print_run_result(result: Any) -> None:
    from compressor.measure.tables import render_summary_table

    report = result.report
    if not report:
        return
    console.print(render_summary_table(report))
    gates = report.get("gates", {})
    for failure in result.gate_failures:
        console.print(f"[bold red]gate failed:[/] {failure}", highlight=False)
    if gates.get("checked") and not result.gate_failures:
        console.print(f"[green]all {len(gates['checked'])} gate(s) passed[/]")
    console.print(f"artifacts in {result.out_dir}")


def print_inspection(info: dict[str, Any]) -> None:
    console.print(f"[bold]{info['path']}[/] ({info['kind']}, {_fmt_bytes(info.get('size_bytes'))})")
    table = Table(show_lines=False)
    for column in ("module", "type", "params", "shape"):
        table.add_column(column, justify="right" if column == "params" else "left")
    for row in info["modules"]:
        table.add_row(row["name"], row["type"], _fmt_num(row["params"]), row.get("shape", ""))
    console.print(table)
    console.print(
        f"parameters: {_fmt_num(info.get('params'))}   MACs: {_fmt_num(info.get('macs'))}"
        + (f" at {info['inputs']}" if info.get("inputs") else "   (give --input for MACs)")
    )
    if info.get("prunable_groups") is not None:
        console.print(f"prunable groups: {info['prunable_groups']}")
    for note in info.get("notes", []):
        console.print(f"[dim]{note}[/]")
