"""The HTML report opened in headless Chromium (Debian's chromium + chromium-driver): loads with no console
errors, plots and tables present; a screenshot is saved. Export formats read back."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.helpers import copy_db
from tests.integration.conftest import HOSTILE_LABEL

pytestmark = pytest.mark.integration
SCREENSHOTS = Path(__file__).resolve().parent.parent.parent / "bench" / "results"


@pytest.fixture(scope="module")
def labelled_db(tmp_path_factory, hostile_db) -> Path:
    return copy_db(hostile_db, tmp_path_factory.mktemp("report") / "r.duckdb")


def cli(db: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "autointerp", *args, "--db", str(db)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")),
                    reason="needs Debian's chromium and chromium-driver (scripts/setup.sh installs them)")
def test_report_opens_in_headless_chromium(tmp_path, labelled_db):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    out = tmp_path / "report.html"
    cli(labelled_db, "report", "--out", str(out))
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1300,2400"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    try:
        driver.get(out.as_uri())
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
        assert driver.title == "autointerp report"
        images = driver.find_elements("css selector", "img.plot")
        assert len(images) >= 3  # histograms, correlation against behaviour, baseline against LLM
        assert all(driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", i)
                   for i in images)
        assert driver.find_elements("css selector", "table.summary tbody tr")
        assert driver.find_elements("css selector", "table.cost tbody tr")
        assert driver.find_elements("css selector", "div.ctx span")
        assert "dictionary 2 (random init: init, seed 0)" in driver.page_source
        # Null labels sit beside the real ones in the summary.
        kinds = {td.text for td in driver.find_elements("css selector", "table.summary tbody td")}
        assert {"LLM labels", "null: shuffled labels of m-explain", "null: constant label", "baseline"} <= kinds
        # The label with a <script> in it is shown as text: no script element, the literal text on the page.
        assert driver.find_elements("css selector", "script") == []
        shown = [e.text for e in driver.find_elements("css selector", "h4 span.label")]
        assert shown and all(t == HOSTILE_LABEL for t in shown)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(SCREENSHOTS / "report.png"))
    finally:
        driver.quit()


def test_report_escapes_stored_text(labelled_db):
    from autointerp.analysis import report
    from autointerp.store import open_store

    with open_store(labelled_db, read_only=True) as con:
        page = report.build(con)
    assert "<script" not in page
    assert 'digits &lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; and numbers' in page
    assert page.count('src="data:image/png;base64,') >= 3  # the plots, marked safe, are not escaped


def test_exports_read_back(tmp_path, labelled_db):
    pq_path, jl_path, np_path = tmp_path / "l.parquet", tmp_path / "l.jsonl", tmp_path / "np"
    cli(labelled_db, "export", "--format", "parquet", "--out", str(pq_path), "--dictionary", "1")
    cli(labelled_db, "export", "--format", "jsonl", "--out", str(jl_path), "--dictionary", "1")
    cli(labelled_db, "export", "--format", "neuronpedia-dataset", "--out", str(np_path), "--dictionary", "1",
        "--np-model-id", "tiny")
    table = pq.read_table(pq_path).to_pylist()
    lines = [json.loads(x) for x in jl_path.read_text().splitlines()]
    assert len(table) == len(lines) == 36
    # 12 features x (LLM + baseline), and the 6 shuffled + 6 constant null labels, marked as such.
    assert sum(r["null_kind"] is None for r in table) == 24
    assert sorted(r["null_kind"] for r in table if r["null_kind"]) == ["constant"] * 6 + ["shuffled"] * 6
    assert {"correlation_top_random", "behaviour", "detection", "label"} <= set(table[0])
    (batch,) = np_path.glob("tiny/0/explanations/batch-*.jsonl.gz")  # tests/unit/test_export.py checks the rows
    records = [json.loads(x) for x in gzip.decompress(batch.read_bytes()).splitlines()]
    assert len(records) == 12 and {r["layer"] for r in records} == {"0"}  # LLM labels only, bare MLP layer
