"""Browser bench: `autointerp serve` over a synthetic 131,072-feature dictionary (bench/serve_data.py), timed
through real HTTP on 127.0.0.1. Goals: the list page's first response and a search response under 1 s each,
a feature page under 300 ms. Prints each figure beside its goal with the load it ran under, and writes
bench/results/serve.json.

    python bench/serve.py [--features 131072] [--db /tmp/serve-bench.duckdb]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve_data  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "serve.json"
GOALS = {"list_first": 1.0, "list": 1.0, "search_first": 1.0, "search": 1.0, "search_score_sorted": 1.0,
         "feature_first": 0.3, "feature": 0.3}


def _get(url: str) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as resp:
        body = resp.read()
        assert resp.status == 200 and body, url
    return time.perf_counter() - started


def _serve(db: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.Popen([sys.executable, "-m", "autointerp", "serve", "--db", str(db), "--port", str(port)],
                            env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # ready when the port accepts; no request warms anything first
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server did not start")


def measure(url: str, n_features: int, repeats: int) -> dict[str, float]:
    t: dict[str, float] = {"list_first": _get(url + "/?dictionary=1")}
    t["search_first"] = _get(url + "/?dictionary=1&q=dates")
    t["feature_first"] = _get(url + f"/feature/1/{n_features // 2}")
    t["list"] = statistics.median(_get(url + f"/?dictionary=1&page={p}") for p in range(2, 2 + repeats))
    words = ["rivers", "code", "the word", "French", "legal"]
    t["search"] = statistics.median(_get(url + f"/?dictionary=1&q={words[i % len(words)]}".replace(" ", "+"))
                                    for i in range(repeats))
    t["search_score_sorted"] = statistics.median(
        _get(url + f"/?dictionary=1&q={words[i % len(words)]}&sort=detection&desc=1&min=0.5".replace(" ", "+"))
        for i in range(repeats))
    step = n_features // (repeats + 1)
    t["feature"] = statistics.median(_get(url + f"/feature/1/{(i + 1) * step}") for i in range(repeats))
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", type=int, default=131072)
    ap.add_argument("--db", type=Path, default=Path("/tmp/serve-bench.duckdb"))
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    if args.db.exists():
        args.db.unlink()
    started = time.perf_counter()
    serve_data.build(args.db, args.features)
    build_s = time.perf_counter() - started
    load_before = os.getloadavg()
    proc, url = _serve(args.db)
    try:
        times = measure(url, args.features, args.repeats)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    load_after = os.getloadavg()
    for name, value in times.items():
        verdict = "ok" if value < GOALS[name] else "OVER GOAL"
        print(f"{name:20s} {value * 1000:7.0f} ms   goal < {GOALS[name] * 1000:.0f} ms   {verdict}")
    print(f"load average (1, 5, 15 min) before {load_before}, after {load_after}; {os.cpu_count()} CPUs")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "features": args.features, "db_mib": round(args.db.stat().st_size / 2**20, 1), "build_s": round(build_s, 1),
        "repeats": args.repeats, "seconds": {k: round(v, 4) for k, v in times.items()}, "goals_s": GOALS,
        "within_goal": {k: v < GOALS[k] for k, v in times.items()}, "loadavg_before": load_before,
        "loadavg_after": load_after, "cpus": os.cpu_count()}, indent=1) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
