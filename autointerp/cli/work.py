"""Commands that do work: collect, explain, score, label, run, behaviour, control."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import click

from autointerp import store
from autointerp.cli.base import (
    RangesType,
    RangeType,
    build,
    config_options,
    db_option,
    friendly_errors,
    interruptible,
    main,
    pick_dictionary,
)
from autointerp.config import RANDOM_INIT_SCHEMES, BehaviourConfig, CollectConfig, LabelConfig, LLMConfig
from autointerp.errors import BadInput


def shard_options(f: Callable[..., Any]) -> Callable[..., Any]:
    opts = [
        click.option("--shards", "n_shards", type=click.IntRange(min=1), default=None,
                     help="Split the collection into N shards over contexts (exactly the same result); alone, runs "
                          "them one after another here, resumable shard by shard."),
        click.option("--shard-index", type=click.IntRange(min=0), default=None,
                     help="Run only shard I of --shards N and write its files beside the database (for Slurm "
                          "arrays and other schedulers); then `autointerp merge`."),
        click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
                     help="Run the shards as Ray tasks on the cluster at ADDRESS (alone: a local Ray on this "
                          "machine's cores) and merge here. Needs autointerp[ray]."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


@main.command()
@config_options(CollectConfig)
@shard_options
@click.option("--checkpoint-every", "checkpoint_every_s", type=float, default=300.0, show_default=True,
              help="Seconds between checkpoints (beside the database) that a killed run resumes from.")
@db_option
@friendly_errors
def collect(db: str, checkpoint_every_s: float, n_shards: int | None, shard_index: int | None,
            ray_address: str | None, **kwargs: Any) -> None:
    """Run a model over text and store each feature's contexts and statistics.

    \b
    Example (offline default: SmolLM2-135M, MLP neurons of layer 6, Python docs):
      autointerp collect --tokens 200000 --db runs.duckdb
    \b
    An SAE (SAELens directory) at its hook, on a GPU in bfloat16:
      autointerp collect --sae ./my_sae --tokens 1000000 --device cuda --dtype bfloat16
    \b
    In 8 shards on a Ray cluster, or as a Slurm array then a merge:
      autointerp collect --tokens 10000000 --shards 8 --ray ray://head:10001
      autointerp collect --tokens 10000000 --shards 8 --shard-index $SLURM_ARRAY_TASK_ID
      autointerp merge --tokens 10000000 --shards 8

    Re-running the same command completes an interrupted run (from its last checkpoint, or the
    shards not yet written) and does nothing to a finished one.
    """
    from autointerp.collect.shards import collect_shard, sharded_collect_stage
    from autointerp.collect.stage import collect_stage

    cfg = build(CollectConfig, kwargs)
    if (shard_index is not None or ray_address is not None) and n_shards is None:
        raise BadInput("--shard-index and --ray need --shards N")
    if shard_index is not None and ray_address is not None:
        raise BadInput("--shard-index runs one shard here; --ray runs them all on Ray: use one of the two")
    t0 = time.monotonic()
    with interruptible("the dictionary is marked incomplete; run the same command again to complete it "
                        "(it resumes from the last checkpoint).") as bars:
        if n_shards is not None and shard_index is not None:
            shard = collect_shard(db, cfg, n_shards, shard_index, on_progress=bars,
                                  checkpoint_every_s=checkpoint_every_s)
            verb = "already written" if shard.skipped else f"written in {time.monotonic() - t0:.1f}s"
            click.echo(f"shard {shard.index} of {shard.n_shards} (contexts {shard.contexts[0]:,}-"
                       f"{shard.contexts[1]:,}, {shard.n_contexts:,} in the corpus) {verb}; merge with "
                       "`autointerp merge` and the same options once every shard is written")
            return
        if n_shards is not None:
            out = sharded_collect_stage(db, cfg, n_shards, ray=ray_address, on_progress=bars,
                                        checkpoint_every_s=checkpoint_every_s)
        else:
            out = collect_stage(db, cfg, bars, checkpoint_every_s=checkpoint_every_s)
    _collected(out, db, time.monotonic() - t0, cfg.n_tokens)


def _collected(out: Any, db: str, secs: float, asked: int | None = None) -> None:
    if out.already_complete:
        click.echo(f"dictionary {out.dictionary_id} already holds this collection ({out.n_tokens:,} tokens); "
                   "nothing to do.")
        return
    resumed = f", resumed from a checkpoint at {out.resumed_tokens:,} tokens" if out.resumed_tokens else ""
    click.echo(f"dictionary {out.dictionary_id}: {out.n_features:,} features over {out.n_tokens:,} tokens "
               f"({out.n_contexts:,} contexts) in {secs:.1f}s{resumed} -> {db}")
    if asked is not None and out.n_tokens < asked - asked % max(out.n_tokens // max(out.n_contexts, 1), 1):
        click.echo(f"note: --tokens asked for {asked:,}; the corpus ran out at {out.n_tokens:,}", err=True)


@main.command()
@config_options(CollectConfig)
@click.option("--shards", "n_shards", type=click.IntRange(min=1), default=None,
              help="The shard count the shards were written with (default: what the shard directory says).")
@click.option("--feature-parts", type=RangesType(), default=None,
              help="Merge the shards of feature ranges collected apart (`collect --features START:STOP --shards N "
                   "--shard-index I`, the other options the same) into one dictionary of the whole range "
                   "(--features, else every feature of the hook or SAE): every range, in order, no gaps or overlaps.")
@db_option
@friendly_errors
def merge(db: str, n_shards: int | None, feature_parts: list[tuple[int, int]] | None, **kwargs: Any) -> None:
    """Merge the shards written by `collect --shards N --shard-index I` into one dictionary (the only step
    that writes the database). Give the same collection options as the shards.

    \b
    Example:
      autointerp merge --tokens 10000000 --shards 8
    \b
    A wide SAE collected in two feature ranges (each in 8 context shards), merged into one dictionary:
      autointerp collect --sae ./sae --tokens 10000000 --features 0:65536 --shards 8 --shard-index 0
      ...
      autointerp merge --sae ./sae --tokens 10000000 --feature-parts 0:65536,65536:131072
    """
    from autointerp.collect.shards import merge_stage

    t0 = time.monotonic()
    with interruptible("nothing was written; the shards are kept: run the same command again.") as bars:
        cfg = build(CollectConfig, kwargs)
        out = merge_stage(db, cfg, n_shards, on_progress=bars, feature_parts=feature_parts)
    _collected(out, db, time.monotonic() - t0, cfg.n_tokens)


# ---------------------------------------------------------------- explain / score / run


def selection_options(f: Callable[..., Any]) -> Callable[..., Any]:
    opts = [
        click.option("--dictionary", "dictionary_id", type=int, default=None, help="Dictionary id (default: the newest)."),
        click.option("--features", "feature_range", type=RangeType(), default=None, help="Only features START:STOP."),
        click.option("--where", default=None, help="SQL condition on `features`, e.g. \"frac_active > 0.001\"."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def label_selection_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--label-where", default=None, help="Label and score only features matching this SQL condition.")(f)
    return click.option("--label-features", type=RangeType(), default=None,
                        help="Label and score only features START:STOP.")(f)


def _label_command(db: str, explain_stage: bool, score_stage: bool, dictionary_id: int | None,
                   feature_range: tuple[int, int] | None, where: str | None, **kwargs: Any) -> None:
    from autointerp.label.stage import label_stage, open_llm
    from autointerp.pipeline import Selection, select

    with store.open_store(db, read_only=True) as con:
        did = pick_dictionary(con, dictionary_id)
    features = select(db, did, Selection(feature_range, where))
    cfg, llm_cfg = build(LabelConfig, kwargs), build(LLMConfig, kwargs)
    if explain_stage:
        from autointerp.label.agent import refuse_batch_api

        refuse_batch_api(cfg, llm_cfg)
    if llm_cfg.batch_api:
        from autointerp.label.batch import require_endpoint

        require_endpoint(llm_cfg)
    with interruptible("finished features are saved; run the same command to continue.") as bars, \
            open_llm(llm_cfg) as session:
        if llm_cfg.batch_api:
            from autointerp.label.batch import batch_stage

            progress = batch_stage(db, did, features, cfg, llm_cfg, session, explain_stage=explain_stage,
                                   score_stage=score_stage, on_progress=bars)
        else:
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
    for note in p.notes:
        click.echo(note)
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
@config_options(BehaviourConfig, exclude=("n_boot", "device", "dtype"))  # collect's --device / --dtype serve both
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
    \b
    Overnight through the Batch API (half price; the same command resumes the recorded batches):
      autointerp run --model gpt2 --base-url https://api.openai.com/v1 --simulator-mode chat \\
          --batch-api --max-cost 10
    """
    from autointerp.label.agent import refuse_batch_api
    from autointerp.pipeline import Selection, run_stage

    behaviour_cfg = build(BehaviourConfig, kwargs) if with_behaviour else None
    refuse_batch_api(build(LabelConfig, kwargs), build(LLMConfig, kwargs))
    with interruptible("run the same command again: every step resumes where it stopped.") as bars:
        out = run_stage(db, build(CollectConfig, kwargs), Selection(label_features, label_where, "--label-where"),
                        build(LabelConfig, kwargs), build(LLMConfig, kwargs), behaviour_cfg, on_progress=bars)
    _finish_run(out, db)


