"""`autointerp serve`: the feature browser, a local read-only web app over the database."""

from __future__ import annotations

from pathlib import Path

import click

from autointerp.cli.base import db_option, friendly_errors, main
from autointerp.errors import BadInput


@main.command()
@click.option("--port", type=int, default=8000, show_default=True, help="Port to listen on.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; the default lets only this machine connect.")
@db_option
@friendly_errors
def serve(db: str, port: int, host: str) -> None:
    """Browse the database in a web browser: search, filter and sort features by label and score, read a
    feature's contexts, labels, scores and nulls, compare dictionaries, run a sandboxed SQL query.
    Each request opens the database read-only and closes it, so a label run can write the same file.

    \b
    Example:
      autointerp serve --db runs.duckdb --port 8000
      (then open http://127.0.0.1:8000/)
    """
    import uvicorn

    from autointerp.analysis.serve import create_app

    if not Path(db).exists():
        raise BadInput(f"no database at {db}: run `autointerp collect --db {db} ...` first")
    click.echo(f"serving {db} read-only on http://{host}:{port}/ (Ctrl-C stops)", err=True)
    uvicorn.run(create_app(db), host=host, port=port, log_level="warning")
