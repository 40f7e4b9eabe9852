"""The screenshots of the demo in ``docs/`` (``web-digits.png``, ``web-text.png``,
``web-inverse.png``): Playwright driving Debian's headless chromium against the demo served
in this process. Nothing downloads a browser (``--chromium`` names the executable).

    python -m diffinfer.web.screenshots --out docs
"""
from __future__ import annotations

import argparse
import pathlib

CHROMIUM = "/usr/bin/chromium"
VIEWPORT = {"width": 1180, "height": 560}


def open_page(browser, url: str):
    """A page on the demo, its options loaded (``body[data-ready]``)."""
    page = browser.new_page(viewport=VIEWPORT)
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", timeout=60_000)
    return page


def wait_for(page, selector: str, needle: str, error: str) -> None:
    """Wait until ``selector``'s text has ``needle``; raise with the page's message if
    ``error`` shows one instead."""
    page.wait_for_function(f"document.querySelector('{selector}').textContent.includes('{needle}')"
                           f" || document.querySelector('{error}').textContent !== ''", timeout=120_000)
    message = page.locator(error).text_content()
    if message:
        raise RuntimeError(f"the page shows an error: {message}")


def shoot_digits(page, path) -> None:
    page.fill("#d-steps", "6")
    page.fill("#d-n", "16")
    page.select_option("#c-solver-a", "ddim")
    page.select_option("#c-solver-b", "unipc")
    page.click("#c-compare")  # default grid, same seed
    wait_for(page, "#c-info-b", "NFE", "#d-error")
    page.select_option("#d-solver", "unipc")
    page.select_option("#d-grid", "fitted")
    page.fill("#d-n", "32")
    page.click("#d-sample")
    wait_for(page, "#d-info", "NFE", "#d-error")
    page.screenshot(path=str(path), full_page=True)


def shoot_text(page, path) -> None:
    page.click("#tab-text")
    page.select_option("#t-policy", "random")
    page.fill("#t-steps", "250")
    page.fill("#t-prompt", "ROMEO:")
    page.fill("#t-length", "250")
    page.click("#t-decode")
    wait_for(page, "#t-info", "step 250 / 250", "#t-error")
    page.evaluate("() => { const s = document.querySelector('#t-scrub'); s.value = '170';"
                  " s.dispatchEvent(new Event('input')); }")
    page.screenshot(path=str(path), full_page=True)


def shoot_inverse(page, path) -> None:
    page.click("#tab-inverse")
    page.fill("#i-index", "7")
    page.click("#i-load")
    page.click("#i-box")
    page.fill("#i-n", "6")
    page.click("#i-inpaint")
    wait_for(page, "#i-info", "PSNR", "#i-error")
    page.screenshot(path=str(path))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs", help="directory of the PNGs (default docs)")
    parser.add_argument("--chromium", default=CHROMIUM, help=f"the browser executable (default {CHROMIUM})")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    from .server import BackgroundServer
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with BackgroundServer() as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, headless=True)
        try:
            for name, shoot in (("digits", shoot_digits), ("text", shoot_text), ("inverse", shoot_inverse)):
                page = open_page(browser, url)
                shoot(page, out / f"web-{name}.png")
                page.close()
                print(f"wrote {out / f'web-{name}.png'}")
        finally:
            browser.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
