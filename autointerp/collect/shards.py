"""A collection split into shards over contexts: each shard writes its partial state as files beside the
database, `merge_stage` combines them into the dictionary (exactly what one process gives with the same
seed), and `sharded_collect_stage` runs the missing shards in this process or as Ray tasks, then merges.

Shard i of N takes the contexts with index in [i * C // N, (i + 1) * C // N), C = n_tokens // ctx_len,
keeping their index in the whole run, so every hash-seeded choice (split, reservoir, random contexts) is
the one the single process makes. Shard workers never open the database: only the merge writes it.
"""

from __future__ import annotations

import itertools
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autointerp import store
from autointerp.collect import corpus, partial
from autointerp.collect.collector import Collector, collect_contexts
from autointerp.collect.stage import FINAL_WRITE_WAIT_S, CollectOutcome, id_column, prepare, token_progress
from autointerp.config import CollectConfig
from autointerp.errors import BadInput, LockTimeout
from autointerp.records import ProgressEvent, ProgressFn


@dataclass(frozen=True)
class ShardOutcome:
    index: int
    n_shards: int
    contexts: tuple[int, int]  # planned [start, stop) context indices
    n_contexts: int  # contexts the corpus had in that range
    skipped: bool  # already written: nothing run


def shard_dir(db: str | Path, cfg: CollectConfig) -> Path:
    """Beside the database, one directory per collection settings."""
    return Path(f"{db}.shards-{cfg.config_hash()}")


def shard_path(directory: Path, index: int, n_shards: int) -> Path:
    return directory / f"shard-{index:05d}-of-{n_shards:05d}"


def shard_range(cfg: CollectConfig, n_shards: int, index: int) -> tuple[int, int]:
    total = cfg.n_tokens // cfg.ctx_len
    return index * total // n_shards, (index + 1) * total // n_shards


def check_dir(directory: Path, cfg: CollectConfig, n_shards: int | None) -> dict[int, dict[str, Any]]:
    """The complete shards in `directory` by index. Refuses shards of other settings or another shard count."""
    if n_shards is not None and not 0 < n_shards <= cfg.n_tokens // cfg.ctx_len:
        raise BadInput(f"--shards {n_shards}: use 1 to {cfg.n_tokens // cfg.ctx_len} (one context or more per shard)")
    found: dict[int, dict[str, Any]] = {}
    if not directory.is_dir():
        return found
    want = cfg.config_hash()
    for path in sorted(directory.glob("shard-*")):
        info = partial.read_info(path)
        if info is None:
            continue  # a shard still being written elsewhere, or a broken one: it will be (re)done
        if info.get("config_hash") != want:
            theirs = info.get("config", {})
            diff = [f"{k}={theirs.get(k)!r} (now {v!r})" for k, v in cfg.identity().items() if theirs.get(k) != v]
            raise BadInput(f"{directory} holds shards of other settings ({'; '.join(diff) or 'another config hash'}): "
                           "run with the settings they were written with, or delete that directory")
        if n_shards is not None and info.get("n_shards") != n_shards:
            raise BadInput(f"{directory} holds shards of a run split into {info.get('n_shards')} shards, not "
                           f"{n_shards}: use --shards {info.get('n_shards')}, or delete that directory")
        n_shards = int(info["n_shards"])
        found[int(info["index"])] = info
    return found


