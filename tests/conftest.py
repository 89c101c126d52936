from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import TINY_COLLECT, make_model_dir, write_corpus


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow files first, then the integration ones (scripts/test.sh runs two workers that take whole files
    in this order): a file of minutes that starts last runs alone at the end."""
    items.sort(key=lambda it: 0 if it.get_closest_marker("slow") else 1 if it.get_closest_marker("integration") else 2)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path):
    from autointerp.models import load_model

    return load_model(str(tiny_model_dir))


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.txt")


@pytest.fixture(scope="session")
def collected_db(tmp_path_factory: pytest.TempPathFactory, tiny_model, tiny_model_dir: Path, corpus_file: Path) -> Path:
    """Dictionary 1: the tiny model's layer-0 MLP neurons over the test corpus (copy it before writing)."""
    from autointerp.collect.stage import collect_stage
    from autointerp.config import CollectConfig

    db = tmp_path_factory.mktemp("collected") / "base.duckdb"
    collect_stage(db, CollectConfig(model=str(tiny_model_dir), dataset=str(corpus_file), **TINY_COLLECT),
                  model=tiny_model)
    return db


@pytest.fixture(scope="session")
def labelled(tmp_path_factory: pytest.TempPathFactory, tiny_model, tiny_model_dir: Path, corpus_file: Path) -> Path:
    """For the export tests (read-only: copy it before writing). Dictionary 1: MLP neurons of layer 0
    (blocks.0.mlp.hook_post); dictionary 2: an SAE on layer 1's residual stream. Features 0-4 of both explained
    by the scripted LLM (label tests.unit.test_labelling.LABEL) and the token-lookup baseline, not scored."""
    from autointerp.collect.stage import collect_stage
    from autointerp.config import CollectConfig
    from tests.helpers import make_sae_dir, run_label
    from tests.llm_server import LoopbackLLM
    from tests.unit.test_labelling import good_script

    tmp = tmp_path_factory.mktemp("export")
    db = tmp / "x.duckdb"
    base = dict(model=str(tiny_model_dir), dataset=str(corpus_file), n_tokens=800, ctx_len=16, top_k=4,
                n_quantiles=2, per_quantile=2, n_random=4)
    collect_stage(db, CollectConfig(hook="blocks.0.mlp.hook_post", **base), model=tiny_model)
    sae = make_sae_dir(tmp / "sae", "blocks.1.hook_resid_post", d_in=tiny_model.cfg.d_model, d_sae=40)
    collect_stage(db, CollectConfig(hook=None, sae=str(sae), **base), model=tiny_model)
    with LoopbackLLM(good_script) as llm:
        for did in (1, 2):
            run_label(db, llm.base_url, list(range(5)), dictionary_id=did, score=False, n_boot=50)
    return db
