"""Fuzzing the command line's edges (Hypothesis, bounded to about a minute in all): random option values,
random SQL fragments for `sql`, `--where` and `--label-where`, and random CSV / JSON-lines label files.
Every run either succeeds or exits 2 with one line on stderr, and a refused run or a read leaves the
database file byte-identical."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autointerp import store
from autointerp.cli import main
from autointerp.collect.stage import collect_stage
from autointerp.config import CollectConfig
from autointerp.errors import BadInput
from tests.unit.test_bad_input import message_lines

HOOK = "blocks.0.mlp.hook_post"
def fuzz(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))

SQL_WORDS = ["SELECT", "FROM", "WHERE", "features", "contexts", "labels", "dictionaries", "feature", "max_act",
             "frac_active", "*", "count(*)", ",", "(", ")", ";", "'", '"', "--", "/*", "*/", "AS", "a", "1", "0.5",
             "-1", "1e308", "NULL", "AND", "OR", "NOT", ">", "=", "||", "COPY", "TO", "'/tmp/x.csv'", "ATTACH",
             "INSTALL", "LOAD", "httpfs", "SET", "PRAGMA", "UPDATE", "EXTENSIONS", "DELETE", "DROP", "TABLE",
             "read_csv('/etc/passwd')", "range(5)", "UNION", "ALL", "ORDER", "BY", "LIMIT", "chr(27)", "\x00",
             "\x1b]0;x\x07", "é", "\n", "WITH", "s", "CREATE", "VIEW", "getenv('HOME')", "current_setting('x')"]
sql_fragments = st.one_of(
    st.lists(st.sampled_from(SQL_WORDS), min_size=0, max_size=12).map(" ".join),
    st.text(max_size=40),
)
numbers = st.one_of(
    st.integers(min_value=-(10**25), max_value=10**25),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["nan", "inf", "-inf", "1e30", "", "x", "0x10", "1_000", " 3 "]),
)


@pytest.fixture(scope="module")
def fuzz_db(tmp_path_factory, tiny_model, tiny_model_dir, corpus_file) -> Path:
    db = tmp_path_factory.mktemp("fuzz") / "base.duckdb"
    collect_stage(db, CollectConfig(model=str(tiny_model_dir), hook=HOOK, dataset=str(corpus_file), n_tokens=800,
                                    ctx_len=16, top_k=3, n_quantiles=2, per_quantile=2, n_random=3), model=tiny_model)
    return db


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{args!r} raised {result.exception!r}") from result.exception
    return result.exit_code, result.stdout, result.stderr


def ok_or_refused(args: tuple[str, ...], code: int, err: str) -> None:
    assert code in (0, 2), f"{args!r} exited {code}: {err}"
    if code == 2:
        lines = [line for line in message_lines(err) if not line.startswith("warning: ")]
        assert len(lines) == 1 and lines[0].startswith("error: "), f"{args!r}: {err!r}"
        assert "\x1b" not in err and "\x00" not in err


@fuzz(150)
@given(query=sql_fragments, fmt=st.sampled_from(["table", "json", "csv"]),
       max_rows=st.sampled_from(["0", "1", "3", "-1", "nan", "10000000000"]),
       timeout=st.sampled_from(["0", "5", "-1", "nan", "inf", "1e400"]))
def test_sql_succeeds_or_refuses_in_one_line_and_never_writes(fuzz_db, query, fmt, max_rows, timeout):
    before = digest(fuzz_db)
    args = ("sql", query, "--format", fmt, "--max-rows", max_rows, "--timeout", timeout, "--db", str(fuzz_db))
    code, _, err = run(*args)
    ok_or_refused(args, code, err)
    assert digest(fuzz_db) == before


@fuzz(40)
@given(where=sql_fragments)
def test_where_and_label_where_select_or_refuse(fuzz_db, where):
    before = digest(fuzz_db)
    # --features 0:0 selects nothing, so a condition that passes ends in "no features selected" before
    # any LLM is started: the condition's own check is what is fuzzed.
    args = ("explain", "--features", "0:0", "--where", where, "--db", str(fuzz_db))
    code, _, err = run(*args)
    assert code == 2
    ok_or_refused(args, code, err)
    assert digest(fuzz_db) == before
    try:
        store.check_where(where, "--label-where")
    except BadInput as exc:
        assert "\n" not in str(exc)


@fuzz(100)
@given(option=st.sampled_from(["--top-k", "--threshold", "--seed", "--tokens", "--ctx-len", "--holdout",
                               "--batch-size", "--quantiles", "--per-quantile", "--random", "--features"]),
       value=numbers)
def test_collect_options_are_checked_before_any_work(fuzz_db, option, value):
    before = digest(fuzz_db)
    # A model that does not exist: every value the options accept ends at "unknown model", so what is
    # fuzzed is the options' own checks, not a collection.
    args = ("collect", "--model", "no-such-model-fuzz", option, str(value), "--db", str(fuzz_db))
    code, _, err = run(*args)
    assert code == 2, f"{args!r} exited {code}: {err}"
    ok_or_refused(args, code, err)
    assert digest(fuzz_db) == before


label_cells = st.one_of(st.text(max_size=30), st.integers(-5, 100).map(str), st.sampled_from(["", "nan", "1.5", "64"]))


@fuzz(30)
@given(kind=st.sampled_from(["csv", "jsonl"]),
       rows=st.lists(st.tuples(label_cells, label_cells), min_size=0, max_size=5),
       header=st.booleans())
def test_label_files_import_or_refuse(tmp_path_factory, fuzz_db, kind, rows, header):
    work = tmp_path_factory.mktemp("labels")
    db = work / "db.duckdb"
    db.write_bytes(fuzz_db.read_bytes())
    before = digest(db)
    path = work / f"labels.{kind}"
    if kind == "csv":
        import csv

        with path.open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            if header:
                w.writerow(["feature", "label"])
            w.writerows(rows)
        fmt = "table"
    else:
        lines = [json.dumps({"index": f, "description": label, "modelId": "m", "layer": "0"}) if header
                 else json.dumps([f, label]) for f, label in rows]
        path.write_text("\n".join(lines) + "\n")
        fmt = "neuronpedia"
    args = ("import-labels", str(path), "--explainer", "fuzz", "--format", fmt, "--db", str(db))
    code, _, err = run(*args)
    ok_or_refused(args, code, err)
    if code != 0:
        assert digest(db) == before
