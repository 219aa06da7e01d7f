"""The console in a real headless Chromium (Debian's `chromium` + `chromium-driver`, driven by Selenium).

A person's path through it: refused without a token, signs in, triggers a tiny pipeline run and watches it
finish, promotes a model (the alias and history change in the MLflow registry), creates and ramps an experiment
(the router's config changes in the A/B store it reads). A screenshot of every page is written under
test-output/console/ for a person to look at.
"""

from __future__ import annotations

import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from adflow.console.app import create_app
from adflow.console.auth import Tokens
from tests.conftest import ADMIN_TOKEN, console_core

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
SHOTS = Path(__file__).parents[1] / "test-output" / "console"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CHROMIUM and DRIVER),
        reason="no chromium/chromedriver: `make system-deps` installs Debian's chromium and chromium-driver",
    ),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    import uvicorn

    core: Any = console_core(tmp_path_factory.mktemp("console"))
    app = create_app(core, Tokens.parse([f"alice:{ADMIN_TOKEN}"], "test"))
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.started, "the console did not start"
    yield {"core": core, "url": f"http://127.0.0.1:{port}"}
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    # no sandbox (CI runs as root); no background networking: this machine's closed network refuses it
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--window-size=1400,1000",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):  # fmt: skip
        opts.add_argument(flag)
    try:
        driver = webdriver.Chrome(options=opts, service=Service(str(DRIVER)))
    except (
        Exception
    ) as e:  # the binaries are there but cannot start (a broken install): say so, do not hide it
        pytest.fail(f"chromium did not start: {type(e).__name__}: {e}")
    driver.set_page_load_timeout(30)
    SHOTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def shot(driver: Any, name: str) -> Path:
    """A full-height screenshot of the current page."""
    height = driver.execute_script("return document.body.scrollHeight")
    driver.set_window_size(1400, max(900, min(int(height) + 100, 4000)))
    path = SHOTS / f"{name}.png"
    assert driver.save_screenshot(str(path)), path
    driver.set_window_size(1400, 1000)
    return path


def wait(driver: Any, cond: Any, timeout: float = 20) -> Any:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # live parts of a page are replaced as they refresh: an element read mid-swap is looked up again
    ignored = (StaleElementReferenceException,)
    return WebDriverWait(driver, timeout, poll_frequency=0.25, ignored_exceptions=ignored).until(cond)


def text_of(driver: Any, css: str) -> str:
    """The text of the first element matching css, found and read in one script: the live parts of a page are
    swapped as they refresh, and an element found by one WebDriver call can be gone by the next (chromium then
    answers "stale element" or "node does not belong to the document")."""
    value = driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e === null ? null : e.innerText;", css
    )
    if value is None:
        raise AssertionError(f"no element matches {css}")
    return _cells(value)


def _cells(text: str) -> str:
    # innerText separates table cells with tabs where WebDriver's .text shows spaces; read them as spaces
    return re.sub(r"[ \t]+", " ", str(text))


def attr_of(driver: Any, css: str, name: str) -> str | None:
    """An attribute of the first element matching css (None when there is none), read in one script."""
    return driver.execute_script(  # type: ignore[no-any-return]
        "const e = document.querySelector(arguments[0]); return e === null ? null : e.getAttribute(arguments[1]);",
        css,
        name,
    )


def texts_of(driver: Any, css: str) -> list[str]:
    """The texts of every element matching css, read in one script."""
    script = "return Array.from(document.querySelectorAll(arguments[0]), e => e.innerText);"
    return [_cells(t) for t in driver.execute_script(script, css)]


def submit(driver: Any, form: str, fields: dict[str, str] | None = None) -> None:
    """Fill a form's fields and submit it (the page posts them to the API)."""
    from selenium.webdriver.common.by import By

    f = driver.find_element(By.CSS_SELECTOR, f"form#{form}")
    for name, value in (fields or {}).items():
        el = f.find_element(By.CSS_SELECTOR, f"[name='{name}']")
        if el.tag_name == "select":
            from selenium.webdriver.support.ui import Select

            Select(el).select_by_value(value)
        else:
            el.clear()
            el.send_keys(value)
    f.find_element(By.CSS_SELECTOR, "button[type=submit]").click()


