"""The web interface in a real browser: headless Chromium from Debian, driven by Selenium.

A user signs in, browses a tree, a file, the history and a commit, creates a repository, adds a
collaborator and creates a token. The repository holds a script in its description, a file
name and its README: none may run (the page's Content-Security-Policy and escaping both stand in
its way; the check is that ``window.pwned`` stays unset). Screenshots of each step are kept in
``test-artifacts/screenshots`` (or ``$BULWARK_ARTIFACTS``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.helpers import Server, git, git_env
from tests.support.web_helpers import set_password

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.wait import WebDriverWait  # noqa: E402

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

pytestmark = [pytest.mark.timeout(240), pytest.mark.system]

PASSWORD = "correct horse battery"
EVIL = '<img src=x onerror="window.pwned=1">'
ARTIFACTS = Path(os.environ.get("BULWARK_ARTIFACTS", Path(__file__).parent.parent / "test-artifacts")) / "screenshots"


def _chromium() -> tuple[str, str]:
    browser = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.fail("the browser tests need Debian's chromium and chromium-driver (make test installs them)")
    return browser, driver


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("browser")
    srv = Server(data_dir=root / "data").start()
    try:
        alice = srv.create_user("alice")
        set_password(srv, "alice", PASSWORD)
        srv.create_user("bob")
        srv.create_repo(alice, "hello")
        srv.api("PATCH", "/repos/alice/hello", token=alice, json={"description": f"greetings {EVIL}"})
        env = git_env(root / "home")
        (root / "home").mkdir()
        work = root / "work"
        git("init", "-q", "-b", "main", str(work), env=env)
        (work / "src").mkdir()
        (work / "src" / "app.py").write_text("def main():\n    return 42\n")
        (work / f"{EVIL}.txt").write_text("x\n")
        (work / "README.md").write_text(f"# Hello\n\n<script>window.pwned = 1</script>\n{EVIL}\n\nText.\n")
        git("add", "-A", cwd=work, env=env)
        git("commit", "-qm", f"first {EVIL}", cwd=work, env=env)
        (work / "src" / "app.py").write_text("def main():\n    return 43\n")
        git("commit", "-qam", "answer changes", cwd=work, env=env)
        git("push", "-q", srv.remote("alice", "hello", token=alice), "main", cwd=work, env=env)
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    binary, driver_path = _chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900", f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(30)
    driver.implicitly_wait(10)  # a click's page may still be loading when the next element is looked for
    try:
        yield driver
    finally:
        driver.quit()


def _shot(driver: WebDriver, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def _at(driver: WebDriver, suffix: str) -> None:
    WebDriverWait(driver, 10).until(lambda d: d.current_url.endswith(suffix))


def _not_pwned(driver: WebDriver) -> None:
    assert driver.execute_script("return window.pwned === undefined")


def test_a_user_signs_in_browses_and_manages(server: Server, browser: WebDriver) -> None:
    d = browser
    find = d.find_element
    d.get(f"{server.url}/alice/hello")
    _not_pwned(d)
    assert "greetings <img" in find(By.ID, "repo-description").text  # shown as text
    assert "Hello" in find(By.ID, "readme").text
    assert f"{EVIL}.txt" in find(By.ID, "files").text
    _shot(d, "repository")

    find(By.ID, "sign-in").click()
    find(By.ID, "login").send_keys("alice")
    find(By.ID, "password").send_keys(PASSWORD)
    find(By.ID, "login-submit").click()
    _at(d, "/alice/hello")
    assert find(By.ID, "nav-profile").text == "alice"

    find(By.LINK_TEXT, "src/").click()
    find(By.LINK_TEXT, "app.py").click()
    assert "return 43" in find(By.ID, "code").text
    assert find(By.ID, "L2").is_displayed()
    _shot(d, "file")
    find(By.ID, "file-history").click()
    _at(d, "/commits/main/src/app.py")
    assert "answer changes" in find(By.ID, "commits").text
    find(By.CSS_SELECTOR, "#commits a.sha").click()
    assert find(By.ID, "commit-subject").text == "answer changes"
    assert "return 43" in find(By.CSS_SELECTOR, "tr.add").text
    _shot(d, "commit")
    d.get(f"{server.url}/alice/hello/commits/main")
    find(By.ID, "commits")
    d.find_elements(By.CSS_SELECTOR, "#commits a.sha")[1].click()
    _not_pwned(d)
    assert find(By.ID, "commit-subject").text == f"first {EVIL}"

    find(By.ID, "nav-new").click()
    find(By.ID, "new-name").send_keys("made-in-browser")
    find(By.ID, "new-description").send_keys(f"new {EVIL}")
    find(By.ID, "new-readme").click()
    find(By.ID, "new-submit").click()
    _at(d, "/alice/made-in-browser")
    assert "made-in-browser" in find(By.ID, "readme").text
    _not_pwned(d)
    _shot(d, "new-repository")

    find(By.ID, "tab-settings").click()
    _at(d, "/settings")
    find(By.ID, "collaborator-login").send_keys("bob")
    find(By.ID, "collaborator-add").click()
    assert "Collaborator added." in find(By.ID, "message").text
    assert "bob" in find(By.ID, "collaborators").text
    _shot(d, "settings")

    find(By.ID, "nav-settings").click()
    _at(d, "/settings")
    find(By.ID, "token-note").send_keys("from the browser")
    find(By.ID, "token-submit").click()
    token = find(By.ID, "new-token").get_attribute("value")
    assert token is not None and token.startswith("bwk_")
    assert server.api("GET", "/user", token=token).json()["login"] == "alice"
    _shot(d, "token")

    find(By.ID, "sign-out").click()
    assert find(By.ID, "sign-in").is_displayed()
