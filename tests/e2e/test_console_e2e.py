"""The console (GET / on the boundary) in a real browser: Debian's chromium, headless, driven
by Selenium through Debian's chromium-driver (nothing downloaded at test time), against the
real stack loaded with a demo data set of 14 symbols. Screenshots of each view go to the
test's output directory; STEGA_UPDATE_SCREENSHOTS=1 also writes the README's picture of the
correlations view (docs/console-correlations.png)."""
import datetime
import json
import os
import shutil
import time
import urllib.parse
import uuid

import numpy as np
import pika
import pytest
import requests

from conftest import ROOT, wait_until

# Selenium Manager must not fetch a driver or a browser: Debian's are given below.
os.environ.setdefault("SE_OFFLINE", "true")
selenium = pytest.importorskip("selenium", reason="selenium is installed by make test (tests/requirements.txt)")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

# Three sectors and gold: correlations from about -0.3 to 0.9, so the heatmap shows both ends.
DEMO = {
    "AAPL": ("tech", 0.9), "MSFT": ("tech", 0.85), "NVDA": ("tech", 0.8), "GOOG": ("tech", 0.75), "META": ("tech", 0.7),
    "JPM": ("banks", 0.9), "BAC": ("banks", 0.85), "GS": ("banks", 0.8), "MS": ("banks", 0.75),
    "XOM": ("energy", 0.9), "CVX": ("energy", 0.85), "COP": ("energy", 0.8),
    "GLD": ("gold", 0.9), "TLT": ("rates", 0.9),
}
DAYS = 90
WINDOW = 60


def trading_days(count, start=datetime.date(2024, 1, 2)):
    days, day = [], start
    while len(days) < count:
        if day.weekday() < 5:
            days.append(day.isoformat())
        day += datetime.timedelta(days=1)
    return days


def demo_prices(seed=7):
    """Closing prices from a market factor, a factor per sector and noise (seeded)."""
    rng = np.random.default_rng(seed)
    market = rng.normal(0, 0.01, DAYS)
    sectors = {name: rng.normal(0, 0.012, DAYS) for name in ("tech", "banks", "energy", "gold", "rates")}
    loadings = {"tech": 0.8, "banks": 0.7, "energy": 0.4, "gold": -0.25, "rates": -0.45}
    prices = {}
    for symbol, (sector, weight) in DEMO.items():
        r = loadings[sector] * market + weight * sectors[sector] + rng.normal(0, 0.006, DAYS)
        prices[symbol] = 100 * np.exp(np.cumsum(r))
    return prices


def browser_available():
    return shutil.which("chromium") and shutil.which("chromedriver")


@pytest.fixture
def console_stack(stack_factory):
    stack = stack_factory()
    for name in ("returns-worker", "correlations-worker", "returns-api", "correlations-api"):
        stack.start(name)
    stack.env["STEGA_RETURNS_URL"] = stack.processes["returns-api"].url
    stack.env["STEGA_CORRELATIONS_URL"] = stack.processes["correlations-api"].url
    stack.start("boundary")
    return stack


