"""The browser's reads (store/browse.py) against plain SQL over the `labels` view on a labelled tiny
dictionary: search (case-insensitive, %, _ and \\ taken literally), score sort and range, paging; the
margins' arithmetic by hand; the memo forgetting a changed file; `serve`'s one-line error."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from autointerp.analysis.serve import views
from autointerp.analysis.serve.app import FileMemo
from autointerp.errors import BadInput
from autointerp.store import browse, open_store
from autointerp.store.browse import FeatureQuery, RunScore
from tests.helpers import copy_db, query, run_label
from tests.llm_server import LoopbackLLM, Reply
from tests.unit.test_labelling import good_script

LABELS = ("digits and numbers", "100% Digits", "snake_case names", "back\\slash")


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, collected_db) -> Path:
    db = copy_db(collected_db, tmp_path_factory.mktemp("browse") / "b.duckdb")
    names, lock = itertools.cycle(LABELS), threading.Lock()

    def script(path: str, request: dict) -> Reply:
        reply = good_script(path, request)
        if reply.content == "digits and numbers":
            with lock:
                return Reply(content=next(names))
        return reply

    with LoopbackLLM(script) as llm:
        run_label(db, llm.base_url, list(range(16)), n_boot=50, null_samples=4)
    assert {label for label, _ in _labels(db).values()} == set(LABELS)  # every search below has its cases
    return db


def _page(db: Path, **kw) -> browse.ListPage:
    with open_store(db, read_only=True) as con:
        return browse.feature_page(con, FeatureQuery(1, "m-explain", **kw), browse.score_methods(con, 1))


def _labels(db: Path) -> dict[int, tuple[str, float | None]]:
    rows = query(db, "SELECT feature, label, correlation_top_random FROM labels WHERE dictionary_id = 1 "
                     "AND explainer = 'm-explain' AND status = 'ok'")
    return {r[0]: (r[1], r[2]) for r in rows}


@pytest.mark.parametrize("text", ["digits", "DIGITS", "%", "_", "\\", "0% d", "nothing says this"])
def test_search_matches_label_substrings_literally(labelled, text):
    expected = sorted(f for f, (label, _) in _labels(labelled).items() if text.lower() in label.lower())
    page = _page(labelled, search=text)
    assert page.total == len(expected) and [r.feature for r in page.rows] == expected
    assert all(text.lower() in (r.label or "").lower() for r in page.rows)


def test_score_sort_range_and_paging(labelled):
    labels = _labels(labelled)
    scored = sorted(((v, f) for f, (_, v) in labels.items() if v is not None), key=lambda t: (-t[0], t[1]))
    assert len(scored) >= 4
    page = _page(labelled, sort="correlation_top_random", descending=True, limit=100)
    values = [labels[r.feature][1] if r.feature in labels else None for r in page.rows]
    assert [r.feature for r in page.rows][: len(scored)] == [f for _, f in scored]
    assert all(v is None for v in values[len(scored):])  # unscored and unlabelled features last
    lo, hi = scored[-2][0], scored[1][0]
    bounded = _page(labelled, sort="correlation_top_random", score_min=lo, score_max=hi)
    assert sorted(r.feature for r in bounded.rows) == sorted(f for v, f in scored if lo <= v <= hi)
    n = query(labelled, "SELECT count(*) FROM features WHERE dictionary_id = 1")[0][0]
    first, second = _page(labelled, limit=5), _page(labelled, limit=5, offset=5)
    assert first.total == second.total == n
    assert [r.feature for r in first.rows + second.rows] == list(range(10))
    assert _page(labelled, offset=10 * n).total == n


def test_label_sort(labelled):
    labels = _labels(labelled)
    page = _page(labelled, sort="label", limit=100)
    expected = sorted(labels, key=lambda f: (labels[f][0], f))
    assert [r.feature for r in page.rows][: len(labels)] == expected
    assert all(r.label is None for r in page.rows[len(labels):])


def test_bad_requests_say_why(labelled):
    with pytest.raises(BadInput, match="cannot sort by 'label; DROP'"):
        _page(labelled, sort="label; DROP")
    with pytest.raises(BadInput, match="score range needs"):
        _page(labelled, score_min=0.1)


def test_margin_and_p_by_hand():
    s = RunScore("r", "detection", 0.5, 0.4, 0.6, 10, None)
    got = views.score(s, "detection", [0.1, 0.5, 0.9, 0.2])
    assert got.margin == pytest.approx(0.5 - 0.425) and got.p == pytest.approx((1 + 2) / 5) and got.ci == (0.4, 0.6)
    assert views.score(s, "ablation_effect", [0.1]).margin is None  # a feature's own effect has no label null
    assert views.score(None, "detection", [0.1]).value is None


def test_memo_forgets_when_the_file_changes(tmp_path):
    db = tmp_path / "x.duckdb"
    db.write_bytes(b"one")
    memo, reads = FileMemo(db), []
    for _ in range(2):
        memo.check()
        assert memo.get("k", lambda: reads.append(1) or len(reads)) == 1
    db.write_bytes(b"two, longer")
    memo.check()
    assert memo.get("k", lambda: reads.append(1) or len(reads)) == 2


def test_serve_without_a_database_is_one_line_exit_2(tmp_path):
    from autointerp.cli import main

    result = CliRunner().invoke(main, ["serve", "--db", str(tmp_path / "none.duckdb")])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "no database at" in result.output


def test_label_kinds_name_where_a_label_came_from():
    def lab(explainer: str, null_kind: str | None = None, prompt_hash: str = "p", null_of: str | None = None,
            label_feature: int | None = None) -> browse.LabelRun:
        return browse.LabelRun("e", explainer, "x", "ok", None, null_kind, null_of, label_feature, prompt_hash, None,
                               None, None, None, None, None, None, None)

    assert views.label_kind(lab("m-explain")) == "label"
    assert views.label_kind(lab("baseline:token-lookup")) == "baseline"
    assert views.label_kind(lab("neuronpedia", prompt_hash="import:0123")) == "imported label"
    assert views.label_kind(lab("null:constant", "constant")) == "null: constant label"
    assert views.label_kind(lab("null:shuffled:m-explain", "shuffled", null_of="m-explain", label_feature=7)) == (
        "null: a label of m-explain written for feature 7")
