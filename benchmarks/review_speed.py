"""The review screen's speed (issue 25): a patient page of N cells until the browser's load event
(the crops in view cut from the scan on demand), and decisions stored, each a POST answered after
its SQLite commit.  A real `bcscan review` process on 127.0.0.1; the page timed in headless chromium
(Debian's chromium + chromium-driver) when it is installed, else the HTML alone.

    python benchmarks/review_speed.py [--cells 500] [--decisions 50] [--screenshots docs/]

--screenshots also saves the worklist and the patient page as PNGs (README's pictures).
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path

from bcscan.testing.runs import make_out_dir


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = shutil.which("chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,800"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def screenshot(driver, path: Path) -> None:
    """The page as a small PNG (a palette of 96 colours)."""
    from PIL import Image

    driver.save_screenshot(str(path))
    Image.open(path).convert("RGB").quantize(colors=96).save(path, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=500)
    parser.add_argument("--decisions", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--screenshots", type=Path)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="review-speed-"))
    out = make_out_dir(root, {"PAT-500": [{"name": "slide.tif", "kind": "slide", "n": args.cells, "leukemic": 0.08,
                                           "size": (6000, 5000)}],
                              "PAT-NEG": [{"name": "field.png", "kind": "field", "n": 60, "leukemic": 0.0,
                                           "size": (2000, 1500)}]})
    process = subprocess.Popen([sys.executable, "-m", "bcscan.cli", "review", str(out), "--reviewer", "Dr Bench"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        url = process.stdout.readline().strip()
        base, token = url.split("/?token=")
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
        opener.open(url).read()
        html = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            page = opener.open(base + "/patient/0").read()
            html.append(time.perf_counter() - start)
        n_cells = page.count(b'<figure class="cell ')
        loads = []
        if shutil.which("chromium") and shutil.which("chromedriver"):
            driver = browser()
            try:
                driver.get(url)
                if args.screenshots:
                    args.screenshots.mkdir(parents=True, exist_ok=True)
                    screenshot(driver, args.screenshots / "review-worklist.png")
                for _ in range(args.rounds):
                    driver.get(base + "/patient/0")
                    loads.append(driver.execute_script(
                        "const t = performance.getEntriesByType('navigation')[0]; return t.loadEventEnd;") / 1000)
                if args.screenshots:
                    screenshot(driver, args.screenshots / "review-patient.png")
            finally:
                driver.quit()
        stored = []
        cells = list(range(args.decisions))
        for i in cells:
            body = json.dumps({"scan": 0, "cell": i, "label": "lymphocyte" if i % 2 else "blast",
                               "reviewer": "Dr Bench"}).encode()
            request = urllib.request.Request(base + "/decide", data=body, headers={
                "Content-Type": "application/json", "X-Review-Token": token})
            start = time.perf_counter()
            opener.open(request).read()
            stored.append(time.perf_counter() - start)
    finally:
        process.terminate()
        process.communicate(timeout=30)
        shutil.rmtree(root, ignore_errors=True)

    def ms(values: list[float]) -> str:
        if not values:
            return "not measured (no chromium)"
        return (f"median {1000 * statistics.median(values):.0f} ms, max {1000 * max(values):.0f} ms "
                f"({len(values)} runs)")

    print(f"| patient page, {n_cells} cells: HTML | {ms(html)} |")
    print(f"| patient page, {n_cells} cells: until the load event in chromium (crops in view cut) | {ms(loads)} |")
    print(f"| decision POSTed and committed | {ms(stored)} |")


if __name__ == "__main__":
    main()
