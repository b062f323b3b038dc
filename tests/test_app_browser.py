"""``losam app`` in a real browser: headless Chromium (Debian's chromium + chromium-driver) driven by Selenium against an
app the test starts on a free localhost port with the bundled tiny encoder.

The path a clinician takes: name the classes, upload an image and its mask, paint a second class with the brush,
train a few steps (live loss), cancel a longer run (its checkpoint stays), segment (image / overlay / mask, the area
table, the zip of masks, overlays and summary.csv), and zip the adapter. A screenshot of each stage is written to the
test's tmp folder (``stage-*.png``). Skipped with the reason when Chromium, chromedriver, Selenium or Gradio is
missing.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
CHROMEDRIVER = shutil.which("chromedriver")

try:
    import selenium  # noqa: F401
except ImportError:
    selenium = None
try:
    import importlib.util

    HAVE_GRADIO = importlib.util.find_spec("gradio") is not None
except (ImportError, ValueError):
    HAVE_GRADIO = False

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium chromium-driver)"),
    pytest.mark.skipif(CHROMEDRIVER is None, reason="chromedriver is not installed (apt-get install chromium-driver)"),
    pytest.mark.skipif(selenium is None, reason="selenium is not installed (pip install 'losam-peft[dev]')"),
    pytest.mark.skipif(not HAVE_GRADIO, reason="gradio is not installed (pip install 'losam-peft[app]')"),
]

SIZE = 96
STARTUP_SECONDS = 180
STEP_SECONDS = 240


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(condition, timeout: float, what: str, poll: float = 0.25):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = condition()
        except Exception as err:  # the page is still rendering
            last = err
        if last and not isinstance(last, Exception):
            return last
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("app-browser")
    workdir = root / "work"
    port = _free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="2")
    log = open(root / "server.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "losam_peft.cli", "app", "--port", str(port), "--workdir", str(workdir),
         "--base", "tiny"],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"

    def up():
        if process.poll() is not None:
            raise AssertionError(f"losam app exited with {process.returncode}:\n{(root / 'server.log').read_text()}")
        try:
            return urllib.request.urlopen(url, timeout=2).status == 200
        except OSError:
            return False

    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while not up():
            if time.monotonic() > deadline:
                raise AssertionError(f"losam app did not answer on {url}:\n{(root / 'server.log').read_text()}")
            time.sleep(0.5)
        yield url, workdir, root
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1400,1000", "--no-first-run", "--disable-extensions"):  # fmt: skip
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _files(tmp_path: Path) -> tuple[Path, Path]:
    from losam_peft.data.synthetic import fundus

    sample = fundus(SIZE, 5)
    image, mask = tmp_path / "eye.png", tmp_path / "eye_mask.png"
    Image.fromarray(sample.image).save(image)
    Image.fromarray((np.asarray(sample.mask) > 0).astype(np.uint8) * 255).save(mask)
    return image, mask


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def test_label_train_segment_and_take_home_in_a_browser(server, browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    url, workdir, root = server
    image_path, mask_path = _files(tmp_path)
    driver = browser

    def find(css):
        return driver.find_element(By.CSS_SELECTOR, css)

    def text(elem_id):
        return driver.find_element(By.ID, elem_id).text

    def tab(name):
        next(t for t in driver.find_elements(By.CSS_SELECTOR, "button[role=tab]") if t.text.startswith(name)).click()
        time.sleep(0.5)

    def shot(name):
        driver.save_screenshot(str(tmp_path / f"stage-{name}.png"))

    def set_field(css, value):
        field = find(css)
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys(str(value))
        field.send_keys(Keys.TAB)

    driver.get(url)
    _wait(lambda: find("#losam-image input[type=file]"), 60, "the page")
    assert "LoSAM" in driver.page_source
    shot("0-page")

    # 1 label: two classes, the uploaded vessel mask, and a painted lesion stroke
    set_field("#losam-labels textarea, #losam-labels input", "vessel, lesion")
    _wait(lambda: len(driver.find_elements(By.CSS_SELECTOR, "#losam-class label")) == 3, 30, "the class picker")
    find("#losam-image input[type=file]").send_keys(str(image_path))
    _wait(lambda: f"{SIZE}×{SIZE} pixels" in text("losam-status-label"), 60, "the image in the editor")
    find("#losam-mask input[type=file]").send_keys(str(mask_path))
    _wait(lambda: "uploaded" in text("losam-status-label"), 60, "the uploaded mask")
    uploaded_share = float(text("losam-status-label").split("vessel ")[1].split("%")[0])
    expected = 100 * (np.asarray(Image.open(mask_path)) > 0).mean()
    assert abs(uploaded_share - expected) < 0.01
    next(r for r in driver.find_elements(By.CSS_SELECTOR, "#losam-class label") if r.text == "lesion").click()
    time.sleep(1)
    canvas = find("#losam-editor canvas")
    ActionChains(driver).move_to_element_with_offset(canvas, -20, 10).click_and_hold().move_by_offset(40, 0) \
        .move_by_offset(0, 10).release().perform()  # fmt: skip
    _wait(lambda: "lesion 0.00%" not in text("losam-status-label") and "lesion" in text("losam-status-label"), 60,
          "the painted lesion stroke")  # fmt: skip
    status = text("losam-status-label")
    lesion_share = float(status.split("lesion ")[1].split("%")[0])
    assert lesion_share > 0.1, status
    preview = find("#losam-preview img")
    assert preview.get_attribute("src")
    shot("1-labelled")

    # 2 train a few steps: progress and the loss plot
    tab("2")
    set_field("#losam-steps input", 4)
    find("#losam-train").click()
    _wait(lambda: text("losam-train-status").startswith(("Done", "Error", "**Error")), STEP_SECONDS, "training")
    status = text("losam-train-status")
    assert status.startswith("Done: 4 steps"), status
    run = Path(status.split("adapter is in")[1].split(";")[0].strip())
    assert run.is_relative_to(workdir) and (run / "adapter_model.safetensors").is_file()
    assert driver.find_elements(By.CSS_SELECTOR, "#losam-loss canvas, #losam-loss svg")  # the plot is drawn
    shot("2-trained")

    # a longer run, cancelled: the checkpoint of its last step stays
    set_field("#losam-steps input", 5000)
    find("#losam-train").click()
    _wait(lambda: "Training: step" in text("losam-train-status"), STEP_SECONDS, "the first reported step")
    find("#losam-cancel").click()
    _wait(lambda: text("losam-train-status").startswith("Cancelled after step"), STEP_SECONDS, "the cancellation")
    status = text("losam-train-status")
    stopped_at = int(status.split("Cancelled after step ")[1].split()[0])
    kept = [p for p in workdir.glob("runs/*/checkpoint/state.json") if p.parent.parent != run]
    assert len(kept) == 1 and 1 <= stopped_at < 5000, status
    assert json.loads(kept[0].read_text())["step"] == stopped_at
    assert not (kept[0].parent.parent / "adapter_model.safetensors").exists()
    shot("3-cancelled")

    # 3 segment: an error is a message, then the image: image / overlay / mask, areas, the zip
    tab("3")
    find("#losam-segment").click()
    _wait(lambda: "Error" in text("losam-segment-status"), 60, "the error message")
    assert "upload at least one image" in text("losam-segment-status")
    assert "Traceback" not in driver.page_source
    find("#losam-images input[type=file]").send_keys(str(image_path))
    time.sleep(1)
    find("#losam-segment").click()
    _wait(lambda: "1 image(s) segmented" in text("losam-segment-status"), STEP_SECONDS, "the segmentation")
    pictures = _wait(lambda: [i for i in driver.find_elements(By.CSS_SELECTOR, "#losam-gallery img")
                              if i.get_attribute("src")] or None, 30, "the gallery")  # fmt: skip
    assert len(pictures) >= 3
    for picture in pictures[:3]:
        shown = Image.open(io.BytesIO(_fetch(picture.get_attribute("src"))))
        assert shown.size == (SIZE, SIZE)
    table = find("#losam-fractions").text
    assert "vessel %" in table and "lesion %" in table and "eye" in table
    link = _wait(lambda: find("#losam-results-zip a").get_attribute("href"), 30, "the results zip")
    archive = zipfile.ZipFile(io.BytesIO(_fetch(link)))
    assert sorted(archive.namelist()) == ["masks/eye.png", "overlays/eye.png", "summary.csv"]
    mask = np.asarray(Image.open(io.BytesIO(archive.read("masks/eye.png"))))
    assert mask.shape == (SIZE, SIZE) and int(mask.max()) <= 2
    assert "eye" in archive.read("summary.csv").decode()
    driver.execute_script("window.scrollTo(0, 600)")
    shot("4-segmented")

    # 4 take it home: the adapter zip; pushing is off without a token
    tab("4")
    find("#losam-zip-adapter").click()
    link = _wait(lambda: find("#losam-adapter-download a").get_attribute("href"), 60, "the adapter zip")
    names = set(zipfile.ZipFile(io.BytesIO(_fetch(link))).namelist())
    assert {"adapter_config.json", "adapter_model.safetensors", "preprocessor_config.json", "README.md",
            "base-encoder/model.safetensors"} <= names  # fmt: skip
    if not os.environ.get("HF_TOKEN"):
        assert "off" in text("losam-hub-note")
        assert not find("#losam-push").is_enabled()
    shot("5-home")

    # nothing uploaded was written outside the working folder; the page logged no error
    assert list((workdir / "uploads").rglob("eye.png")) and list((workdir / "uploads").rglob("eye_mask.png"))
    severe = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe
