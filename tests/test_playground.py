"""The search playground at ``/`` in a real headless Chromium against the real server: what
the page shows must be what the Python client gets for the same calls.

Needs Debian's chromium and chromium-driver (``make test`` installs them); without them
these tests fail, they do not skip.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait

from embedsvc.client import Client
from embedsvc.keys import Scope, create_key
from tests.browser import chromium
from tests.conftest import RunningServer, make_settings, wait_for

QUERY = "vitamin D deficiency and bone health"
HOSTILE = '<img src=x onerror="document.title=\'pwned\'"><script>document.title="pwned"</script>'


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    driver = chromium(tmp_path_factory.mktemp("chromium"))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[Client]:
    """Our own client on the shared server, once its model answers (auto is then hybrid)."""
    with Client(server.url, timeout=60) as c:
        wait_for(lambda: c.search("mini", "warm up", k=1).mode == "hybrid")
        yield c


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory, bundled_model: Path) -> Iterator[tuple[RunningServer, dict]]:
    """A server that needs keys, with a collection 'c' holding a document full of markup."""
    settings = make_settings(tmp_path_factory.mktemp("keyed") / "home", bundled_model, preload_models=False)
    keys = {scope.name: create_key(settings, scope, f"{scope.name}-key") for scope in Scope}
    with RunningServer(settings) as server, Client(server.url, api_key=keys["admin"]) as client:
        client.create_collection("c")
        client.upsert("c", [{"id": "<b>id</b>", "title": HOSTILE,
                             "text": f"penguins {HOSTILE} <b>bold</b> &amp; more penguins"}])
        yield server, keys


def wait(driver: WebDriver, timeout: float = 60) -> WebDriverWait:
    """Polls until a condition holds; elements missing or replaced meanwhile count as not yet."""
    return WebDriverWait(driver, timeout, poll_frequency=0.05,
                         ignored_exceptions=(NoSuchElementException, StaleElementReferenceException))


def open_page(driver: WebDriver, url: str) -> None:
    driver.get(url)
    wait(driver).until(lambda d: d.execute_script("return document.readyState") == "complete")


def search(driver: WebDriver, collection: str, query: str) -> None:
    wait(driver).until(lambda d: collection in [o.get_attribute("value") for o in
                                                Select(d.find_element(By.ID, "collection")).options])
    Select(driver.find_element(By.ID, "collection")).select_by_value(collection)
    box = driver.find_element(By.ID, "query")
    box.clear()
    box.send_keys(query, Keys.ENTER)


def shown_mode(driver: WebDriver) -> str:
    return driver.find_element(By.ID, "result-mode").text


def hit_ids(driver: WebDriver) -> list[str]:
    return [li.get_attribute("data-id") for li in driver.find_elements(By.CSS_SELECTOR, "#hits li.hit")]


def use_key(driver: WebDriver, key: str) -> None:
    field = driver.find_element(By.ID, "api-key")
    field.clear()
    field.send_keys(key)
    driver.find_element(By.ID, "key-save").click()


def test_search_shows_the_clients_hits_and_highlights_the_passage(server: RunningServer, client: Client,
                                                                  browser: WebDriver):
    expected = client.search("mini", QUERY, k=10, include_text=True)
    open_page(browser, server.url + "/")
    search(browser, "mini", QUERY)
    wait(browser).until(lambda d: hit_ids(d))

    assert hit_ids(browser) == [hit.id for hit in expected.hits]
    assert shown_mode(browser) == expected.mode == "hybrid"
    first, top = browser.find_element(By.CSS_SELECTOR, "#hits li.hit"), expected.hits[0]
    assert first.find_element(By.CLASS_NAME, "score").text == f"{top.score:.4f}"
    # the passage, marked where it lies: in the title, the text or across both
    assert top.passage is not None
    marks = [m.get_attribute("textContent") for m in first.find_elements(By.TAG_NAME, "mark")]
    assert " ".join(marks) == top.passage.text
    assert all(mark and mark in f"{top.title} {top.text}" for mark in marks)
    assert marks[-1] in top.text
    # the server's time and the browser's, both shown
    assert re.fullmatch(r"\d+\.\d ms", browser.find_element(By.ID, "server-ms").text)
    assert re.fullmatch(r"\d+\.\d ms", browser.find_element(By.ID, "browser-ms").text)


def test_switching_to_lexical_reports_the_mode_used(server: RunningServer, client: Client, browser: WebDriver):
    expected = client.search("mini", QUERY, k=10, mode="lexical")
    open_page(browser, server.url + "/")
    search(browser, "mini", QUERY)
    wait(browser).until(lambda d: shown_mode(d) == "hybrid")

    browser.find_element(By.XPATH, "//label[input[@name='mode' and @value='lexical']]").click()
    wait(browser).until(lambda d: shown_mode(d) == "lexical")
    assert browser.find_element(By.ID, "result-fallback").text == "none"
    assert hit_ids(browser) == [hit.id for hit in expected.hits]
    assert not browser.find_elements(By.CSS_SELECTOR, "#hits mark")  # BM25 matches no passage

    # a collection without a dense index: auto answers with BM25 and says why
    Select(browser.find_element(By.ID, "collection")).select_by_value("lexonly")
    browser.find_element(By.XPATH, "//label[input[@name='mode' and @value='auto']]").click()
    wait(browser).until(lambda d: d.find_element(By.ID, "result-fallback").text == "no_index")
    assert shown_mode(browser) == "lexical"


def test_a_bad_filter_shows_the_servers_message(server: RunningServer, client: Client, browser: WebDriver):
    bad = '{"year": {"$near": 2015}}'
    refused = httpx.post(f"{server.url}/v1/collections/mini/search",
                         json={"query": QUERY, "filter": {"year": {"$near": 2015}}})
    assert refused.status_code == 422
    open_page(browser, server.url + "/")
    browser.find_element(By.ID, "filter").send_keys(bad)
    search(browser, "mini", QUERY)
    error = browser.find_element(By.ID, "error")
    wait(browser).until(lambda d: refused.json()["error"]["message"] in error.text)

    # JSON that does not parse is caught before it is sent
    browser.find_element(By.ID, "filter").send_keys(" {")
    browser.find_element(By.ID, "search-button").click()
    wait(browser).until(lambda d: error.text.startswith("filter: not valid JSON"))


def test_a_wrong_key_shows_the_servers_message(keyed, browser: WebDriver):
    server, keys = keyed
    refused = httpx.get(f"{server.url}/v1/collections", headers={"Authorization": "Bearer esk_wrong"})
    assert refused.status_code == 401
    message = refused.json()["error"]["message"]

    open_page(browser, server.url + "/")
    error = browser.find_element(By.ID, "error")
    wait(browser).until(ec.visibility_of(error))  # no key at all: refused too
    use_key(browser, "esk_wrong")
    wait(browser).until(lambda d: message in error.text)
    assert error.text.startswith("401 unauthorized: ")

    # the right key: the error goes and the collections come, kept in this tab only
    use_key(browser, keys["read"])
    wait(browser).until(lambda d: "c" in [o.get_attribute("value") for o in
                                          Select(d.find_element(By.ID, "collection")).options])
    assert not error.is_displayed()
    stored = browser.execute_script(
        "return [sessionStorage.getItem('embedsvc.apiKey'), localStorage.length, document.cookie]")
    assert stored == [keys["read"], 0, ""]
    # the jobs list needs an admin key: its refusal is shown where the jobs would be
    browser.get(server.url + "/#collections")
    wait(browser).until(lambda d: "403 forbidden" in d.find_element(By.ID, "jobs-status").text)
    assert "needs 'admin'" in browser.find_element(By.ID, "jobs-status").text


def test_hostile_document_text_is_shown_as_text(keyed, browser: WebDriver):
    server, keys = keyed
    open_page(browser, server.url + "/")
    use_key(browser, keys["read"])
    browser.find_element(By.XPATH, "//label[input[@name='mode' and @value='lexical']]").click()
    search(browser, "c", "penguins")
    wait(browser).until(lambda d: hit_ids(d) == ["<b>id</b>"])

    hit = browser.find_element(By.CSS_SELECTOR, "#hits li.hit")
    assert hit.find_element(By.CLASS_NAME, "title").text == HOSTILE
    assert HOSTILE in hit.find_element(By.CLASS_NAME, "doc-text").text
    assert not hit.find_elements(By.CSS_SELECTOR, "img, script, b")
    assert browser.title == "embedsvc playground"


def test_collections_view_shows_what_describe_says(server: RunningServer, client: Client, browser: WebDriver):
    info = client.get_collection("mini")
    described = httpx.get(f"{server.url}/v1/collections/mini").json()
    open_page(browser, server.url + "/#collections")
    card = '[data-collection="mini"]'
    wait(browser).until(ec.presence_of_element_located((By.CSS_SELECTOR, card)))

    def shown(field: str) -> str:
        return browser.find_element(By.CSS_SELECTOR, f'{card} [data-field="{field}"] dd').text

    assert int(re.sub(r"\D", "", shown("documents"))) == info.documents > 0
    assert int(re.sub(r"\D", "", shown("indexed_vectors"))) == info.indexed_vectors
    assert shown("index_version") == str(info.index_version)
    assert shown("layout") == info.layout
    # the drift block is drawn when describe carries one, and only then
    drift = browser.find_elements(By.CSS_SELECTOR, f'{card} [data-field="drift"]')
    assert bool(drift) == bool(described.get("drift"))
    assert browser.find_element(By.CSS_SELECTOR, '[data-collection="lexonly"]')
    assert browser.find_element(By.ID, "jobs-status").text == "No jobs yet."

    # whatever fields a drift object has are drawn: give describe one, in the page's fetch
    browser.execute_script("""
        const [fetch, drift] = [window.fetch, arguments[0]];
        window.fetch = async (url, init) => {
          const response = await fetch(url, init);
          if (url !== "v1/collections/mini") return response;
          const body = {...await response.json(), drift};
          return new Response(JSON.stringify(body), {status: response.status});
        };""", {"queries": 1200, "mean_best_cosine": 0.4321, "drifting": True})
    browser.find_element(By.ID, "refresh").click()
    wait(browser).until(lambda d: re.sub(r"\D", "", shown("queries")) == "1200")
    assert shown("mean_best_cosine") == "0.432"
    badge = browser.find_element(By.CSS_SELECTOR, f'{card} [data-field="drift"] .badge')
    assert badge.text == "drifting"
