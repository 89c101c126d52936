"""CPU cost of decoding and reading a feature's echo replies (issue 20), the code at --before beside the
working tree, on the same bodies.

The bodies are the loopback server's (tests/llm_server.py in its own process, answering as a model does:
top logprobs at every prompt token, digits at the placeholders) to the simulation requests the live label
stage sends (`EchoSimulator.plan` with a list of prompts, the default settings, few-shot examples) for
features of the bench's collection (bench/llm_stage.py's: the tiny model over 20k tokens). Each feature's
label, the constant reference label and a shuffled label (another feature's) are captured; a feature
costs (2 + 50/128) replies at bench/llm_stage.py's defaults (label and reference for every feature, a
shuffled null for 50 of 128), about 48 contexts.

Each version runs in its own process (`--root`: the tree whose `autointerp` is imported; --before REF is
exported with `git archive`), alternated `--rounds` times; each pass decodes every body as the client
does (`bodies.loads_completions` where the tree has it, else `bodies.loads`; then `parse_completions_json`)
and reads it (`simulate.echo_values`). CPU seconds (`time.process_time`), so other load on the machine
moves the figures less than wall time would; the median round is reported.

    python bench/echo_read.py --before 1cb3474
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
REPLIES_PER_FEATURE = 2 + 50 / 128
GOAL_MS = 20.0  # the client's whole CPU per feature that 50 features/s on one core allows


def capture(workdir: Path, n_features: int) -> Path:
    """The bodies of a few features' simulation replies and a manifest of them (with the prompts read)."""
    sys.path.insert(0, str(ROOT))
    from autointerp.collect.stage import collect_stage
    from autointerp.config import CollectConfig, LabelConfig
    from autointerp.label import simulate
    from autointerp.label.fewshot import fewshot_for
    from autointerp.label.simulators import SIMULATORS
    from autointerp.label.units import scoring_contexts
    from autointerp.llm import prompts
    from autointerp.models import load_model
    from autointerp.store import open_store, read_feature_contexts
    from bench.llm_stage import label_of, server_process
    from tests.helpers import make_model_dir, write_corpus

    model_dir = make_model_dir(workdir / "model", n_embd=128)
    db = workdir / "base.duckdb"
    collect_stage(db, CollectConfig(model=str(model_dir), hook="blocks.0.mlp.hook_post",
                                    dataset=str(write_corpus(workdir / "c.txt", 400)), n_tokens=20_000, ctx_len=64),
                  model=load_model(str(model_dir)))
    cfg = LabelConfig()
    features = list(range(n_features))
    with open_store(db, read_only=True) as con:
        records = read_feature_contexts(con, 1, features)
    manifest = []
    with server_process(0.0) as url:
        for f in features:
            contexts = [c for c, _ in scoring_contexts(records[f], cfg)]
            fewshot = fewshot_for(db, 1, f, cfg.fewshot)
            for kind, label in (("label", label_of(f)), ("reference", prompts.render("null_constant")),
                                ("shuffled", label_of((f + 1) % n_features))):
                plan = SIMULATORS["echo"].plan("s", label, contexts, fewshot, list_prompts=True)
                (ask,) = plan.asks
                request = urllib.request.Request(url + ask.url.removeprefix("/v1"), json.dumps(ask.body).encode(),
                                                 {"Content-Type": "application/json"})
                with urllib.request.urlopen(request) as reply:
                    body = reply.read()
                path = workdir / f"body_{f}_{kind}.json"
                path.write_bytes(body)
                built = simulate.echo_prompts(label, [c.tokens for c in contexts], fewshot)
                manifest.append({"feature": f, "kind": kind, "body": str(path), "built": built})
    out = workdir / "manifest.json"
    out.write_text(json.dumps(manifest))
    return out


def time_reading(manifest: Path, reps: int) -> dict[str, Any]:
    """CPU seconds per reply to decode and to read every body, over `reps` passes after a warm-up pass,
    with the tree on sys.path; and a digest of the predictions (equal digests: equal predictions)."""
    from autointerp.label import simulate
    from autointerp.llm import bodies

    # Before issue 20's lean echo path the client decoded every body with `loads`.
    decode = getattr(bodies, "loads_completions", bodies.loads)
    items = [(Path(m["body"]).read_bytes(), [(p, offs) for p, offs in m["built"]]) for m in json.loads(manifest.read_text())]
    digest = hashlib.sha256()
    decode_s = read_s = 0.0
    for rep in range(reps + 1):
        for body, built in items:
            n = sum(1 for _, offs in built if offs)
            t0 = time.process_time()
            _, lps, _ = bodies.parse_completions_json(decode(body), n)
            t1 = time.process_time()
            values = simulate.echo_values(built, lps, [])
            t2 = time.process_time()
            if rep:
                decode_s += t1 - t0
                read_s += t2 - t1
            else:
                for vs in values:
                    digest.update(" ".join(v.hex() for v in vs).encode())
    n = reps * len(items)
    return {"decode_ms_per_reply": 1000 * decode_s / n, "read_ms_per_reply": 1000 * read_s / n,
            "replies": len(items), "reps": reps, "values_sha256": digest.hexdigest()[:16],
            "decoder": getattr(decode, "__name__", str(decode))}


