"""The prediction page (engine/page.py, `--mode=serve`) of a tiny exported run of each task: its logic under
Streamlit's AppTest, and the page itself in headless Chromium, each checked against what the exported
SavedModel predicts for the same file."""

import functools
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import REPO, run_in_process
from engine import serve
from engine.config import Config, FlagError

TASKS = ("classification", "segmentation", "detection")
PAGE = os.path.join(REPO, "engine", "page.py")
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"

pytest.importorskip("streamlit", reason='the page needs Streamlit: pip install -e ".[app]"')


def trained_and_exported(task: str, data: str, run: str) -> str:
    """`run`: the task trained for 16 steps on `data` and exported as a SavedModel (with samples/), in this
    process: the page needs an export of each task, not launch.py's start (tested elsewhere)."""
    common = ["--model_dir=" + run, "--verbose=0"]
    run_in_process(f"--task={task}", "--dataset=shapes:" + data, "--epochs=2", "--train_steps=16", "--batch_size=32",
                   "--preview_batches=0", "--strategy=one_device", *common)
    run_in_process("--mode=export", "--formats=saved_model", "--parity_images=8", *common)
    return run


@pytest.fixture(scope="module")
def runs(tiny_shapes, tmp_path_factory) -> dict[str, str]:
    """An exported run of each task: {task: run}."""
    root = tmp_path_factory.mktemp("page")
    return {task: trained_and_exported(task, tiny_shapes, str(root / task)) for task in TASKS}


def samples(run: str) -> list[str]:
    """The sample images of the run's export, in the page's order."""
    folder = os.path.join(run, "export", "samples")
    return [os.path.join(folder, name) for name in sorted(os.listdir(folder))]


@functools.cache
def saved_model(run: str) -> tf.Module:
    """The run's exported SavedModel, loaded once."""
    return tf.saved_model.load(os.path.join(run, "export", "saved_model"))


def predicted(run: str, path: str) -> dict[str, np.ndarray]:
    """The run's exported SavedModel's outputs for the file at `path`, without the batch dimension."""
    with open(path, "rb") as f:
        outputs = saved_model(run).signatures["serving_default"](images=tf.constant([f.read()]))
    return {name: value.numpy()[0] for name, value in outputs.items()}


def class_names(run: str) -> list[str]:
    """The class names the run's SavedModel holds."""
    return [name.decode() for name in saved_model(run).signatures["metadata"]()["class_names"].numpy()]


def expected_headline(run: str, path: str) -> str:
    """The headline the page must show for the file at `path`: the SavedModel's prediction, in words."""
    found, names = predicted(run, path), class_names(run)
    if "probabilities" in found:
        return f"Prediction: {found['names'][0].decode()} ({found['scores'][0]:.2f})"
    if "mask" in found:
        height, width = found["original_size"]
        ids, counts = np.unique(found["mask"][:height, :width], return_counts=True)
        shares = sorted(((count / (height * width), int(i)) for i, count in zip(ids, counts)),
                        key=lambda item: (-item[0], item[1]))
        return "Classes: " + ", ".join(f"{names[i]} {share:.0%}" for share, i in shares if share >= 0.01)
    boxes = [f"{names[c]} {s:.2f}" for c, s in zip(found["classes"], found["scores"]) if c >= 0 and s >= 0.25]
    if boxes:
        return f"Detections: {len(boxes)} ({', '.join(boxes)})"
    scores = found["scores"][found["classes"] >= 0]
    return f"Detections: 0 ({f'best score {scores.max():.2f}, below 0.25' if scores.size else 'no candidates'})"


def app(run: str, monkeypatch):
    """The page of the run's export under Streamlit's AppTest, run once."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setattr(sys, "argv", [PAGE, "--export=" + os.path.join(run, "export")])
    return AppTest.from_file(PAGE, default_timeout=120).run()


@pytest.mark.slow
@pytest.mark.parametrize("task", TASKS)
def test_a_picked_sample_shows_the_saved_models_prediction(task, runs, monkeypatch):
    page = app(runs[task], monkeypatch)
    assert not page.exception and not page.error
    assert page.title[0].value == f"{task.capitalize()}: {', '.join(class_names(runs[task]))}"
    pictures = samples(runs[task])
    assert page.radio[0].options == [f"#{n}" for n in range(1, 9)] and page.radio[0].value == pictures[0]
    page.radio[0].set_value(pictures[3]).run()
    assert not page.exception and not page.error
    assert [h.value for h in page.subheader] == [expected_headline(runs[task], pictures[3])]
    if task == "classification":
        assert len(page.table[0].value) == 5  # the top 5 classes


@pytest.mark.slow
@pytest.mark.parametrize("name, cut", [("noise.png", None), ("truncated.jpg", 0.5)])
def test_an_image_that_does_not_decode_is_named_in_an_error(name, cut, runs, monkeypatch):
    page = app(runs["classification"], monkeypatch)
    with open(page.radio[0].value, "rb") as f:
        encoded = f.read()
    broken = encoded[:int(len(encoded) * cut)] if cut else b"\x89PNG not really"
    page.file_uploader[0].set_value((name, broken, "image/jpeg")).run()
    assert not page.exception
    assert [e.value.split(" ")[0] for e in page.error] == [name]
    assert not page.subheader


def test_detection_view_draws_and_lists_only_boxes_scoring_a_quarter_or_more():
    from engine import page

    found = {"boxes": np.array([[2, 4, 30, 40], [10, 10, 20, 20], [0, 0, 0, 0]], np.float32),
             "scores": np.array([0.91, 0.2, 0.0], np.float32), "classes": np.array([1, 0, -1], np.int32)}
    pixels = np.zeros((48, 64, 3), np.uint8)
    headline, picture, rows = page.detection_view(found, pixels, ["circle", "square"])
    assert headline == "Detections: 1 (square 0.91)"
    assert rows == [{"class": "square", "score": 0.91, "x0": 2.0, "y0": 4.0, "x1": 30.0, "y1": 40.0}]
    factor = page.SHOWN_PX // 64
    assert picture.shape == (48 * factor, 64 * factor, 3) and picture.any()
    below = {**found, "scores": np.array([0.24, 0.2, 0.0], np.float32)}
    assert page.detection_view(below, pixels, ["circle", "square"])[0] == "Detections: 0 (best score 0.24, below 0.25)"


def test_serve_finds_the_export_and_says_how_to_make_a_missing_one(tmp_path):
    run = tmp_path / "run"
    (run / "export" / "saved_model").mkdir(parents=True)
    export = str(run / "export")
    assert serve.export_dir(Config(mode="serve", model_dir=str(run))) == export
    assert serve.export_dir(Config(mode="serve", export=export + "/saved_model/")) == export
    with pytest.raises(FlagError, match=f"run `python launch.py --mode=export --model_dir={tmp_path}` first"):
        serve.export_dir(Config(mode="serve", model_dir=str(tmp_path)))


def browser_or_skip():
    """Skips, saying what is missing, without Chromium, chromedriver or Selenium."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not shutil.which(path):
            pytest.skip(f"{path} is missing: apt-get install chromium chromium-driver (.ci/run does)")
    if importlib.util.find_spec("selenium") is None:
        pytest.skip("selenium is not installed")