def _behaviour_summary(out: Any, dictionary_id: int) -> None:
    if out.skipped:
        click.echo(f"dictionary {dictionary_id}: behaviour skipped: {out.skipped}")
        return
    click.echo(f"dictionary {dictionary_id}: behaviour scored for {out.features:,} features "
               f"({out.scored:,} labels scored, {out.no_effect:,} with no measurable ablation effect)")


@main.command("behaviour")
@click.option("--dictionary", "dictionary_id", type=int, default=None, help="Dictionary id (default: the newest).")
@click.option("--features", "feature_range", type=RangeType(), default=None, help="Only features START:STOP.")
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
    from autointerp.behaviour.stage import behaviour_stage

    with store.open_store(db, read_only=True) as con:
        did = pick_dictionary(con, dictionary_id)
        features = store.select_features(con, did, None, feature_range) if feature_range else None
    with interruptible("finished features are saved; run the same command to continue.") as bars:
        out = behaviour_stage(db, did, build(BehaviourConfig, kwargs), features, retry_failed=retry_failed,
                              on_progress=bars)
    _behaviour_summary(out, did)


@main.command()
@click.option("--like", "like_id", type=int, required=True, help="The trained dictionary to copy.")
@click.option("--seed", "init_seed", type=int, default=None, help="Seed of the random initialisation (default: the dictionary's).")
@click.option("--scheme", type=click.Choice(list(RANDOM_INIT_SCHEMES)), default="init", show_default=True,
              help="How the weights are randomised: init (the architecture's initialisation), or a "
                   "re-randomisation that keeps each trained tensor's scale (see docs/guide/behaviour.md).")
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
    from autointerp.pipeline import Selection, control_stage

    with interruptible("run the same command again: every step resumes where it stopped.") as bars:
        out = control_stage(db, like_id, Selection(label_features, label_where, "--label-where"),
                            build(LabelConfig, kwargs),
                            build(LLMConfig, kwargs), build(BehaviourConfig, kwargs), seed=init_seed, scheme=scheme,
                            sae=control_sae, on_progress=bars)
    click.echo(f"control dictionary {out.collect.dictionary_id} (random init: {scheme}, seed "
               f"{out.collect_seed}) of dictionary {like_id}")
    _finish_run(out, db)

