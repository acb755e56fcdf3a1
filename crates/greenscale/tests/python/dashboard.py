"""Drives the dashboard of a running `greenscale up` (demo pool) in headless Chromium.

Usage: dashboard.py BASE_URL
Checks: a prompt submitted in the page gets its answer; the pool's replica count on the page
goes 0 -> 1 -> 0; the timeline has value ticks on both scales and shows the ~1 s the job
waited for the cold start; the jobs table shows the job succeeded with measured times; a
prompt full of markup is shown as text and runs no script. Exits non-zero with a message on failure.
"""

import sys
import time

from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, NoSuchElementException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

BASE = sys.argv[1]
XSS = "<img src=x onerror=alert(1)><script>alert(2)</script>"


def browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for arg in ["--headless", "--no-sandbox", "--disable-gpu",
                "--disable-background-networking", "--window-size=1280,1600"]:
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)


def wait(what, check, within=30.0):
    deadline = time.time() + within
    while time.time() < deadline:
        try:
            value = check()
            if value:
                return value
        except NoSuchElementException:
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for: {what}")


def no_alert(driver):
    try:
        alert = driver.switch_to.alert
        raise AssertionError(f"a script ran: alert({alert.text!r})")
    except NoAlertPresentException:
        pass


def text(driver, css):
    """The text of the first element matching `css`, read in one step (the page re-renders
    parts of itself every second, so element handles go stale)."""
    value = driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.innerText : null;", css)
    if value is None:
        raise NoSuchElementException(css)
    return value


def job_rows(driver):
    """(status, wait, run) of each row of the jobs table."""
    return driver.execute_script("""
        return [...document.querySelectorAll('#jobs-body tr')].map(r => ['status', 'wait', 'run']
            .map(f => { const c = r.querySelector(`[data-field="${f}"]`); return c ? c.innerText : ''; }));
    """)


def submit(driver, prompt):
    box = driver.find_element(By.ID, "prompt")
    box.clear()
    box.send_keys(prompt)
    driver.find_element(By.ID, "send").click()


def main():
    driver = browser()
    try:
        driver.get(BASE + "/")
        replicas = lambda: text(driver, '[data-pool="demo"] [data-field="replicas"]')
        wait("the demo pool shown at 0 replicas", lambda: replicas() == "0")
        assert "demo model" in text(driver, '[data-pool="demo"]'), "the page says it is a demo"
        # The declared GPU is shown, with nothing on it (the demo pool needs no GPU).
        gpu = text(driver, '[data-gpu="0"] [data-field="gpu-free"]')
        assert gpu == "1 GiB, 1 GiB free", f"GPU card: {gpu!r}"

        submit(driver, "Say hello to the dashboard")
        seen = ["0"]
        deadline = time.time() + 90
        while time.time() < deadline:
            r = replicas()
            if r != seen[-1]:
                seen.append(r)
            done = "succeeded" in text(driver, "#answer-status")
            if done and len(seen) >= 3 and seen[-1] == "0":
                break
            time.sleep(0.1)
        assert "1" in seen and seen[-1] == "0", f"replica count on the page went {seen}"
        answer = text(driver, "#answer")
        assert answer.startswith("[demo]"), f"answer shown: {answer!r}"
        print(f"replicas seen on the page: {' -> '.join(seen)}; answer: {answer[:40]!r}")

        # The timeline: value ticks on both scales and times, and the first job's wait for
        # the 1 s cold start (a burst shorter than a timeline point) shows as queue depth.
        def timeline():
            driver.execute_script("refreshTimeline()")
            return driver.execute_script("""
                const s = document.querySelector('#chart svg');
                if (!s) return null;
                const t = (c) => [...s.querySelectorAll(c)].map(e => e.textContent);
                return {label: s.getAttribute('aria-label'), replicas: t('.tick-replicas'),
                        queue: t('.tick-queue'), all: t('text.tick')};
            """)
        chart = wait("a timeline showing the burst",
                     lambda: (lambda c: c if c and "and 0 waiting jobs" not in c["label"] else None)(timeline()))
        assert len(chart["replicas"]) >= 2 and chart["replicas"][0] == "0", chart
        assert len(chart["queue"]) >= 2 and chart["queue"][0] == "0", chart
        assert "time (local)" in chart["all"] and any(":" in t for t in chart["all"]), chart
        print(f"timeline: {chart['label']} ticks replicas {chart['replicas']}, queue {chart['queue']}")

        # No price is set for the demo pool: the cost card counts in replica-hours and says
        # what "saving" means.
        saving = text(driver, '[data-pool="demo"] [data-field="cost-saving"]')
        assert "replica-h" in saving, f"cost shown with its unit: {saving!r}"
        assert "Saving:" in text(driver, '[data-pool="demo"] .cost'), "saving is explained"

        row = wait("the job in the table as succeeded",
                   lambda: next((r for r in job_rows(driver) if r[0] == "succeeded"), None))
        _, wait_s, run_s = row
        assert wait_s.endswith(" s") and run_s.endswith(" s"), f"times shown: {wait_s!r} {run_s!r}"
        assert float(wait_s.split()[0]) >= 1.0, f"the wait includes the cold start: {wait_s}"
        print(f"jobs table: succeeded, wait {wait_s}, run {run_s}")

        submit(driver, XSS)
        wait("the markup prompt's answer", lambda: "succeeded" in text(driver, "#answer-status"), 90)
        no_alert(driver)
        assert not driver.find_elements(By.CSS_SELECTOR, "main img"), "markup became an element"
        open_newest = "const b = document.querySelector('#jobs-body tr button'); if (b) b.click();"
        wait("the markup job's record", lambda: driver.execute_script(open_newest) or
             XSS in text(driver, "#detail-prompt"))
        assert text(driver, "#detail-prompt") == XSS, text(driver, "#detail-prompt")
        no_alert(driver)
        assert not driver.find_elements(By.CSS_SELECTOR, "main img, main script"), "markup became an element"
        print("markup prompt shown as text; no script ran")
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
