"""Commands that read the store: sql, show, status, compare, export, report."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from autointerp import store
from autointerp.analysis import render
from autointerp.cli.base import db_option, format_option, friendly_errors, main, pick_dictionary
from autointerp.errors import BadInput


@main.command()
@click.argument("query")
@click.option("--allow-files", is_flag=True,
              help="Let the query read files (read_parquet, read_csv, ...) to join outside data. Off by default.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0, max=10**7), default=300.0, show_default=True,
              help="Stop the query after this many seconds (0: no limit).")
@click.option("--max-rows", type=click.IntRange(min=0, max=10**9), default=10_000, show_default=True,
              help="Print at most this many rows and say when there were more (0: all rows, held in memory).")
@db_option
@format_option
@friendly_errors
def sql(db: str, query: str, fmt: str, allow_files: bool, timeout_s: float, max_rows: int) -> None:
    """Run one SELECT on a read-only, sandboxed connection: no file or network access (unless
    --allow-files, which lets it read files), no extensions, no settings changes, one statement.
    Columns with the same name are numbered (a, a_2); control characters in text are escaped.

    \b
    Example:
      autointerp sql "SELECT feature, max_act, frac_active FROM features ORDER BY max_act DESC LIMIT 10"
      autointerp sql "SELECT * FROM contexts WHERE feature = 3 AND kind = 'top'" --format json
      autointerp sql "SELECT f.*, x.note FROM features f JOIN read_parquet('notes.parquet') x USING (feature)" --allow-files
    """
    if timeout_s != timeout_s:  # NaN passes FloatRange's comparisons
        raise BadInput("--timeout nan: give a number of seconds (0: no limit)")
    with store.open_store(db, read_only=True) as con:
        columns, rows = store.user_query(con, query, allow_files=allow_files, timeout_s=timeout_s or None,
                                         max_rows=max_rows or None)
    cut = bool(max_rows) and len(rows) > max_rows
    click.echo(render.FORMATS[fmt](columns, rows[:max_rows] if cut else rows))
    if cut:
        click.echo(f"note: only the first {max_rows:,} rows are shown; add LIMIT/OFFSET to the query or pass "
                   "--max-rows N (0: all)", err=True)


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
        did = pick_dictionary(con, dictionary_id)
        stats = store.feature_stats(con, did, feature)
        if stats is None:
            d = store.get_dictionary(con, did)
            raise BadInput(f"dictionary {did} has no feature {feature} ({d.n_features} features)")
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
    with store.open_store(db, read_only=True) as con:
        steps = store.agent_steps(con, did, feature)
    _show_steps(steps, scale, color)


def _show_steps(steps: list[Any], scale: float, color: bool) -> None:
    """The feature's best-of-k / agent steps: each label with its calibration score, each probe with the
    subject's real activations highlighted."""
    from autointerp.label.probes import outcome

    run = None
    for s in steps:
        if (s.explainer, s.settings_hash) != run:
            run = (s.explainer, s.settings_hash)
            click.echo(f"\n== {s.strategy} steps: {s.explainer} (settings {s.settings_hash}) ==")
        cal = f"calibration {s.calibration_score:.3f}" if s.calibration_score is not None else ""
        head = f"#{s.step} round {s.round} {s.kind:<9} {s.status:<6} {cal:<17} tokens {s.prompt_tokens}+{s.completion_tokens}"
        head += f" t={s.temperature:g}" if s.temperature is not None else ""
        if s.status != "ok":
            click.echo(f"{head} | {s.code}: {(s.error or '')[:120]}")
        elif s.kind != "probe":
            click.echo(f"{head} | {s.text}")
        else:
            click.echo(head)
            for r in s.activations or []:
                cut = f" (cut {r['cut']} tokens)" if r["cut"] else ""
                click.echo(f"    {'+' if r['expect'] else '-'} {outcome(r, scale):<11}| "
                           f"{render.highlight(r['tokens'], r['acts'], scale, color)}{cut}")


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
    from autointerp.analysis import compare as cmp
    from autointerp.behaviour import RESOLVED_CI_WIDTH

    with store.open_store(db, read_only=True) as con:
        table = store.dictionary_status(con)
        labels = store.label_scores(con, cmp.SUMMARY_METHODS)
    click.echo(render.FORMATS[fmt](table.columns, table.rows))
    if labels and fmt == "table":
        click.echo("\nlabels per dictionary, explainer and simulator, beside the null labels (null:shuffled:X is X's "
                   "labels given to other features, null:constant one label for all); means with bootstrap 95% "
                   "CIs; behaviour = the share of the ablation's KL damage the simulation repairs; resolved = "
                   f"behaviour scores whose CI is narrower than {RESOLVED_CI_WIDTH}, of those scored; captured = "
                   "behaviour weighted by each feature's KL damage, with the count of features whose ablation "
                   "changes nothing measurable:")
        click.echo(render.table(*cmp.label_summary(labels)))


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
    from autointerp.analysis import compare as cmp

    with store.open_store(db, read_only=True) as con:
        a, b = store.get_dictionary(con, dict_a), store.get_dictionary(con, dict_b)
        values = store.score_values(con, [dict_a, dict_b])
    if explainer:
        values = [v for v in values if v.explainer == explainer]
    if not values:
        raise BadInput(f"no scores for dictionaries {dict_a} and {dict_b}; label and score them first")
    columns, rows = cmp.compare_table(values, dict_a, dict_b)
    click.echo(f"A = dictionary {dict_a} ({cmp.describe(a)}), B = dictionary {dict_b} ({cmp.describe(b)}); "
               "scores paired by feature, from the same simulator and run settings")
    click.echo(render.FORMATS[fmt](columns, rows))


