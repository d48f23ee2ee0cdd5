"""The web app in a real browser: Playwright driving Debian's chromium (never a downloaded one)
against ``glidekit serve`` on tiny models. Screenshots land in each test's tmp_path.

Needs ``apt-get install -y chromium chromium-driver``; skipped when no chromium is found.
"""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
from helpers import Server, random_picture, start_server
from PIL import Image

from glidekit.pipelines import read_png_params

pytest.importorskip("gradio")
playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WAIT_MS = 120_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("browser-server"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, server: Server):
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(WAIT_MS)
    pg.goto(server.url)
    pg.locator("#gen-prompt textarea").wait_for()
    yield pg
    context.close()


def fetch(page, url: str) -> bytes:
    response = page.request.get(url)
    assert response.ok, url
    return response.body()


def link(page, selector: str) -> str:
    """The absolute address of the first link matching ``selector``."""
    anchor = page.locator(selector).first
    anchor.wait_for()
    return anchor.evaluate("e => e.href")


def error_toast(page, words: str) -> None:
    toast = page.locator(".toast-body").filter(has_text=words)
    toast.first.wait_for(timeout=WAIT_MS)


def test_generate_tab(page, server, tmp_path):
    assert "base.safetensors" in page.content()  # the models in use are on the page
    page.locator("#gen-prompt textarea").fill("a red circle")
    page.get_by_label("Random seed").first.uncheck()
    page.get_by_label("Seed", exact=True).first.fill("42")
    page.locator("#gen-run").click()
    page.locator("#gen-gallery img").first.wait_for()
    page.locator("#gen-files a").first.wait_for()
    page.screenshot(path=tmp_path / "generate.png", full_page=True)
    png = tmp_path / "downloaded.png"
    png.write_bytes(fetch(page, link(page, "#gen-files a")))
    params = read_png_params(png)
    assert params["prompt"] == "a red circle" and params["seed"] == 42
    assert page.get_by_label("Seed used").first.input_value() == "42"
    assert Image.open(png).size == (32, 32)


def upload_and_paint(page, picture) -> None:
    """Put ``picture`` into the inpainting editor and paint a horizontal stroke across its middle."""
    page.locator("#inp-editor input[type=file]").set_input_files(str(picture))
    canvas = page.locator("#inp-editor canvas").first
    canvas.wait_for()
    page.wait_for_timeout(2500)  # the editor draws the picture
    canvas.scroll_into_view_if_needed()  # the mouse paints in viewport coordinates
    box = canvas.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx - 30, cy)
    page.mouse.down()
    for dx in range(-30, 31, 5):
        page.mouse.move(cx + dx, cy, steps=2)
    page.mouse.up()
    page.wait_for_timeout(500)  # the editor commits the stroke layer


def dismiss_toasts(page) -> None:
    for close in page.locator(".toast-close").all():
        if close.is_visible():
            close.click()
    page.locator(".toast-body").first.wait_for(state="hidden")


