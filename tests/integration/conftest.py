"""What the report and browser tests share: a database whose LLM label is hostile markup, built once."""

from __future__ import annotations

from pathlib import Path

import pytest

from autointerp.behaviour.stage import behaviour_stage
from autointerp.collect.stage import collect_stage
from autointerp.config import BehaviourConfig, CollectConfig
from tests.helpers import TINY_COLLECT, copy_db, run_label
from tests.llm_server import LoopbackLLM, Reply
from tests.unit.test_labelling import LABEL, good_script

# An explainer's label is text, never markup: every page must show it escaped, not run it.
HOSTILE_LABEL = 'digits <script>alert("x")</script> and numbers'


def hostile_script(path: str, request: dict) -> Reply:
    reply = good_script(path, request)
    return Reply(content=HOSTILE_LABEL) if reply.content == LABEL else reply


@pytest.fixture(scope="session")
def hostile_db(tmp_path_factory, tiny_model, tiny_model_dir, corpus_file, collected_db) -> Path:
    """Dictionary 1 (trained) and 2 (its random-init control), features 0-11 labelled with the hostile label
    and nulls, behaviour scores on both. Tests that write take a copy (`copy_db`)."""
    from autointerp.models import random_init_copy

    db = copy_db(collected_db, tmp_path_factory.mktemp("hostile") / "h.duckdb")
    control = random_init_copy(tiny_model, 0)
    collect_stage(db, CollectConfig(model=str(tiny_model_dir), dataset=str(corpus_file), random_init=True,
                                    **TINY_COLLECT), model=control)
    with LoopbackLLM(hostile_script) as llm:
        for did in (1, 2):
            run_label(db, llm.base_url, list(range(12)), dictionary_id=did, n_boot=100, null_samples=6)
    behaviour_stage(db, 1, BehaviourConfig(n_boot=100), model=tiny_model)
    behaviour_stage(db, 2, BehaviourConfig(n_boot=100), model=control)
    return db
