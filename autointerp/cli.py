"""The `autointerp` command line: thin commands grouped by verb. The only module that prints."""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import click
from pydantic import ValidationError

from autointerp import __version__, render, store
from autointerp.errors import AutointerpError

DEFAULT_DB = "autointerp.duckdb"


def db_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--db", default=lambda: os.environ.get("AUTOINTERP_DB", DEFAULT_DB), show_default="$AUTOINTERP_DB or ./autointerp.duckdb",
        type=click.Path(dir_okay=False), help="DuckDB database file.",
    )(f)


def format_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--format", "fmt", type=click.Choice(sorted(render.FORMATS)), default="table", show_default=True,
        help="Output format.",
    )(f)


def friendly_errors(f: Callable[..., Any]) -> Callable[..., Any]:
    """Bad input ends with one clear line on stderr and exit status 2, not a traceback."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except AutointerpError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except ValidationError as exc:
            msgs = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
            click.echo(f"error: {msgs}", err=True)
            sys.exit(2)

    return wrapper


@click.group()
@click.version_option(__version__)
def main() -> None:
    """Label, score and query every feature of a language model.

    \b
    Example:
      autointerp collect --tokens 100000
      autointerp sql "SELECT feature, max_act FROM features ORDER BY max_act DESC LIMIT 5"
      autointerp show 42
    """


def _parse_range(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        a, b = value.split(":")
        return int(a), int(b)
    except ValueError:
        raise click.BadParameter(f"'{value}': use START:STOP, e.g. 0:1000") from None


def _progress_factory(total: int) -> Callable[[int], None]:
    from tqdm import tqdm

    bar = tqdm(total=total, unit="tok", unit_scale=True, dynamic_ncols=True, desc="collect", file=sys.stderr)
    return bar.update


@main.command()
@click.option("--model", default="smollm2-135m", show_default=True,
              help="TransformerLens model name (needs the hub), local HF model directory, or smollm2-135m (offline).")
@click.option("--hook", default=None, help="Hook point, e.g. blocks.6.mlp.hook_post or blocks.3.hook_resid_post. "
              "Default: the SAE's hook, else blocks.6.mlp.hook_post.")
@click.option("--sae", default=None, help="SAELens SAE directory, or RELEASE:SAE_ID (needs the hub). Omit for neurons.")
@click.option("--dataset", default="default", show_default=True,
              help="default (Python docs, offline), a .txt/.jsonl/.parquet file or directory, or an HF dataset name.")
@click.option("--text-field", default="text", show_default=True, help="Text field of .jsonl/.parquet/HF records.")
@click.option("--tokens", "n_tokens", type=int, default=200_000, show_default=True, help="Tokens to collect over.")
@click.option("--ctx-len", type=int, default=64, show_default=True, help="Tokens per context.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for splits and samples.")
@click.option("--batch-size", type=int, default=16, show_default=True, help="Contexts per forward pass.")
@click.option("--top-k", type=int, default=20, show_default=True, help="Top contexts per feature and split.")
@click.option("--quantiles", "n_quantiles", type=int, default=10, show_default=True, help="Quantile bins.")
@click.option("--per-quantile", type=int, default=5, show_default=True, help="Contexts per quantile bin and split.")
@click.option("--random", "n_random", type=int, default=20, show_default=True, help="Random contexts per split.")
@click.option("--holdout", "holdout_frac", type=float, default=0.2, show_default=True,
              help="Share of contexts in the holdout split.")
@click.option("--threshold", type=float, default=0.0, show_default=True, help="Activation above which a token is active.")
@click.option("--features", "features", default=None, help="Only features START:STOP.")
@click.option("--random-init", is_flag=True, help="Use a freshly initialised copy of the model (seeded by --seed).")
@db_option
@friendly_errors
def collect(db: str, features: str | None, **kwargs: Any) -> None:
    """Run a model over text and store each feature's contexts and statistics.

    \b
    Example (offline default: SmolLM2-135M, MLP neurons of layer 6, Python docs):
      autointerp collect --tokens 200000 --db runs.duckdb
    \b
    An SAE (SAELens directory) at its hook:
      autointerp collect --sae ./my_sae --tokens 1000000

    Re-running the same command completes an interrupted run and does nothing to a finished one.
    """
    from autointerp.config import CollectConfig
    from autointerp.pipeline import collect_stage

    cfg = CollectConfig(features=_parse_range(features), **kwargs)
    t0 = time.monotonic()
    try:
        out = collect_stage(db, cfg, _progress_factory)
    except KeyboardInterrupt:
        click.echo("\ninterrupted: the dictionary is marked incomplete; run the same command again to complete it.",
                   err=True)
        sys.exit(130)
    if out.already_complete:
        click.echo(f"dictionary {out.dictionary_id} already holds this collection ({out.n_tokens:,} tokens); "
                   "nothing to do.")
        return
    secs = time.monotonic() - t0
    click.echo(f"dictionary {out.dictionary_id}: {out.n_features:,} features over {out.n_tokens:,} tokens "
               f"({out.n_contexts:,} contexts) in {secs:.1f}s -> {db}")


@main.command()
@click.argument("query")
@db_option
@format_option
@friendly_errors
def sql(db: str, query: str, fmt: str) -> None:
    """Run a SQL query on a read-only connection.

    \b
    Example:
      autointerp sql "SELECT feature, max_act, frac_active FROM features ORDER BY max_act DESC LIMIT 10"
      autointerp sql "SELECT * FROM contexts WHERE feature = 3 AND kind = 'top'" --format json
    """
    with store.open_store(db, read_only=True) as con:
        columns, rows = store.query(con, query)
    click.echo(render.FORMATS[fmt](columns, rows))


def _pick_dictionary(con: Any, dictionary_id: int | None) -> int:
    if dictionary_id is not None:
        store.get_dictionary(con, dictionary_id)
        return dictionary_id
    complete = [d for d in store.list_dictionaries(con) if d.status == "complete"]
    if not complete:
        raise AutointerpError("no complete dictionary in this database; run `autointerp collect` first")
    return complete[-1].dictionary_id


@main.command()
@click.argument("feature", type=int)
@click.option("--dictionary", "dictionary_id", type=int, default=None, help="Dictionary id (default: the newest).")
@click.option("--split", type=click.Choice(["explain", "holdout", "all"]), default="explain", show_default=True)
@click.option("--kind", type=click.Choice(["top", "quantile", "random", "all"]), default="all", show_default=True)
@click.option("--limit", type=int, default=10, show_default=True, help="Contexts per kind.")
@click.option("--color/--no-color", default=None, help="Highlight with colours (default: when printing to a terminal).")
@db_option
@friendly_errors
def show(db: str, feature: int, dictionary_id: int | None, split: str, kind: str, limit: int,
         color: bool | None) -> None:
    """Print a feature's statistics and contexts, activations highlighted.

    \b
    Example:
      autointerp show 42 --dictionary 1 --kind top --limit 5
    """
    with store.open_store(db, read_only=True) as con:
        did = _pick_dictionary(con, dictionary_id)
        stats = store.feature_stats(con, did, feature)
        if stats is None:
            d = store.get_dictionary(con, did)
            raise AutointerpError(f"dictionary {did} has no feature {feature} ({d.n_features} features)")
        rows = store.feature_contexts(con, did, feature)
    color = sys.stdout.isatty() if color is None else color
    click.echo(f"dictionary {did} feature {feature}: max {stats['max_act']:.4g}, mean {stats['mean_act']:.4g}, "
               f"active on {100 * stats['frac_active']:.3g}% of tokens")
    scale = stats["max_act"] if stats["max_act"] > 0 else 1.0
    shown: dict[tuple[str, str], int] = {}
    for r in rows:
        if (split != "all" and r.split != split) or (kind != "all" and r.kind != kind):
            continue
        key = (r.split, r.kind)
        if shown.get(key, 0) >= limit:
            continue
        if key not in shown:
            click.echo(f"\n== {r.split} / {r.kind} ==")
        shown[key] = shown.get(key, 0) + 1
        tag = f"q{r.quantile} " if r.quantile is not None else ""
        click.echo(f"{tag}max {r.max_act:7.3f} | {render.highlight(r.tokens, r.acts, scale, color)}")


@main.command()
@db_option
@format_option
@friendly_errors
def status(db: str, fmt: str) -> None:
    """Say what each dictionary holds.

    \b
    Example:
      autointerp status --db runs.duckdb
    """
    with store.open_store(db, read_only=True) as con:
        columns, rows = store.query(con, """
            SELECT d.dictionary_id AS id, d.model, d.hook, d.kind, d.random_init, d.status, d.n_tokens,
                   d.n_features, count(f.feature) AS features_stored,
                   (SELECT count(*) FROM examples e WHERE e.dictionary_id = d.dictionary_id) AS examples,
                   d.dataset, d.created_at
            FROM dictionaries d LEFT JOIN features f USING (dictionary_id)
            GROUP BY ALL ORDER BY id""")
    click.echo(render.FORMATS[fmt](columns, rows))
