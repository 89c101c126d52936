"""Batch commands: `batches` (list, cancel) and `batch export` / `batch import` (offline batch files)."""

from __future__ import annotations

import os
from typing import Any

import click

from autointerp import store
from autointerp.analysis import render
from autointerp.cli.base import (
    build,
    config_options,
    db_option,
    format_option,
    friendly_errors,
    main,
    pick_dictionary,
)
from autointerp.cli.work import selection_options
from autointerp.config import LabelConfig, LLMConfig
from autointerp.errors import BadInput


@main.command("batches")
@click.option("--dictionary", "dictionary_id", type=int, default=None, help="Only this dictionary's batches.")
@click.option("--cancel", "cancel_id", default=None, help="Cancel this batch (our key or the provider's id) at "
              "its provider; the next run ingests what it finished.")
@click.option("--base-url", default=None, help="The provider's endpoint (for --cancel; default $OPENAI_BASE_URL).")
@format_option
@db_option
@friendly_errors
def batches_cmd(db: str, dictionary_id: int | None, cancel_id: str | None, base_url: str | None, fmt: str) -> None:
    """List Batch API batches and exported batch files: id, stage, status, request counts, cost.

    \b
    Example:
      autointerp batches
      autointerp batches --cancel batch_abc123 --base-url https://api.openai.com/v1
    """
    if cancel_id is not None:
        from autointerp.llm.batch_api import BatchAPI

        with store.open_store(db, read_only=True) as con:
            row = store.get_batch(con, cancel_id)
        if row is None or row.batch_id is None:
            raise BadInput(f"no created batch {cancel_id!r} in {db} (see `autointerp batches`)")
        url = base_url or os.environ.get("OPENAI_BASE_URL")
        if not url:
            raise BadInput("--cancel needs the provider: pass --base-url or set OPENAI_BASE_URL")
        api = BatchAPI(url, os.environ.get("OPENAI_API_KEY"))
        try:
            info = api.cancel(row.batch_id)
        finally:
            api.close()
        with store.open_store(db) as con:
            store.record_cancel(con, row.batch_key, info.status)
        click.echo(f"batch {row.batch_id}: {info.status}")
        return
    with store.open_store(db, read_only=True) as con:
        rows = store.list_batches(con, dictionary_id)
    cols = ["batch", "provider_id", "dictionary", "stage", "url", "status", "requests", "completed", "failed",
            "cost_usd", "ingested", "created"]
    table = [(r.batch_key, r.batch_id, r.dictionary_id, r.stage, r.url, r.status, r.n_requests, r.n_completed,
              r.n_failed, r.cost_usd, r.ingested_at is not None, r.created_at) for r in rows]
    click.echo(render.FORMATS[fmt](cols, table))


@main.group("batch")
def batch_group() -> None:
    """Offline batch files: export requests for `vllm run-batch` (or any OpenAI-format runner), import results."""


@batch_group.command("export")
@click.option("--stage", type=click.Choice(["explain", "score"]), required=True,
              help="explain: the features' explainer requests; score: simulation and judge requests of stored labels.")
@click.option("--out", "out", type=click.Path(dir_okay=False), required=True, help="The JSONL file to write.")
@selection_options
@config_options(LabelConfig, LLMConfig)
@db_option
@friendly_errors
def export_cmd(db: str, stage: str, out: str, dictionary_id: int | None, feature_range: Any, where: str | None,
               **kwargs: Any) -> None:
    """Write the stage's pending requests as batch JSONL (one request a line, each naming its endpoint).

    \b
    Example (a GPU node, no API key):
      autointerp batch export --stage explain --out requests.jsonl --explainer-model my/model
      vllm run-batch -i requests.jsonl -o results.jsonl --model my/model
      autointerp batch import results.jsonl
    """
    from autointerp.label.batch_files import export_requests
    from autointerp.pipeline import Selection, select

    with store.open_store(db, read_only=True) as con:
        did = pick_dictionary(con, dictionary_id)
    features = select(db, did, Selection(feature_range, where))
    cfg, llm_cfg = build(LabelConfig, kwargs), build(LLMConfig, kwargs)
    default = "gpt-4o-mini"
    units, n = export_requests(db, did, features, stage, cfg, llm_cfg, llm_cfg.explainer_model or default,
                               llm_cfg.simulator_model or default, out)
    click.echo(f"dictionary {did}: {n:,} {stage} requests for {units:,} pending unit(s) -> {out}")


@batch_group.command("import")
@click.argument("results", type=click.Path(exists=True, dir_okay=False))
@db_option
@friendly_errors
def import_cmd(db: str, results: str) -> None:
    """Ingest a batch runner's output file like a Batch API result (parsed, scored and stored)."""
    from autointerp.label.batch_files import import_results

    out = import_results(db, results)
    click.echo(f"{out.results:,} results in {out.groups} exported batch(es)"
               + (f"; {out.unreadable:,} unreadable line(s)" if out.unreadable else ""))
    for s in out.skipped:
        click.echo(f"  skipped {s}")
    p = out.progress
    click.echo(f"  {p.explained:,} labels, {p.scored:,} scored")
    for reason, n in p.failed.most_common():
        click.echo(f"  failed: {n:,} x {reason}")
