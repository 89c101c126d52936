from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import TINY_COLLECT, make_model_dir, write_corpus


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
