"""The web demo end to end in a real browser: Playwright driving Debian's headless chromium
(``/usr/bin/chromium``; nothing downloads a browser) against the demo served by uvicorn in a
background thread on a free port. The page loads, a click samples and the image appears,
the side-by-side view shows two solvers, the text decode animates, a drawn mask is inpainted,
bad input shows the server's message in the page and the page keeps working."""
import os

import pytest

CHROMIUM = os.environ.get("DIFFINFER_CHROMIUM", "/usr/bin/chromium")
if not os.path.exists(CHROMIUM):  # .ci/run installs it; elsewhere: apt-get install chromium
    pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)
pytest.importorskip("fastapi", reason="the web extra is not installed (pip install 'diffinfer[web]')")
pytest.importorskip("uvicorn", reason="the web extra is not installed (pip install 'diffinfer[web]')")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the test extra)")

from diffinfer.web.server import BackgroundServer  # noqa: E402

TIMEOUT = 60_000  # ms: a shared CPU core can be slow; a hang still fails


@pytest.fixture(scope="module")
def browser():
    with BackgroundServer() as url, sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        b.url = url
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser):
    pg = browser.new_page(viewport={"width": 1200, "height": 900})
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(browser.url)
    pg.wait_for_selector("body[data-ready='1']", timeout=TIMEOUT)
    yield pg
    pg.close()
    assert not errors, errors  # no uncaught JavaScript error on the page


def text_of(page, sel):
    return page.locator(sel).text_content()


def test_the_page_loads_with_the_menus(page):
    from diffinfer import solvers
    assert page.title() == "diffinfer demo"
    assert page.locator("#d-solver option").all_text_contents() == solvers.names()
    assert page.locator("#d-grid").input_value() == "default"
    assert "fitted" in page.locator("#d-grid option").all_text_contents()


def test_a_click_samples_and_the_image_appears(page):
    page.select_option("#d-solver", "ddim")
    page.fill("#d-steps", "3")
    page.fill("#d-n", "4")
    page.select_option("#d-label", "3")
    assert page.locator("#d-image").get_attribute("src") is None
    page.click("#d-sample")
    page.wait_for_function("document.querySelector('#d-image').naturalWidth > 0", timeout=TIMEOUT)
    # 4 digits in one row, 8 screen pixels per pixel: (4 * 9 + 1) * 8 x (9 + 1) * 8
    size = page.evaluate("() => { const i = document.querySelector('#d-image'); return [i.naturalWidth, i.naturalHeight]; }")
    assert size == [296, 80]
    info = text_of(page, "#d-info")
    assert "ddim, 3 steps, grid default: NFE 3" in info and text_of(page, "#d-error") == ""


def test_side_by_side_two_solvers(page):
    page.fill("#d-steps", "2")
    page.fill("#d-n", "2")
    page.select_option("#c-solver-a", "ddim")
    page.select_option("#c-solver-b", "heun")
    page.click("#c-compare")
    page.wait_for_function("document.querySelector('#c-info-b').textContent.includes('NFE')", timeout=TIMEOUT)
    assert text_of(page, "#c-info-a").startswith("ddim, 2 steps")
    assert text_of(page, "#c-info-b").startswith("heun, 2 steps")
    srcs = [page.locator(s).get_attribute("src") for s in ("#c-image-a", "#c-image-b")]
    assert all(s.startswith("data:image/png;base64,") for s in srcs) and srcs[0] != srcs[1]


def test_the_text_decode_animates(page):
    """The canvas is redrawn step by step: several different pictures while the frame
    counter climbs, ending at the last step with nothing masked."""
    page.click("#tab-text")
    page.select_option("#t-policy", "low-confidence")
    page.fill("#t-length", "64")
    page.fill("#t-steps", "32")
    page.click("#t-decode")
    page.wait_for_function("document.querySelector('#text-canvas').dataset.frame !== '-1'", timeout=TIMEOUT)
    frames, pictures = [], set()
    for _ in range(400):
        frame, picture = page.evaluate(
            "() => { const c = document.querySelector('#text-canvas'); return [+c.dataset.frame, c.toDataURL()]; }")
        frames.append(frame)
        pictures.add(picture)
        if frame == 31:
            break
        page.wait_for_timeout(20)
    assert frames[-1] == 31 and frames == sorted(frames)
    assert len(set(frames)) >= 3 and len(pictures) >= 3
    assert "step 32 / 32, 0 still masked" in text_of(page, "#t-info")