@main.command("export")
@click.option("--format", "fmt", required=True,
              type=click.Choice(["parquet", "jsonl", "neuronpedia-dataset", "neuronpedia-upload"]),
              help="parquet / jsonl: the labels view with every score, typed by the view's columns. "
                   "neuronpedia-dataset: a complete dataset (config, model, source set, source, features, "
                   "activations, explanations) for Neuronpedia's admin import. neuronpedia-upload: the JSON body of "
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
              help="Explanation method (Neuronpedia ExplanationType) of the LLM labels, e.g. oai_token-act-pair; "
                   "default none. The dataset carries the type row unless it is one of Neuronpedia's own.")
@click.option("--np-model-name", default=None,
              help="neuronpedia-dataset: explainer model (ExplanationModelType) of the LLM labels; default none. "
                   "Not sent by neuronpedia-upload (the route fails on it).")
@click.option("--np-author-id", default=None,
              help="neuronpedia-dataset: authorId / creatorId of every row (default: the bot user Neuronpedia's "
                   "seed creates).")
@click.option("--np-include-baseline", is_flag=True,
              help="Also send the token-lookup baseline labels (typed autointerp_token-lookup, no model name).")
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
      autointerp export --format neuronpedia-dataset --out np/ --np-source-set res-jb \\
          --np-method-name autointerp_oai --np-model-name qwen2.5-7b
      autointerp export --format neuronpedia-upload --out body.json --np-model-id my-model \\
          --np-source 6-my-set --np-method-name oai_token-act-pair
    """
    from autointerp.analysis import export

    out = Path(out_path)
    with store.open_store(db, read_only=True) as con:
        did = pick_dictionary(con, dictionary_id)
        d = store.get_dictionary(con, did)
        view = store.labels_table(con, did)
        rows = [dict(zip(view.columns, r, strict=True)) for r in view.rows]
        if not rows:
            raise BadInput(f"dictionary {did} has no labels yet; run `autointerp explain` first")
        if fmt in ("parquet", "jsonl"):
            n = export.write_table(rows, fmt, out, store.labels_arrow_schema(con), store.labels_columns(con))
            click.echo(f"wrote {n:,} records of dictionary {did} to {out}")
            return
        model_id = export.np_model_id(d.model, np_model_id)
        source = export.np_source(d.hook, d.kind, np_source_set, np_source)
        labels = export.np_labels([r for r in rows if r["null_kind"] is None], np_include_baseline)
        if not labels:
            raise BadInput(f"dictionary {did} has no ok labels to send"
                                  + ("" if np_include_baseline else " (baseline labels need --np-include-baseline)"))
        features = sorted({int(r["feature"]) for r in labels}) if fmt == "neuronpedia-upload" else None
        summaries, acts = _np_feature_data(con, did, features)
    if fmt == "neuronpedia-dataset":
        ds = export.np_dataset(d, labels, summaries, acts, model_id, source, np_method_name, np_model_name,
                               np_author_id or export.npd.NP_DEFAULT_AUTHOR_ID)
        files = export.npd.write(ds, out, np_batch_rows)
        click.echo(f"wrote a Neuronpedia dataset of dictionary {did} ({model_id} / {source}) under {out}: "
                   f"{len(ds.neurons):,} features, {len(ds.activations):,} activations, "
                   f"{len(ds.explanations):,} explanations in "
                   f"{sum(len(v) for v in files.values()):,} files")
        return
    if np_model_name:
        click.echo("note: --np-model-name is not sent: upload-batch passes it to a field Explanation lacks", err=True)
    density = {f: frac for f, (_, frac) in summaries.items()}
    bodies = export.upload_bodies(labels, model_id, source, acts, density, np_method_name)
    paths = export.write_upload(bodies, out)
    click.echo(f"wrote {len(labels):,} explanations of {sum(len(b['features']) for b in bodies):,} features of "
               f"dictionary {did} ({model_id} / {source}) to {', '.join(map(str, paths))}")


def _np_feature_data(con: store.Connection, did: int, features: list[int] | None
                     ) -> tuple[dict[int, tuple[float, float]], dict[int, list[tuple[list[str], list[float]]]]]:
    """(max_act, density) and top contexts (tokens, acts; strongest first) of these features (None: all)."""
    summaries = store.feature_summaries(con, did)
    if features is not None:
        summaries = {f: summaries[f] for f in features if f in summaries}
    contexts = store.read_feature_contexts(con, did, sorted(summaries))
    acts = {f: [(c.tokens, c.acts) for c in sorted((c for c in fc.contexts if c.kind == "top"),
                                                   key=lambda c: -c.max_act)]
            for f, fc in contexts.items()}
    return summaries, acts


@main.command("import-labels")
@click.argument("path", type=click.Path(exists=True))
@click.option("--explainer", required=True,
              help="Name the labels are stored under (the explainer column); score them with --explainers NAME.")
@click.option("--dictionary", "dictionary_id", type=int, default=None, help="Dictionary id (default: the newest).")
@click.option("--format", "fmt", type=click.Choice(["auto", "neuronpedia", "openai", "delphi", "table"]),
              default="auto", show_default=True,
              help="neuronpedia: a dataset's explanations/batch-N.jsonl.gz; openai: neuron-explainer "
                   "<layer>/<neuron>.jsonl; delphi: an explanations directory of <module>_latent<N>.txt; "
                   "table: CSV or Parquet with columns feature, label.")
@click.option("--module", default=None,
              help="Import the labels of this source only: a Delphi module (e.g. layers.6.mlp, for a run over "
                   "several hookpoints), 'layer N' of OpenAI's files, MODEL/SOURCE of Neuronpedia's.")
@click.option("--force", is_flag=True,
              help="Import labels the files say belong to another layer than the dictionary's (refused otherwise).")
@db_option
@friendly_errors
def import_labels_cmd(db: str, path: str, explainer: str, dictionary_id: int | None, fmt: str, module: str | None,
                      force: bool) -> None:
    """Store labels made by another tool as explanations of a dictionary's features, to be scored like ours.
    PATH is a file or a directory (Neuronpedia, OpenAI and Delphi write one file per batch, neuron or latent).
    Rows that cannot be labels are skipped and counted by reason; importing the same file again adds nothing.
    Where a file gives a feature several labels, the first is kept (for OpenAI's files, the best scored).

    \b
    Example:
      autointerp import-labels np/gpt2-small/6/explanations --explainer neuronpedia --dictionary 1
      autointerp import-labels delphi-run/explanations --module layers.6.mlp --explainer delphi --dictionary 2
      autointerp score --explainers neuronpedia --dictionary 1
    """
    from autointerp.label.import_stage import import_labels

    with store.open_store(db, read_only=True) as con:
        did = pick_dictionary(con, dictionary_id)
    out = import_labels(db, did, path, explainer, fmt, module, force)
    for w in out.warnings:
        click.echo(f"warning: {w}", err=True)
    click.echo(f"dictionary {did}: {out.imported:,} labels imported as '{out.explainer}' from {out.rows:,} rows in "
               f"{out.files:,} {out.fmt} file(s) (prompt_hash {out.prompt_hash})"
               + (f"; {out.already:,} imported from this file before" if out.already else ""))
    for reason, n in out.skipped.most_common():
        click.echo(f"  skipped: {n:,} x {reason}")
    for example in out.examples:
        click.echo(f"    e.g. {example}")
    if out.imported + out.already == 0:
        raise BadInput(f"no usable labels in {path} for dictionary {did}")
    if out.imported:
        click.echo(f"score them: autointerp score --dictionary {did} --explainers '{out.explainer}'")


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
    from autointerp.analysis import report

    with store.open_store(db, read_only=True) as con:
        page = report.build(con, list(dictionary_ids) or None)
    Path(out_path).write_text(page)
    click.echo(f"wrote {out_path} ({len(page) / 1024:.0f} KiB)")
