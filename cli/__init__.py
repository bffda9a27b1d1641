"""The thin command-line front end of compress (Typer)."""
