"""The review end to end in a real headless browser (Debian's chromium + chromium-driver, Selenium):
a real `bcscan scan` of a synthetic batch, `bcscan review` serving it, the worklist opened with the
token, a cell reclassified by keyboard, the patient signed off; then review.sqlite, patients.csv and
the regenerated PDF say so."""
from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request

import pandas as pd
import pytest
from click.testing import CliRunner

from bcscan.cli.main import main
from bcscan.review.store import DATABASE
from bcscan.testing.synthetic import draw_smear, write_field_png, write_pyramidal_tiff

pypdf = pytest.importorskip("pypdf")
webdriver = pytest.importorskip("selenium.webdriver")

MPP = 0.25
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="needs Debian's chromium and chromium-driver (apt-get install chromium "
                                       "chromium-driver; .ci/run installs them)")


@pytest.fixture
def browser():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(5)
    yield driver
    driver.quit()


@pytest.fixture
def scanned(tmp_path, untrained_model):
    """A real `bcscan scan` of two patients: a pyramidal slide and a field image."""
    scans = tmp_path / "scans"
    for patient, (width, height, n, seed) in {"PAT-A": (1600, 1200, 8, 1), "PAT-B": (900, 700, 3, 2)}.items():
        rgb, _ = draw_smear(width, height, MPP, n, seed=seed)
        (scans / patient).mkdir(parents=True)
        if patient == "PAT-A":
            write_pyramidal_tiff(scans / patient / "slide.tif", rgb, MPP)
        else:
            write_field_png(scans / patient / "field.png", rgb, MPP)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["scan", str(scans), "--out", str(out), "--model", str(untrained_model),
                                       "--tile-workers", "0", "--quiet"])
    assert result.exit_code == 0, result.output
    return out


def test_reclassify_by_keyboard_and_sign_off_in_a_real_browser(scanned, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as until
    from selenium.webdriver.support.ui import WebDriverWait

    out = scanned
    cells = pd.read_csv(out / "cells.csv")
    mine = cells[cells.patient_id == "PAT-A"].assign(normal=lambda c: c.label == "normal")
    mine = mine.sort_values(["normal", "p_leukemic", "cell_id"], ascending=[True, False, True])  # the gallery's order
    assert len(mine) == 8
    process = subprocess.Popen([sys.executable, "-m", "bcscan.cli", "review", str(out)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        url = process.stdout.readline().strip()
        base = url.split("/?token=")[0]
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(base + "/", timeout=10)
        assert refused.value.code == 403

        browser.get(url)
        assert browser.current_url == base + "/"  # the token went into a cookie, out of the address bar
        rows = browser.find_elements(By.CSS_SELECTOR, "table.worklist tbody tr")
        assert sorted(r.find_element(By.TAG_NAME, "a").text for r in rows) == ["PAT-A", "PAT-B"]
        assert all(r.find_element(By.CLASS_NAME, "status").text == "not verified" for r in rows)
        browser.find_element(By.LINK_TEXT, "PAT-A").click()
        gallery = browser.find_elements(By.CSS_SELECTOR, "figure.cell")
        assert [int(c.get_attribute("data-cell")) for c in gallery] == mine.cell_id.tolist()
        body = browser.find_element(By.TAG_NAME, "body")
        body.send_keys("8")  # no reviewer name yet: refused, nothing stored
        assert "Enter your name" in browser.find_element(By.ID, "message").text
        browser.find_element(By.ID, "reviewer").send_keys("Dr Browser")
        gallery[0].click()
        body.send_keys(Keys.ARROW_RIGHT)
        assert "selected" in gallery[1].get_attribute("class")
        body.send_keys(Keys.ARROW_LEFT, "8")  # the first cell: not a white cell
        WebDriverWait(browser, 10).until(until.text_to_be_present_in_element((By.ID, "message"), "Stored"))
        first = gallery[0]
        assert first.find_element(By.CLASS_NAME, "review-label").text == "not a white cell"
        assert "selected" in gallery[1].get_attribute("class")  # moved on to the next cell
        body.send_keys(Keys.ARROW_LEFT)  # back: the cell's history says who changed it
        WebDriverWait(browser, 10).until(until.text_to_be_present_in_element(
            (By.ID, "history"), "Dr Browser: model's call → not a white cell"))
        browser.find_element(By.CSS_SELECTOR, "input[name=conclusion][value=inconclusive]").click()
        browser.find_element(By.ID, "sign-button").click()
        WebDriverWait(browser, 30).until(until.text_to_be_present_in_element((By.CSS_SELECTOR, ".flash"),
                                                                             "Signed off by Dr Browser"))
    finally:
        process.terminate()
        process.communicate(timeout=20)

    decided = mine.iloc[0]
    db = sqlite3.connect(out / DATABASE)
    assert db.execute("SELECT scan, cell_id, label, previous_label, reviewer FROM decisions").fetchall() == [
        ("PAT-A/slide.tif", int(decided.cell_id), "not a white cell", None, "Dr Browser")]
    blasts = int((mine.label == "leukemic").sum()) - int(decided.label == "leukemic")
    assert db.execute("SELECT reviewer, n_cells, n_blasts, conclusion FROM signoffs").fetchall() == [
        ("Dr Browser", 7, blasts, "inconclusive")]

    patients = pd.read_csv(out / "patients.csv", dtype=str, keep_default_na=False).set_index("patient_id")
    assert patients.loc["PAT-A", ["verified_by", "verified_cells", "verified_blasts"]].tolist() == [
        "Dr Browser", "7", str(blasts)]
    assert patients.loc["PAT-B", "verified_flag"] == "unverified"
    text = "\n".join(page.extract_text() for page in pypdf.PdfReader(out / "reports" / "PAT-A.pdf").pages)
    assert f"{blasts} blasts of 7 white cells" in text and "Dr Browser" in text
    assert "Reclassified cells (1)" in text and "not a white cell" in text