@pytest.fixture
def browser(tmp_path):
    if not browser_available():
        pytest.fail("chromium and chromium-driver are not installed (make test installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1400,1000", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver"), log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()


def console_errors(driver):
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def load_demo(api):
    days = trading_days(DAYS)
    ops = []
    for symbol, closes in demo_prices().items():
        body = {"symbol": symbol, "prices": [{"date": d, "close": round(float(c), 4)} for d, c in zip(days, closes)]}
        r = requests.post(api.url + "/prices", json=body, timeout=10)
        assert r.status_code == 202, r.text
        ops.append(r.json()["operation_id"])
    return days, ops


def matrix(stack, symbols, window=WINDOW):
    r = requests.get(stack.processes["correlations-api"].url + "/correlations",
                     params={"symbols": ",".join(symbols), "window": window}, timeout=10)
    return r.json() if r.status_code == 200 else None


def wait_attribute(driver, css, attribute, value, timeout):
    def ok():
        nodes = driver.find_elements(By.CSS_SELECTOR, css)
        return nodes and nodes[0].get_attribute(attribute) == value
    wait_until(f"{css} {attribute}={value}", ok, timeout)


def test_the_console_in_a_real_browser(console_stack, browser, tmp_path):
    stack = console_stack
    boundary = stack.processes["boundary"]
    symbols = list(DEMO)
    days, _ = load_demo(stack.processes["returns-api"])

    def complete():
        body = matrix(stack, symbols)
        return body and body["as_of"] == days[-1] and all(v is not None for row in body["matrix"] for v in row) and body
    wait_until("the demo's correlations", complete, timeout=60)

    # --- Events: rows appear within 2 s of a POST; the pattern filters; pause holds them.
    pattern = "returns.events.*"
    browser.get(f"{boundary.url}/#events?pattern={urllib.parse.quote(pattern, safe='')}")
    wait_attribute(browser, "#link-status", "data-link", "live", 10)
    assert browser.find_element(By.ID, "events-pattern").get_attribute("value") == pattern
    time.sleep(0.3)  # the subscription reaches the boundary
    extra = {"symbol": "ZZZ", "prices": [{"date": d, "close": 50 + i} for i, d in enumerate(days[:5])]}
    posted = requests.post(stack.processes["returns-api"].url + "/prices", json=extra, timeout=5)
    accepted_at = time.monotonic()
    op = posted.json()["operation_id"]

    def rows_of_op():
        rows = browser.find_elements(By.CSS_SELECTOR, "#events-rows tr[data-routing-key]")
        return [r for r in rows if r.find_elements(By.CSS_SELECTOR, f'a[title="{op}"]')]
    wait_until("the write's event rows", lambda: len(rows_of_op()) >= 2, timeout=2)
    seen_after = time.monotonic() - accepted_at
    keys = {r.get_attribute("data-routing-key") for r in rows_of_op()}
    assert keys == {"returns.events.prices_recorded", "returns.events.returns_calculated"}, keys
    assert all(r.get_attribute("data-event-id") for r in rows_of_op())
    all_keys = {r.get_attribute("data-routing-key") for r in browser.find_elements(By.CSS_SELECTOR, "#events-rows tr")}
    assert all(k.startswith("returns.events.") for k in all_keys), all_keys
    # A row expands to its JSON.
    first = rows_of_op()[0]
    first.find_element(By.TAG_NAME, "summary").click()
    shown = json.loads(first.find_element(By.TAG_NAME, "pre").text)
    assert shown["correlation_id"] == op and shown["event_id"] == first.get_attribute("data-event-id")
    browser.save_screenshot(str(tmp_path / "console-events.png"))

    browser.find_element(By.ID, "events-pause").click()
    count = len(browser.find_elements(By.CSS_SELECTOR, "#events-rows tr"))
    extra["prices"] = [{"date": days[5], "close": 56}]
    requests.post(stack.processes["returns-api"].url + "/prices", json=extra, timeout=5)
    time.sleep(1.5)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#events-rows tr")) == count  # paused
    browser.find_element(By.ID, "events-pause").click()
    print(f"event rows shown {seen_after:.2f} s after the 202")

    # Hostile input: markup in a payload published straight to the exchange is shown as
    # text (no element made, nothing run: the policy would log a violation); a bad pattern or
    # operation id in the fragment is an error on the page, not a script error.
    hostile = '<img src=x id=injected onerror="document.title=1">'
    conn = pika.BlockingConnection(pika.URLParameters(stack.amqp_url))
    conn.channel().basic_publish(stack.exchange, "returns.events.prices_recorded",
                                 json.dumps({"symbol": hostile, "count": 1}),
                                 pika.BasicProperties(message_id=str(uuid.uuid4()), correlation_id=str(uuid.uuid4()),
                                                      type="prices_recorded", app_id="returns",
                                                      content_type="application/json"))
    conn.close()
    wait_until("the hostile row", lambda: hostile in browser.find_element(By.ID, "events-rows").text, timeout=5)
    assert browser.find_elements(By.ID, "injected") == [] and browser.title == "stega console"
    browser.get(f"{boundary.url}/#events?pattern=a..b")
    wait_until("the pattern error", lambda: "not a routing-key pattern" in browser.find_element(By.ID, "events-error").text,
               timeout=5)
    browser.get(f"{boundary.url}/#op=%3Cscript%3E")
    wait_until("the id error", lambda: "UUID" in browser.find_element(By.ID, "op-note").text, timeout=5)
    browser.get(f"{boundary.url}/#events?pattern={urllib.parse.quote(pattern, safe='')}")
    wait_attribute(browser, "#link-status", "data-link", "live", 10)

    # --- Operation: a click on the id opens it; it reaches succeeded with its timeline.
    browser.get(f"{boundary.url}/#events?pattern={urllib.parse.quote(pattern, safe='')}")
    wait_attribute(browser, "#link-status", "data-link", "live", 10)
    time.sleep(0.3)
    again = requests.post(stack.processes["returns-api"].url + "/prices",
                          json={"symbol": "ZZZ", "prices": [{"date": days[6], "close": 57}]}, timeout=5)
    op = again.json()["operation_id"]
    wait_until("the second write's rows", lambda: rows_of_op(), timeout=5)
    rows_of_op()[0].find_element(By.CSS_SELECTOR, f'a[title="{op}"]').click()
    wait_attribute(browser, "[data-operation-status]", "data-operation-status", "succeeded", 15)
    assert browser.current_url.endswith(f"#op={op}")
    timeline = [li.get_attribute("data-routing-key") for li in browser.find_elements(By.CSS_SELECTOR, "#op-timeline li")]
    assert timeline[0] == "returns.events.prices_recorded" and "correlations.events.correlations_updated" in timeline
    assert len(timeline) == 3, timeline
    browser.save_screenshot(str(tmp_path / "console-operation.png"))

    # --- Correlations: every cell equals GET /correlations; hover and keys show a cell.
    # ZZZ (six closes) has no correlation over 60 returns: its cells are null, and marked.
    symbols = symbols + ["ZZZ"]
    browser.get(f"{boundary.url}/#correlations?symbols={','.join(symbols)}&window={WINDOW}")
    wait_until("the heatmap", lambda: len(browser.find_elements(By.CSS_SELECTOR, "#heatmap [data-a]")) == len(symbols) ** 2,
               timeout=10)
    expected = matrix(stack, symbols)
    index = {s: i for i, s in enumerate(expected["symbols"])}
    nulls = browser.find_elements(By.CSS_SELECTOR, '#heatmap [data-a="ZZZ"]')
    assert all(c.get_attribute("data-value") == "null" and "null" in c.get_attribute("class") for c in nulls)
    assert len(nulls) == len(symbols)

    def cells():
        found = {}
        for cell in browser.find_elements(By.CSS_SELECTOR, "#heatmap [data-a]"):
            a, b, value = cell.get_attribute("data-a"), cell.get_attribute("data-b"), cell.get_attribute("data-value")
            found[(a, b)] = json.loads(value)
        return found
    shown = cells()
    assert len(shown) == len(symbols) ** 2
    for (a, b), value in shown.items():
        want = expected["matrix"][index[a]][index[b]]
        assert (value is None) == (want is None), (a, b, value, want)
        if want is not None:
            assert abs(value - want) <= 1e-12, (a, b, value, want)
    values = [v for v in shown.values() if v is not None]
    assert min(values) < 0 < max(values)  # the demo spans the diverging scale
    assert len(values) == (len(symbols) - 1) ** 2
    # Ordered by clustering: the sectors sit together (AAPL's neighbours are tech).
    order = [c.text for c in browser.find_elements(By.CSS_SELECTOR, "#heatmap .label.row")]
    assert set(order) == set(symbols)
    tech = {i for i, s in enumerate(order) if s in DEMO and DEMO[s][0] == "tech"}
    assert max(tech) - min(tech) == len(tech) - 1, order
    cell = browser.find_element(By.CSS_SELECTOR, '#heatmap [data-a="AAPL"][data-b="MSFT"]')
    ActionChains(browser).move_to_element(cell).perform()
    wait_until("the hover readout", lambda: "observations" in browser.find_element(By.ID, "corr-readout").text, timeout=5)
    assert browser.find_element(By.ID, "corr-readout").text.startswith("AAPL × MSFT:")
    browser.save_screenshot(str(tmp_path / "console-correlations.png"))
    if os.environ.get("STEGA_UPDATE_SCREENSHOTS") == "1":
        browser.set_window_size(1400, 1300)  # the whole view, legend included
        browser.find_element(By.ID, "view-correlations").screenshot(str(ROOT / "docs" / "console-correlations.png"))
        browser.set_window_size(1400, 1000)
    browser.find_element(By.ID, "heatmap").send_keys(Keys.ARROW_DOWN)
    assert not browser.find_element(By.ID, "corr-readout").text.startswith("AAPL × MSFT:")

    # Re-drawn when a correlations_updated for these symbols arrives: one more day of AAPL.
    next_day = trading_days(DAYS + 1)[-1]
    requests.post(stack.processes["returns-api"].url + "/prices",
                  json={"symbol": "AAPL", "prices": [{"date": next_day, "close": 123.45}]}, timeout=5)
    wait_until("the heatmap re-drawn", lambda: next_day in browser.find_element(By.ID, "corr-meta").text, timeout=10)
    again = matrix(stack, symbols)
    shown = cells()
    for (a, b), value in shown.items():
        want = again["matrix"][index[a]][index[b]]
        assert want is None and value is None or abs(value - want) <= 1e-12

    # --- Symbol: prices and returns drawn, the summary's figures beside them.
    browser.get(f"{boundary.url}/#symbol=MSFT")
    wait_until("the charts", lambda: browser.find_elements(By.CSS_SELECTOR, "#price-chart svg path")
               and browser.find_elements(By.CSS_SELECTOR, "#return-chart svg rect"), timeout=10)
    summary = requests.get(stack.processes["returns-api"].url + "/returns/MSFT/summary", timeout=5).json()
    count = browser.find_element(By.CSS_SELECTOR, '#symbol-summary tr[data-field="count"] td').text
    assert int(count) == summary["count"] == DAYS - 1
    assert len(browser.find_elements(By.CSS_SELECTOR, "#return-chart svg rect")) == DAYS - 1
    assert len(browser.find_elements(By.CSS_SELECTOR, "#price-chart svg circle")) == DAYS
    browser.save_screenshot(str(tmp_path / "console-symbol.png"))

    # --- A narrow window: nothing wider than the screen but the heatmap's own scroller.
    browser.set_window_size(420, 900)
    for fragment in (f"#events?pattern={urllib.parse.quote(pattern, safe='')}", f"#correlations?symbols={','.join(symbols)}&window={WINDOW}",
                     "#symbol=MSFT", f"#op={op}"):
        browser.get(f"{boundary.url}/{fragment}")
        time.sleep(0.8)
        overflow = browser.execute_script("return document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 1, (fragment, overflow)
    browser.save_screenshot(str(tmp_path / "console-narrow.png"))

    # --- Keyboard: Tab reaches the views' links and the form's controls.
    browser.set_window_size(1400, 1000)
    browser.get(f"{boundary.url}/#correlations?symbols=AAPL,MSFT&window={WINDOW}")
    wait_until("a small heatmap", lambda: len(browser.find_elements(By.CSS_SELECTOR, "#heatmap [data-a]")) == 4, timeout=10)
    reached = []
    body = browser.find_element(By.TAG_NAME, "body")
    body.click()
    for _ in range(14):
        ActionChains(browser).send_keys(Keys.TAB).perform()
        active = browser.switch_to.active_element
        reached.append(active.get_attribute("id") or active.get_attribute("data-view-link") or active.tag_name)
    for wanted in ("events", "correlations", "corr-symbols", "corr-window", "heatmap"):
        assert wanted in reached, reached

    assert console_errors(browser) == []


def test_the_boundary_serves_the_console_and_bounds_its_reads(console_stack):
    boundary = console_stack.processes["boundary"]
    page = requests.get(boundary.url + "/", timeout=5)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert '<script src="/console/console.js"' in page.text
    script = requests.get(boundary.url + "/console/console.js", timeout=5)
    assert script.status_code == 200 and script.headers["Content-Type"].startswith("text/javascript")
    assert requests.get(boundary.url + "/console/nope.js", timeout=5).status_code == 404
    assert requests.get(boundary.url + "/console/..%2Fopenapi.json", timeout=5).status_code == 404
    # The apis' reads, passed through with their status and errors.
    assert requests.get(boundary.url + "/api/returns/symbols", timeout=5).json() == {"symbols": []}
    windows = requests.get(boundary.url + "/api/correlations/windows", timeout=5).json()["windows"]
    assert WINDOW in windows
    bad = requests.get(boundary.url + "/api/returns/returns/lower", timeout=5)
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_symbol"
    missing = requests.get(boundary.url + "/api/correlations/correlations", params={"symbols": "AAA", "window": "7"}, timeout=5)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_window"
    assert requests.post(boundary.url + "/api/returns/symbols", json={}, timeout=5).status_code == 405
    # An api that is down: 502 with a JSON error, and the boundary goes on.
    console_stack.processes["returns-api"].terminate()
    down = requests.get(boundary.url + "/api/returns/symbols", timeout=15)
    assert down.status_code == 502 and down.json()["error"]["code"] == "upstream_unreachable"
    assert requests.get(boundary.url + "/readyz", timeout=5).status_code == 200
