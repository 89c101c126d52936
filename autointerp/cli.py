"""The `autointerp` command line: thin commands grouped by verb. The only module that prints."""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
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


_COLLECT_OPTIONS = [
    click.option("--model", default="smollm2-135m", show_default=True,
              help="TransformerLens model name (needs the hub), local HF model directory, or smollm2-135m (offline)."),
    click.option("--hook", default=None, help="Hook point, e.g. blocks.6.mlp.hook_post or blocks.3.hook_resid_post. "
              "Default: the SAE's hook, else blocks.6.mlp.hook_post."),
    click.option("--sae", default=None, help="SAELens SAE directory, or RELEASE:SAE_ID (needs the hub). Omit for neurons."),
    click.option("--dataset", default="default", show_default=True,
              help="default (Python docs, offline), a .txt/.jsonl/.parquet file or directory, or an HF dataset name."),
    click.option("--text-field", default="text", show_default=True, help="Text field of .jsonl/.parquet/HF records."),
    click.option("--tokens", "n_tokens", type=int, default=200_000, show_default=True, help="Tokens to collect over."),
    click.option("--ctx-len", type=int, default=64, show_default=True, help="Tokens per context."),
    click.option("--seed", type=int, default=0, show_default=True, help="Seed for splits and samples."),
    click.option("--batch-size", type=int, default=16, show_default=True, help="Contexts per forward pass."),
    click.option("--top-k", type=int, default=20, show_default=True, help="Top contexts per feature and split."),
    click.option("--quantiles", "n_quantiles", type=int, default=10, show_default=True, help="Quantile bins."),
    click.option("--per-quantile", type=int, default=5, show_default=True, help="Contexts per quantile bin and split."),
    click.option("--random", "n_random", type=int, default=20, show_default=True, help="Random contexts per split."),
    click.option("--holdout", "holdout_frac", type=float, default=0.2, show_default=True,
              help="Share of contexts in the holdout split."),
    click.option("--threshold", type=float, default=0.0, show_default=True, help="Activation above which a token is active."),
    click.option("--features", "features", default=None, help="Only features START:STOP."),
    click.option("--random-init", is_flag=True, help="Use a freshly initialised copy of the model (seeded by --seed)."),
]


def collect_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The options of `collect`, shared with `run`."""
    for opt in reversed(_COLLECT_OPTIONS):
        f = opt(f)
    return f


@main.command()
@collect_options
@click.option("--checkpoint-every", "checkpoint_every_s", type=float, default=300.0, show_default=True,
              help="Seconds between checkpoints (beside the database) that a killed run resumes from.")
@db_option
@friendly_errors
def collect(db: str, features: str | None, checkpoint_every_s: float, **kwargs: Any) -> None:
    """Run a model over text and store each feature's contexts and statistics.

    \b
    Example (offline default: SmolLM2-135M, MLP neurons of layer 6, Python docs):
      autointerp collect --tokens 200000 --db runs.duckdb
    \b
    An SAE (SAELens directory) at its hook:
      autointerp collect --sae ./my_sae --tokens 1000000

    Re-running the same command completes an interrupted run (from its last checkpoint) and does
    nothing to a finished one.
    """
    from autointerp.config import CollectConfig
    from autointerp.pipeline import collect_stage

    cfg = CollectConfig(features=_parse_range(features), **kwargs)
    t0 = time.monotonic()
    try:
        out = collect_stage(db, cfg, _progress_factory, checkpoint_every_s=checkpoint_every_s)
    except KeyboardInterrupt:
        click.echo("\ninterrupted: the dictionary is marked incomplete; run the same command again to complete it "
                   "(it resumes from the last checkpoint).", err=True)
        sys.exit(130)
    if out.already_complete:
        click.echo(f"dictionary {out.dictionary_id} already holds this collection ({out.n_tokens:,} tokens); "
                   "nothing to do.")
        return
    secs = time.monotonic() - t0
    resumed = f", resumed from a checkpoint at {out.resumed_tokens:,} tokens" if out.resumed_tokens else ""
    click.echo(f"dictionary {out.dictionary_id}: {out.n_features:,} features over {out.n_tokens:,} tokens "
               f"({out.n_contexts:,} contexts) in {secs:.1f}s{resumed} -> {db}")


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
                   (SELECT count(*) FROM explanations x WHERE x.dictionary_id = d.dictionary_id
                      AND x.status = 'ok' AND x.explainer NOT LIKE 'baseline:%') AS llm_labels,
                   (SELECT count(*) FROM explanations x WHERE x.dictionary_id = d.dictionary_id
                      AND x.status = 'failed') AS failed_labels,
                   (SELECT count(DISTINCT s.explanation_id) FROM scores s
                      WHERE s.dictionary_id = d.dictionary_id) AS scored_labels,
                   d.dataset, d.created_at
            FROM dictionaries d LEFT JOIN features f USING (dictionary_id)
            GROUP BY ALL ORDER BY id""")
        labels = con.execute("SELECT dictionary_id, explainer, correlation_top_random, explained_variance, behaviour, "
                             "ablation_effect FROM labels WHERE status = 'ok'").fetchall()
    click.echo(render.FORMATS[fmt](columns, rows))
    if labels and fmt == "table":
        click.echo("\nlabels per dictionary and explainer (means with bootstrap 95% CIs; "
                   "captured = behaviour weighted by each feature's ablation effect):")
        click.echo(render.table(*_label_summary(labels)))


