"""A real headless Chromium for the playground's tests and its screenshots.

Debian's ``chromium`` and ``chromium-driver`` driven by selenium. The driver's path is
given, so selenium never runs Selenium Manager (which would download a browser), and
everything the browser writes (profile, cache, downloads, its HOME) stays in one folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def chromium(folder: Path, width: int = 1280, height: int = 900) -> WebDriver:
    """A headless Chromium whose files all live under ``folder``.

    Raises:
        RuntimeError: chromium or chromedriver is not installed (``make test`` installs them;
            a test must fail then, not skip).
    """
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        raise RuntimeError(f"{' and '.join(missing)} not found: apt-get install -y chromium chromium-driver")
    folder.mkdir(parents=True, exist_ok=True)
    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox",  # root in a container has no sandbox
                     "--disable-dev-shm-usage",  # containers have a tiny /dev/shm
                     f"--user-data-dir={folder / 'profile'}", f"--disk-cache-dir={folder / 'cache'}",
                     f"--window-size={width},{height}", "--force-device-scale-factor=1", "--lang=en-US",
                     # no calls home: the tests run without network
                     "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--disable-extensions"):
        options.add_argument(argument)
    options.add_experimental_option("prefs", {"download.default_directory": str(folder / "downloads"),
                                              "download.prompt_for_download": False})
    # Chromium writes ~/.pki and ~/.config otherwise
    env = {**os.environ, "HOME": str(folder), "XDG_CONFIG_HOME": str(folder / "config"),
           "XDG_CACHE_HOME": str(folder / "cache")}
    service = Service(executable_path=str(CHROMEDRIVER), env=env,
                      log_output=str(folder / "chromedriver.log"))
    return webdriver.Chrome(options=options, service=service)
