"""The page at / and the docs at /docs in a real headless Chromium (Debian's chromium and
chromium-driver, driven by selenium) against a real Serve app on 127.0.0.1 over the tiny checkpoints
of tests/test_serve.py; the catalog search over HTTP; the search on the real Amazon Toys catalog.

Each browser test saves a screenshot of its tab in a temporary folder; with GENREC_PAGE_SCREENSHOTS
set to a folder (docs/img for the docs' set) they are copied there too.
"""
import csv
import io
import os
import pty
import re
import shutil
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import shared_data
from genrec.config import ServeConfig
from genrec.config_loader import load_config
from genrec.serve.recommender import CatalogSearch, normalize
from test_serve import MAX_CV_CHARS, MAX_HISTORY, MAX_K, make_job_models, make_recommender, serve_overrides

WAIT_S = 180  # a beam search or a generation on a loaded 2-CPU machine can take a while


@pytest.fixture(scope="module")
def app(ray_session, tmp_path_factory):
    from ray import serve

    from genrec.serve.launch import start_serve

    root = tmp_path_factory.mktemp("page")
    catalog = make_recommender(root)
    make_job_models(root)
    cfg = load_config(ServeConfig, None, serve_overrides(root))
    url = start_serve(cfg)
    with httpx.Client(base_url=url, timeout=WAIT_S) as client:
        yield {"url": url, "client": client, "root": root, **catalog}
    serve.shutdown()


@pytest.fixture(scope="module")
def browser():
    chromium = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    driver_path = shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        pytest.skip(f"needs Chromium and chromedriver on PATH (found {chromium or 'no chromium'}, "
                    f"{driver_path or 'no chromedriver'}); `make browser` installs Debian's chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1100,850",
                # No traffic but the page's: only loopback resolves, and Chromium's own updaters stay off.
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--disable-background-networking",
                "--disable-component-update", "--no-first-run"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)  # a given driver: no Selenium Manager
    driver.set_page_load_timeout(WAIT_S)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory):
    folder = tmp_path_factory.mktemp("screenshots")
    yield folder
    if os.environ.get("GENREC_PAGE_SCREENSHOTS"):
        from PIL import Image  # matplotlib's dependency

        target = Path(os.environ["GENREC_PAGE_SCREENSHOTS"])
        target.mkdir(parents=True, exist_ok=True)
        for png in folder.glob("*.png"):  # 64 colours: a third of the bytes, the same look for a page of text
            Image.open(png).convert("RGB").quantize(64).save(target / png.name, optimize=True)


def wait_for(driver, condition, what: str):
    """condition(driver)'s first truthy value; the page re-rendering an element meanwhile is no failure."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S, poll_frequency=0.1, ignored_exceptions=[StaleElementReferenceException]).until(
        condition, message=f"waiting for {what}")


def by_css(driver, selector: str):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def shown(driver, selector: str):
    """The elements matching selector that are displayed (a wait condition: empty is falsy)."""
    return [e for e in by_css(driver, selector) if e.is_displayed()]


def open_tab(driver, url: str, tab: str):
    driver.get(f"{url}/")
    wait_for(driver, lambda d: shown(d, f"#tab-{tab}"), f"the {tab} tab button")[0].click()


def fill(driver, selector: str, text: str) -> None:
    """Paste: set a field's value at once (send_keys would type a CV key by key)."""
    driver.execute_script("arguments[0].value = arguments[1];", by_css(driver, selector)[0], text)


def set_number(driver, selector: str, value) -> None:
    field = by_css(driver, selector)[0]
    field.clear()
    field.send_keys(str(value))


def loaded_from(driver) -> set[str]:
    """Every URL the page fetched (its scripts, style and API calls)."""
    return set(driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)"))


def suggestions_for(driver, query: str) -> list:
    """The suggestions once they are the full query's (typing shows a shorter one's first), if two or more."""
    options = shown(driver, "#suggestions li")
    return options if len(options) >= 2 and all(query.lower() in o.text.lower() for o in options) else []


