"""The operator's flow in the Dagster UI, driven by Playwright in Debian's Chromium against `cv-queue dev`:
the topic assets are materialized, four worker runs are STARTED, a replay launched from the Launchpad with
a typed config succeeds, and stop_worker_fleet / start_worker_fleet launched from the UI end the fleet and
bring it back. Every step is a screenshot under the test's tmp_path (screenshots/); what the UI shows is
checked against the Dagster instance too.

    CVQ_UI_SCREENSHOTS=docs/screenshots pytest cv_queue_tests/ui    # also refreshes the docs' screenshots
"""

import contextlib
import os
import shutil
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml
from playwright.sync_api import expect

from cv_queue.defs import tags
from cv_queue.defs.dlq import REPLAY_JOB
from cv_queue.defs.topics import asset_key
from cv_queue.defs.workers import SLOTS, WORKER_JOB, active_worker_runs
from cv_queue.kafka.admin.topics import TopicRole
from cv_queue_tests.conftest import PROJECT_ROOT
from cv_queue_tests.support import wait_for
from cv_queue_tests.ui.browser import chromium, require_chromium
from cv_queue_tests.ui.dagster_ui import MATERIALIZED, ROW, DagsterUI
from cv_queue_tests.ui.dev_stack import DevStack, running_dev

pytestmark = [pytest.mark.daemon, pytest.mark.timeout(600)]

# Typed into the Launchpad's editor in place of the prefilled defaults. Only plain fields, with values no
# default has, so the run's recorded config proves the typed text was what launched it.
REPLAY_CONFIG = """\
ops:
  reprocess_dead_letters:
    config:
      max_messages: 4321
      min_age_seconds: 0
      dry_run: false
      retry_delay_seconds: 1
"""
CHECK_MS = 8_000  # one look at the page before it is reloaded
RUN_WAIT_S = 180.0  # runs start as processes on two shared cores: seconds normally, far less than this
# docs/05-operations.md shows two of the screenshots, copied under these names when CVQ_UI_SCREENSHOTS is set.
README_SHOTS = {"workers-started": "dagster-ui-worker-runs.png", "launchpad-reprocess_dlq": "dagster-ui-launchpad.png"}


def _started_workers(dev: DevStack, exclude: set[str]) -> dict[str, str]:
    """slot -> run id of the STARTED worker runs not in `exclude`."""
    dev.check_alive()
    runs = dev.instance.get_runs(filters=dg.RunsFilter(job_name=WORKER_JOB, statuses=[dg.DagsterRunStatus.STARTED]))
    return {run.tags[tags.WORKER_SLOT]: run.run_id for run in runs if run.run_id not in exclude}


def _wait_for_fleet(dev: DevStack, exclude: set[str]) -> set[str]:
    wait_for(lambda: sorted(_started_workers(dev, exclude)) == sorted(SLOTS), RUN_WAIT_S + 120,
             f"a STARTED {WORKER_JOB} run for each of the slots {SLOTS}", interval_s=1)
    return set(_started_workers(dev, exclude).values())


def _run_status(dev: DevStack, run_id: str) -> dg.DagsterRunStatus:
    run = dev.instance.get_run_by_id(run_id)
    assert run is not None, f"run {run_id} is not in the instance"
    return run.status


def _expect_runs_shown(ui: DagsterUI, run_ids: set[str], label: str) -> None:
    expect(ui.run_rows()).to_have_count(len(run_ids), timeout=CHECK_MS)
    for run_id in run_ids:
        expect(ui.run_row(run_id)).to_contain_text(label, timeout=CHECK_MS)
    assert ui.shown_run_ids() == run_ids


def _launch_and_succeed(ui: DagsterUI, dev: DevStack, job: str, config_yaml: str | None = None) -> str:
    run_id = ui.launch_from_launchpad(job, config_yaml)
    ui.until(lambda: ui.expect_run_page_status("SUCCESS", CHECK_MS), RUN_WAIT_S, f"{job} run {run_id} succeeded")
    assert _run_status(dev, run_id) == dg.DagsterRunStatus.SUCCESS
    return run_id


