"""The `autointerp` command line: thin commands grouped by verb. The only module that prints."""

from __future__ import annotations

import functools
import os
import sys
import time
import types
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from autointerp import __version__, render, store
from autointerp.config import RANDOM_INIT_SCHEMES, BehaviourConfig, CollectConfig, LabelConfig, LLMConfig
from autointerp.errors import AutointerpError, is_bad_input
from autointerp.types import ProgressEvent

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
    """An error of ours ends with one clear line on stderr and exit status 2 (bad input) or 1 (a lock
    held too long, an LLM failure, a bug of ours), not a traceback."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except AutointerpError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2 if is_bad_input(exc) else 1)
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


class _Range(click.ParamType):
    name = "START:STOP"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        return value if value is None or isinstance(value, tuple) else _parse_range(value)


def _option(name: str, field: FieldInfo) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A click option for one config field: flag from the field (or its json_schema_extra 'flag'),
    help from its description, default from its default, type from its annotation."""
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    flag = "--" + str(extra.get("flag") or name.replace("_", "-"))
    ann = field.annotation
    args = [a for a in typing.get_args(ann) if a is not type(None)]
    base = args[0] if typing.get_origin(ann) in (typing.Union, types.UnionType) and len(args) == 1 else ann
    kw: dict[str, Any] = {"help": field.description, "default": field.default, "show_default": True}
    if base is bool:
        return click.option(f"{flag}/--no-{flag[2:]}", name, **kw)
    if typing.get_origin(base) is typing.Literal:
        kw["type"] = click.Choice([str(c) for c in typing.get_args(base)])
    elif typing.get_origin(base) is tuple and typing.get_args(base)[-1] is Ellipsis:
        kw.update(multiple=True, default=(), show_default=False)
    elif typing.get_origin(base) is tuple:
        kw["type"] = _Range()
    elif base in (int, float, str):
        kw["type"] = base
    if field.default is None:
        kw["show_default"] = False
    return click.option(flag, name, **kw)


def config_options(*models: type[BaseModel], exclude: tuple[str, ...] = ()) -> Callable[..., Any]:
    """Click options generated from config models: each field once (the first model that has it wins)."""

    def deco(f: Callable[..., Any]) -> Callable[..., Any]:
        seen = set(exclude)
        opts = []
        for model in models:
            for name, field in model.model_fields.items():
                if name not in seen:
                    seen.add(name)
                    opts.append(_option(name, field))
        for opt in reversed(opts):
            f = opt(f)
        return f

    return deco


M = typing.TypeVar("M", bound=BaseModel)


def build(model: type[M], kwargs: dict[str, Any], **overrides: Any) -> M:
    """The config `model` from the command's options (each field of the model that is among them)."""
    return model(**{k: v for k, v in kwargs.items() if k in model.model_fields}, **overrides)


class _Bars:
    """The one progress display: a bar per stage, fed ProgressEvents."""

    def __init__(self) -> None:
        self.bars: dict[str, Any] = {}

    def __call__(self, e: ProgressEvent) -> None:
        from tqdm import tqdm

        bar = self.bars.get(e.stage)
        if bar is None:
            bar = self.bars[e.stage] = tqdm(total=e.total, unit=e.unit, unit_scale=e.unit == "tok",
                                            dynamic_ncols=True, desc=e.stage, file=sys.stderr)
        bar.total = e.total
        bar.n = e.done
        if e.detail:
            bar.set_postfix_str(e.detail, refresh=False)
        bar.refresh()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()


@contextmanager
def _interruptible(message: str) -> Iterator[_Bars]:
    from autointerp.stages.collect import sigterm_as_interrupt

    bars = _Bars()
    try:
        with sigterm_as_interrupt():
            yield bars
    except KeyboardInterrupt:
        bars.close()
        click.echo(f"\ninterrupted: {message}", err=True)
        sys.exit(130)
    finally:
        bars.close()


