"""The web app (fer_core.apps.web) in a real headless Chromium: a photo uploaded and its label read from the
page, a broken upload answered with one line, and the webcam tab fed by Chromium's fake camera.

The app runs as users start it (``python -m fer_core.apps.web CHECKPOINT --port P``), in a subprocess on
127.0.0.1, for a tiny checkpoint trained here. The photo is frame 40 of tests/data/video_01.mp4 (a CC BY 2.0
clip, see tests/data/NOTICE.md); the fake camera plays a second and a half of the same clip, converted to the
y4m file Chromium's fake capture device reads. The browser is Debian's chromium (tests/browser.py).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import av
import pytest
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from fer_core.apps.web import main
from fer_core.checkpoint import load_checkpoint
from fer_core.train import train

from .browser import chromium
from .conftest import REPO, tiny_config

CLIP = REPO / "tests" / "data" / "video_01.mp4"
PHOTO_FRAME = 40  # the woman in front faces the camera
WAIT = 60  # seconds for one result on a loaded 2-core machine
LABELS = ".face-label [data-testid=label-output-value]"  # the Photo tab's label per face: its heading


@pytest.fixture(scope="module")
def checkpoint(demo_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("web") / "run"
    train(tiny_config(demo_root, out, epochs=1))
    return out / "checkpoints" / "best.pt"


@pytest.fixture(scope="module")
def class_names(checkpoint) -> list[str]:
    return list(load_checkpoint(checkpoint)["class_names"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(checkpoint, tmp_path_factory):
    """The app started as a user starts it, its temporary files (and Gradio's) in a folder of the test's; at
    the end stopped as a service manager stops it, and checked to exit cleanly and remove its scratch folder."""
    port, tmp = _free_port(), tmp_path_factory.mktemp("web-app")
    log = tmp / "app.log"
    cmd = [sys.executable, "-m", "fer_core.apps.web", str(checkpoint), "--port", str(port), "--device", "cpu"]
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "TMPDIR": str(tmp)}
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while f"on {url}" not in log.read_text():  # the URL printed for the user once the server is up
            if proc.poll() is not None:
                pytest.fail(f"the app exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"the app did not start on {url} in 120 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        with urllib.request.urlopen(url, timeout=30) as page:
            assert page.status == 200
        assert list(tmp.glob("fer-app-*"))
        yield url
    finally:
        proc.terminate()
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = "still running 30 s after SIGTERM"
    assert code == 0, f"the app's exit: {code}\n{log.read_text()[-3000:]}"
    assert not list(tmp.glob("fer-app-*")), "the app left its scratch folder behind"


@pytest.fixture(scope="module")
def fake_camera(tmp_path_factory) -> Path:
    """1.5 s of the clip as the y4m file Chromium's fake capture device plays in a loop."""
    path = tmp_path_factory.mktemp("camera") / "clip.y4m"
    with av.open(str(CLIP)) as src, av.open(str(path), "w", format="yuv4mpegpipe") as dst:
        video = src.streams.video[0]
        stream = dst.add_stream("rawvideo", rate=30)
        stream.width, stream.height, stream.pix_fmt = video.width, video.height, "yuv420p"
        for i, frame in enumerate(src.decode(video)):
            if i >= PHOTO_FRAME + 45:
                break
            if i >= PHOTO_FRAME:
                dst.mux(stream.encode(frame.reformat(format="yuv420p")))
        dst.mux(stream.encode())
    return path


@pytest.fixture(scope="module")
def browser(tmp_path_factory, fake_camera):
    driver = chromium(
        tmp_path_factory.mktemp("chromium-profile"),
        "--window-size=1400,1800",
        "--use-fake-ui-for-media-stream",  # camera permission granted without a prompt
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-video-capture={fake_camera}",
    )
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "guest.jpg"
    with av.open(str(CLIP)) as src:
        for i, frame in enumerate(src.decode(video=0)):
            if i == PHOTO_FRAME:
                frame.to_image().save(path, quality=92)
                return path
    raise AssertionError(f"{CLIP} has fewer than {PHOTO_FRAME + 1} frames")


def _wait(browser) -> WebDriverWait:
    """Waits for what the page shows; Gradio re-renders as results come, so an element found may go stale."""
    return WebDriverWait(browser, WAIT, ignored_exceptions=(StaleElementReferenceException,))


def _open(browser, url: str, tab: str) -> None:
    browser.get(url)
    button = _wait(browser).until(
        lambda d: next(
            (
                b
                for b in d.find_elements(By.CSS_SELECTOR, "button[role=tab]")
                if b.is_displayed() and b.text == tab
            ),
            None,
        )
    )
    button.click()


def _button(browser, text: str):
    """The visible button showing ``text``, once there is one."""
    return _wait(browser).until(
        lambda d: next(
            (
                b
                for b in d.find_elements(By.TAG_NAME, "button")
                if b.is_displayed() and b.text.strip() == text
            ),
            None,
        )
    )


def _upload(browser, path: Path) -> None:
    """A file into the Photo tab's upload (the hidden file input behind the drop zone), and Predict."""
    browser.find_element(By.CSS_SELECTOR, "input[type=file][accept*=image]").send_keys(str(path))
    _wait(browser).until(  # the upload listed: its name, shown as stem and suffix
        lambda d: path.stem in d.find_element(By.TAG_NAME, "body").text
    )
    _button(browser, "Predict").click()


def test_a_photo_is_labelled_with_the_checkpoints_classes(app_url, browser, photo, class_names, tmp_path):
    _open(browser, app_url, "Photo")
    _upload(browser, photo)
    labels = _wait(browser).until(lambda d: d.find_elements(By.CSS_SELECTOR, LABELS))
    shown = [label.text for label in labels]
    assert shown and all(text in class_names for text in shown), (shown, class_names)
    titles = browser.find_element(By.TAG_NAME, "body").text
    assert (
        f"{photo.name}, face 1: {shown[0]}" in titles
    )  # the Haar cascade found her face: a box, not the whole image
    result = browser.find_elements(By.CSS_SELECTOR, "#photo-result img")
    assert result and browser.execute_script("return arguments[0].naturalWidth", result[0]) > 0
    browser.save_screenshot(str(tmp_path / "photo.png"))

    # The slider reaches the predictor: at 0.95 the tiny model's faces (top probability ~0.15) are uncertain.
    slider = browser.find_element(By.CSS_SELECTOR, "#photo-confidence input[type=number]")
    slider.clear()
    slider.send_keys("0.95", Keys.TAB)
    _button(browser, "Predict").click()
    _wait(browser).until(
        lambda d: {e.text for e in d.find_elements(By.CSS_SELECTOR, LABELS)} == {"uncertain"},
        message="the faces were not labelled uncertain at minimum confidence 0.95",
    )


def test_a_broken_upload_is_one_line_naming_the_file_as_text(app_url, browser, tmp_path):
    # Gradio renders its alerts as HTML and drops <, > from upload names; an entity would still be decoded.
    name = "holiday &lt;b&gt; & co.jpg"
    broken = tmp_path / name
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    _open(browser, app_url, "Photo")
    _upload(browser, broken)
    toast = _wait(browser).until(
        lambda d: next(
            (t for t in d.find_elements(By.CSS_SELECTOR, "[data-testid=toast-body]") if t.text), None
        )
    )
    text = toast.find_element(By.CSS_SELECTOR, "[data-testid=toast-text]").text
    assert text.startswith(f"{name}: ") and "\n" not in text, text  # its name as is, not the upload's path


def test_a_video_gives_its_annotated_copy_and_summary(app_url, browser, class_names):
    _open(browser, app_url, "Video")
    browser.find_element(By.CSS_SELECTOR, "input[type=file][accept*=video]").send_keys(str(CLIP))
    _wait(browser).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#video-input video"))  # uploaded
    _button(browser, "Process").click()
    line = _wait(browser).until(lambda d: d.find_element(By.ID, "video-line").text)
    assert line.startswith("90 frames, 3.0 s"), line  # every frame of the clip
    size = _wait(browser).until(  # the annotated copy plays in the browser (H.264)
        lambda d: d.execute_script(
            "const v = document.querySelector('#video-result video');"
            "return v && v.readyState >= 1 ? [v.videoWidth, v.videoHeight] : null"
        )
    )
    assert size == [640, 480]
    rows = _wait(browser).until(
        lambda d: d.execute_script(
            "return Array.from(document.querySelectorAll('#video-summary tbody tr'))"
            ".map(tr => Array.from(tr.querySelectorAll('td')).map(td => td.textContent.trim()))"
            ".filter(cells => cells.length && cells[0])"
        )
    )
    assert rows[0][2] in class_names, rows  # the longest track's dominant expression


def test_the_webcam_tab_labels_the_fake_cameras_face(app_url, browser, class_names):
    _open(browser, app_url, "Webcam")
    _button(browser, "Click to Access Webcam").click()
    _button(browser, "Record").click()
    current = browser.find_element(By.CSS_SELECTOR, "#current-label textarea")
    text = _wait(browser).until(
        lambda d: (
            (current.get_attribute("value") or "").startswith("face ") and current.get_attribute("value")
        ),
        message="no face labelled on the webcam tab",
    )
    label = browser.find_element(By.CSS_SELECTOR, "#live-probs [data-testid=label-output-value]").text
    assert label in class_names and text.split(": ")[1].split(" (")[0] in class_names, (
        text,
        label,
        class_names,
    )


def test_a_missing_checkpoint_is_one_line_before_any_server(tmp_path, capsys):
    assert main([str(tmp_path / "nothing.pt"), "--port", str(_free_port())]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nothing.pt" in err, err


def test_a_broken_video_is_one_line_naming_it_and_old_results_are_dropped(checkpoint, tmp_path):
    import gradio as gr

    from fer_core.apps.predict import load_predictor
    from fer_core.apps.web import KEEP_SECONDS, App

    work = tmp_path / "work"
    old, recent = work / "video-old", work / "video-recent"  # results served 2 h and a minute ago
    for folder, age in ((old, 2 * KEEP_SECONDS), (recent, 60)):
        (folder / "clip").mkdir(parents=True)
        os.utime(folder, (time.time() - age,) * 2)
    app = App(load_predictor(checkpoint, device="cpu"), str(checkpoint), work)
    upload = tmp_path / "upload-3f9a" / "party.mp4"  # where Gradio would have put the user's file
    upload.parent.mkdir()
    upload.write_bytes(CLIP.read_bytes()[:20000])  # cut short: the header's index at the end is lost
    with pytest.raises(gr.Error) as e:
        app.video(str(upload), 0.0)
    message = e.value.message
    assert "party.mp4" in message and "upload-3f9a" not in message and "\n" not in message, message
    assert list(work.iterdir()) == [recent]  # nothing of the failed video; the old result dropped