def two_match_query(titles: list[str]) -> str:
    """A piece of a title, in upper case, that at least two titles hold (the search ignores case)."""
    search = CatalogSearch([str(i) for i in range(len(titles))], titles)
    for title in titles:
        for word in title.split():
            if len(word) >= 4 and len(search.search(word[:4], 3)) >= 2:
                return word[:4].upper()
    raise AssertionError("no four letters shared by two titles")


# ---------------------------------------------------------------------------------- the browser
def test_recommend_tab(app, browser, screenshots):
    from selenium.webdriver.common.keys import Keys

    url, titles = app["url"], app["titles"]
    open_tab(browser, url, "recommend")
    assert [b.text for b in by_css(browser, "#tabs button")] == ["Recommend", "Write a JD", "Match jobs"]
    query = two_match_query(titles)
    picked = []
    for pick in (0, 1):  # the first suggestion, then the second one of the same query (the first is taken)
        by_css(browser, "#search")[0].send_keys(query)
        options = wait_for(browser, lambda d: suggestions_for(d, query), f"two suggestions for {query!r}")
        picked.append(options[pick].find_element("css selector", ".id").text)
        options[pick].click()
    assert len(set(picked)) == 2 and len(by_css(browser, "#history li")) == 2
    set_number(browser, "#recommend-k", 5)
    by_css(browser, "#recommend-go")[0].click()
    cells = wait_for(browser, lambda d: shown(d, "#recommend-result td.title"), "the recommendations")
    shown_titles = [c.text for c in cells]
    assert len(shown_titles) == 5 and len(set(shown_titles)) == 5 and set(shown_titles) <= set(titles)
    expected = app["client"].post("/v1/recommend", json={"history": picked, "k": 5}).json()
    assert shown_titles == [i["title"] for i in expected["items"]]  # what the API answers, in its order
    assert shown(browser, "#recommend-result .badge")[0].text == "from the model"
    browser.save_screenshot(str(screenshots / "page-recommend.png"))
    assert all(u.startswith(url) for u in loaded_from(browser)), loaded_from(browser)

    # Over max_history: the page names the items the API left out.
    by_css(browser, "#history-clear")[0].click()
    for item_id in app["ids"][:MAX_HISTORY + 2]:
        by_css(browser, "#search")[0].send_keys(item_id, Keys.ENTER)
    by_css(browser, "#recommend-go")[0].click()
    note = wait_for(browser, lambda d: shown(d, "#recommend-truncated"), "the truncation note")[0].text
    assert note.startswith("The 2 oldest history items were left out")
    assert [e.text for e in by_css(browser, "#history li.truncated .label")] == app["ids"][:2]

    # An unknown item: the API's 422 message, on the page.
    by_css(browser, "#history-clear")[0].click()
    by_css(browser, "#search")[0].send_keys("no such item", Keys.ENTER)
    by_css(browser, "#recommend-go")[0].click()
    error = wait_for(browser, lambda d: shown(d, "#recommend-error"), "the error message")[0].text
    assert error == "422: history: unknown item ids or titles: 'no such item'"
    assert not shown(browser, "#recommend-result td")  # the old answer is gone with the history
    browser.save_screenshot(str(screenshots / "page-recommend-error.png"))


def test_write_a_jd_tab(app, browser, screenshots):
    cvs = pq.read_table(app["root"] / "jobs" / "cvs.parquet").column("text").to_pylist()
    open_tab(browser, app["url"], "generate")
    assert by_css(browser, "#generate-tokens")[0].get_attribute("value") == "12"  # the server's bound, from OpenAPI
    fill(browser, "#generate-cv", cvs[0])
    # The test's generator is untrained: greedy decoding ends at once (an empty JD), sampling writes
    # noise. Sampled, a JD is empty only now and then: a few tries get a text to score.
    set_number(browser, "#generate-temperature", 1)
    for _ in range(5):
        by_css(browser, "#generate-go")[0].click()
        jd = wait_for(browser, lambda d: shown(d, "#generate-jd"), "the JD")[0].get_attribute("textContent")
        if jd != "(the generator wrote nothing)":
            break
    assert jd and jd != "(the generator wrote nothing)"
    score = wait_for(browser, lambda d: shown(d, "#generate-score strong"), "the score")[0].text
    want = app["client"].post("/v1/jobs/score", json={"cv": cvs[0], "jd": jd}).json()["score"]
    assert float(score) == pytest.approx(want, abs=1.5e-4)  # the reward model's score of the JD shown
    browser.save_screenshot(str(screenshots / "page-write-a-jd.png"))

    # Over the generator's limit (long_text=reject): the 413 message, on the page.
    fill(browser, "#generate-cv", "x" * (MAX_CV_CHARS + 1))
    by_css(browser, "#generate-go")[0].click()
    error = wait_for(browser, lambda d: shown(d, "#generate-error"), "the error message")[0].text
    assert error == f"413: cv: {MAX_CV_CHARS + 1} characters, over the limit of {MAX_CV_CHARS}"


def test_match_jobs_tab(app, browser, screenshots):
    cvs = pq.read_table(app["root"] / "jobs" / "cvs.parquet").column("text").to_pylist()
    jds = pq.read_table(app["root"] / "jobs" / "jds.parquet", columns=["jd_id", "title"]).to_pylist()
    open_tab(browser, app["url"], "match")
    fill(browser, "#match-cv", cvs[2])
    set_number(browser, "#match-k", 4)
    by_css(browser, "#match-go")[0].click()
    rows = wait_for(browser, lambda d: shown(d, "#match-result tbody tr"), "the ranked jobs")
    ranked = [(r.find_element("css selector", "td.id").text, r.find_element("css selector", "td.title").text) for r in rows]
    assert len(ranked) == 4 and len({jd_id for jd_id, _ in ranked}) == 4
    assert set(ranked) <= {(j["jd_id"], j["title"]) for j in jds}  # real openings of the deployed set
    browser.save_screenshot(str(screenshots / "page-match-jobs.png"))

    set_number(browser, "#match-k", MAX_K + 1)
    by_css(browser, "#match-go")[0].click()
    error = wait_for(browser, lambda d: shown(d, "#match-error"), "the error message")[0].text
    assert error == f"422: k: Input should be less than or equal to {MAX_K}"


def test_docs_work_offline(app, browser, screenshots):
    for path in ("/", "/docs"):
        page = app["client"].get(path)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page.text), f"{path} links off the server"
    assert app["client"].get("/redoc").status_code == 404  # FastAPI's ReDoc page would load from a CDN
    browser.get(f"{app['url']}/docs")
    headings = wait_for(browser, lambda d: len(shown(d, "h2 code")) >= 7 and shown(d, "h2 code"), "the routes")
    assert {"POST /v1/recommend", "GET /v1/catalog/search", "POST /v1/jobs/generate", "POST /v1/jobs/score",
            "POST /v1/jobs/recommend", "GET /healthz", "GET /v1/models"} <= {h.text for h in headings}
    assert f"≤ {MAX_K}" in browser.find_element("id", "api").text  # bounds from the schema
    assert loaded_from(browser) and all(u.startswith(app["url"]) for u in loaded_from(browser))
    browser.save_screenshot(str(screenshots / "page-docs.png"))


# ------------------------------------------------------------------------------ search over HTTP
def test_catalog_search_over_http(app):
    ids, titles = app["ids"], app["titles"]
    client = app["client"]
    word = titles[7].split()[0]
    found = client.get("/v1/catalog/search", params={"q": word.swapcase(), "limit": 50}).json()["items"]
    assert found and all(word.lower() in i["title"].lower() for i in found)
    assert {"item_id": ids[7], "title": titles[7]} in found
    assert client.get("/v1/catalog/search", params={"q": ids[12]}).json()["items"][0] == {"item_id": ids[12],
                                                                                           "title": titles[12]}
    assert len(client.get("/v1/catalog/search", params={"q": "e", "limit": 3}).json()["items"]) == 3
    for params, message in [({}, "q: Field required"), ({"q": ""}, "q: String should have at least 1 character"),
                            ({"q": "  "}, "q: empty (only whitespace)"),
                            ({"q": "x" * 201}, "q: String should have at most 200 characters"),
                            ({"q": "a", "limit": 0}, "limit: Input should be greater than or equal to 1"),
                            ({"q": "a", "limit": 51}, "limit: Input should be less than or equal to 50"),
                            ({"q": "a", "limit": "ten"}, "limit: Input should be a valid integer"),
                            ({"q": "a", "k": 3}, "k: unknown query parameter (expected q, limit)")]:
        response = client.get("/v1/catalog/search", params=params)
        assert response.status_code == 422 and response.json()["detail"].startswith(message), (params, response.text)


