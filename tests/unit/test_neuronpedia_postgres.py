"""`export --format neuronpedia-dataset` loaded into a real PostgreSQL built from Neuronpedia's own Prisma
migrations, with the SQL of Neuronpedia's admin import route run in the route's order (tests/neuronpedia_pg.py;
the migrations and the importer are copied under tests/neuronpedia/). Needs Debian's `postgresql` and psycopg;
a cluster starts and stops in a temporary directory (about 5 s)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from autointerp.cli import main
from tests import neuronpedia_pg as pg
from tests.unit.test_export import N_LABELLED, read_dataset

psycopg = pytest.importorskip("psycopg")
pytestmark = pytest.mark.skipif(pg.pg_bin() is None, reason="needs Debian's postgresql (scripts/setup.sh)")

MODEL, SOURCE = "tiny-llama", "0"
TABLES = ("ExplanationType", "ExplanationModelType", "Model", "SourceSet", "Source", "Neuron", "Activation",
          "Explanation")


def export(db: Path, out: Path, *args: str) -> None:
    res = CliRunner().invoke(main, ["export", "--format", "neuronpedia-dataset", "--dictionary", "1", "--np-model-id",
                                    MODEL, "--out", str(out), "--db", str(db), *args])
    assert res.exit_code == 0, res.output


def counts(con) -> dict[str, int]:
    return {t: con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in TABLES}


@pytest.fixture(scope="module")
def template():
    """A cluster holding `np_template`: Neuronpedia's schema and the seed's bot user."""
    with pg.cluster() as dsn:
        with psycopg.connect(dsn, autocommit=True) as con:
            con.execute("CREATE DATABASE np_template")
        with psycopg.connect(dsn.replace("dbname=postgres", "dbname=np_template"), autocommit=True) as con:
            assert pg.create_schema(con) == len(pg.migrations()) > 60
        yield dsn


@pytest.fixture
def database(template, request):
    """A fresh copy of the template for one test."""
    name = "t_" + request.node.name.lower()[:50]
    with psycopg.connect(template, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE np_template')
    with psycopg.connect(template.replace("dbname=postgres", f"dbname={name}"), autocommit=True) as con:
        yield con


def test_dataset_imports_with_every_row_and_no_foreign_key_failure(tmp_path, labelled, database):
    out = tmp_path / "np"
    # A name Neuronpedia does not ship and a baseline type: both must arrive as rows the labels can point to.
    export(labelled, out, "--np-include-baseline", "--np-method-name", "autointerp_oai",
           "--np-model-name", "m-explain", "--np-batch-rows", "7")
    neurons, activations = read_dataset(out, "features")[1], read_dataset(out, "activations")[1]
    explanations = read_dataset(out, "explanations")[1]
    assert len(explanations) == 2 * N_LABELLED and len(neurons) >= N_LABELLED and activations
    # any statement that broke a foreign key raises here (psycopg.errors.ForeignKeyViolation) and fails the test
    inserted = pg.import_dataset(database, out, MODEL, SOURCE)
    assert inserted == {"Neuron": len(neurons), "Activation": len(activations), "Explanation": len(explanations)}
    got = counts(database)
    print("rows per table after import:", json.dumps(got))
    assert got == {"ExplanationType": 2, "ExplanationModelType": 1, "Model": 1, "SourceSet": 1, "Source": 1,
                   "Neuron": len(neurons), "Activation": len(activations), "Explanation": len(explanations)}
    stored = dict(database.execute('SELECT id, "typeName" FROM "Explanation"').fetchall())
    assert stored == {r["id"]: r["typeName"] for r in explanations}
    assert {t for t in stored.values()} == {"autointerp_oai", "autointerp_token-lookup"}
    joined = database.execute('SELECT count(*) FROM "Explanation" e JOIN "Neuron" n USING ("modelId", layer, index) '
                              'WHERE n."sourceSetName" = %s', ("neurons",)).fetchone()[0]
    assert joined == len(explanations)

    # The same export again inserts nothing; new type names give new explanations beside the old.
    assert pg.import_dataset(database, out, MODEL, SOURCE) == {"Neuron": 0, "Activation": 0, "Explanation": 0}
    again = tmp_path / "np2"
    export(labelled, again, "--np-method-name", "autointerp_oai_v2")
    assert pg.import_dataset(database, again, MODEL, SOURCE)["Explanation"] == N_LABELLED
    assert counts(database)["ExplanationType"] == 3


def test_explanations_without_their_features_fail_the_foreign_key(tmp_path, labelled, database):
    """The check above can fail: a dataset without its features/ (and so without its activations/) breaks
    Explanation's foreign key to Neuron, as the explanations-only export did."""
    out = tmp_path / "np"
    export(labelled, out, "--np-source", "5")
    for folder in ("features", "activations"):
        shutil.rmtree(out / MODEL / "5" / folder)
    with pytest.raises(psycopg.errors.ForeignKeyViolation) as failed:
        pg.import_dataset(database, out, MODEL, "5")
    assert failed.value.diag.constraint_name == "Explanation_modelId_layer_index_fkey"
