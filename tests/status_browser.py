"""Open `opskit status --serve`'s page in Debian's headless Chromium (through Playwright) and
say what a person would see: the hosts with their states, the runs listed, the title.

    python tests/status_browser.py URL SCREENSHOT.png   -> one JSON line on stdout

Run where the page is reachable (inside the lab's controller namespace for a lab's page).
"""

from __future__ import annotations

import json
import shutil
import sys

CHROMIUM = ("chromium-headless-shell", "chromium")


def browser() -> str:
    for name in CHROMIUM:
        found = shutil.which(name)
        if found:
            return found
    raise SystemExit("no Chromium: apt-get install chromium-headless-shell (make does)")


def main(url: str, screenshot: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # root in a namespace: Chromium's own sandbox needs user namespaces it cannot have
        chromium = p.chromium.launch(executable_path=browser(), args=["--no-sandbox"])
        try:
            page = chromium.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url)
            page.wait_for_selector("section.host")
            hosts = page.eval_on_selector_all(
                "section.host", "els => els.map(e => [e.dataset.host, e.dataset.state])"
            )
            runs = page.eval_on_selector_all(
                "details.run summary code", "els => els.map(e => e.textContent)"
            )
            tools = page.eval_on_selector_all(
                "tr[data-service] td:nth-child(4)",
                "els => els.map(e => e.closest('tr').dataset.service + '|'"
                " + e.textContent.trim().split('\\n')[0])",
            )
            verdict = page.inner_text("#verdict")
            page.screenshot(path=screenshot, full_page=True)
            print(
                json.dumps(
                    {
                        "title": page.title(),
                        "hosts": hosts,
                        "runs": runs,
                        "details": tools,
                        "verdict": verdict,
                    }
                )
            )
        finally:
            chromium.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
