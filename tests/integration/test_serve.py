"""The feature browser (`autointerp serve`) as a user meets it: the real CLI serving real HTTP on 127.0.0.1,
driven by headless Chromium (Debian's chromium + chromium-driver); a label run writing the same file while
the browser serves; the browser's margins and p-values against the `labels` view's own."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import copy_db, query, run_label
from tests.integration.conftest import HOSTILE_LABEL, hostile_script
from tests.llm_server import LoopbackLLM

pytestmark = pytest.mark.integration
IMAGES = Path(__file__).resolve().parent.parent.parent / "docs" / "img"
needs_chromium = pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")),
                                    reason="needs Debian's chromium and chromium-driver (scripts/setup.sh installs them)")


@pytest.fixture(scope="module")
def served_db(tmp_path_factory, hostile_db) -> Path:
    """Dictionary 1 (trained) and 2 (its random-init control), features 0-11 labelled (the LLM label has a
    <script> in it) with nulls and behaviour scores; a copy, since a test here writes to it."""
    return copy_db(hostile_db, tmp_path_factory.mktemp("serve") / "s.duckdb")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def server(served_db) -> Iterator[str]:
    """`autointerp serve` in its own process; yields its base URL."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "autointerp", "serve", "--db", str(served_db), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url + "/sql", timeout=5).read()
                break
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _driver(tmp_path: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,900"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)


def _search_the_list(driver, wait, server: str, db: Path) -> None:
    from selenium.webdriver.common.by import By

    driver.get(server + "/?dictionary=1&explainer=baseline:token-lookup")
    total = driver.find_element(By.ID, "total").text
    assert total.startswith(f"{query(db, 'SELECT count(*) FROM features WHERE dictionary_id = 1')[0][0]} ")
    driver.get(server + "/?dictionary=1")
    # Live search: typing a word of the LLM label re-fetches the table; the <script> in it is text.
    box = driver.find_element(By.ID, "search")
    box.send_keys("digits")
    wait.until(lambda d: d.find_element(By.ID, "total").text.startswith("12 features with a m-explain label"))
    labels = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#features td.label")]
    assert labels == [HOSTILE_LABEL] * 12
    assert driver.find_elements(By.CSS_SELECTOR, "#features script") == []
    assert len(driver.find_elements(By.TAG_NAME, "script")) == 1  # the page's own live-search script only
    IMAGES.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(IMAGES / "browser-list.png"))
    box.clear()
    box.send_keys("no label says this")
    wait.until(lambda d: d.find_element(By.ID, "total").text.startswith("0 features"))


def _read_a_feature(driver, wait, server: str, db: Path) -> None:
    from selenium.webdriver.common.by import By

    # A feature page: tokens highlighted by activation (the value on hover), scores with CIs and margins.
    driver.get(server + "/?dictionary=1&sort=correlation_top_random&desc=1")
    driver.find_element(By.CSS_SELECTOR, "#features tbody tr td a").click()
    wait.until(lambda d: d.find_elements(By.ID, "histogram"))
    shaded = driver.find_elements(By.CSS_SELECTOR, ".ctx span.tok[style*='background']")
    assert shaded and all(float(s.get_attribute("title")) > 0 for s in shaded)
    assert {e.get_attribute("data-split") for e in driver.find_elements(By.CSS_SELECTOR, ".ctx")} == {
        "explain", "holdout"}
    rows = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "tr.score")]
    assert any(t.startswith("correlation_top_random ") for t in rows) and any(t.startswith("behaviour ") for t in rows)
    assert any(m.text.startswith(("+", "-")) for m in driver.find_elements(By.CSS_SELECTOR, "tr.score td.margin"))
    # Every label of the feature is listed: the LLM's, the baseline's and the nulls given to it.
    feature = int(driver.current_url.rsplit("/", 1)[1])
    stored = query(db, "SELECT count(*) FROM labels WHERE dictionary_id = 1 AND feature = ?", [feature])[0][0]
    assert len(driver.find_elements(By.CSS_SELECTOR, "#labels tr.labelrow")) == stored
    kinds = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#labels tr.labelrow td:first-child .muted")]
    assert "label" in kinds and "baseline" in kinds
    assert "the same feature on 2 (random init)" in driver.page_source
    assert [e.text for e in driver.find_elements(By.CSS_SELECTOR, "span.label")].count(HOSTILE_LABEL) >= 1
    assert driver.find_elements(By.TAG_NAME, "script") == []
    driver.set_window_size(1200, 1300)
    assert driver.save_screenshot(str(IMAGES / "browser-feature.png"))


def _sql_and_compare(driver, wait, server: str) -> None:
    from selenium.webdriver.common.by import By

    # The SQL box: one sandboxed SELECT, the result as a table; anything else refused in one line.
    driver.get(server + "/sql")
    area = driver.find_element(By.ID, "sql")
    area.send_keys("SELECT feature, max_act FROM features WHERE dictionary_id = 1 ORDER BY feature LIMIT 3")
    driver.find_element(By.ID, "run-sql").click()
    wait.until(lambda d: d.find_elements(By.ID, "result"))
    cells = [[td.text for td in tr.find_elements(By.TAG_NAME, "td")]
             for tr in driver.find_elements(By.CSS_SELECTOR, "#result tbody tr")]
    assert [c[0] for c in cells] == ["0", "1", "2"]
    driver.get(server + "/sql?q=COPY+features+TO+'out.csv'")
    assert "refused" in driver.find_element(By.ID, "error").text
    # The compare page: trained against its control, the compare command's rows and the plot.
    driver.get(server + "/compare")
    assert driver.find_elements(By.CSS_SELECTOR, "#compare tbody tr")
    (plot,) = driver.find_elements(By.CSS_SELECTOR, "img.plot")
    assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", plot)


@needs_chromium
def test_search_open_feature_and_run_sql_in_chromium(tmp_path, server, served_db):
    from selenium.webdriver.support.ui import WebDriverWait

    driver = _driver(tmp_path)
    wait = WebDriverWait(driver, 30)
    try:
        _search_the_list(driver, wait, server, served_db)
        _read_a_feature(driver, wait, server, served_db)
        _sql_and_compare(driver, wait, server)
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE" and "/sql?q=COPY" not in e["message"]]
        assert errors == []
    finally:
        driver.quit()


def test_margins_match_the_labels_view(served_db):
    """The browser computes margins and p in Python for one page; they must be the labels view's numbers."""
    from autointerp.analysis.serve import views
    from autointerp.store import browse, open_store

    with open_store(served_db, read_only=True) as con:
        methods = browse.score_methods(con, 1)
        page = browse.feature_page(con, browse.FeatureQuery(1, "m-explain"), methods)
        scores = views.by_run(browse.run_scores(con, 1, [r.feature for r in page.rows], [r.run_id for r in page.rows]))
        nulls = browse.null_values(con, 1, "m-explain")
    expected = {r[0]: r[1:] for r in query(served_db, "SELECT feature, correlation_top_random, "
                                           "correlation_top_random_margin, correlation_top_random_p, behaviour "
                                           "FROM labels WHERE dictionary_id = 1 AND explainer = 'm-explain'")}
    labelled = [r for r in page.rows if r.run_id]
    assert len(labelled) == 12 and page.total == query(served_db, "SELECT count(*) FROM features WHERE "
                                                                   "dictionary_id = 1")[0][0]
    checked = 0
    for r in labelled:
        s = views.score(scores[r.run_id]["correlation_top_random"], "correlation_top_random",
                        nulls[(r.simulator, "correlation_top_random")])
        value, margin, p, behaviour = expected[r.feature]
        assert s.value == pytest.approx(value) and s.margin == pytest.approx(margin) and s.p == pytest.approx(p)
        assert scores[r.run_id]["behaviour"].value == pytest.approx(behaviour)
        checked += 1
    assert checked == 12


def test_a_label_run_writes_the_file_while_the_browser_serves(server, served_db, tmp_path):
    """Requests keep being answered while `label` writes the same file, and the run finishes: each side holds
    the file only for one request or one write."""
    stop = threading.Event()
    times: list[float] = []
    failures: list[str] = []

    def browse_loop() -> None:
        while not stop.is_set():
            for path in ("/?dictionary=1&q=digits", "/feature/1/3", "/?dictionary=1&sort=correlation_top_random"):
                started = time.monotonic()
                try:
                    with urllib.request.urlopen(server + path, timeout=60) as resp:
                        resp.read()
                        if resp.status != 200:
                            failures.append(f"{path}: {resp.status}")
                except urllib.error.URLError as exc:
                    failures.append(f"{path}: {exc}")
                times.append(time.monotonic() - started)

    before = query(served_db, "SELECT count(*) FROM explanations")[0][0]
    reader = threading.Thread(target=browse_loop)
    reader.start()
    try:
        with LoopbackLLM(hostile_script) as llm:
            run_label(served_db, llm.base_url, list(range(12, 24)), dictionary_id=1, n_boot=50)
    finally:
        stop.set()
        reader.join(timeout=120)
    assert failures == []
    assert len(times) >= 3
    assert query(served_db, "SELECT count(*) FROM explanations")[0][0] > before
    with urllib.request.urlopen(server + "/?dictionary=1&q=digits", timeout=60) as resp:
        assert "24 features with a m-explain label" in resp.read().decode()  # the run's labels, nothing stale
    print(f"{len(times)} requests during the label run, slowest {max(times):.2f}s")