def _child(root: Path, manifest: Path, reps: int) -> dict[str, Any]:
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--time", str(manifest), "--root", str(root),
                          "--reps", str(reps)], check=True, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(root)})
    return json.loads(out.stdout.strip().splitlines()[-1])


def _export(ref: str, into: Path) -> str:
    """The tree at `ref` under `into` (git archive); its full hash."""
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", ref], check=True, capture_output=True,
                            text=True).stdout.strip()
    data = subprocess.run(["git", "-C", str(ROOT), "archive", commit], check=True, capture_output=True).stdout
    archive = into.with_suffix(".tar")
    archive.write_bytes(data)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return commit


def _rounds(tmp: Path, args: argparse.Namespace) -> tuple[dict[str, list[dict[str, Any]]], dict[str, str]]:
    """The bodies captured under `tmp`, then each version timed on them, alternated `args.rounds` times."""
    manifest = capture(tmp, args.features)
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "autointerp"], capture_output=True,
                                text=True).stdout.strip())
    versions: dict[str, Path] = {}
    commits: dict[str, str] = {}
    if args.before:
        commits["before"] = _export(args.before, tmp / "before")
        versions["before"] = tmp / "before"
    versions["after"] = ROOT
    commits["after"] = head + (" (with uncommitted changes)" if dirty else "")
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in versions}
    for r in range(args.rounds):
        for name, root in versions.items():
            got = _child(root, manifest, args.reps)
            runs[name].append(got)
            total = got["decode_ms_per_reply"] + got["read_ms_per_reply"]
            print(f"round {r + 1} {name:6s} decode {got['decode_ms_per_reply']:6.2f} + read "
                  f"{got['read_ms_per_reply']:6.2f} = {total:6.2f} ms per reply, "
                  f"{total * REPLIES_PER_FEATURE:6.2f} ms per feature   values {got['values_sha256']}", flush=True)
    return runs, commits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", default=None, help="a git ref whose reader is timed beside the working tree's")
    ap.add_argument("--features", type=int, default=8, help="features whose replies are captured")
    ap.add_argument("--rounds", type=int, default=5, help="alternations of the versions")
    ap.add_argument("--reps", type=int, default=5, help="passes over the bodies per round")
    ap.add_argument("--out", default="bench/results/echo_read.json")
    ap.add_argument("--time", type=Path, default=None, help=argparse.SUPPRESS)  # a child: time the reading
    ap.add_argument("--root", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.time is not None:
        sys.path.insert(0, str(args.root))
        print(json.dumps(time_reading(args.time, args.reps)))
        return
    load = Path("/proc/loadavg").read_text().split()[:3]
    with tempfile.TemporaryDirectory() as workdir:  # the captured bodies: ~2 MB per reply
        runs, commits = _rounds(Path(workdir), args)
    results: dict[str, Any] = {"features": args.features, "replies": runs["after"][0]["replies"],
                               "replies_per_feature": REPLIES_PER_FEATURE, "goal_client_ms_per_feature": GOAL_MS,
                               "reps": args.reps, "rounds": args.rounds, "commits": commits, "cpus": os.cpu_count(),
                               "nice": os.nice(0), "clock": "time.process_time (CPU seconds of the timing process)"}
    print(f"median of {args.rounds} rounds, CPU ms per feature ({REPLIES_PER_FEATURE:.2f} replies; the goal allows "
          f"{GOAL_MS:.0f} ms for the client's whole work per feature):")
    for name, got in runs.items():
        med = {k: statistics.median(g[k] for g in got) for k in ("decode_ms_per_reply", "read_ms_per_reply")}
        per_feature = {k.replace("reply", "feature"): v * REPLIES_PER_FEATURE for k, v in med.items()}
        total = sum(per_feature.values())
        results[name] = {**med, **per_feature, "total_ms_per_feature": total, "decoder": got[0]["decoder"],
                         "values_sha256": sorted({g["values_sha256"] for g in got}), "rounds_detail": got}
        print(f"  {name:6s} decode {per_feature['decode_ms_per_feature']:6.2f} + read "
              f"{per_feature['read_ms_per_feature']:6.2f} = {total:6.2f} ms   ({got[0]['decoder']})")
    if "before" in results:
        results["same_predictions"] = results["before"]["values_sha256"] == results["after"]["values_sha256"]
        print(f"  same predictions: {results['same_predictions']}")
    results["load_before_after"] = [load, Path("/proc/loadavg").read_text().split()[:3]]
    print(f"load average before {' '.join(load)}, after {' '.join(results['load_before_after'][1])}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
