"""Screenshots of the search playground for the README.

Builds a small SciFact collection and a live one (written over HTTP, then compacted, so the
jobs list has an entry) in a temporary home, serves them, and saves both views with the
same headless Chromium the tests use::

    .venv/bin/python docs/screenshots.py      # writes docs/playground-{search,collections}.png
"""

from __future__ import annotations

import gzip
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script: the repository's packages and tests helpers

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

from embedsvc.client import Client  # noqa: E402
from embedsvc.encoders import unpack_default_model  # noqa: E402
from indexing.job import BuildJob, BuildOptions  # noqa: E402
from tests.browser import chromium  # noqa: E402
from tests.conftest import RunningServer, make_settings, wait_for  # noqa: E402

OUT = REPO / "docs"
CORPUS = REPO / "data" / "scifact" / "corpus.jsonl.gz"
DOCUMENTS = 300
QUERY = "radiotherapy plus 3 years of androgen suppression improves survival"
WIDTH = 1280


def scifact_slice(path: Path, count: int) -> list[dict]:
    """The first ``count`` SciFact abstracts, written to ``path`` as JSONL."""
    with gzip.open(CORPUS, "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line, _ in zip(fh, range(count), strict=False)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return rows


def live_collection(client: Client, rows: list[dict]) -> None:
    """'notes': documents written over HTTP, two deleted, then compacted (a finished job),
    then a few more written (fresh vectors, searched beside the index)."""
    client.create_collection("notes", indexed_fields=["year"])
    notes = [{"id": f"n{i}", "title": row["title"], "text": row["text"],
              "metadata": {"year": 2010 + i % 12, "kind": "trial" if i % 3 else "review"}}
             for i, row in enumerate(rows[:40])]
    client.upsert("notes", notes[:30])
    wait_for(lambda: client.get_collection("notes").pending == 0, timeout=300)
    client.delete("notes", ids=["n3", "n7"])
    job = client.compact("notes")
    wait_for(lambda: client.job(job.id).finished, timeout=300)
    client.upsert("notes", notes[30:])
    wait_for(lambda: client.get_collection("notes").pending == 0, timeout=300)


def viewport(driver: WebDriver, height: int) -> None:
    """An exact viewport (a window's size includes what headless Chromium reserves)."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": WIDTH, "height": height, "deviceScaleFactor": 1, "mobile": False})


def shoot(driver: WebDriver, url: str) -> None:
    wait = WebDriverWait(driver, 120, poll_frequency=0.05)
    viewport(driver, 980)
    driver.get(url + "/")
    wait.until(lambda d: "scifact" in d.find_element(By.ID, "collection").text)
    Select(driver.find_element(By.ID, "collection")).select_by_value("scifact")
    driver.find_element(By.ID, "query").send_keys(QUERY, Keys.ENTER)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#hits li.hit"))
    driver.save_screenshot(str(OUT / "playground-search.png"))

    driver.get(url + "/#collections")
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "[data-collection]")) == 2
               and d.find_elements(By.CSS_SELECTOR, "#jobs tbody tr"))
    # as tall as the content: the page's own height is at least the viewport's
    viewport(driver, driver.execute_script("return Math.ceil(document.querySelector('main')"
                                           ".getBoundingClientRect().bottom)"))
    driver.save_screenshot(str(OUT / "playground-collections.png"))


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="embedsvc-screenshots-") as temp:
        folder = Path(temp)
        settings = make_settings(folder / "home", unpack_default_model(folder / "model"), chunk_size=64)
        rows = scifact_slice(folder / "corpus.jsonl", DOCUMENTS)
        BuildJob(settings, "scifact", folder / "corpus.jsonl", BuildOptions()).run()
        with RunningServer(settings) as server, Client(server.url, timeout=60) as client:
            wait_for(lambda: client.search("scifact", "warm up", k=1).mode == "hybrid", timeout=300)
            live_collection(client, rows[DOCUMENTS // 2:])
            driver = chromium(folder / "chromium")
            try:
                shoot(driver, server.url)
            finally:
                driver.quit()
    print(f"wrote {OUT / 'playground-search.png'} and {OUT / 'playground-collections.png'}")


if __name__ == "__main__":
    main()
