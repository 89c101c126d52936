"""Planted features and the LLM check: `planted` builds a dictionary of rules with known descriptions,
`check-llm` tells whether an endpoint's simulator follows labels and its explainer finds the rules."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import click

from autointerp import store
from autointerp.cli.base import (
    RangeType,
    build,
    config_options,
    db_option,
    friendly_errors,
    interruptible,
    main,
)
from autointerp.config import CollectConfig, LabelConfig, LLMConfig
from autointerp.errors import BadInput

# Collection options that mean nothing without a model (--model names the tokenizer).
_NO_MODEL = ("hook", "sae", "random_init", "init_scheme", "device", "dtype", "features")
# The check's dictionary when the database has none: small enough to build in seconds, with contexts of 32
# tokens: a simulation prompt has a line per token, and the embedded default reads ~100 prompt tokens a second
# on 2 cores, so halving the contexts halves the check's time (`autointerp planted --ctx-len 64` builds longer).
CHECK_TOKENS = 100_000
CHECK_CTX_LEN = 32
# The check's own defaults where an option is not given: fewer contexts than a real run, so the default
# check fits ~10 minutes on 2 cores with the embedded default (the CIs are over features, and say so).
CHECK_DEFAULTS = {"n_sim_top": 4, "n_sim_random": 4, "n_judge": 3}


def _check_defaults(kwargs: dict[str, Any]) -> list[str]:
    """Apply CHECK_DEFAULTS to options left at their default; returns the flags applied."""
    ctx = click.get_current_context()
    applied = []
    for name, value in CHECK_DEFAULTS.items():
        if ctx.get_parameter_source(name) == click.core.ParameterSource.DEFAULT:
            kwargs[name] = value
            flag = next(o for p in ctx.command.params if p.name == name for o in p.opts)
            applied.append(f"{flag} {value}")
    return applied


def _build(db: str, cfg: CollectConfig, rules: str | None, builtin: bool) -> Any:
    from autointerp.collect.planted_stage import planted_stage

    with interruptible("nothing was written; run the same command again.") as bars:
        return planted_stage(db, cfg, rules, builtin, on_progress=bars)


@main.command()
@click.option("--rules", "rules_file", type=click.Path(dir_okay=False), default=None,
              help="A JSON or YAML file of rules (name, description, kind, params, noise) added to the built-ins.")
@click.option("--no-builtin", is_flag=True, help="Only the rules of --rules.")
@config_options(CollectConfig, exclude=_NO_MODEL)
@db_option
@friendly_errors
def planted(db: str, rules_file: str | None, no_builtin: bool, **kwargs: Any) -> None:
    """Build a dictionary of planted features: each feature's activation is a rule with a known description
    (the built-in rules, and yours), collected over the corpus like a model's features, so every later stage
    runs on it; each feature's truth is in the `planted_truth` table.

    \b
    Example:
      autointerp planted --tokens 100000 --db check.duckdb
      autointerp planted --rules my_rules.yaml --no-builtin --db check.duckdb
    """
    if no_builtin and rules_file is None:
        raise BadInput("--no-builtin needs --rules FILE")
    t0 = time.monotonic()
    out = _build(db, build(CollectConfig, kwargs), rules_file, not no_builtin)
    if out.already_complete:
        click.echo(f"dictionary {out.dictionary_id} already holds these planted features; nothing to do.")
        return
    secs = time.monotonic() - t0
    click.echo(f"dictionary {out.dictionary_id}: {out.n_features} planted features over {out.n_tokens:,} tokens "
               f"({out.n_contexts:,} contexts) in {secs:.1f}s ({secs / max(out.n_features, 1):.2f}s per feature) "
               f"-> {db}")


def _planted_dictionary(db: str, dictionary_id: int | None) -> int:
    if Path(db).exists():
        with store.open_store(db) as con:
            if dictionary_id is not None:
                if store.get_dictionary(con, dictionary_id).kind != "planted":
                    raise BadInput(f"dictionary {dictionary_id} is not a planted dictionary")
                return dictionary_id
            found = store.planted_dictionaries(con)
        if found:
            return found[0]
    if dictionary_id is not None:
        raise BadInput(f"no dictionary {dictionary_id} in {db}")
    click.echo(f"no planted dictionary in {db}: building one with the built-in rules over {CHECK_TOKENS:,} tokens, "
               f"in contexts of {CHECK_CTX_LEN}")
    cfg = CollectConfig(n_tokens=CHECK_TOKENS, ctx_len=CHECK_CTX_LEN)  # type: ignore[call-arg]
    return int(_build(db, cfg, None, True).dictionary_id)


@main.command("check-llm")
@click.option("--dictionary", "dictionary_id", type=int, default=None,
              help="The planted dictionary (default: the newest; one is built when there is none).")
@click.option("--features", "feature_range", type=RangeType(), default=None, help="Only features START:STOP.")
@click.option("--all-rules", is_flag=True, help="Every rule that fires, not the default spread of 8.")
@config_options(LabelConfig, LLMConfig, exclude=("explainers", "baseline", "null_samples", "reference", "batch_api"))
@db_option
@friendly_errors
def check_llm(db: str, dictionary_id: int | None, feature_range: tuple[int, int] | None, all_rules: bool,
              **kwargs: Any) -> None:
    """Check an explainer and a simulator on planted features with known descriptions, before an overnight
    run: does the simulator follow labels, does the explainer find the rules, do the judges tell a true
    description from a wrong one. The scores are stored like any run.

    \b
    Example (the embedded default), then a full run against an endpoint:
      autointerp check-llm --db check.duckdb
      autointerp check-llm --base-url http://host:8000/v1 --explainer-model m --simulator-model m --all-rules
    """
    from autointerp.label.check import check_llm as run_check
    from autointerp.label.check import pick_features
    from autointerp.label.stage import open_llm

    did = _planted_dictionary(db, dictionary_id)
    with store.open_store(db, read_only=True) as con:
        scorable = store.scorable_features(con, did)
        scorable_set = set(scorable)
        left = [t.name for t in store.planted_truth(con, did) if t.feature not in scorable_set]
        features = pick_features(scorable, feature_range, all_rules)
    if left:
        click.echo(f"left out: {len(left)} rule(s) that do not fire in both splits' texts, so cannot be both explained "
                   f"and scored: {', '.join(left)}")
    if not features:
        raise BadInput(f"no planted feature of dictionary {did} fires in the selection")
    applied = _check_defaults(kwargs)
    if applied:
        click.echo(f"check defaults: {', '.join(applied)} (give an option to change it)")
    cfg, llm_cfg = build(LabelConfig, kwargs), build(LLMConfig, kwargs)
    with interruptible("finished features are saved; run the same command to continue.") as bars, \
            open_llm(llm_cfg) as session:
        report = run_check(db, did, features, cfg, session, concurrency=llm_cfg.concurrency, on_progress=bars)
    report.subset = not all_rules and feature_range is None
    _print_report(report)


def _print_report(r: Any) -> None:
    n = len(r.features)
    scope = f"a spread of {n} rules (--all-rules for every one)" if r.subset else f"{n} rules"
    click.echo(f"check-llm on planted dictionary {r.dictionary_id}, {scope}; simulator {r.simulator}, "
               f"explainer {r.explainer}. Means over features with bootstrap 95% CIs.")
    click.echo("simulator label-following (correlation_gain over the constant reference; 0 = says nothing):")
    for name, est in r.following.items():
        click.echo(f"  {name:10} {est}")
    click.echo(f"  true - wrong {r.true_minus_wrong}")
    click.echo(f"explainer recovery (LLM label's gain / true description's): {r.recovery}")
    for kind, est in r.recovery_by_kind.items():
        click.echo(f"  {kind:16} {est}")
    if any(e.n and math.isnan(e.mean) for e in [r.recovery, *r.recovery_by_kind.values()] if e is not None):
        click.echo("  (undefined: the true descriptions' mean gain is below 0.3 or its CI reaches 0, so a share "
                   "of it says nothing)")
    click.echo("judges (balanced accuracy; 0.5 = chance):")
    for name, est in r.judges.items():
        click.echo(f"  {name:16} {est}")
    total_tokens = sum(u.tokens for u in r.usage)
    # Tokens and request seconds are summed over every run on these features (a resumed check adds to them); wall
    # time is this run's alone.
    request_s = sum(u.seconds for u in r.usage)
    click.echo(f"cost: {total_tokens:,} tokens, ${sum(u.cost_usd for u in r.usage):.4f}, {request_s:.0f}s of requests "
               f"({total_tokens / max(n, 1):,.0f} tokens and {request_s / max(n, 1):.1f}s per feature); "
               f"this run: {r.seconds:.0f}s wall")
    for u in r.usage:
        click.echo(f"  {u.role:10} {u.calls:,} calls, {u.tokens:,} tokens, ${u.cost_usd:.4f}")
    for role, verdict in r.verdicts.items():
        click.echo(f"verdict {role}: {verdict}")