@main.command()
@config_options(CollectConfig)
@click.option("--checkpoint-every", "checkpoint_every_s", type=float, default=300.0, show_default=True,
              help="Seconds between checkpoints (beside the database) that a killed run resumes from.")
@db_option
@friendly_errors
def collect(db: str, checkpoint_every_s: float, **kwargs: Any) -> None:
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
    from autointerp.stages.collect import collect_stage

    cfg = build(CollectConfig, kwargs)
    t0 = time.monotonic()
    with _interruptible("the dictionary is marked incomplete; run the same command again to complete it "
                        "(it resumes from the last checkpoint).") as bars:
        out = collect_stage(db, cfg, bars, checkpoint_every_s=checkpoint_every_s)
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
@click.option("--allow-files", is_flag=True,
              help="Let the query read files (read_parquet, read_csv, ...) to join outside data. Off by default.")
@db_option
@format_option
@friendly_errors
def sql(db: str, query: str, fmt: str, allow_files: bool) -> None:
    """Run one SELECT on a read-only, sandboxed connection: no file or network access (unless
    --allow-files, which lets it read files), no extensions, no settings changes, one statement.

    \b
    Example:
      autointerp sql "SELECT feature, max_act, frac_active FROM features ORDER BY max_act DESC LIMIT 10"
      autointerp sql "SELECT * FROM contexts WHERE feature = 3 AND kind = 'top'" --format json
      autointerp sql "SELECT f.*, x.note FROM features f JOIN read_parquet('notes.parquet') x USING (feature)" --allow-files
    """
    with store.open_store(db, read_only=True) as con:
        columns, rows = store.user_query(con, query, allow_files=allow_files)
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
    from autointerp import compare as cmp

    with store.open_store(db, read_only=True) as con:
        table = store.dictionary_status(con)
        labels = store.label_scores(con, cmp.SUMMARY_METHODS)
    click.echo(render.FORMATS[fmt](table.columns, table.rows))
    if labels and fmt == "table":
        click.echo("\nlabels per dictionary, explainer and simulator, beside the null labels (null:shuffled:X is X's "
                   "labels given to other features, null:constant one label for all); means with bootstrap 95% "
                   "CIs; captured = behaviour weighted by each feature's ablation effect:")
        click.echo(render.table(*cmp.label_summary(labels)))


# ---------------------------------------------------------------- explain / score / run