def collect_shard(db: str | Path, cfg: CollectConfig, n_shards: int, index: int, model: Any = None,
                  on_progress: ProgressFn | None = None, checkpoint_every_s: float = 300.0) -> ShardOutcome:
    """Run shard `index` of `n_shards` and write its state into the shard directory (not the database).
    A shard already written is skipped; a killed one resumes from its checkpoint."""
    if not 0 <= index < n_shards:
        raise BadInput(f"--shard-index {index}: use 0 to {n_shards - 1} for --shards {n_shards}")
    directory = shard_dir(db, cfg)
    start, stop = shard_range(cfg, n_shards, index)
    done = check_dir(directory, cfg, n_shards)
    if index in done:
        return ShardOutcome(index, n_shards, (start, stop), int(done[index]["meta"]["n_contexts"]), True)
    p = prepare(cfg, model)
    directory.mkdir(parents=True, exist_ok=True)
    path = shard_path(directory, index, n_shards)
    progress = token_progress(on_progress, f"shard {index}", (stop - start) * cfg.ctx_len)

    checkpoint = path.with_name(path.name + ".ckpt")
    ctxs = itertools.islice(corpus.contexts(corpus.pieces(cfg.dataset, cfg.text_field), p.tokenizer, cfg.ctx_len,
                                            cfg.n_tokens // cfg.ctx_len), start, stop)
    collector, _ = collect_contexts(cfg, p.reader, p.reader.n_features, ctxs, p.bos, p.start, progress, checkpoint,
                                    checkpoint_every_s, first_seq=start, device=p.device)
    collector.prune_tokens()
    info = {"config_hash": cfg.config_hash(), "config": cfg.identity(), "n_shards": n_shards, "index": index,
            "contexts": [start, stop], "hook": p.hook, "kind": p.reader.kind, "feature_offset": p.start,
            "n_features": p.reader.n_features, "width": p.reader.width, "dictionary_config": p.dictionary_config(cfg),
            "vocab_size": len(p.strings), "written_at": time.time()}
    partial.write(path, collector.state(), info, p.strings)
    checkpoint.unlink(missing_ok=True)
    return ShardOutcome(index, n_shards, (start, stop), collector.n_contexts, False)


def _written(directory: Path, found: dict[int, dict[str, Any]], what: str, cfg: CollectConfig) -> int:
    """The shard count of `found`, the complete shards of `directory`; BadInput naming what is missing."""
    if not found:
        raise BadInput(f"{what}no shards of this collection in {directory}{_elsewhere(directory, cfg)}: run "
                       "`autointerp collect --shards N --shard-index I` with the same settings first")
    n = int(next(iter(found.values()))["n_shards"])
    missing = [i for i in range(n) if i not in found]
    if missing:
        shown = ", ".join(map(str, missing[:20])) + (" ..." if len(missing) > 20 else "")
        raise BadInput(f"{what}{len(missing)} of {n} shards are not written yet (--shard-index {shown}): run them, "
                       "then merge again")
    return n


def _elsewhere(directory: Path, cfg: CollectConfig) -> str:
    """Shard directories beside `directory` of the same features but other settings, named with how they differ
    (a part collected with another seed, say), for the error that `directory` holds none."""
    mine = json.loads(json.dumps(cfg.identity(), default=str))  # as shard.json holds it: ranges are lists
    notes = []
    for other in sorted(directory.parent.glob(directory.name.rsplit("-", 1)[0] + "-*")):
        info = next((i for i in map(partial.read_info, sorted(other.glob("shard-*"))) if i is not None), None)
        theirs = info.get("config", {}) if info else {}
        if other == directory or not theirs or theirs.get("features") != mine["features"]:
            continue
        diff = [f"{k}={theirs.get(k)!r} (now {mine.get(k)!r})" for k in sorted(set(mine) | set(theirs))
                if theirs.get(k) != mine.get(k)]
        notes.append(f"{other.name} holds shards of these features with {'; '.join(diff) or 'another config hash'}")
    return f" ({'; '.join(notes)})" if notes else ""


def _merge_dir(directory: Path, n: int, on_progress: ProgressFn | None, done: int,
               total: int) -> tuple[partial.State, dict[int, str]]:
    """The merged state of the `n` shards in `directory` and the strings of the token ids they hold."""
    state = None
    strings: dict[int, str] = {}
    for i in range(n):
        shard_state, shard_strings = partial.read(shard_path(directory, i, n))
        state = shard_state if state is None else partial.merge(state, shard_state)
        strings.update(shard_strings)
        if on_progress is not None:
            on_progress(ProgressEvent("merge", done + i + 1, total, "shard"))
    assert state is not None
    return state, strings


def _fmt(part: tuple[int, int]) -> str:
    return f"{part[0]}:{part[1]}"


def check_feature_parts(cfg: CollectConfig, parts: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """`parts` in order, refused (BadInput, naming the features) when two overlap, when they leave a gap, or
    when they reach outside `cfg.features`. Whether they reach the last feature of the whole hook or SAE
    (no `cfg.features`) is known only from the shards: `merge_stage` checks that."""
    if not parts:
        raise BadInput("--feature-parts: give the feature ranges the shards were collected in, e.g. 0:8192,8192:16384")
    ordered = sorted(parts)
    for a, b in zip(ordered, ordered[1:], strict=False):
        if b[0] < a[1]:
            raise BadInput(f"--feature-parts: {_fmt(a)} and {_fmt(b)} overlap (features {b[0]}:{min(a[1], b[1])} "
                           "are in both): give each feature to one part")
        if b[0] > a[1]:
            raise BadInput(f"--feature-parts: features {a[1]}:{b[0]} are in no part (a gap between {_fmt(a)} and "
                           f"{_fmt(b)}): collect them as a part of their own, or name the part that holds them")
    lo, hi = cfg.features if cfg.features is not None else (0, None)
    first, last = ordered[0][0], ordered[-1][1]
    whole = f"--features {lo}:{hi}" if cfg.features is not None else "the whole hook or SAE"
    if first != lo:
        gap = f"features {lo}:{first} are in no part" if first > lo else f"features {first}:{lo} are outside it"
        raise BadInput(f"--feature-parts: the merged dictionary is {whole}, starting at feature {lo}, but the parts "
                       f"start at {first}: {gap}")
    if hi is not None and last != hi:
        gap = f"features {last}:{hi} are in no part" if last < hi else f"features {hi}:{last} are outside it"
        raise BadInput(f"--feature-parts: the merged dictionary is {whole}, ending at feature {hi}, but the parts "
                       f"end at {last}: {gap}")
    return ordered


def merge_stage(db: str | Path, cfg: CollectConfig, n_shards: int | None = None,
                on_progress: ProgressFn | None = None, final_write_wait_s: float = FINAL_WRITE_WAIT_S,
                feature_parts: list[tuple[int, int]] | None = None) -> CollectOutcome:
    """Merge every shard of this collection into one dictionary in `db` (the only step that opens it), then
    remove the shard directory. Equal, row for row, to the dictionary one process writes.

    With `feature_parts`, the shards are those of `cfg` collected with `--features START:STOP` for each
    part (each split into its own number of context shards): each part's shards are merged, the parts
    joined (`partial.concat_features`) into the dictionary of `cfg` itself, the whole of `cfg.features`
    (or of the hook or SAE), and every part's directory removed."""
    config_hash = cfg.config_hash()
    if feature_parts is None:
        dirs = [(shard_dir(db, cfg), "")]
        found = [check_dir(dirs[0][0], cfg, n_shards)]  # refused before the database is touched
    else:
        ordered = check_feature_parts(cfg, feature_parts)
        part_cfgs = [cfg.model_copy(update={"features": part}) for part in ordered]
        dirs = [(shard_dir(db, c), f"feature part {_fmt(part)}: ") for c, part in zip(part_cfgs, ordered, strict=True)]
        found = [check_dir(d, c, n_shards) for (d, _), c in zip(dirs, part_cfgs, strict=True)]
    with store.open_store(db) as con:
        done = store.find_dictionary(con, config_hash)
    if done is not None and done.status == "complete":
        return CollectOutcome(done.dictionary_id, done.n_tokens or 0, done.n_contexts or 0, done.n_features, True)
    cfgs = part_cfgs if feature_parts is not None else [cfg]
    counts = [_written(d, f, what, c) for (d, what), f, c in zip(dirs, found, cfgs, strict=True)]
    first = found[0][0]
    offset, n_features, dictionary_config = int(first["feature_offset"]), int(first["n_features"]), \
        first["dictionary_config"]
    if feature_parts is not None:
        offset, n_features = _check_width(cfg, ordered, found)
        # The config the single run over the whole range writes: the first part's, with the merged range.
        dictionary_config = {**dictionary_config, "features": list(cfg.features) if cfg.features else None,
                             "feature_offset": offset}
    state, strings = _merge_parts(dirs, counts, on_progress)
    collector = Collector.from_state(cfg, n_features, offset, *state)
    result = collector.result(strings)
    if result.n_contexts == 0:
        raise BadInput(f"the corpus '{cfg.dataset}' has fewer than ctx_len={cfg.ctx_len} tokens")
    try:
        with store.open_store(db, wait_s=final_write_wait_s) as con:
            dictionary_id = store.begin_dictionary(
                con, model=cfg.model, hook=first["hook"], kind=first["kind"], sae=cfg.sae,
                random_init=cfg.random_init, seed=cfg.seed, dataset=cfg.dataset, ctx_len=cfg.ctx_len,
                n_features=n_features, config_hash=config_hash, config=dictionary_config)
            store.complete_dictionary(
                con, dictionary_id, n_tokens=result.n_tokens, n_contexts=result.n_contexts,
                sequences=result.sequences.append_column("dictionary_id", id_column(result.sequences, dictionary_id)),
                features=result.features.append_column("dictionary_id", id_column(result.features, dictionary_id)),
                examples=result.examples.append_column("dictionary_id", id_column(result.examples, dictionary_id)))
    except LockTimeout as exc:
        where = ", ".join(str(d) for d, _ in dirs)
        raise LockTimeout(f"the shards merged but could not be written: {exc}. Nothing is lost: the shards stay "
                          f"in {where}; run the merge again", exc.holder) from exc
    for directory, _ in dirs:
        shutil.rmtree(directory, ignore_errors=True)
    return CollectOutcome(dictionary_id, result.n_tokens, result.n_contexts, n_features, False)


def _check_width(cfg: CollectConfig, ordered: list[tuple[int, int]],
                 found: list[dict[int, dict[str, Any]]]) -> tuple[int, int]:
    """The merged dictionary's first feature and feature count; BadInput when the parts do not reach the end of
    the hook or SAE (no `cfg.features`) or were collected from hooks or SAEs of different widths."""
    widths = {int(next(iter(f.values())).get("width") or -1) for f in found}
    if cfg.features is not None:
        return cfg.features[0], cfg.features[1] - cfg.features[0]
    if -1 in widths:
        raise BadInput("--feature-parts without --features needs shards that record the width of the hook or SAE; "
                       "these were written by an older autointerp: give --features START:STOP for the range the "
                       "parts cover, or collect them again")
    if len(widths) > 1:
        raise BadInput(f"--feature-parts: the parts were collected from hooks or SAEs of different widths "
                       f"({', '.join(map(str, sorted(widths)))})")
    width, last = widths.pop(), ordered[-1][1]
    if last != width:
        raise BadInput(f"--feature-parts: the hook or SAE has {width} features but the parts end at {last}: features "
                       f"{last}:{width} are in no part (collect them, or give --features 0:{last} to merge a "
                       f"dictionary of features 0:{last})")
    return 0, width


def _merge_parts(dirs: list[tuple[Path, str]], counts: list[int],
                 on_progress: ProgressFn | None) -> tuple[partial.State, dict[int, str]]:
    """Each directory's shards merged, then the feature parts joined (one directory: its merged state)."""
    states: list[partial.State] = []
    strings: dict[int, str] = {}
    for k, ((directory, _), n) in enumerate(zip(dirs, counts, strict=True)):
        state, part_strings = _merge_dir(directory, n, on_progress, sum(counts[:k]), sum(counts))
        states.append(state)
        strings.update(part_strings)
    if len(states) == 1:
        return states[0], strings
    try:
        return partial.concat_features(states), strings
    except ValueError as exc:
        raise BadInput(f"--feature-parts: {exc} (each part must be collected with the same settings but "
                       "--features)") from exc


def sharded_collect_stage(db: str | Path, cfg: CollectConfig, n_shards: int, ray: str | None = None,
                          on_progress: ProgressFn | None = None, model: Any = None,
                          checkpoint_every_s: float = 300.0) -> CollectOutcome:
    """Run the shards not yet written (in this process, one after another; or as Ray tasks when `ray` is
    given: an address, or "local" for a Ray started here), then merge them into `db`."""
    with store.open_store(db) as con:
        done = store.find_dictionary(con, cfg.config_hash())
    if done is not None and done.status == "complete":
        return CollectOutcome(done.dictionary_id, done.n_tokens or 0, done.n_contexts or 0, done.n_features, True)
    pending = [i for i in range(n_shards) if i not in check_dir(shard_dir(db, cfg), cfg, n_shards)]
    if ray is not None:
        from autointerp.collect import ray_shards

        ray_shards.run(db, cfg, n_shards, pending, None if ray == "local" else ray, on_progress)
    else:
        for i in pending:
            collect_shard(db, cfg, n_shards, i, model=model, on_progress=on_progress,
                          checkpoint_every_s=checkpoint_every_s)
    return merge_stage(db, cfg, n_shards, on_progress)