def _label_summary(labels: list[tuple]) -> tuple[list[str], list[list[Any]]]:
    import numpy as np

    from autointerp import compare as cmp

    groups: dict[tuple[int, str], list[tuple]] = {}
    for did, expl, *vals in labels:
        groups.setdefault((did, expl), []).append(tuple(vals))

    def fmt(d: Any) -> str:
        return "" if d.n == 0 else f"{d.mean:.3f} [{d.mean_ci[0]:.3f}, {d.mean_ci[1]:.3f}]"

    out = []
    for (did, expl), vals in sorted(groups.items()):
        arr = np.array([[np.nan if v is None else v for v in row] for row in vals], dtype=np.float64)
        share, (lo, hi) = cmp.captured_share(arr[:, 2], arr[:, 3])
        out.append([did, expl, len(vals), fmt(cmp.distribution(arr[:, 0])), fmt(cmp.distribution(arr[:, 1])),
                    fmt(cmp.distribution(arr[:, 2])),
                    "" if not np.isfinite(share) else f"{share:.3f} [{lo:.3f}, {hi:.3f}]"])
    return ["dictionary", "explainer", "labels", "correlation_top_random", "explained_variance", "behaviour",
            "captured"], out


# ---------------------------------------------------------------- explain / score / run


def selection_options(f: Callable[..., Any]) -> Callable[..., Any]:
    opts = [
        click.option("--dictionary", "dictionary_id", type=int, default=None, help="Dictionary id (default: the newest)."),
        click.option("--features", "feature_range", default=None, help="Only features START:STOP."),
        click.option("--where", default=None, help="SQL condition on `features`, e.g. \"frac_active > 0.001\"."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def llm_options(f: Callable[..., Any]) -> Callable[..., Any]:
    opts = [
        click.option("--base-url", "base_urls", multiple=True,
                     help="OpenAI-compatible endpoint (repeat to spread requests). Default: $OPENAI_BASE_URL, "
                          "else a local llama.cpp server with SmolLM2-135M-Instruct."),
        click.option("--explainer-model", default=None, help="Explainer model name at the endpoint."),
        click.option("--simulator-model", default=None, help="Simulator model name at the endpoint."),
        click.option("--simulator-mode", type=click.Choice(["echo", "chat"]), default="echo", show_default=True,
                     help="echo: prompt logprobs, one request per context; chat: JSON answers (no echo needed)."),
        click.option("--concurrency", type=int, default=8, show_default=True, help="Requests in flight."),
        click.option("--timeout", "timeout_s", type=float, default=120.0, show_default=True, help="Per-request timeout, s."),
        click.option("--max-attempts", type=int, default=6, show_default=True, help="Tries per request."),
        click.option("--max-cost", "max_cost_usd", type=float, default=None, help="Stop cleanly at this spend (USD)."),
        click.option("--max-tokens", type=int, default=None, help="Stop cleanly after this many tokens."),
        click.option("--prices", type=click.Path(exists=True, dir_okay=False), default=None,
                     help='JSON price table {"model": [usd_per_M_input, usd_per_M_output]}.'),
        click.option("--explain-top", "n_explain_top", type=int, default=10, show_default=True,
                     help="Explain-split top contexts shown to the explainer."),
        click.option("--explain-quantile", "n_explain_quantile", type=int, default=10, show_default=True,
                     help="Explain-split quantile contexts shown to the explainer."),
        click.option("--sim-top", "n_sim_top", type=int, default=10, show_default=True,
                     help="Holdout top contexts simulated per feature."),
        click.option("--sim-random", "n_sim_random", type=int, default=10, show_default=True,
                     help="Holdout random contexts simulated per feature."),
        click.option("--baseline/--no-baseline", default=True, show_default=True,
                     help="Also label and score with the token-lookup baseline."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _label_command(db: str, stages: tuple[bool, bool], dictionary_id: int | None, feature_range: str | None,
                   where: str | None, base_urls: tuple[str, ...], explainer_model: str | None,
                   simulator_model: str | None, prices: str | None, **kwargs: Any) -> None:
    import asyncio
    import json

    from tqdm import tqdm

    from autointerp import llm, local
    from autointerp.config import LabelConfig
    from autointerp.labelling import LabelBatch

    with store.open_store(db, read_only=True) as con:
        did = _pick_dictionary(con, dictionary_id)
        features = store.select_features(con, did, where, _parse_range(feature_range))
    if not features:
        raise AutointerpError("no features selected")
    urls = list(base_urls) or [u for u in [os.environ.get("OPENAI_BASE_URL")] if u]
    embedded = None
    if not urls:
        embedded = local.EmbeddedLLM.start()
        urls = [embedded.base_url]
    default_model = local.MODEL_NAME if embedded else "gpt-4o-mini"
    cfg = LabelConfig(explainer_model=explainer_model or default_model,
                      simulator_model=simulator_model or default_model, **kwargs)
    price_table = {k: tuple(v) for k, v in json.loads(Path(prices).read_text()).items()} if prices else None
    budget = llm.Budget(cfg.max_cost_usd, cfg.max_tokens)
    client: Any = llm.OpenAICompatibleClient(urls, os.environ.get("OPENAI_API_KEY"), timeout_s=cfg.timeout_s,
                                             max_attempts=cfg.max_attempts, prices=price_table, budget=budget)
    if embedded is not None:
        client = embedded.client(client)
    bar = tqdm(total=len(features), unit="feat", desc="label", file=sys.stderr, dynamic_ncols=True)

    def on_progress(p: Any) -> None:
        bar.total = p.features_total
        bar.n = p.features_done
        bar.set_postfix_str(f"tok {p.tokens:,} ${p.cost_usd:.4f} failed {sum(p.failed.values())}", refresh=True)

    batch = LabelBatch(db, did, cfg, client, features, explain_stage=stages[0], score_stage=stages[1],
                       on_progress=on_progress)
    from autointerp.pipeline import sigterm_as_interrupt

    try:
        with sigterm_as_interrupt():
            progress = asyncio.run(batch.run())
    except KeyboardInterrupt:
        click.echo("\ninterrupted: finished features are saved; run the same command to continue.", err=True)
        sys.exit(130)
    finally:
        bar.close()
        if embedded is not None:
            embedded.stop()
    _summary(progress, did)


def _summary(p: Any, dictionary_id: int) -> None:
    import statistics

    click.echo(f"dictionary {dictionary_id}: {p.features_done:,}/{p.features_total:,} features done, "
               f"{p.explained:,} LLM labels, {p.scored:,} scored, {p.tokens:,} tokens, ${p.cost_usd:.4f}")
    for reason, n in p.failed.most_common():
        click.echo(f"  failed: {n:,} x {reason}")
    for method, values in sorted(p.score_values.items()):
        if values:
            click.echo(f"  {method}: median {statistics.median(values):.3f}, mean {statistics.fmean(values):.3f} "
                       f"over {len(values):,}")
    if p.stopped:
        click.echo(f"stopped early: {p.stopped}. Run the same command to continue.")
    if p.features_total == 0:
        click.echo("nothing to do: every selected feature is already done.")


@main.command()
@selection_options
@llm_options
@db_option
@friendly_errors
def explain(db: str, **kwargs: Any) -> None:
    """Label features with an explainer LLM (and the token-lookup baseline).

    \b
    Example (any OpenAI-compatible endpoint; the key comes from $OPENAI_API_KEY):
      autointerp explain --base-url https://api.openai.com/v1 --explainer-model gpt-4o-mini --features 0:1000
    \b
    With no --base-url, a local llama.cpp server with SmolLM2-135M-Instruct is started and stopped.
    Killed or stopped by --max-cost? Run the same command again: it continues.
    """
    _label_command(db, (True, False), **kwargs)


@main.command()
@selection_options
@llm_options
@db_option
@friendly_errors
def score(db: str, **kwargs: Any) -> None:
    """Score stored labels: a simulator LLM predicts held-out activations from each label.

    \b
    Example:
      autointerp score --base-url http://localhost:8000/v1 --simulator-model my-model --where "max_act > 1"
    """
    _label_command(db, (False, True), **kwargs)


@main.command("label")
@selection_options
@llm_options
@db_option
@friendly_errors
def label_cmd(db: str, **kwargs: Any) -> None:
    """Explain and score in one pass over the features (what `run` does after collecting).

    \b
    Example:
      autointerp label --features 0:100 --max-cost 5
    """
    _label_command(db, (True, True), **kwargs)


@main.command()
@collect_options
@click.option("--label-features", default=None, help="Label and score only features START:STOP of the collection.")
@click.option("--label-where", default=None, help="Label and score only features matching this SQL condition.")
@click.option("--behaviour/--no-behaviour", "with_behaviour", default=True, show_default=True,
              help="Also compute behaviour scores (the model re-run with each feature replaced by its simulation).")
@llm_options
@db_option
@friendly_errors
def run(db: str, features: str | None, label_features: str | None, label_where: str | None, with_behaviour: bool,
        **kwargs: Any) -> None:
    """Collect, explain and score in one command (each step resumes where it stopped).

    \b
    Example (embedded default, offline: SmolLM2-135M neurons labelled by SmolLM2-135M-Instruct):
      autointerp run --tokens 50000 --label-features 0:8 --sim-top 4 --sim-random 4
    \b
    With a paid endpoint and a budget:
      autointerp run --model gpt2 --hook blocks.6.mlp.hook_post --base-url https://api.openai.com/v1 \\
          --explainer-model gpt-4o-mini --simulator-model gpt-4o-mini --simulator-mode chat --max-cost 20
    """
    from autointerp.config import CollectConfig
    from autointerp.pipeline import collect_stage

    collect_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in _COLLECT_PARAM_NAMES}
    cfg = CollectConfig(features=_parse_range(features), **collect_kwargs)
    try:
        out = collect_stage(db, cfg, _progress_factory)
    except KeyboardInterrupt:
        click.echo("\ninterrupted: run the same command again to complete it.", err=True)
        sys.exit(130)
    click.echo(f"dictionary {out.dictionary_id}: {out.n_features:,} features over {out.n_tokens:,} tokens"
               + (" (already collected)" if out.already_complete else ""))
    _label_command(db, (True, True), dictionary_id=out.dictionary_id, feature_range=label_features,
                   where=label_where, **kwargs)
    if with_behaviour:
        _behaviour(db, out.dictionary_id, label_features, "mean")


_COLLECT_PARAM_NAMES = {
    "model", "hook", "sae", "dataset", "text_field", "n_tokens", "ctx_len", "seed", "batch_size", "top_k",
    "n_quantiles", "per_quantile", "n_random", "holdout_frac", "threshold", "random_init",
}


@main.command("behaviour")
@click.option("--dictionary", "dictionary_id", type=int, default=None, help="Dictionary id (default: the newest).")
@click.option("--features", "feature_range", default=None, help="Only features START:STOP.")
@click.option("--ablate", type=click.Choice(["mean", "zero"]), default="mean", show_default=True,
              help="What the ablated feature is replaced by.")
@db_option
@friendly_errors
def behaviour_cmd(db: str, dictionary_id: int | None, feature_range: str | None, ablate: str) -> None:
    """Behaviour scores: how much of each feature's effect on the model its label's simulation restores.

    \b
    Example:
      autointerp behaviour --dictionary 1 --ablate mean
    """
    _behaviour(db, dictionary_id, feature_range, ablate)


def _behaviour(db: str, dictionary_id: int | None, feature_range: str | None, ablate: str) -> None:
    from tqdm import tqdm

    from autointerp.pipeline import behaviour_stage

    with store.open_store(db, read_only=True) as con:
        did = _pick_dictionary(con, dictionary_id)
        rng = _parse_range(feature_range)
        features = store.select_features(con, did, None, rng) if rng else None
    bar = tqdm(unit="feat", desc="behaviour", file=sys.stderr, dynamic_ncols=True)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        out = behaviour_stage(db, did, features, ablate, progress=progress)
    finally:
        bar.close()
    click.echo(f"dictionary {did}: behaviour scored for {out.features:,} features "
               f"({out.scored:,} labels scored, {out.no_effect:,} with no measurable ablation effect)")


@main.command()
@click.option("--like", "like_id", type=int, required=True, help="The trained dictionary to copy.")
@click.option("--seed", "init_seed", type=int, default=None, help="Seed of the random initialisation (default: the dictionary's).")
@click.option("--sae", "control_sae", default=None,
              help="For SAE dictionaries: an SAE trained on the random-init model (SAELens directory).")
@click.option("--label-features", default=None, help="Label and score only features START:STOP.")
@click.option("--label-where", default=None, help="Label and score only features matching this SQL condition.")
@click.option("--ablate", type=click.Choice(["mean", "zero"]), default="mean", show_default=True)
@llm_options
@db_option
@friendly_errors
def control(db: str, like_id: int, init_seed: int | None, control_sae: str | None, label_features: str | None,
            label_where: str | None, ablate: str, **kwargs: Any) -> None:
    """Random-init control: the same architecture freshly initialised, collected on the same tokens with the
    same settings, labelled and scored with the same LLMs and prompts.

    \b
    Example:
      autointerp control --like 1 --label-features 0:100
      autointerp compare 1 2
    """
    from autointerp.config import CollectConfig
    from autointerp.pipeline import collect_stage

    with store.open_store(db, read_only=True) as con:
        d = store.get_dictionary(con, like_id)
    if d.random_init:
        raise AutointerpError(f"dictionary {like_id} is itself a random-init control")
    if d.kind == "sae" and not control_sae:
        raise AutointerpError(
            f"dictionary {like_id} holds SAE latents; an SAE trained on the trained model means nothing on a "
            "random one. Pass --sae DIR with an SAE trained on the random-init model (same seed), or run a "
            "neuron control with `autointerp collect --random-init --hook HOOK` on the same hook")
    fields = set(CollectConfig.model_fields)
    settings = {k: v for k, v in d.config.items() if k in fields}
    settings.update(random_init=True, seed=d.seed if init_seed is None else init_seed,
                    sae=control_sae if d.kind == "sae" else None)
    if settings.get("features") is not None:
        settings["features"] = tuple(settings["features"])
    cfg = CollectConfig(**settings)
    out = collect_stage(db, cfg, _progress_factory)
    click.echo(f"control dictionary {out.dictionary_id} (random init, seed {cfg.seed}) of dictionary {like_id}: "
               f"{out.n_features:,} features over {out.n_tokens:,} tokens")
    _label_command(db, (True, True), dictionary_id=out.dictionary_id, feature_range=label_features,
                   where=label_where, **kwargs)
    _behaviour(db, out.dictionary_id, label_features, ablate)


@main.command("compare")
@click.argument("dict_a", type=int)
@click.argument("dict_b", type=int)
@click.option("--explainer", default=None, help="Only this explainer's labels (default: each explainer).")
@db_option
@format_option
@friendly_errors
def compare_cmd(db: str, dict_a: int, dict_b: int, explainer: str | None, fmt: str) -> None:
    """Score distributions of two dictionaries side by side, and their paired difference with a 95% CI.

    \b
    Example (a trained model against its random-init control):
      autointerp compare 1 2
    """
    from autointerp import compare as cmp

    with store.open_store(db, read_only=True) as con:
        for d in (dict_a, dict_b):
            store.get_dictionary(con, d)
        rows = con.execute(
            "SELECT s.dictionary_id, e.explainer, s.method, s.feature, s.value FROM scores s "
            "JOIN explanations e USING (explanation_id) WHERE s.dictionary_id IN (?, ?)", [dict_a, dict_b]).fetchall()
    data: dict[tuple[str, str], dict[int, dict[int, float]]] = {}
    for did, expl, method, feature, value in rows:
        if explainer and expl != explainer:
            continue
        data.setdefault((expl, method), {dict_a: {}, dict_b: {}})[did][feature] = value
    if not data:
        raise AutointerpError(f"no scores for dictionaries {dict_a} and {dict_b}; label and score them first")
    columns = ["explainer", "method", "n_a", "mean_a", "ci_a", "median_a", "n_b", "mean_b", "ci_b", "median_b",
               "paired", "diff_a_minus_b", "diff_ci", "verdict"]
    out = []

    def ci(lo_hi: tuple[float, float]) -> str:
        return f"[{lo_hi[0]:.3f}, {lo_hi[1]:.3f}]"

    for (expl, method), per in sorted(data.items()):
        c = cmp.compare(method, expl, per[dict_a], per[dict_b])
        out.append([expl, method, c.a.n, c.a.mean, ci(c.a.mean_ci), c.a.median, c.b.n, c.b.mean, ci(c.b.mean_ci),
                    c.b.median, c.n_paired, c.diff_mean, ci(c.diff_ci), c.verdict])
    click.echo(f"A = dictionary {dict_a}, B = dictionary {dict_b}")
    click.echo(render.FORMATS[fmt](columns, out))


@main.command("export")
@click.option("--format", "fmt", type=click.Choice(["parquet", "jsonl", "neuronpedia"]), required=True)
@click.option("--out", "out_path", type=click.Path(dir_okay=False), required=True, help="File to write.")
@click.option("--dictionary", "dictionary_id", type=int, default=None, help="Dictionary id (default: the newest).")
@click.option("--np-model-id", default=None, help="Neuronpedia modelId (default: the dictionary's model).")
@click.option("--np-source", default=None, help="Neuronpedia source/layer id (default: e.g. 6-mlp-neurons).")
@db_option
@friendly_errors
def export_cmd(db: str, fmt: str, out_path: str, dictionary_id: int | None, np_model_id: str | None,
               np_source: str | None) -> None:
    """Write labels with every score (the labels view) to parquet or JSON lines, or as Neuronpedia explanations.

    \b
    Example:
      autointerp export --format parquet --out labels.parquet
      autointerp export --format neuronpedia --out np.json --np-model-id gpt2-small --np-source 6-res-jb
    """
    from autointerp import export

    with store.open_store(db, read_only=True) as con:
        did = _pick_dictionary(con, dictionary_id)
        d = store.get_dictionary(con, did)
        cur = con.execute("SELECT * FROM labels WHERE dictionary_id = ? ORDER BY feature, explainer", [did])
        cols = [c[0] for c in cur.description]
        rows = [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
    if not rows:
        raise AutointerpError(f"dictionary {did} has no labels yet; run `autointerp explain` first")
    n = export.write(rows, fmt, Path(out_path), np_model_id or d.model, np_source or export.neuronpedia_source(d.hook, d.kind))
    click.echo(f"wrote {n:,} records of dictionary {did} to {out_path}")


@main.command("report")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default="report.html", show_default=True)
@click.option("--dictionary", "dictionary_ids", type=int, multiple=True, help="Only these dictionaries.")
@db_option
@friendly_errors
def report_cmd(db: str, out_path: str, dictionary_ids: tuple[int, ...]) -> None:
    """Write one static HTML file (plots embedded): scores trained beside control, correlation against
    behaviour, baseline against LLM labels, cost, and the best and worst features with their contexts.

    \b
    Example:
      autointerp report --out report.html
    """
    from autointerp import report

    with store.open_store(db, read_only=True) as con:
        page = report.build(con, list(dictionary_ids) or None)
    Path(out_path).write_text(page)
    click.echo(f"wrote {out_path} ({len(page) / 1024:.0f} KiB)")
