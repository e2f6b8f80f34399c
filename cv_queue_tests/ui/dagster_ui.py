"""The pages of the Dagster 1.13 UI the operator's flow goes through, with the locators they need.

Locators are roles, link targets and visible text. The one structural hook is the row of Dagster's
virtualized tables (runs, assets): it has no ARIA role, so rows are found by their CSS-module class prefix
`VirtualizedTable_row` (the hash suffix after it changes between builds; the prefix does not) and then by
the link they contain.
"""

import re
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Locator, Page, expect

LOCATION = "cv_queue"  # workspace.yaml's location_name
ROW = '[class*="VirtualizedTable_row"]'
FIRST_VISIT_DIALOG = "Join the Dagster community"
MATERIALIZED = re.compile("Materialized")  # case-sensitive: not "Never materialized"
RUN_PATH = re.compile(r"/runs/([0-9a-f-]{36})$")
UI_STATUS = {"STARTED": "Started", "SUCCESS": "Success", "CANCELED": "Canceled", "FAILURE": "Failure",
             "QUEUED": "Queued"}


class DagsterUI:
    """One browser tab on the Dagster UI; every step leaves a numbered screenshot in `shots`."""

    def __init__(self, page: Page, base_url: str, shots: Path) -> None:
        self.page, self.base_url, self.shots = page, base_url.rstrip("/"), shots
        self._shot_number = 0
        shots.mkdir(parents=True, exist_ok=True)

    def open(self, path: str) -> None:
        self.page.goto(self.base_url + path, wait_until="domcontentloaded")

    def shot(self, name: str) -> Path:
        self._shot_number += 1
        path = self.shots / f"{self._shot_number:02d}-{name}.png"
        self.page.screenshot(path=str(path))
        return path

    def dismiss_first_visit_dialog(self) -> None:
        """Dagster 1.13 greets a fresh browser profile with a community/newsletter dialog over every page."""
        dialog = self.page.get_by_role("dialog").filter(has_text=FIRST_VISIT_DIALOG)
        expect(dialog).to_be_visible(timeout=60_000)
        self.shot("first-visit-dialog")
        dialog.get_by_role("button", name="Skip").click()
        expect(dialog).to_be_hidden()

    def until(self, check: Callable[[], None], timeout_s: float, what: str) -> None:
        """Repeat `check` (Playwright expectations with short timeouts of their own), reloading the page in
        between, until it passes: the UI polls on its own clock, a reload shows the state now. On timeout the
        last failure is raised with a screenshot beside it."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                check()
                return
            except (AssertionError, PlaywrightError) as failure:  # a row re-rendered under us is a retry too
                if time.monotonic() > deadline:
                    shot = self.shot(f"FAILED-{re.sub(r'[^a-z0-9]+', '-', what.lower())}")
                    raise AssertionError(f"the UI did not show {what} within {timeout_s:.0f}s "
                                         f"(screenshot {shot}): {failure}") from failure
            self.page.reload(wait_until="domcontentloaded")

    # Assets
    def open_asset_group(self, group: str) -> None:
        self.open(f"/locations/{LOCATION}/asset-groups/{group}/list")

    def asset_row(self, asset_path: list[str]) -> Locator:
        # By the asset's link: its accessible name repeats the name (Dagster's middle-truncation measure).
        link = self.page.locator(f'a[href="/assets/{"/".join(asset_path)}"]')
        return self.page.locator(ROW).filter(has=link)

    # Runs
    def open_runs(self, job: str, status: str | None = None) -> None:
        tokens = [f"job:{job}"] + ([f"status:{status}"] if status else [])
        self.open("/runs?" + "&".join(f"q[]={quote(token)}" for token in tokens))

    def run_rows(self) -> Locator:
        return self.page.locator(ROW).filter(has=self.page.locator('a[href^="/runs/"]'))

    def run_row(self, run_id: str) -> Locator:
        return self.page.locator(ROW).filter(has=self.page.locator(f'a[href="/runs/{run_id}"]'))

    def shown_run_ids(self) -> set[str]:
        ids = set()
        for row in self.run_rows().all():
            href = row.locator('a[href^="/runs/"]').first.get_attribute("href") or ""
            if match := RUN_PATH.search(href):
                ids.add(match.group(1))
        return ids

    # Launchpad
    def launch_from_launchpad(self, job: str, config_yaml: str | None = None) -> str:
        """Open the job's Launchpad, optionally replace its config by typing `config_yaml` into the editor,
        press "Launch Run" and return the id of the run page the UI moves to."""
        self.open(f"/locations/{LOCATION}/jobs/{job}/playground")
        launch = self.page.get_by_role("button", name="Launch Run")
        expect(launch).to_be_visible()
        if config_yaml is not None:
            self._type_config(config_yaml)
        expect(launch).to_be_enabled()  # once the Launchpad has validated the config
        self.shot(f"launchpad-{job}")
        launch.click()
        self.page.wait_for_url(RUN_PATH, timeout=60_000)
        match = RUN_PATH.search(self.page.url)
        assert match, self.page.url
        return match.group(1)

    def _type_config(self, config_yaml: str) -> None:
        # The editor is CodeMirror 5: typing goes to its hidden textarea after a click. insert_text sends
        # the text as one input, as a paste would, so the editor's auto-indent does not re-indent each line.
        editor = self.page.locator(".CodeMirror").first
        editor.click()
        self.page.keyboard.press("Control+A")
        self.page.keyboard.press("Delete")
        self.page.keyboard.insert_text(config_yaml)
        typed = self.page.evaluate("() => document.querySelector('.CodeMirror').CodeMirror.getValue()")
        assert typed.strip() == config_yaml.strip(), f"the config editor holds:\n{typed}"
        # The Launchpad validates after a pause. The prefilled config had every default expanded, so "Scaffold
        # all default config" was disabled; it becomes enabled once the shorter typed text has been validated.
        # Only then do "No errors" and an enabled "Launch Run" speak about the typed config.
        expect(self.page.get_by_role("button", name="Scaffold all default config")).to_be_enabled()
        expect(self.page.get_by_text("No errors", exact=True)).to_be_visible()

    def expect_run_page_status(self, status: str, timeout_ms: float) -> None:
        """On a run's page: the status tag in its header (an icon `run_<status>` beside the label) shows it."""
        label = UI_STATUS[status]
        tag = self.page.get_by_role("img", name=f"run_{status.lower()}").locator("xpath=..")
        expect(tag.filter(has_text=re.compile(rf"^{label}$")).first).to_be_visible(timeout=timeout_ms)
        if status == "SUCCESS":  # and the event log has caught up with it
            expect(self.page.get_by_text("RUN_SUCCESS", exact=True)).to_be_visible(timeout=timeout_ms)
