"""The web dashboard in a real browser: Debian's headless Chromium driven by Selenium.

Each page is photographed at a phone's and a desktop's width into screenshots/ (not committed),
so a person can look at them. The tests wait for elements, never for time.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from storage import deploys as rows
from tests.harness import APPROVER_1, ENGINEER
from tests.test_deploy_commands import card_post, deploy_server  # noqa: F401 (fixture)

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SHOTS = Path(__file__).resolve().parents[1] / "screenshots"
PHONE, DESKTOP = (390, 844), (1280, 900)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
                       reason="needs Debian's chromium and chromium-driver (make test installs them)"),
]


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="recess-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", f"--window-size={DESKTOP[0]},{DESKTOP[1]}"):
        options.add_argument(flag)
    # An explicit driver path: Selenium Manager never tries to download one.
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(driver, css: str, timeout: float = 30):  # noqa: ANN001, ANN201
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(ec.presence_of_element_located((By.CSS_SELECTOR, css)))


def wait_text(driver, css: str, text: str, timeout: float = 30) -> None:  # noqa: ANN001
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, css), text))


def photograph(driver, name: str) -> None:  # noqa: ANN001
    SHOTS.mkdir(exist_ok=True)
    for label, (w, h) in (("phone", PHONE), ("desktop", DESKTOP)):
        driver.set_window_size(w, h)
        driver.save_screenshot(str(SHOTS / f"{name}-{label}.png"))
    driver.set_window_size(*DESKTOP)


def submit_form(driver, fields: dict[str, str]) -> None:  # noqa: ANN001
    """Posts a form to /dashboard/flags from the page, as a person crafting one would."""
    driver.execute_script(
        "const f = document.createElement('form'); f.method = 'post'; f.action = '/dashboard/flags';"
        "for (const [k, v] of Object.entries(arguments[0])) { const i = document.createElement('input');"
        " i.type = 'hidden'; i.name = k; i.value = v; f.appendChild(i); }"
        "document.body.appendChild(f); f.submit();", fields)


def live_deploy(deploy_server, slack):  # noqa: ANN001, ANN201, F811
    srv = deploy_server()
    srv.command("/deploy", "web v2")
    card_post(slack, 2, srv.rt.store)
    srv.click("deploy_approve", 2, user=APPROVER_1, message_ts=rows.get(srv.rt.store, 2)["card_ts"])
    slack.wait_for(lambda s: rows.get(srv.rt.store, 2)["status"] == "succeeded", timeout=60)
    return srv


def test_sign_in_follow_a_deploy_and_toggle_a_flag_for_one_school(deploy_server, slack, browser):  # noqa: F811
    from selenium.webdriver.common.by import By

    srv = live_deploy(deploy_server, slack)
    browser.get(srv.dashboard_link(APPROVER_1))
    wait_text(browser, "#signed-in-as", APPROVER_1)  # the link's page signs in by itself
    live = wait_for(browser, 'tr[data-service="web"][data-env="production"] .live-version')
    assert live.text == "v2"
    photograph(browser, "overview")

    live.click()
    wait_for(browser, "#steps")
    steps = browser.find_element(By.CSS_SELECTOR, "#steps").text
    for name in ("build", "start_green", "health", "shift"):
        assert name in steps
    assert browser.find_element(By.CSS_SELECTOR, "#status").text == "succeeded"
    photograph(browser, "deploy")

    browser.get(f"{srv.url}/dashboard/flags?tenant=la-elementary")
    wait_for(browser, 'button[data-toggle="ai_safety_v2:on"]').click()
    wait_text(browser, "#notice", "ai_safety_v2")
    photograph(browser, "flags")
    answer = srv.http.post("/ofrep/v1/evaluate/flags/ai_safety_v2", headers={"Authorization": "Bearer test-key-for-ofrep-0001"},
                           json={"context": {"targetingKey": "student-7", "tenant": "la-elementary"}})
    assert answer.json()["value"] is True

    for path, name, ready in (("/dashboard/deploys", "deploys", "#deploys"), ("/dashboard/metrics", "metrics", "#dora")):
        browser.get(srv.url + path)
        wait_for(browser, ready)
        photograph(browser, name)


def test_the_browser_is_refused_spent_links_toggles_without_rights_and_forms_without_csrf(deploy_server, slack, browser):  # noqa: F811
    from selenium.webdriver.common.by import By

    srv = deploy_server()
    link = srv.dashboard_link(ENGINEER)
    browser.get(link)
    wait_text(browser, "#signed-in-as", ENGINEER)

    browser.get(link)  # the same link again: spent
    wait_text(browser, "#problem", "already used")
    photograph(browser, "spent-link")

    browser.get(f"{srv.url}/dashboard/flags")
    wait_for(browser, "#not-admin")
    assert not browser.find_elements(By.CSS_SELECTOR, "button[data-toggle]")
    csrf = browser.find_element(By.CSS_SELECTOR, 'input[name="csrf"]').get_attribute("value")
    submit_form(browser, {"csrf": csrf, "flag": "ai_safety_v2", "tenant": "lincoln-high", "value": "on"})
    wait_text(browser, "#problem", "flag admins")
    photograph(browser, "refused-toggle")

    browser.get(f"{srv.url}/dashboard/flags")
    wait_for(browser, "#flag-matrix")
    submit_form(browser, {"flag": "ai_safety_v2", "tenant": "lincoln-high", "value": "on"})
    wait_text(browser, "#problem", "CSRF")
    from commands.flags import FlagBook

    assert FlagBook.for_store(srv.rt.store).evaluate("ai_safety_v2", "u", tenant="lincoln-high").value is False
