"""The explain format and the simulator mode, compared on the same features with the local LLM.

SmolLM2-135M layer-6 neurons, the first N that fire; SmolLM2-135M-Instruct (the embedded default: the
llama.cpp server for chat, in-process logits for echo) explains and simulates.

1. Explain format: each feature is labelled twice, from the same contexts, with the full excerpt format
   (every nonzero token marked and listed) and the compact one (a window around the peak, runs >= 0.3 of
   the excerpt's max marked, the 4 strongest listed); both labels are simulated with the echo simulator
   on the same scored holdout contexts. Reported: correlation_top_random per format, the paired
   difference compact - full (mean, bootstrap 95% CI over features), the constant label's score beside
   them (the zero), and the explain prompt tokens of each format.
2. Simulator mode: the compact label simulated with `--simulator-mode chat` (JSON activations, one
   request per context, expected values from top_logprobs where given) on the same contexts as echo
   (the first --chat-contexts scored contexts of the first --chat-features features: chat generates a
   number per token through llama.cpp's server, minutes per feature on a CPU).
   Reported: the correlation between chat's and echo's per-token predictions (pooled over the contexts
   both simulated), chat's failures, and the paired difference chat - echo of correlation_top_random
   (mean, CI) over features, each on the contexts both simulated.

    python bench/llm_local.py --features 6 --chat-features 2 --chat-contexts 4 --tokens 30000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from autointerp import store
from autointerp.collect.stage import collect_stage  # noqa: E402
from autointerp.config import CollectConfig, LabelConfig, LLMConfig  # noqa: E402
from autointerp.label import explain, scoring, simulate  # noqa: E402
from autointerp.label.stage import LLMSession, open_llm  # noqa: E402
from autointerp.label.units import scoring_contexts  # noqa: E402
from autointerp.llm.client import LLMFailure  # noqa: E402
from autointerp.records import Context  # noqa: E402

CONSTANT = "nothing in particular"


def corr(contexts: list[Context], predicted: list[list[float]]) -> float:
    """correlation_top_random: Pearson over all tokens of the scored contexts, pooled."""
    return scoring.pooled_correlation([(np.asarray(c.acts), np.asarray(p)) for c, p in zip(contexts, predicted,
                                                                                         strict=True)])


def summary(values: list[float]) -> dict[str, object]:
    v = np.asarray([x for x in values if np.isfinite(x)], np.float64)
    lo, hi = scoring.mean_ci(v)
    return {"mean": float(v.mean()) if len(v) else float("nan"), "ci": [lo, hi], "n": len(v)}


async def one_feature(session: LLMSession, fc, cfg: LabelConfig, counter, chat_contexts: int) -> dict[str, object]:
    client, emodel, smodel = session.client, session.explainer_model, session.simulator_model
    contexts = [c for c, purpose in scoring_contexts(fc, cfg) if purpose == "scoring"]
    row: dict[str, object] = {"feature": fc.feature}
    t0 = time.perf_counter()
    for fmt in ("full", "compact"):
        messages = explain.explain_messages(fc, cfg.n_explain_top, cfg.n_explain_quantile, fmt)
        row[f"prompt_tokens_{fmt}"] = sum(len(counter(m["content"]).input_ids) + 4 for m in messages or [])
        e, _ = await explain.explain_with_llm(fc, client, emodel, n_top=cfg.n_explain_top,
                                              n_quantile=cfg.n_explain_quantile, fmt=fmt)
        row[f"label_{fmt}"] = e.label
        if e.label is None:
            row[f"corr_{fmt}"] = float("nan")
            continue
        pred, _ = await simulate.simulate_echo(client, smodel, e.label, contexts, parallel=1)
        row[f"corr_{fmt}"] = corr(contexts, pred)
        if fmt == "compact":
            echo = pred
    pred, _ = await simulate.simulate_echo(client, smodel, CONSTANT, contexts, parallel=1)
    row["corr_constant"] = corr(contexts, pred)
    row["format_s"] = time.perf_counter() - t0
    if row["label_compact"] is None or not chat_contexts:
        return row
    # Chat, one context at a time, so one unusable reply drops that context, not the feature.
    chat: list[list[float] | None] = []
    t0 = time.perf_counter()
    contexts, echo = contexts[:chat_contexts], echo[:chat_contexts]
    for c in contexts:
        try:
            p, _ = await simulate.simulate_chat(client, smodel, str(row["label_compact"]), [c])
            chat.append(p[0])
        except LLMFailure as exc:
            chat.append(None)
            row.setdefault("chat_errors", []).append(exc.code)  # type: ignore[union-attr]
    row["chat_s"] = time.perf_counter() - t0
    both = [k for k, p in enumerate(chat) if p is not None]
    row["chat_contexts"] = len(both)
    row["contexts"] = len(contexts)
    if both:
        sub = [contexts[k] for k in both]
        row["corr_chat"] = corr(sub, [chat[k] for k in both])  # type: ignore[misc]
        row["corr_echo_same_contexts"] = corr(sub, [echo[k] for k in both])
        row["chat_tokens"] = [chat[k] for k in both]
        row["echo_tokens"] = [echo[k] for k in both]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--features", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=30_000)
    ap.add_argument("--chat-features", type=int, default=2, help="features also simulated in chat mode")
    ap.add_argument("--chat-contexts", type=int, default=4, help="scored contexts per feature simulated in chat mode")
    ap.add_argument("--db", default=None, help="the database: reused if it exists (its dictionary 1), else collected "
                                               "into (default: a new temporary one)")
    ap.add_argument("--out", default="bench/results/llm_local.json")
    args = ap.parse_args()
    from transformers import AutoTokenizer

    from autointerp.models import offline_hf_dir

    counter = AutoTokenizer.from_pretrained(offline_hf_dir())
    t0 = time.time()
    db = Path(args.db) if args.db else Path(tempfile.mkdtemp()) / "local.duckdb"
    did = 1 if db.exists() else collect_stage(db, CollectConfig(n_tokens=args.tokens)).dictionary_id
    cfg = LabelConfig()
    with store.open_store(db, read_only=True) as con:
        features = store.select_features(con, did, "max_act > 0")[: args.features]
        records = store.read_feature_contexts(con, did, features)
    rows = []

    async def all_features(session: LLMSession) -> None:  # one event loop: the client is bound to it
        for i, f in enumerate(features):
            row = await one_feature(session, records[f], cfg, counter, args.chat_contexts * (i < args.chat_features))
            rows.append(row)
            print({k: v for k, v in row.items() if not k.endswith("_tokens")}, flush=True)

    with open_llm(LLMConfig(concurrency=1)) as session:
        asyncio.run(all_features(session))
    full = np.array([r["corr_full"] for r in rows], np.float64)
    compact = np.array([r["corr_compact"] for r in rows], np.float64)
    constant = np.array([r["corr_constant"] for r in rows], np.float64)
    paired = [r for r in rows if "corr_chat" in r]
    chat_tok = np.concatenate([np.concatenate(r["chat_tokens"]) for r in paired]) if paired else np.array([])
    echo_tok = np.concatenate([np.concatenate(r["echo_tokens"]) for r in paired]) if paired else np.array([])
    n_ctx = sum(int(r.get("contexts", 0)) for r in rows)  # asked in chat mode
    out = {
        "features": len(rows), "tokens": args.tokens, "wall_s": time.time() - t0,
        "scored_contexts_per_feature": cfg.n_sim_top // 2 + cfg.n_sim_random // 2,
        "explain_format": {
            "prompt_tokens_per_feature": {"full": float(np.mean([r["prompt_tokens_full"] for r in rows])),
                                          "compact": float(np.mean([r["prompt_tokens_compact"] for r in rows]))},
            "correlation_top_random": {"full": summary(list(full)), "compact": summary(list(compact)),
                                       "constant label": summary(list(constant))},
            "compact_minus_full": summary(list(compact - full)),
            "full_minus_constant": summary(list(full - constant)),
            "compact_minus_constant": summary(list(compact - constant)),
        },
        "simulator_mode": {
            "features_with_chat": len(paired),
            "chat_contexts_usable": sum(int(r["chat_contexts"]) for r in paired),
            "chat_contexts_asked": n_ctx,
            "chat_error_codes": [c for r in rows for c in r.get("chat_errors", [])],
            "chat_s_per_context": (sum(float(r["chat_s"]) for r in rows if "chat_s" in r) / n_ctx) if n_ctx else None,
            "token_prediction_correlation_chat_vs_echo": scoring.pearson(chat_tok, echo_tok) if len(chat_tok) else None,
            "correlation_top_random": {
                "echo": summary([float(r["corr_echo_same_contexts"]) for r in paired]),
                "chat": summary([float(r["corr_chat"]) for r in paired])},
            "chat_minus_echo": summary([float(r["corr_chat"]) - float(r["corr_echo_same_contexts"]) for r in paired]),
        },
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=str))
    print(json.dumps({k: v for k, v in out.items() if k != "rows"}, indent=1, default=str))


if __name__ == "__main__":
    main()
