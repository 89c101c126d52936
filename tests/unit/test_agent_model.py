"""The agent on a model's features (the tiny model's layer-0 MLP neurons): probe texts read at the hook give
the activations collection stored for the same tokens, long probes are cut at ctx_len, the output-side
evidence is W_out·W_U, stored once per dictionary and shown to the explainer, and the hard negatives follow
their definition on the neurons."""

from __future__ import annotations

import asyncio

import numpy as np
import torch

from autointerp import store
from autointerp.label import probes
from autointerp.models import FeatureReader
from autointerp.models.output import output_tokens
from tests.helpers import HOOK, copy_db, query, run_label
from tests.llm_server import LoopbackLLM, Reply, echo_logprobs
from tests.unit.test_labelling import LABEL, digit_rule, judge_reply

FEATURE = 3


def _subject(db) -> tuple[probes.Loaded, probes.Subject]:
    async def both() -> tuple[probes.Loaded, probes.Subject]:
        subjects = probes.Subjects(db)
        return await subjects.loaded(1), await subjects.get(1, FEATURE)

    return asyncio.run(both())


def test_probe_activations_are_the_collected_ones_and_long_probes_are_cut(collected_db):
    loaded, subject = _subject(collected_db)
    with store.open_store(collected_db, read_only=True) as con:
        fc = store.read_feature_contexts(con, 1, [FEATURE])[FEATURE]
    compared = 0
    for c in fc.contexts:
        text = "".join(c.tokens)
        ids = loaded.tokenizer(text, add_special_tokens=False)["input_ids"]
        if [loaded.tokenizer.decode([i]) for i in ids] != list(c.tokens):
            continue  # a context whose text tokenizes otherwise is not the same input
        (r,) = subject.run([probes.Probe(text, True)])
        assert r["tokens"] == list(c.tokens) and r["cut"] == 0
        assert torch.allclose(torch.tensor(r["acts"]), torch.tensor(c.acts), atol=1e-5), (r["acts"], c.acts)
        compared += 1
    assert compared >= 5
    (long,) = subject.run([probes.Probe(" ".join(["The cat sat on the mat."] * 20), False)])
    assert len(long["tokens"]) == loaded.dictionary.ctx_len and long["cut"] > 0


def test_output_tokens_are_w_out_times_w_u(collected_db):
    loaded, _ = _subject(collected_db)
    found = output_tokens(loaded.model, HOOK, None, [FEATURE], k=5)
    logits = (loaded.model.blocks[0].mlp.W_out[FEATURE] @ loaded.model.W_U).detach()
    assert [t for t, _ in found[FEATURE][0]] == logits.topk(5).indices.tolist()
    assert [t for t, _ in found[FEATURE][1]] == (-logits).topk(5).indices.tolist()
    assert found[FEATURE][1][0][1] == float(logits.min())


def script(path: str, request: dict) -> Reply:
    if path.endswith("/chat/completions"):
        judged = judge_reply(request)
        if judged is not None:
            return judged
        user = request["messages"][-1]["content"]
        if "Test it on new text" in user:
            return Reply(content="+ 12 and 345 and 6789\n- The cat sat on the mat.\nnot a probe line")
        return Reply(content="numbers" if "what the feature really did" in user else LABEL)
    return Reply(content="", logprobs=echo_logprobs(request["prompt"], digit_rule))


def test_the_agent_runs_on_model_features_with_output_evidence(tmp_path, collected_db):
    db = copy_db(collected_db, tmp_path / "n.duckdb")
    with LoopbackLLM(script) as llm:
        run_label(db, llm.base_url, [FEATURE, FEATURE + 1], score=False, strategy="agent", k=2, agent_rounds=1,
                  agent_probes=2, n_sim_fewshot=0, judge=False, baseline=False)
        explain_prompts = [r["messages"][1]["content"] for p, r in llm.requests if p.endswith("/chat/completions")]
    n_features = query(db, "SELECT n_features FROM dictionaries WHERE dictionary_id = 1")[0][0]
    assert query(db, "SELECT count(DISTINCT feature) FROM output_tokens WHERE dictionary_id = 1")[0][0] == n_features
    with store.open_store(db, read_only=True) as con:
        top = store.output_tokens(con, 1, FEATURE)["promotes"][0][0]
        steps = store.agent_steps(con, 1, FEATURE)
    assert any("most raises" in p and top.strip() in p for p in explain_prompts)
    assert [s.kind for s in steps] == ["candidate", "candidate", "probe", "revision", "choice"]
    probe = steps[2]
    assert len(probe.activations) == 2 and probe.text.splitlines()[0] == "+ 12 and 345 and 6789"
    _, subject = _subject(db)
    assert probe.activations == subject.run([probes.Probe("12 and 345 and 6789", True),
                                             probes.Probe("The cat sat on the mat.", False)])
    label = query(db, "SELECT label FROM explanations WHERE explainer = 'm-explain' AND feature = ?", [FEATURE])
    assert label[0][0] == steps[-1].text
    _check_hard_negatives(db)


def _check_hard_negatives(db) -> None:
    """The neuron path: neighbours are the nearest by activation correlation over every explain-split token,
    computed here independently (numpy over the reader's activations), and each hard negative is a sequence
    where its neighbour reaches a third of its max and the feature stays at level 0."""
    loaded, _ = _subject(db)
    d = loaded.dictionary
    reader = FeatureReader(loaded.model, d.hook, start=0, stop=d.n_features)
    bos = [loaded.tokenizer.bos_token_id] if d.config.get("prepend_bos", True) else []
    seqs = {s: ids for s, ids in query(db, "SELECT seq, token_ids FROM sequences WHERE split = 'explain'")}
    acts = {s: reader(torch.tensor([bos + list(ids)]))[0, len(bos):].double().numpy() for s, ids in seqs.items()}
    corr = np.corrcoef(np.concatenate(list(acts.values())).T)
    assert query(db, "SELECT measure FROM neighbour_runs") == [("activation_correlation",)]
    for f, n in query(db, "SELECT feature, neighbour FROM feature_neighbours WHERE rank = 0"):
        others = np.delete(np.arange(d.n_features), f)
        assert np.isclose(corr[f, n], corr[f, others].max(), atol=1e-6), (f, n)
    max_act = dict(query(db, "SELECT feature, max_act FROM features"))
    rows = query(db, "SELECT feature, seq, neighbour FROM hard_negatives")
    assert rows  # dense neurons still have contexts where a correlated neighbour fires and they do not
    for f, s, n in rows:
        a = acts[s]
        assert round(9 * a[:, f].max() / max_act[f]) == 0 and a[:, n].max() >= max_act[n] / 3 - 1e-6, (f, s, n)