def free_port() -> int:
    """A local TCP port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def wait_until_healthy(port: int, server: subprocess.Popen, log: str, timeout: float = 90) -> None:
    """Waits for the page server's health check to answer "ok"; fails with its `log` if it exits, or if late."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            with open(log) as f:
                pytest.fail(f"the server exited with {server.returncode}: {f.read()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://localhost:{port}/_stcore/health", timeout=2) as answer:
                if answer.read() == b"ok":
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"no health check answer on port {port} in {timeout} s")


def stop(server: subprocess.Popen) -> None:
    """Stops `launch.py --mode=serve` (which stops its page on SIGTERM), and whatever of its group remains."""
    server.terminate()
    try:
        server.wait(timeout=30)
    finally:
        try:
            os.killpg(server.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def chromium():
    """Headless Chromium under Selenium, with a window that holds the whole page."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1300"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def upload_and_read_headline(driver, port: int, path: str) -> str:
    """Opens the page, uploads the file at `path` and returns the headline once the page has finished with it."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait

    driver.get(f"http://localhost:{port}")
    dropzone = (By.CSS_SELECTOR, '[data-testid="stFileUploaderDropzoneInput"]')
    WebDriverWait(driver, 90).until(expected_conditions.presence_of_element_located(dropzone)).send_keys(path)
    WebDriverWait(driver, 90, ignored_exceptions=[StaleElementReferenceException]).until(
        lambda d: finished(d, os.path.basename(path)))
    return driver.find_element(By.TAG_NAME, "h3").text


def finished(driver, name: str) -> bool:
    """True once the page's run for the file `name` is over: its drawn image captioned with the name, the script
    idle and every image loaded."""
    from selenium.webdriver.common.by import By

    captions = driver.find_elements(By.CSS_SELECTOR, '[data-testid="stImageCaption"]')
    state = driver.find_element(By.CSS_SELECTOR, '[data-testid="stApp"]').get_attribute("data-test-script-state")
    return (any(caption.text.startswith(name) for caption in captions) and state == "notRunning"
            and driver.execute_script("return [...document.images].every(image => image.complete)"))


def screenshot(driver, task: str, folder) -> None:
    """Saves the browser window as TASK.png in `folder` and, when set, in $PAGE_SCREENSHOTS."""
    wanted = os.environ.get("PAGE_SCREENSHOTS")
    for where in [str(folder)] + ([wanted] if wanted else []):
        os.makedirs(where, exist_ok=True)
        assert driver.save_screenshot(os.path.join(where, f"{task}.png")), where


def upload_file(tiny_shapes: str, folder, task: str) -> str:
    """A validation image not among the samples, enlarged to 200x150 and saved as PNG: another format and
    size than the model's input, and not square."""
    path = str(folder / f"upload_{task}.png")
    with Image.open(os.path.join(tiny_shapes, "val", "images", "val_000040.jpg")) as image:
        image.resize((200, 200)).crop((0, 25, 200, 175)).save(path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("task", TASKS)
def test_the_page_in_a_browser_shows_the_saved_models_prediction_of_an_upload(task, runs, tiny_shapes, tmp_path):
    browser_or_skip()
    path = upload_file(tiny_shapes, tmp_path, task)
    port, log = free_port(), str(tmp_path / "serve.log")
    with open(log, "w") as output:
        server = subprocess.Popen([sys.executable, os.path.join(REPO, "launch.py"), "--mode=serve",
                                   "--model_dir=" + runs[task], f"--port={port}"], cwd=REPO, stdout=output,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until_healthy(port, server, log)
        driver = chromium()
        try:
            headline = upload_and_read_headline(driver, port, path)
            screenshot(driver, task, tmp_path)
        finally:
            driver.quit()
    finally:
        stop(server)
    assert headline == expected_headline(runs[task], path)