# --------------------------------------------------------------------------- search on real data
def reference_search(id_keys: list[str], title_keys: list[str], query: str, limit: int) -> list[int]:
    """The search's definition as a loop over the whole catalog (keys normalized): exact id, id
    prefix, title prefix (both alphabetical), title substring (catalog order)."""
    q = normalize(query)
    tiers = ([i for i, key in enumerate(id_keys) if key == q],
             sorted((i for i, key in enumerate(id_keys) if key.startswith(q)), key=lambda i: (id_keys[i], i)),
             sorted((i for i, key in enumerate(title_keys) if key.startswith(q)), key=lambda i: (title_keys[i], i)),
             [i for i, key in enumerate(title_keys) if q in key])
    return list(dict.fromkeys(i for tier in tiers for i in tier))[:limit]


def toys_queries(ids: list[str], titles: list[str], n: int, seed: int = 0) -> list[str]:
    """What people type: 1-12 characters from inside a title (70 %), an id's start (15 %), letters
    that match nothing (15 %)."""
    rng = np.random.default_rng(seed)
    queries = []
    while len(queries) < n:
        kind, title = rng.random(), titles[rng.integers(len(titles))]
        if kind < 0.7:
            start = int(rng.integers(len(title)))
            query = title[start:start + int(rng.integers(1, 13))]
        elif kind < 0.85:
            item = ids[rng.integers(len(ids))]
            query = item[: int(rng.integers(1, len(item) + 1))]
        else:
            query = "".join(rng.choice(list("qxzjkv"), int(rng.integers(2, 7))))
        if query.strip():
            queries.append(query)
    return queries


@pytest.mark.shared_data
def test_catalog_search_on_the_toys_catalog():
    """On Amazon Toys (11,924 titles) the search answers as its definition does (its speed is a
    measurement, not a test: see docs/serving.md)."""
    with open(shared_data("amazon-toys", "items.tsv"), newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    ids, titles = [r["asin"] for r in rows], [r["title"] for r in rows]
    search = CatalogSearch(ids, titles)
    queries = toys_queries(ids, titles, 1000)
    index = {item: i for i, item in enumerate(ids)}
    id_keys, title_keys = [normalize(i) for i in ids], [normalize(t) for t in titles]
    for query in queries:  # the reference loop is slow: a sample of 150 queries
        got = search.search(query, 10)
        assert [index[i["item_id"]] for i in got] == reference_search(id_keys, title_keys, query, 10), query
    assert search.search("lego", 3)[0]["title"].lower().startswith("lego")


# ------------------------------------------------------------------------------- the demo's wait
def test_demo_waits_for_enter_only_in_a_terminal(capsys):
    from genrec.demo import show_page

    assert show_page("http://127.0.0.1:1", wait=True, stdin=io.StringIO("\n")) is False  # a pipe, as in CI
    assert "Try it in a browser: http://127.0.0.1:1/ " in capsys.readouterr().out
    controller, terminal = pty.openpty()
    with os.fdopen(terminal, "r") as stdin:
        assert show_page("http://127.0.0.1:1", wait=False, stdin=stdin) is False  # --no-wait
        os.write(controller, b"\n")
        assert show_page("http://127.0.0.1:1", wait=True, stdin=stdin) is True  # returned on Enter
    os.close(controller)
    assert "until you press Enter" in capsys.readouterr().out