def test_refused_without_token_then_trigger_and_watch_a_run(console: dict[str, Any], browser: Any) -> None:
    from selenium.webdriver.common.by import By

    url, d = console["url"], browser
    d.get(f"{url}/pipelines")
    assert "Trigger a run" in d.page_source and d.find_element(By.ID, "sign-in")
    submit(d, "trigger", {"pipeline": "data_check"})
    msg = wait(d, lambda d: (t := text_of(d, "form#trigger .msg")).startswith("refused") and t)
    assert "refused (401)" in msg and "admin token is required" in msg
    assert console["core"].runs() == []  # nothing started
    shot(d, "pipelines-refused")

    d.get(f"{url}/login?next=/pipelines")
    shot(d, "login")
    d.find_element(By.ID, "token").send_keys(ADMIN_TOKEN)
    d.find_element(By.CSS_SELECTOR, "#login-form button").click()
    # by path, not by the URL's end: /login?next=/pipelines itself ends with "/pipelines", so that condition held
    # before the sign-in's redirect and the next line could read the login page (a CI failure)
    wait(d, lambda d: urlsplit(d.current_url).path == "/pipelines")
    assert "alice" in wait(
        d,
        lambda d: d.execute_script(
            "const e = document.querySelector('#signed-in'); return e === null ? null : e.innerText;"
        ),
    )

    submit(d, "trigger", {"pipeline": "data_check"})
    wait(d, lambda d: "/runs/" in d.current_url)
    run_id = d.current_url.rsplit("/", 1)[1]
    # the page follows the run by itself: stage rows change while it goes, then it settles
    seen: set[str] = set()

    def finished(d: Any) -> bool:
        seen.add(text_of(d, "tr[data-stage='synth'] .status"))
        return text_of(d, "#run-status") in ("succeeded", "failed", "cancelled")

    wait(d, finished, timeout=300)
    assert text_of(d, "#run-status") == "succeeded", text_of(d, "#run-state")
    assert seen & {"waiting", "running"}, seen  # progress was visible before the end
    assert text_of(d, "tr[data-stage='validate'] .status") == "succeeded"
    assert "expectations_evaluated=" in text_of(d, "tr[data-stage='validate']")
    assert "run succeeded" in text_of(d, "#log")
    docs = d.execute_script(
        "return document.querySelector(\"tr[data-stage='validate'] a[data-link='data_docs']\").href"
    )
    shot(d, "run")
    d.get(docs)  # the Data Docs the run wrote, served by the console
    assert "Data Docs" in d.title or "Expectation" in d.page_source
    d.get(f"{url}/pipelines")
    assert text_of(d, f"tr[data-run='{run_id}']").count("succeeded") == 1
    shot(d, "pipelines")


def test_promote_changes_the_registry(console: dict[str, Any], browser: Any) -> None:

    url, d, core = console["url"], browser, console["core"]
    d.get(f"{url}/models")
    assert "champion → v1" in text_of(d, "#models") and "challenger → v2" in text_of(d, "#models")
    shot(d, "models")
    d.get(f"{url}/models/ctr-ciubm")
    submit(d, "promote", {"reason": "won the A/B test e2e"})
    wait(d, lambda d: attr_of(d, "#aliases [data-alias='champion']", "data-version") == "2")
    top = texts_of(d, "#history tr")[1]
    assert (
        "alice" in top and "promote" in top and "won the A/B test e2e" in top and "v1" in top and "v2" in top
    )
    # the move is in MLflow's registry itself, with its history tag
    from adflow.registry import history

    assert int(core.client.get_model_version_by_alias("ctr-ciubm", "champion").version) == 2
    last = history(core.client, "ctr-ciubm")[-1]
    assert (last.who, last.action, last.from_version, last.to_version) == ("alice", "promote", 1, 2)
    shot(d, "model")


def test_create_and_ramp_an_experiment(console: dict[str, Any], browser: Any) -> None:
    from selenium.webdriver.common.by import By

    from adflow.ab.store import Exposure

    url, d, core = console["url"], browser, console["core"]
    d.get(f"{url}/experiments")
    submit(d, "create", {"name": "ciubm-v2-vs-v1", "treatment_weight": "0.05"})
    wait(d, lambda d: d.current_url.endswith("/experiments/ciubm-v2-vs-v1"))
    assert attr_of(d, "#router tr[data-arm='treatment']", "data-weight") == "0.05"
    submit(d, "ramp", {"weights.treatment": "0.5"})
    wait(d, lambda d: attr_of(d, "#router tr[data-arm='treatment']", "data-weight") == "0.5")
    # the router's config: the A/B store it reads on every request now serves half the users the challenger
    store = core.store()
    exp = store.get("ciubm-v2-vs-v1")
    assert [(a.name, a.model, a.weight) for a in exp.serving_arms()] == [
        ("control", "alias:champion", 0.5), ("treatment", "alias:challenger", 0.5)]  # fmt: skip
    assert [(e["who"], e["action"]) for e in store.events("ciubm-v2-vs-v1")] == [
        ("alice", "create"),
        ("alice", "ramp"),
    ]
    assert d.find_element(By.ID, "no-results")

    # traffic arrives (logged as the router logs it): the live part of the page shows results and charts
    rows = [Exposure(f"e{i}", time.time() - 600 + i, exp.name, str(i % 60), exp.arm_for(i % 60).name,
                     "alias:champion@1", i % 97, 1, 1 + i % 10) for i in range(1200)]  # fmt: skip
    store.log_exposures(rows)
    store.log_clicks([r.exposure_id for i, r in enumerate(rows) if i % 11 == 0], time.time())
    wait(d, lambda d: d.find_elements(By.ID, "chart"), timeout=20)
    wait(
        d,
        lambda d: d.execute_script(
            "const i = document.getElementById('chart'); return i !== null && i.complete && i.naturalWidth > 0"
        ),
    )
    assert "Sample-ratio check" in text_of(d, "#exp-live") and "treatment" in text_of(d, "#arms")
    shot(d, "experiment")
    d.get(f"{url}/experiments")
    assert "ciubm-v2-vs-v1" in text_of(d, "#experiments") and "1200" in text_of(d, "#experiments")
    shot(d, "experiments")


def test_audit_page_shows_every_action(console: dict[str, Any], browser: Any) -> None:
    url, d = console["url"], browser
    d.get(f"{url}/audit")
    log = text_of(d, "#audit")
    for what in ("anonymous trigger data_check", "alice sign in", "alice trigger data_check",
                 "alice promote ctr-ciubm", "alice create experiment", "alice ramp"):  # fmt: skip
        assert what in log, what
    assert "refused (401)" in log
    shot(d, "audit")
