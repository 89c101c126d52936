"""An overnight batch under faults: `autointerp label` against the loopback server (its own process) with
30% of requests faulted (429 + Retry-After, 500, hangs past the timeout, dropped connections, malformed
and wrong-schema bodies), kill -9'd at random moments at least 20 times, then resumed to the end.

Reports features done, failed (by code), lost (no explanation row: must be 0), duplicated (more than one
ok explanation per feature, or more than one ok simulation run of the same settings per explanation: must
be 0), requests per feature beside a fault-free run of the same features, and wall time.
Judges and null labels are off (--no-judge, --null-samples 0) and so is the baseline, to fit in minutes.

    python bench/faults.py [--features 1000] [--kills 20]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import llm_server  # noqa: E402
from tests.llm_server import Reply  # noqa: E402

TIMEOUT_S = 1.0


def faulty_script(rate: float, seed: int) -> llm_server.Script:
    rng = random.Random(seed)
    lock = threading.Lock()
    good = llm_server._bench_script(0.0)
    faults = [lambda: llm_server.too_many(0.1), llm_server.server_error, lambda: llm_server.hang(TIMEOUT_S + 0.5),
              llm_server.dropped, llm_server.malformed, llm_server.wrong_schema]

    def script(path: str, request: dict) -> Reply:
        with lock:
            r = rng.random()
            fault = rng.choice(faults)
        return fault() if r < rate else good(path, request)

    return script


def serve(rate: float, seed: int, count_file: str) -> None:
    server = llm_server.LoopbackLLM(faulty_script(rate, seed))

    def stop(*_: object) -> None:
        Path(count_file).write_text(str(len(server.requests)))
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    with server:
        print(server.base_url, flush=True)
        threading.Event().wait()


@contextlib.contextmanager
def server_process(rate: float, seed: int, count_file: Path):
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(rate), str(seed), str(count_file)],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().strip()
    finally:
        proc.terminate()
        proc.wait()


def label_cmd(db: Path, url: str, n: int) -> list[str]:
    return [sys.executable, "-m", "autointerp", "label", "--db", str(db), "--base-url", url, "--features", f"0:{n}",
            "--explainer-model", "e", "--simulator-model", "s", "--concurrency", "32", "--timeout", str(TIMEOUT_S),
            "--max-wait-s", "0.2", "--no-judge", "--null-samples", "0", "--no-baseline", "--n-boot", "100"]


def env() -> dict[str, str]:
    return {**os.environ, "OPENAI_API_KEY": "sk-bench", "PYTHONPATH": str(ROOT)}


def figures(db: Path, n: int) -> dict[str, object]:
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    one = lambda sql: con.execute(sql, [n]).fetchone()[0]  # noqa: E731
    out = {
        "done": one("SELECT count(DISTINCT e.feature) FROM explanations e JOIN score_runs r USING (explanation_id) "
                    "WHERE e.status = 'ok' AND r.status = 'ok' AND e.feature < ?"),
        "failed_explanations_by_code": dict(con.execute(
            "SELECT code, count(*) FROM explanations WHERE status = 'failed' AND feature < ? GROUP BY code",
            [n]).fetchall()),
        "failed_score_runs_by_code": dict(con.execute(
            "SELECT code, count(*) FROM score_runs WHERE status = 'failed' AND feature < ? GROUP BY code",
            [n]).fetchall()),
        "lost": one("SELECT count(*) FROM features f WHERE f.feature < ? AND NOT EXISTS "
                    "(SELECT 1 FROM explanations e WHERE e.feature = f.feature)"),
        "duplicated_explanations": one(
            "SELECT count(*) FROM (SELECT feature FROM explanations WHERE status = 'ok' AND feature < ? "
            "GROUP BY feature, explainer, prompt_hash HAVING count(*) > 1)"),
        "duplicated_score_runs": one(
            "SELECT count(*) FROM (SELECT explanation_id FROM score_runs WHERE status = 'ok' AND feature < ? "
            "GROUP BY explanation_id, simulator, stage, settings_hash HAVING count(*) > 1)"),
        "llm_calls": one("SELECT count(*) FROM llm_calls WHERE feature < ?"),
    }
    con.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--features", type=int, default=1000)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--fault-rate", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/results/faults.json")
    args = ap.parse_args()

    from autointerp.collect.stage import collect_stage
    from autointerp.config import CollectConfig
    from autointerp.models import load_model
    from tests.helpers import TINY_COLLECT, make_model_dir, write_corpus

    tmp = Path(tempfile.mkdtemp())
    model_dir = make_model_dir(tmp / "model", n_embd=512)  # 1,024 MLP neurons
    base = tmp / "base.duckdb"
    collect_stage(base, CollectConfig(model=str(model_dir), dataset=str(write_corpus(tmp / "c.txt")), **TINY_COLLECT),
                  model=load_model(str(model_dir)))
    n = args.features
    rng = random.Random(args.seed)

    # Fault-free reference.
    clean = tmp / "clean.duckdb"
    clean.write_bytes(base.read_bytes())
    with server_process(0.0, args.seed, tmp / "clean.count") as url:
        t = time.perf_counter()
        ref = subprocess.run(label_cmd(clean, url, n), env=env(), capture_output=True, text=True, cwd=ROOT)
        if ref.returncode != 0:
            raise SystemExit(f"fault-free label failed ({ref.returncode}): {ref.stderr[-2000:]}")
        clean_wall = time.perf_counter() - t
    clean_requests = int((tmp / "clean.count").read_text())

    db = tmp / "faulty.duckdb"
    db.write_bytes(base.read_bytes())
    kills = runs = 0
    start = time.perf_counter()
    with server_process(args.fault_rate, args.seed, tmp / "faulty.count") as url:
        while True:
            runs += 1
            proc = subprocess.Popen(label_cmd(db, url, n), env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, cwd=ROOT)
            if kills < args.kills:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(rng.uniform(2.0, 6.0))
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    kills += 1
                    continue
            stdout, stderr = proc.communicate()
            if proc.returncode != 0:
                raise SystemExit(f"label failed ({proc.returncode}): {stderr[-2000:]}")
            break  # finished (killed fewer times than asked only if the batch ends first)
    wall = time.perf_counter() - start
    faulty_requests = int((tmp / "faulty.count").read_text())
    results = {"features": n, "fault_rate": args.fault_rate, "kills": kills, "label_processes": runs,
               **figures(db, n), "requests_per_feature": faulty_requests / n,
               "requests_per_feature_fault_free": clean_requests / n, "wall_s": wall, "wall_s_fault_free": clean_wall,
               "fault_free": figures(clean, n),
               "settings": "--concurrency 32 --timeout 1 --max-wait-s 0.2 --no-judge --null-samples 0 --no-baseline"}
    print(json.dumps(results, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--serve":
        serve(float(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    else:
        main()