def test_steps_is_disabled_for_a_self_paced_policy(page):
    page.click("#tab-text")
    page.select_option("#t-policy", "threshold")
    assert page.locator("#t-steps").is_disabled() and page.locator("#t-threshold").is_enabled()
    page.select_option("#t-policy", "random")
    assert page.locator("#t-steps").is_enabled() and page.locator("#t-threshold").is_disabled()


def test_draw_a_mask_and_inpaint(page):
    page.click("#tab-inverse")
    box = page.locator("#mask-canvas").bounding_box()
    cell = box["width"] / 8
    y = box["y"] + 3.5 * cell  # drag along row 3, columns 1..6
    page.mouse.move(box["x"] + 1.5 * cell, y)
    page.mouse.down()
    for c in range(2, 7):
        page.mouse.move(box["x"] + (c + 0.5) * cell, y, steps=3)
    page.mouse.up()
    assert page.locator("#i-holes").get_attribute("data-holes") == "6"
    page.select_option("#i-method", "projection")
    assert page.locator("#i-steps").input_value() == "50"  # the method's default
    page.fill("#i-steps", "10")
    page.fill("#i-n", "2")
    page.click("#i-inpaint")
    page.wait_for_function("document.querySelector('#i-info').textContent.includes('PSNR')", timeout=TIMEOUT)
    assert "projection, 10 steps, 6 holes: NFE" in text_of(page, "#i-info")
    size = page.evaluate("() => { const i = document.querySelector('#i-image'); return [i.naturalWidth, i.naturalHeight]; }")
    assert size == [(4 * 9 + 1) * 8, 80]  # input | measurement | 2 restorations


@pytest.mark.parametrize("field,value,needle", [
    ("#d-steps", "abc", "steps must be an integer in [1, 200], got 'abc'"),
    ("#d-steps", "0", "steps must be an integer in [1, 200], got '0'"),
    ("#d-n", "100000", "n must be an integer in [1, 64]"),
    ("#d-guidance", "lots", "guidance must be a number"),
])
def test_bad_input_shows_the_message_and_the_page_keeps_working(page, field, value, needle):
    page.fill("#d-steps", "2")
    page.fill("#d-n", "2")
    page.fill(field, value)
    page.click("#d-sample")
    page.wait_for_function("document.querySelector('#d-error').textContent !== ''", timeout=TIMEOUT)
    assert needle in text_of(page, "#d-error")
    assert page.locator("#d-error").is_visible() and page.locator("#d-sample").is_enabled()
    page.fill(field, {"#d-steps": "2", "#d-n": "2", "#d-guidance": ""}[field])
    page.click("#d-sample")
    page.wait_for_function("document.querySelector('#d-image').naturalWidth > 0", timeout=TIMEOUT)
    assert text_of(page, "#d-error") == ""


def test_bad_input_in_the_other_views(page):
    page.click("#tab-text")
    page.fill("#t-length", "99999")
    page.click("#t-decode")
    page.wait_for_function("document.querySelector('#t-error').textContent !== ''", timeout=TIMEOUT)
    assert "length must be an integer in [1, 256]" in text_of(page, "#t-error")
    page.click("#tab-inverse")
    page.fill("#i-n", "8")
    page.fill("#i-steps", "500")
    page.click("#i-inpaint")
    page.wait_for_function("document.querySelector('#i-error').textContent !== ''", timeout=TIMEOUT)
    assert "at most 2000 per request" in text_of(page, "#i-error")
    page.fill("#i-index", "-3")
    page.click("#i-load")
    page.wait_for_function("document.querySelector('#i-error').textContent.includes('index')", timeout=TIMEOUT)
    assert "index must be an integer in [0, 1796], got '-3'" in text_of(page, "#i-error")
