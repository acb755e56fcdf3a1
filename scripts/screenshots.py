"""Takes the README's dashboard screenshots: runs `greenscale up` with the demo pool, sends
it a burst of jobs, and photographs the dashboard in light and dark mode and at phone width.

Usage: screenshots.py GREENSCALE_BINARY OUTPUT_DIR
"""

import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

BIN, OUT = sys.argv[1], Path(sys.argv[2])
PORT = 18931
BASE = f"http://127.0.0.1:{PORT}"


def post(path, body):
    req = urllib.request.Request(BASE + path, json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req))


def get(path):
    return json.load(urllib.request.urlopen(BASE + path))


def browser(width, height, dark):
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for arg in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                f"--window-size={width},{height}", "--hide-scrollbars"]:
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {
        "features": [{"name": "prefers-color-scheme", "value": "dark" if dark else "light"}]})
    return driver


def shoot(name, width, height, dark):
    driver = browser(width, height, dark)
    try:
        driver.get(BASE + "/")
        time.sleep(3)  # the overview stream, jobs table and timeline arrive
        driver.save_screenshot(str(OUT / name))
        print(f"wrote {OUT / name}")
    finally:
        driver.quit()


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as data:
        up = subprocess.Popen([BIN, "up", "--listen", f"127.0.0.1:{PORT}", "--data-dir", data,
                               "--demo-load-time", "2s", "--concurrency", "2",
                               "--policy", "greenscale:cold_cost=20"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(100):
                try:
                    get("/healthz")
                    break
                except OSError:
                    time.sleep(0.1)
            time.sleep(6)
            for i in range(10):
                post("/v1/jobs", {"prompt": f"Summarise report {i}", "max_tokens": 60})
            time.sleep(12)
            for i in range(3):
                post("/v1/jobs", {"prompt": f"Follow-up question {i}", "max_tokens": 40})
            time.sleep(8)
            shoot("overview-light.png", 1280, 1500, dark=False)
            shoot("overview-dark.png", 1280, 1500, dark=True)
            shoot("overview-phone.png", 390, 1400, dark=False)
        finally:
            up.terminate()
            up.wait(timeout=60)


if __name__ == "__main__":
    main()
