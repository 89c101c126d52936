"""Sharded collection equals the single process, table for table; shards resume alone; foreign shard
directories are refused; devices and precisions are checked. Real tiny model, real DuckDB, real files."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from autointerp.cli import main
from autointerp.collect.shards import (
    check_feature_parts,
    collect_shard,
    merge_stage,
    shard_dir,
    shard_path,
    sharded_collect_stage,
)
from autointerp.collect.stage import collect_stage
from autointerp.config import CollectConfig
from autointerp.errors import BadInput
from tests.helpers import TINY_COLLECT, make_sae_dir, query

TABLES = {
    # every column but the dictionary's timestamps (when it was written, not what)
    "dictionaries": "SELECT * EXCLUDE (created_at, completed_at) FROM dictionaries ORDER BY ALL",
    "features": "SELECT * FROM features ORDER BY ALL",
    "examples": "SELECT * FROM examples ORDER BY ALL",
    "sequences": "SELECT * FROM sequences ORDER BY ALL",
}


def _cfg(tiny_model_dir: Path, corpus_file: Path, **kw) -> CollectConfig:
    return CollectConfig(**{"model": str(tiny_model_dir), "dataset": str(corpus_file), **TINY_COLLECT,
                            "batch_size": 5, "seed": 3, "device": "cpu", **kw})


def assert_same_tables(a: Path, b: Path) -> None:
    for name, sql in TABLES.items():
        rows_a, rows_b = query(a, sql), query(b, sql)
        assert rows_a, name
        assert rows_a == rows_b, f"{name} differs"


@pytest.fixture(scope="module")
def single(tmp_path_factory, tiny_model, tiny_model_dir, corpus_file) -> tuple[Path, CollectConfig]:
    cfg = _cfg(tiny_model_dir, corpus_file)
    db = tmp_path_factory.mktemp("single") / "one.duckdb"
    collect_stage(db, cfg, model=tiny_model)
    return db, cfg


@pytest.fixture(scope="module")
def sae_single(tmp_path_factory, tiny_model, tiny_model_dir, corpus_file) -> tuple[Path, CollectConfig]:
    root = tmp_path_factory.mktemp("sae")
    sae = make_sae_dir(root / "sae", "blocks.1.hook_resid_post", d_in=tiny_model.cfg.d_model, d_sae=40)
    cfg = _cfg(tiny_model_dir, corpus_file, hook=None, sae=str(sae))
    db = root / "one.duckdb"
    collect_stage(db, cfg, model=tiny_model)
    return db, cfg


@pytest.mark.parametrize("n_shards", [2, 3])
def test_shards_in_process_equal_the_single_process_run(tmp_path, tiny_model, single, n_shards):
    db_one, cfg = single
    db = tmp_path / "sharded.duckdb"
    out = sharded_collect_stage(db, cfg, n_shards, model=tiny_model)
    assert not out.already_complete and out.n_contexts == 100
    assert_same_tables(db_one, db)
    assert not shard_dir(db, cfg).exists()  # merged into the database: the files are gone


@pytest.mark.parametrize("n_shards", [2, 3])
def test_sae_shards_equal_the_single_process_run(tmp_path, tiny_model, sae_single, n_shards):
    db_one, cfg = sae_single
    db = tmp_path / "sharded.duckdb"
    sharded_collect_stage(db, cfg, n_shards, model=tiny_model)
    assert query(db, "SELECT kind, n_features FROM dictionaries") == [("sae", 40)]
    assert_same_tables(db_one, db)


def test_statistics_do_not_depend_on_the_batch_size(tmp_path, tiny_model, single):
    db_one, cfg = single
    db = tmp_path / "b3.duckdb"
    collect_stage(db, cfg.model_copy(update={"batch_size": 3}), model=tiny_model)
    assert query(db, TABLES["features"]) == query(db_one, TABLES["features"])  # exact sums, bit for bit


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray (autointerp[ray]) is not installed")
def test_local_ray_with_two_workers_equals_the_single_process_run(tmp_path, single):
    db_one, cfg = single
    db = tmp_path / "ray.duckdb"
    events = []
    from autointerp.collect import ray_shards

    shards = shard_dir(db, cfg)
    ray_shards.run(db, cfg, 3, [0, 1, 2], None, events.append, num_cpus=2)
    assert sorted(p.name for p in shards.glob("shard-*")) == [shard_path(shards, i, 3).name for i in range(3)]
    assert [e.done for e in events if e.stage == "shards"] == [0, 1, 2, 3]
    merge_stage(db, cfg)
    assert_same_tables(db_one, db)


def test_a_lost_shard_is_redone_alone(tmp_path, tiny_model, single):
    db_one, cfg = single
    db = tmp_path / "lost.duckdb"
    first = [collect_shard(db, cfg, 3, i, model=tiny_model) for i in range(3)]
    assert [s.skipped for s in first] == [False, False, False]
    assert sum(s.n_contexts for s in first) == 100
    directory = shard_dir(db, cfg)
    # Shard 1 killed during its write: the temporary directory is left and the shard is not there; shard 2's
    # files removed. Neither counts as written.
    lost = shard_path(directory, 1, 3)
    os.replace(lost, lost.with_name(f".{lost.name}.tmp-999"))
    (shard_path(directory, 2, 3) / "shard.json").unlink()
    with pytest.raises(BadInput, match=r"2 of 3 shards are not written yet \(--shard-index 1, 2\)"):
        merge_stage(db, cfg)
    events = []
    sharded_collect_stage(db, cfg, 3, model=tiny_model, on_progress=events.append)
    assert {e.stage for e in events} == {"shard 1", "shard 2", "merge"}  # shard 0 was not run again
    assert_same_tables(db_one, db)


def test_a_shard_resumes_from_its_checkpoint(tmp_path, tiny_model, single):
    db_one, cfg = single
    db = tmp_path / "ckpt.duckdb"
    # A checkpoint of shard 0 as a killed run leaves it: the first batches of its range, saved as they go.
    from autointerp.collect import corpus
    from autointerp.collect.collector import collect_contexts
    from autointerp.collect.shards import shard_range
    from autointerp.models import FeatureReader

    directory = shard_dir(db, cfg)
    directory.mkdir()
    ckpt = Path(f"{shard_path(directory, 0, 2)}.ckpt")
    start, stop = shard_range(cfg, 2, 0)
    ctxs = list(corpus.contexts(corpus.pieces(cfg.dataset), tiny_model.tokenizer, cfg.ctx_len, 100))[start:start + 20]
    collect_contexts(cfg, FeatureReader(tiny_model, cfg.hook), 64, ctxs, tiny_model.tokenizer.bos_token_id,
                     checkpoint=ckpt, checkpoint_every_s=0.0, first_seq=start)
    tokens = []
    out = collect_shard(db, cfg, 2, 0, model=tiny_model, on_progress=tokens.append)
    assert tokens[0].done == 20 * cfg.ctx_len  # the checkpoint's contexts were not run again
    assert out.n_contexts == stop - start and not ckpt.exists()
    collect_shard(db, cfg, 2, 1, model=tiny_model)
    merge_stage(db, cfg)
    assert_same_tables(db_one, db)


def test_a_shard_directory_of_other_settings_is_refused(tmp_path, tiny_model, single):
    _, cfg = single
    db = tmp_path / "foreign.duckdb"
    collect_shard(db, cfg, 2, 0, model=tiny_model)
    other = cfg.model_copy(update={"seed": 4})
    shard_dir(db, cfg).rename(shard_dir(db, other))  # copied or renamed by hand
    with pytest.raises(BadInput, match=r"other settings \(seed=3 \(now 4\)\)"):
        collect_shard(db, other, 2, 1, model=tiny_model)
    with pytest.raises(BadInput, match="other settings"):
        merge_stage(db, other)
    shard_dir(db, other).rename(shard_dir(db, cfg))
    with pytest.raises(BadInput, match="split into 2 shards, not 3"):
        collect_shard(db, cfg, 3, 1, model=tiny_model)
    hooked = tmp_path / "hook.duckdb"
    shutil.copytree(shard_dir(db, cfg), shard_dir(hooked, cfg.model_copy(update={"hook": "blocks.1.mlp.hook_post"})))
    with pytest.raises(BadInput, match="hook='blocks.0.mlp.hook_post' \\(now 'blocks.1.mlp.hook_post'\\)"):
        merge_stage(hooked, cfg.model_copy(update={"hook": "blocks.1.mlp.hook_post"}))
    assert not hooked.exists()  # refused before anything was written


def test_cli_shard_index_then_merge(tmp_path, single, tiny_model_dir, corpus_file):
    db_one, cfg = single
    db = tmp_path / "cli.duckdb"
    args = ["--model", str(tiny_model_dir), "--dataset", str(corpus_file), "--hook", TINY_COLLECT["hook"],
            "--tokens", "1600", "--ctx-len", "16", "--top-k", "6", "--quantiles", "2", "--per-quantile", "2",
            "--random", "6", "--seed", "3", "--batch-size", "5", "--device", "cpu", "--db", str(db)]
    runner = CliRunner()
    for i in (1, 0):
        r = runner.invoke(main, ["collect", *args, "--shards", "2", "--shard-index", str(i)])
        assert r.exit_code == 0, r.output
        assert f"shard {i} of 2" in r.output
    assert not db.exists()  # shard workers never open the database
    r = runner.invoke(main, ["collect", *args, "--shards", "2", "--shard-index", "1"])
    assert "already written" in r.output
    r = runner.invoke(main, ["merge", *args])
    assert r.exit_code == 0, r.output
    assert_same_tables(db_one, db)
    r = runner.invoke(main, ["collect", *args, "--shard-index", "1"])
    assert r.exit_code == 2 and "need --shards N" in r.output


def _collect_part(db: Path, cfg: CollectConfig, part: tuple[int, int], n_shards: int, model) -> None:
    part_cfg = cfg.model_copy(update={"features": part})
    for i in range(n_shards):
        collect_shard(db, part_cfg, n_shards, i, model=model)


def test_feature_parts_merge_into_the_single_full_run(tmp_path, tiny_model, single):
    db_one, cfg = single  # every one of the hook's 64 neurons
    db = tmp_path / "parts.duckdb"
    _collect_part(db, cfg, (0, 24), 2, tiny_model)  # each part in its own number of context shards
    _collect_part(db, cfg, (24, 64), 3, tiny_model)
    assert not db.exists()  # workers never open the database
    events = []
    out = merge_stage(db, cfg, feature_parts=[(24, 64), (0, 24)], on_progress=events.append)  # any order
    assert (out.n_features, out.n_contexts, out.already_complete) == (64, 100, False)
    assert [e.done for e in events] == [1, 2, 3, 4, 5] and {e.total for e in events} == {5}
    # The config, hash and feature count say the whole range: the same row as the single run's.
    assert query(db, "SELECT n_features, config_hash FROM dictionaries") == [(64, cfg.config_hash())]
    assert_same_tables(db_one, db)
    assert not list(tmp_path.glob("parts.duckdb.shards-*"))  # every part's directory merged and removed
    again = merge_stage(db, cfg, feature_parts=[(0, 24), (24, 64)])
    assert again.already_complete and again.dictionary_id == out.dictionary_id


def test_feature_parts_of_a_feature_range_equal_that_range_collected_at_once(tmp_path, tiny_model, single):
    _, cfg = single
    ranged = cfg.model_copy(update={"features": (8, 40)})
    db_one = tmp_path / "one.duckdb"
    collect_stage(db_one, ranged, model=tiny_model)
    db = tmp_path / "parts.duckdb"
    _collect_part(db, cfg, (8, 30), 1, tiny_model)
    _collect_part(db, cfg, (30, 40), 2, tiny_model)
    merge_stage(db, ranged, feature_parts=[(8, 30), (30, 40)])
    assert query(db, "SELECT min(feature), max(feature) FROM features") == [(8, 39)]
    assert_same_tables(db_one, db)


def test_cli_sae_feature_slices_then_one_merge(tmp_path, sae_single, tiny_model_dir, corpus_file):
    db_one, cfg = sae_single  # 40 latents
    db = tmp_path / "cli.duckdb"
    args = ["--model", str(tiny_model_dir), "--dataset", str(corpus_file), "--sae", str(cfg.sae),
            "--tokens", "1600", "--ctx-len", "16", "--top-k", "6", "--quantiles", "2", "--per-quantile", "2",
            "--random", "6", "--seed", "3", "--batch-size", "5", "--device", "cpu", "--db", str(db)]
    runner = CliRunner()
    for part, n, i in [("0:16", 1, 0), ("16:40", 2, 1), ("16:40", 2, 0)]:  # a Slurm array: slices x shards
        r = runner.invoke(main, ["collect", *args, "--features", part, "--shards", str(n), "--shard-index", str(i)])
        assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["merge", *args, "--feature-parts", "0:16,40:16"])
    assert r.exit_code == 2 and "'40:16' is empty or negative" in r.output
    r = runner.invoke(main, ["merge", *args, "--feature-parts", "0:16,20:40"])
    assert r.exit_code == 2 and "--feature-parts: features 16:20 are in no part" in r.output
    r = runner.invoke(main, ["merge", *args, "--feature-parts", "0:16,16:40"])
    assert r.exit_code == 0, r.output
    assert "40 features" in r.output
    assert query(db, "SELECT kind, n_features FROM dictionaries") == [("sae", 40)]
    assert_same_tables(db_one, db)


@pytest.mark.parametrize(("parts", "features", "message"), [
    ([(0, 24), (20, 64)], None, r"0:24 and 20:64 overlap \(features 20:24 are in both\)"),
    ([(0, 24), (0, 24)], None, r"0:24 and 0:24 overlap"),
    ([(0, 24), (30, 64)], None, r"features 24:30 are in no part \(a gap between 0:24 and 30:64\)"),
    ([(8, 24), (24, 64)], None, r"starting at feature 0, but the parts start at 8: features 0:8 are in no part"),
    ([(0, 24), (24, 40)], (0, 48), r"ending at feature 48, but the parts end at 40: features 40:48 are in no part"),
    ([(0, 24), (24, 64)], (0, 48), r"ending at feature 48, but the parts end at 64: features 48:64 are outside it"),
    ([], None, r"give the feature ranges"),
])
def test_feature_parts_with_gaps_or_overlaps_are_refused(single, parts, features, message):
    _, cfg = single
    with pytest.raises(BadInput, match=message):
        check_feature_parts(cfg.model_copy(update={"features": features}), parts)


def test_feature_parts_that_are_missing_short_or_of_other_settings_are_refused(tmp_path, tiny_model, single):
    _, cfg = single
    db = tmp_path / "refused.duckdb"
    _collect_part(db, cfg, (0, 24), 1, tiny_model)
    # The parts end before the hook's last neuron: known only from what the shards say of the hook.
    with pytest.raises(BadInput, match=r"the hook or SAE has 64 features but the parts end at 24: features 24:64 "):
        merge_stage(db, cfg, feature_parts=[(0, 24)])
    # A part never collected, then collected with another seed, then half of it.
    with pytest.raises(BadInput, match=r"feature part 24:64: no shards of this collection in .*shards-\w+: run"):
        merge_stage(db, cfg, feature_parts=[(0, 24), (24, 64)])
    other = cfg.model_copy(update={"seed": 4})
    _collect_part(db, other, (24, 64), 1, tiny_model)
    with pytest.raises(BadInput, match=r"feature part 24:64: no shards .*holds shards of these features with "
                                       r"seed=4 \(now 3\)"):
        merge_stage(db, cfg, feature_parts=[(0, 24), (24, 64)])
    collect_shard(db, cfg.model_copy(update={"features": (24, 64)}), 2, 1, model=tiny_model)
    with pytest.raises(BadInput, match=r"feature part 24:64: 1 of 2 shards are not written yet \(--shard-index 0\)"):
        merge_stage(db, cfg, feature_parts=[(0, 24), (24, 64)])
    assert query(db, "SELECT count(*) FROM dictionaries") == [(0,)]  # nothing written
    assert shard_dir(db, cfg.model_copy(update={"features": (0, 24)})).is_dir()  # the parts are kept


def test_ray_missing_is_a_clear_error_naming_the_extra(tmp_path, tiny_model_dir, corpus_file):
    code = ("import sys; sys.modules['ray'] = None\n"  # as if Ray were not installed: `import ray` fails
            "from autointerp.cli import main\n"
            f"main(['collect', '--model', {str(tiny_model_dir)!r}, '--dataset', {str(corpus_file)!r}, "
            f"'--tokens', '320', '--ctx-len', '16', '--shards', '2', '--ray', '--db', {str(tmp_path / 'r.duckdb')!r}])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert "pip install 'autointerp[ray]'" in r.stderr and "Traceback" not in r.stderr


def test_cuda_on_a_machine_without_cuda_is_a_clear_error(tmp_path, tiny_model_dir, corpus_file):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    db = tmp_path / "cuda.duckdb"
    with pytest.raises(BadInput, match="--device cuda: CUDA is not available on this machine"):
        collect_stage(db, _cfg(tiny_model_dir, corpus_file, device="cuda"))
    assert query(db, "SELECT count(*) FROM dictionaries") == [(0,)]
    r = CliRunner().invoke(main, ["collect", "--model", str(tiny_model_dir), "--dataset", str(corpus_file),
                                  "--tokens", "320", "--device", "cuda:1", "--db", str(db)])
    assert r.exit_code == 2 and "CUDA is not available" in r.output
    r = CliRunner().invoke(main, ["collect", "--device", "tpu", "--db", str(db)])
    assert r.exit_code == 2 and "unknown device 'tpu'" in r.output


# bfloat16 keeps 8 bits of mantissa: through the tiny model's two layers the stored activations stay within
# this share of the feature's largest activation (docs/guide/scale.md). float16 (11 bits) is checked too.
DTYPE_TOLERANCE = {"bfloat16": 0.03, "float16": 0.005}


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_agrees_with_float32_within_the_documented_tolerance(tmp_path, single, dtype):
    db_one, cfg = single
    db = tmp_path / f"{dtype}.duckdb"
    out = collect_stage(db, cfg.model_copy(update={"dtype": dtype}))  # loads the model in that dtype on the cpu
    assert out.n_contexts == 100
    assert query(db, "SELECT config_hash FROM dictionaries") != query(db_one, "SELECT config_hash FROM dictionaries")
    f32 = {f: (mx, mean) for f, mx, mean in query(db_one, "SELECT feature, max_act, mean_act FROM features")}
    low = {f: (mx, mean) for f, mx, mean in query(db, "SELECT feature, max_act, mean_act FROM features")}
    scale = max(abs(v[0]) for v in f32.values())
    tol = DTYPE_TOLERANCE[dtype]
    assert max(abs(f32[f][0] - low[f][0]) for f in f32) <= tol * scale
    assert max(abs(f32[f][1] - low[f][1]) for f in f32) <= tol * scale
    # The same contexts hold the same token's activations: compare every context both runs stored.
    q = "SELECT feature, seq, acts FROM examples WHERE kind = 'random'"
    a = {(f, s): np.asarray(v) for f, s, v in query(db_one, q)}
    b = {(f, s): np.asarray(v) for f, s, v in query(db, q)}
    assert a.keys() == b.keys()
    worst = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    assert 0 < worst <= tol * scale
    print(f"{dtype}: worst |delta act| {worst:.4g} = {worst / scale:.4f} of the largest activation {scale:.3g}")
    # Which contexts are the top ones may change where two are within that tolerance of each other.
    top_a = set(query(db_one, "SELECT feature, split, seq FROM examples WHERE kind = 'top'"))
    top_b = set(query(db, "SELECT feature, split, seq FROM examples WHERE kind = 'top'"))
    assert len(top_a & top_b) >= 0.8 * len(top_a)
