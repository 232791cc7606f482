"""The page of `stargan-ray serve` in a real headless browser: Debian's chromium driven by selenium
through chromium-driver. `make test` installs both (tools/install_browser.sh); without them this
test fails and says how to install them, it is never skipped.

Opens the page of a server that requires a token (the page says so until its Token field holds the
right one), uploads a photo, picks a domain and seeds, waits for the output images, moves the
slider between two styles and checks that every resource came from the server itself. With
STARGAN_SERVE_SCREENSHOT=FILE it saves the page as a PNG (docs/serve_page.png was taken so, with
STARGAN_SERVE_CHECKPOINT naming a trained toy checkpoint instead of the tiny random one).
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from stargan_ray.data.synthetic import draw_image

from . import test_serve
from .helpers import save_synthetic_checkpoint

server = test_serve.server  # the app fixture, on this module's checkpoint

INSTALL = ("install them with `sudo apt-get install -y chromium chromium-driver` (Debian, Ubuntu)"
           " or run `make test`, which installs them through tools/install_browser.sh")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """The tiny random model (conftest.checkpoint), or STARGAN_SERVE_CHECKPOINT (for the
    screenshot)."""
    if os.environ.get("STARGAN_SERVE_CHECKPOINT"):
        return os.environ["STARGAN_SERVE_CHECKPOINT"]
    return save_synthetic_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt")


@pytest.fixture(scope="module")
def browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        missing = "chromium" if chromium is None else "chromedriver (chromium-driver)"
        pytest.fail(f"the browser test needs {missing}: {INSTALL}", pytrace=False)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,820", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    # an explicit driver path: Selenium Manager would otherwise try to download one
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.mark.ray
def test_page_uploads_a_photo_and_shows_outputs(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    image = tmp_path / "circle.png"  # a picture of the synthetic set the toy models learn
    draw_image("circle", 128, np.random.default_rng(3)).save(image)
    from selenium.webdriver.common.keys import Keys

    wait = WebDriverWait(browser, 120)
    browser.get(server + "/")
    domain = browser.find_element(By.ID, "domain")
    error = browser.find_element(By.ID, "error")
    # without the token (and with a wrong one) the API refuses and the page says why
    wait.until(lambda _: error.is_displayed())
    assert "token: missing or wrong bearer token" in error.text and not Select(domain).options
    token = browser.find_element(By.ID, "token")
    token.send_keys("not-the-token-at-all", Keys.TAB)
    wait.until(lambda d: d.execute_script("return performance.getEntriesByType('resource')"
                                          ".filter(e => e.name.endsWith('/domains')).length") == 2)
    wait.until(lambda _: error.is_displayed())
    assert "token: missing or wrong" in error.text and not Select(domain).options
    token.clear()
    token.send_keys(test_serve.TOKEN, Keys.TAB)
    wait.until(lambda _: len(Select(domain).options) == 3)
    assert not error.is_displayed()
    assert [o.text for o in Select(domain).options] == test_serve.DOMAINS

    # an error is shown in the page, and the page keeps working
    browser.find_element(By.ID, "image-input").send_keys(str(image))
    seeds = browser.find_element(By.ID, "seeds")
    seeds.clear()
    seeds.send_keys("1,x")
    browser.find_element(By.ID, "translate").click()
    wait.until(lambda _: error.is_displayed())
    assert "seeds: expected non-negative integers" in error.text

    Select(domain).select_by_visible_text("square")
    seeds.clear()
    seeds.send_keys("0-3")
    browser.find_element(By.ID, "translate").click()
    loaded = "return Array.from(document.querySelectorAll('#outputs img.output'))" \
             ".map(i => i.complete ? i.naturalWidth : 0)"
    wait.until(lambda d: d.execute_script(loaded) == [32] * 4 or
               d.find_element(By.ID, "error").is_displayed())
    assert not error.is_displayed(), error.text
    captions = [c.text for c in browser.find_elements(By.CSS_SELECTOR, "#outputs figcaption")]
    assert captions == ["seed0", "seed1", "seed2", "seed3"]

    # the slider between the first two styles: max_outputs frames (6 here) from seed0 to seed1
    slider = browser.find_element(By.ID, "mix-slider")
    wait.until(lambda _: slider.is_enabled())
    label = browser.find_element(By.ID, "mix-label")
    assert label.text == "seed0-seed1@0.000"
    assert slider.get_attribute("max") == str(test_serve.LIMITS["max_outputs"] - 1)
    browser.execute_script("arguments[0].value = arguments[0].max; arguments[0].dispatchEvent("
                           "new Event('input'))", slider)
    assert label.text == "seed0-seed1@1.000"
    assert browser.execute_script("return document.getElementById('mix-image').naturalWidth") \
        == 32
    browser.execute_script("arguments[0].value = 2; arguments[0].dispatchEvent("
                           "new Event('input'))", slider)

    # nothing came from anywhere but this server (blob: and data: images are made in the page)
    resources = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")
    assert resources and all(r.startswith((server, "blob:", "data:")) for r in resources), \
        resources
    if os.environ.get("STARGAN_SERVE_SCREENSHOT"):
        browser.save_screenshot(os.environ["STARGAN_SERVE_SCREENSHOT"])


@pytest.mark.ray
def test_page_translates_a_clip_and_shows_the_video(server, browser, tmp_path):
    """A clip over the frame limit shows the server's error; a short one comes back in a
    <video> element whose source the browser loaded (H.264 mp4 played by chromium)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from stargan_ray.video import write_video

    rng = np.random.default_rng(5)
    frames = [np.asarray(draw_image("circle", 32, rng)) for _ in range(13)]
    short = write_video(tmp_path / "short.mp4", frames[:6], 8.0)
    long = write_video(tmp_path / "long.mp4", frames, 8.0)  # 13 frames: over the limit of 12

    wait = WebDriverWait(browser, 120)
    browser.get(server + "/")
    browser.find_element(By.ID, "token").send_keys(test_serve.TOKEN, Keys.TAB)
    domain = browser.find_element(By.ID, "domain")
    wait.until(lambda _: len(Select(domain).options) == 3)
    limits = browser.find_element(By.ID, "video-limits").text
    assert "at most 2 s, 12 frames, 4096 pixels per frame" in limits, limits
    error, button = browser.find_element(By.ID, "error"), browser.find_element(By.ID,
                                                                               "translate-video")
    video_input = browser.find_element(By.ID, "video-input")
    assert video_input.get_attribute("accept") == "video/*" and not button.is_enabled()

    video_input.send_keys(str(long))
    button.click()
    wait.until(lambda _: error.is_displayed())
    assert "video: 13 frames, more than the limit of 12 frames" in error.text, error.text

    Select(domain).select_by_visible_text("square")
    video_input.send_keys(str(short))
    button.click()
    ready = "const v = document.getElementById('video-output'); " \
            "return [v.hidden, v.readyState, v.duration, v.videoWidth]"
    wait.until(lambda d: d.execute_script(ready)[1] >= 1 or error.is_displayed())
    assert not error.is_displayed(), error.text
    hidden, state, duration, width = browser.execute_script(ready)
    assert not hidden and state >= 1 and duration > 0 and width == 32
    assert browser.find_element(By.ID, "video-status").text == "6 frames at 8 fps"
    src = browser.execute_script("return document.getElementById('video-output').src")
    assert src.startswith("blob:")