def _publish_readme_shots(shots: Path) -> None:
    target = os.environ.get("CVQ_UI_SCREENSHOTS")
    if not target:
        return
    folder = PROJECT_ROOT / target
    folder.mkdir(parents=True, exist_ok=True)
    for step, name in README_SHOTS.items():
        (taken,) = shots.glob(f"[0-9][0-9]-{step}.png")
        shutil.copyfile(taken, folder / name)


def _operator_flow(ui: DagsterUI, dev: DevStack) -> None:
    # cv-queue dev materializes the topic assets once its UI answers.
    keys = [asset_key(role) for role in TopicRole]

    def topics_recorded() -> bool:
        dev.check_alive()
        return all(dev.instance.get_latest_materialization_event(key) for key in keys)

    wait_for(topics_recorded, RUN_WAIT_S + 120, "the six topic assets to be materialized", interval_s=1)
    ui.open("/")
    ui.dismiss_first_visit_dialog()

    # 1. The six topic assets of the kafka_topics group are shown materialized.
    ui.open_asset_group(keys[0].path[0])

    def topics_materialized() -> None:
        expect(ui.page.locator(ROW)).to_have_count(len(keys), timeout=CHECK_MS)
        for key in keys:
            expect(ui.asset_row(key.path)).to_contain_text(MATERIALIZED, timeout=CHECK_MS)

    ui.until(topics_materialized, 60, "the six topic assets materialized")
    ui.shot("topics-materialized")

    # 2. Four partition_worker runs, one per slot, are STARTED.
    first_fleet = _wait_for_fleet(dev, exclude=set())
    ui.open_runs(WORKER_JOB, status="STARTED")
    ui.until(lambda: _expect_runs_shown(ui, first_fleet, "Started"), 60, "four STARTED worker runs")
    ui.shot("workers-started")

    # 3. reprocess_dlq from the Launchpad, with the config typed into its editor, reaches SUCCESS.
    replay = _launch_and_succeed(ui, dev, REPLAY_JOB, REPLAY_CONFIG)
    ui.shot("replay-succeeded")
    replay_run = dev.instance.get_run_by_id(replay)
    assert replay_run is not None and replay_run.run_config == yaml.safe_load(REPLAY_CONFIG)

    # 4. stop_worker_fleet ends every worker run: each commits and ends SUCCESS, and none replaces it.
    _launch_and_succeed(ui, dev, "stop_worker_fleet")
    ui.shot("fleet-stop-succeeded")
    assert {run_id: _run_status(dev, run_id) for run_id in first_fleet} == \
        dict.fromkeys(first_fleet, dg.DagsterRunStatus.SUCCESS)
    assert active_worker_runs(dev.instance) == []
    ui.open_runs(WORKER_JOB)
    ui.until(lambda: _expect_runs_shown(ui, first_fleet, "Success"), 60, "the four worker runs ended")
    ui.shot("workers-ended")

    # 5. start_worker_fleet brings them back: the fleet sensor launches a new run for every slot.
    _launch_and_succeed(ui, dev, "start_worker_fleet")
    ui.shot("fleet-start-succeeded")
    second_fleet = _wait_for_fleet(dev, exclude=first_fleet)
    ui.open_runs(WORKER_JOB, status="STARTED")
    ui.until(lambda: _expect_runs_shown(ui, second_fleet, "Started"), 60, "four new STARTED worker runs")
    ui.shot("workers-back")


def test_operator_flow_in_the_dagster_ui(tmp_path):
    require_chromium()  # before anything is started: a missing browser fails at once, with the fix
    shots = tmp_path / "screenshots"
    started = time.monotonic()
    with running_dev(tmp_path, sample_jobs=20) as dev, chromium(tmp_path / "chromium-profile") as browser:
        ui = DagsterUI(browser.pages[0] if browser.pages else browser.new_page(), dev.ui_url, shots)
        try:
            _operator_flow(ui, dev)
        except BaseException:
            with contextlib.suppress(Exception):  # what the page showed when it failed
                ui.shot("FAILED")
            raise
    _publish_readme_shots(shots)
    print(f"UI flow passed in {time.monotonic() - started:.0f}s; screenshots in {shots}")
