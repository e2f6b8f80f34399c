"""The stall watchdog: a watched call past its limit is reported once; one within it never is."""

import time

from cv_queue.kafka.client.stall import StallWatchdog


def test_a_call_past_its_limit_is_reported_once_and_one_within_it_never():
    reported: list[tuple[str, float]] = []
    watchdog = StallWatchdog(on_stall=lambda what, elapsed: reported.append((what, elapsed)), tick_s=0.05)
    with watchdog.watch("quick", limit_s=5):
        time.sleep(0.2)
    with watchdog.watch("stuck", limit_s=0.2):
        time.sleep(0.8)
    time.sleep(0.2)
    assert [what for what, _ in reported] == ["stuck"]
    assert reported[0][1] > 0.2


def test_watches_from_several_threads_are_kept_apart():
    import threading

    reported: list[str] = []
    watchdog = StallWatchdog(on_stall=lambda what, _: reported.append(what), tick_s=0.05)

    def watched(name: str, limit_s: float, runs_s: float) -> None:
        with watchdog.watch(name, limit_s):
            time.sleep(runs_s)

    threads = [threading.Thread(target=watched, args=("slow", 0.1, 0.6)),
               threading.Thread(target=watched, args=("fast", 2.0, 0.3))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert reported == ["slow"]