def selection_options(f: Callable[..., Any]) -> Callable[..., Any]:
    opts = [
        click.option("--dictionary", "dictionary_id", type=int, default=None, help="Dictionary id (default: the newest)."),
        click.option("--features", "feature_range", type=_Range(), default=None, help="Only features START:STOP."),
        click.option("--where", default=None, help="SQL condition on `features`, e.g. \"frac_active > 0.001\"."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def label_selection_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--label-where", default=None, help="Label and score only features matching this SQL condition.")(f)
    return click.option("--label-features", type=_Range(), default=None,
                        help="Label and score only features START:STOP.")(f)


def _label_command(db: str, explain_stage: bool, score_stage: bool, dictionary_id: int | None,
                   feature_range: tuple[int, int] | None, where: str | None, **kwargs: Any) -> None:
    from autointerp.stages.label import label_stage, open_llm
    from autointerp.stages.run import Selection, select

    with store.open_store(db, read_only=True) as con:
        did = _pick_dictionary(con, dictionary_id)
    features = select(db, did, Selection(feature_range, where))
    cfg, llm_cfg = build(LabelConfig, kwargs), build(LLMConfig, kwargs)
    with _interruptible("finished features are saved; run the same command to continue.") as bars, \
            open_llm(llm_cfg) as session:
        progress = label_stage(db, did, features, cfg, session, explain_stage=explain_stage,
                               score_stage=score_stage, concurrency=llm_cfg.concurrency, on_progress=bars)
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
    if p.nulls is not None and p.nulls.features_total:
        n = p.nulls
        click.echo(f"  null labels (shuffled and constant): {n.scored:,} scored on {n.features_done:,} features; "
                   f"total spend now {n.tokens:,} tokens, ${n.cost_usd:.4f}")
    if p.stopped:
        click.echo(f"stopped early: {p.stopped}. Run the same command to continue.")
    if p.features_total == 0:
        click.echo("nothing to do: every selected feature is already done.")


@main.command()
@selection_options
@config_options(LabelConfig, LLMConfig)
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
    _label_command(db, True, False, **kwargs)


@main.command()
@selection_options
@config_options(LabelConfig, LLMConfig)
@db_option
@friendly_errors
def score(db: str, **kwargs: Any) -> None:
    """Score stored labels: a simulator LLM predicts held-out activations from each label.

    \b
    Example:
      autointerp score --base-url http://localhost:8000/v1 --simulator-model my-model --where "max_act > 1"
    """
    _label_command(db, False, True, **kwargs)


@main.command("label")
@selection_options
@config_options(LabelConfig, LLMConfig)
@db_option
@friendly_errors
def label_cmd(db: str, **kwargs: Any) -> None:
    """Explain and score in one pass over the features (what `run` does after collecting).

    \b
    Example:
      autointerp label --features 0:100 --max-cost 5
    """
    _label_command(db, True, True, **kwargs)


def _finish_run(out: Any, db: str) -> None:
    c = out.collect
    click.echo(f"dictionary {c.dictionary_id}: {c.n_features:,} features over {c.n_tokens:,} tokens"
               + (" (already collected)" if c.already_complete else ""))
    if out.label is not None:
        _summary(out.label, c.dictionary_id)
    if out.behaviour is not None:
        _behaviour_summary(out.behaviour, c.dictionary_id)


@main.command()
@config_options(CollectConfig)
@label_selection_options
@click.option("--behaviour/--no-behaviour", "with_behaviour", default=True, show_default=True,
              help="Also compute behaviour scores (the model re-run with each feature replaced by its simulation).")
@config_options(BehaviourConfig, exclude=("n_boot",))
@config_options(LabelConfig, LLMConfig)
@db_option
@friendly_errors
def run(db: str, label_features: tuple[int, int] | None, label_where: str | None, with_behaviour: bool,
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
    from autointerp.stages.run import Selection, run_stage

    behaviour_cfg = build(BehaviourConfig, kwargs) if with_behaviour else None
    with _interruptible("run the same command again: every step resumes where it stopped.") as bars:
        out = run_stage(db, build(CollectConfig, kwargs), Selection(label_features, label_where),
                        build(LabelConfig, kwargs), build(LLMConfig, kwargs), behaviour_cfg, on_progress=bars)
    _finish_run(out, db)


def _behaviour_summary(out: Any, dictionary_id: int) -> None:
    click.echo(f"dictionary {dictionary_id}: behaviour scored for {out.features:,} features "
               f"({out.scored:,} labels scored, {out.no_effect:,} with no measurable ablation effect)")


@main.command("behaviour")
@click.option("--dictionary", "dictionary_id", type=int, default=None, help="Dictionary id (default: the newest).")
@click.option("--features", "feature_range", type=_Range(), default=None, help="Only features START:STOP.")
@config_options(BehaviourConfig)
@click.option("--retry-failed", is_flag=True, help="Redo behaviour runs that failed.")
@db_option
@friendly_errors
def behaviour_cmd(db: str, dictionary_id: int | None, feature_range: tuple[int, int] | None, retry_failed: bool,
                  **kwargs: Any) -> None:
    """Behaviour scores: how much of each feature's effect on the model its label's simulation restores.

    \b
    Example:
      autointerp behaviour --dictionary 1 --ablate calibrated
    \b
    Another ablation reference is other work: both results stay, each keyed by its settings.
      autointerp behaviour --dictionary 1 --ablate zero
    """
    from autointerp.stages.behaviour import behaviour_stage

    with store.open_store(db, read_only=True) as con:
        did = _pick_dictionary(con, dictionary_id)
        features = store.select_features(con, did, None, feature_range) if feature_range else None
    with _interruptible("finished features are saved; run the same command to continue.") as bars:
        out = behaviour_stage(db, did, build(BehaviourConfig, kwargs), features, retry_failed=retry_failed,
                              on_progress=bars)
    _behaviour_summary(out, did)


@main.command()
@click.option("--like", "like_id", type=int, required=True, help="The trained dictionary to copy.")
@click.option("--seed", "init_seed", type=int, default=None, help="Seed of the random initialisation (default: the dictionary's).")
@click.option("--scheme", type=click.Choice(list(RANDOM_INIT_SCHEMES)), default="init", show_default=True,
              help="How the weights are randomised: init (the architecture's initialisation), or a "
                   "re-randomisation that keeps each trained tensor's scale (see the README).")
@click.option("--sae", "control_sae", default=None,
              help="For SAE dictionaries: an SAE trained on the random-init model (SAELens directory).")
@label_selection_options
@config_options(BehaviourConfig, exclude=("n_boot",))
@config_options(LabelConfig, LLMConfig)
@db_option
@friendly_errors
def control(db: str, like_id: int, init_seed: int | None, scheme: str, control_sae: str | None,
            label_features: tuple[int, int] | None, label_where: str | None, **kwargs: Any) -> None:
    """Random-init control: the same architecture with random weights, collected on the same tokens with the
    same settings, labelled and scored with the same LLMs and prompts.

    \b
    Example:
      autointerp control --like 1 --label-features 0:100
      autointerp compare 1 2
    """
    from autointerp.stages.run import Selection, control_stage

    with _interruptible("run the same command again: every step resumes where it stopped.") as bars:
        out = control_stage(db, like_id, Selection(label_features, label_where), build(LabelConfig, kwargs),
                            build(LLMConfig, kwargs), build(BehaviourConfig, kwargs), seed=init_seed, scheme=scheme,
                            sae=control_sae, on_progress=bars)
    click.echo(f"control of dictionary {like_id} ({scheme}):")
    _finish_run(out, db)


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
        a, b = store.get_dictionary(con, dict_a), store.get_dictionary(con, dict_b)
        values = store.score_values(con, [dict_a, dict_b])
    if explainer:
        values = [v for v in values if v.explainer == explainer]
    if not values:
        raise AutointerpError(f"no scores for dictionaries {dict_a} and {dict_b}; label and score them first")
    columns, rows = cmp.compare_table(values, dict_a, dict_b)
    click.echo(f"A = dictionary {dict_a} ({cmp.describe(a)}), B = dictionary {dict_b} ({cmp.describe(b)}); "
               "scores paired by feature, from the same simulator and run settings")
    click.echo(render.FORMATS[fmt](columns, rows))


@main.command("export")
@click.option("--format", "fmt", required=True,
              type=click.Choice(["parquet", "jsonl", "neuronpedia-dataset", "neuronpedia-upload"]),
              help="parquet / jsonl: the labels view with every score. neuronpedia-dataset: a directory of "
                   "explanations/batch-N.jsonl.gz for Neuronpedia's import. neuronpedia-upload: the JSON body of "
                   "Neuronpedia's /api/feature/upload-batch.")
@click.option("--out", "out_path", type=click.Path(), required=True,
              help="File to write (a directory for neuronpedia-dataset).")
@click.option("--dictionary", "dictionary_id", type=int, default=None, help="Dictionary id (default: the newest).")
@click.option("--np-model-id", default=None,
              help="Neuronpedia model id, used as given without checking it (default: the dictionary's model, "
                   "which must be one of the Neuronpedia models autointerp knows).")
@click.option("--np-source-set", default=None,
              help="Neuronpedia source set of an SAE dictionary (e.g. res-jb): the source is LAYER-SET.")
@click.option("--np-source", default=None,
              help="Neuronpedia source id as a whole (e.g. 6 or 6-res-jb), instead of the one derived from the hook.")
@click.option("--np-method-name", default=None,
              help="Explanation method (Neuronpedia ExplanationType), e.g. oai_token-act-pair; default none.")
@click.option("--np-model-name", default=None,
              help="Explainer model (Neuronpedia ExplanationModelType), e.g. gpt-4o-mini; default none.")
@click.option("--np-author-id", default=None,
              help="neuronpedia-dataset: authorId of every row (default: the bot user Neuronpedia's seed creates).")
@click.option("--np-include-baseline", is_flag=True, help="Also send the token-lookup baseline labels.")
@click.option("--np-batch-rows", type=int, default=1024, show_default=True,
              help="neuronpedia-dataset: rows per batch-N.jsonl.gz.")
@db_option
@friendly_errors
def export_cmd(db: str, fmt: str, out_path: str, dictionary_id: int | None, np_model_id: str | None,
               np_source_set: str | None, np_source: str | None, np_method_name: str | None,
               np_model_name: str | None, np_author_id: str | None, np_include_baseline: bool,
               np_batch_rows: int) -> None:
    """Write labels with every score (the labels view) to parquet or JSON lines, or as Neuronpedia explanations.

    \b
    Example:
      autointerp export --format parquet --out labels.parquet
      autointerp export --format neuronpedia-dataset --out np/ --np-source-set res-jb
      autointerp export --format neuronpedia-upload --out body.json --np-model-id my-model \\
          --np-method-name oai_token-act-pair --np-model-name gpt-4o-mini
    """
    from autointerp import export

    out = Path(out_path)
    with store.open_store(db, read_only=True) as con:
        did = _pick_dictionary(con, dictionary_id)
        d = store.get_dictionary(con, did)
        view = store.labels_table(con, did)
        rows = [dict(zip(view.columns, r, strict=True)) for r in view.rows]
        if not rows:
            raise AutointerpError(f"dictionary {did} has no labels yet; run `autointerp explain` first")
        if fmt in ("parquet", "jsonl"):
            n = export.write_table(rows, fmt, out)
            click.echo(f"wrote {n:,} records of dictionary {did} to {out}")
            return
        model_id = export.np_model_id(d.model, np_model_id)
        source = export.np_source(d.hook, d.kind, np_source_set, np_source)
        labels = export.np_labels([r for r in rows if r["null_kind"] is None], np_include_baseline)
        if not labels:
            raise AutointerpError(f"dictionary {did} has no ok labels to send"
                                  + ("" if np_include_baseline else " (baseline labels need --np-include-baseline)"))
        if fmt == "neuronpedia-upload":
            features = sorted({int(r["feature"]) for r in labels})
            contexts = store.read_feature_contexts(con, did, features)
            acts = {f: [(c.tokens, c.acts) for c in sorted((c for c in fc.contexts if c.kind == "top"),
                                                           key=lambda c: -c.max_act)]
                    for f, fc in contexts.items()}
            density = {f: float(s["frac_active"]) for f in features
                       if (s := store.feature_stats(con, did, f)) is not None and s["frac_active"] is not None}
    if fmt == "neuronpedia-dataset":
        table = export.dataset_rows(labels, model_id, source, np_method_name, np_model_name,
                                    np_author_id or export.NP_DEFAULT_AUTHOR_ID)
        paths = export.write_dataset(table, out, model_id, source, np_batch_rows)
        click.echo(f"wrote {len(table):,} explanations of dictionary {did} ({model_id} / {source}) in "
                   f"{len(paths)} file(s) under {paths[0].parent}")
        return
    bodies = export.upload_bodies(labels, model_id, source, acts, density, np_method_name, np_model_name)
    paths = export.write_upload(bodies, out)
    click.echo(f"wrote {len(labels):,} explanations of {sum(len(b['features']) for b in bodies):,} features of "
               f"dictionary {did} ({model_id} / {source}) to {', '.join(map(str, paths))}")


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