def test_inpaint_tab_paint_a_stroke(page, server, tmp_path):
    picture = tmp_path / "picture.png"
    random_picture((256, 256), seed=5).save(picture)
    page.get_by_role("tab", name="Inpaint").click()
    page.locator("#inp-prompt textarea").fill("a dog")
    # On a loaded machine the editor may not have taken in the upload when Run is pressed (the
    # server then answers "please upload a picture first"): clear the refusal, upload and paint
    # again, and press again.
    result = page.locator("#inp-gallery img").first
    refused = page.get_by_text("upload a picture first")
    for _ in range(4):
        upload_and_paint(page, picture)
        page.locator("#inp-run").click()
        result.or_(refused).first.wait_for()
        if result.is_visible():
            break
        dismiss_toasts(page)
    else:
        raise AssertionError(f"every run refused; server log:\n{server.log.read_text()[-3000:]}")
    page.locator("#inp-gallery img").first.wait_for()
    page.locator("#inp-files a").first.wait_for()
    page.screenshot(path=tmp_path / "inpaint.png", full_page=True)

    result_png = tmp_path / "result.png"
    result_png.write_bytes(fetch(page, link(page, "#inp-files a")))
    assert read_png_params(result_png)["prompt"] == "a dog"
    result = np.asarray(Image.open(result_png).convert("RGB")).astype(int)
    mask_png = fetch(page, page.locator("#inp-mask-out img").first.evaluate("e => e.src"))
    replaced = np.asarray(Image.open(io.BytesIO(mask_png)).convert("L")) > 127
    size = result.shape[0]
    source = np.asarray(Image.open(picture).resize((size, size), Image.BICUBIC)).astype(int)
    changed = np.abs(result - source).max(axis=2) > 0
    assert changed.any() and replaced.any()
    # only near the stroke: inside the painted region (one pixel of slack), a horizontal band
    near = np.zeros_like(replaced)
    ys, xs = np.nonzero(replaced)
    near[max(0, ys.min() - 1) : ys.max() + 2, max(0, xs.min() - 1) : xs.max() + 2] = True
    assert not changed[~near].any()
    rows = np.nonzero(changed.any(axis=1))[0]
    assert rows.min() >= size // 4 and rows.max() < size * 3 // 4, rows


def test_progress_and_cancel(page, server, tmp_path):
    page.locator("#gen-prompt textarea").fill("a slow one")
    page.get_by_label("Steps").first.fill("250")
    page.get_by_label("Upsample (second stage)").first.uncheck()
    page.locator("#gen-run").click()
    page.locator("#gen-gallery").filter(has_text="/250 steps").wait_for()  # the live progress
    page.screenshot(path=tmp_path / "progress.png")
    page.locator("#gen-cancel").click()
    page.wait_for_timeout(500)
    assert page.locator("#gen-gallery img").count() == 0
    # the sampling itself stopped mid-way (not just the page): the server logged where
    for _ in range(100):
        if "job cancelled at base step" in server.log.read_text():
            break
        page.wait_for_timeout(200)
    line = next(x for x in server.log.read_text().splitlines() if "job cancelled at" in x)
    step = int(line.rsplit("step ", 1)[1].split("/")[0])
    assert 0 < step < 250, line
    # the next job runs (after the abandoned one has let go of the device)
    page.get_by_label("Steps").first.fill("4")
    page.locator("#gen-run").click()
    page.locator("#gen-gallery img").first.wait_for()


def test_page_refuses_bad_input(page, server, tmp_path):
    page.locator("#gen-prompt textarea").fill("   ")
    page.locator("#gen-run").click()
    error_toast(page, "Prompt is empty")
    page.locator("#gen-prompt textarea").fill("a cat")
    page.get_by_label("Steps").first.fill("100000")
    page.locator("#gen-run").click()
    error_toast(page, "Steps must be between 1 and 250")
    page.get_by_role("tab", name="Inpaint").click()
    page.locator("#inp-prompt textarea").fill("a dog")
    page.locator("#inp-run").click()
    error_toast(page, "upload a picture")
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (1, 1), (200, 10, 10)).save(tiny)
    dismiss_toasts(page)
    too_small = page.locator(".toast-body").filter(has_text="too small")
    for _ in range(4):  # as in the inpaint test: the editor may not have taken the upload in yet
        page.locator("#inp-editor input[type=file]").set_input_files(str(tiny))
        page.wait_for_timeout(1000)
        page.locator("#inp-run").click()
        too_small.or_(page.get_by_text("upload a picture first")).first.wait_for()
        if too_small.first.is_visible():
            break
        dismiss_toasts(page)
    else:
        raise AssertionError("the editor never took in the upload")
    # the server is unaffected
    assert server.process.poll() is None
    page.get_by_role("tab", name="Generate").click()
    page.get_by_label("Steps").first.fill("4")
    page.locator("#gen-run").click()
    page.locator("#gen-gallery img").first.wait_for()
