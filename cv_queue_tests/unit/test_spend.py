"""The spend gate alone with a fake clock: reservations keep a worker under the window's limit, the gate closes for
the rest of a window once a job does not fit, and opens with the next; what the ledger says of the fleet counts.
Also the flow-control pause and the llm_spend asset check's grades."""

from dataclasses import replace

import dagster as dg
from hypothesis import given
from hypothesis import strategies as st

from cv_queue.defs.checks import LLM_SPEND, QueueDepths, spend_evaluation
from cv_queue.evaluation.llm.spend import RESERVED_RECHECK_S, SpendGate
from cv_queue.kafka.fleet.dlq_layout import DlqLayout
from cv_queue.kafka.fleet.spend_ledger import FleetSpend, decode_entry
from cv_queue.kafka.worker.flow import FlowControl
from cv_queue.quota_settings import SpendBudget
from cv_queue.settings import LLMSettings, QueueSettings


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _gate(limit: float | None = 1.0, window_s: int = 100) -> tuple[SpendGate, Clock]:
    clock = Clock()
    return SpendGate(SpendBudget(limit=limit, window_s=window_s), clock), clock


def test_windows_are_aligned_to_the_epoch():
    budget = SpendBudget(window_s=86400)
    assert budget.window_start(86400 * 3 + 5) == 86400 * 3
    assert budget.window_start(86400 * 3 - 1) == 86400 * 2


def test_no_limit_never_holds():
    gate, _ = _gate(limit=None)
    for _ in range(100):
        assert gate.try_reserve(10.0) == 0.0
        gate.settle(10.0, 10.0)
    assert gate.wait_s() == 0.0 and gate.spent() == 1000.0


def test_a_job_that_does_not_fit_closes_the_window_until_the_next():
    gate, clock = _gate(limit=1.0, window_s=100)
    assert gate.try_reserve(0.4) == 0.0
    gate.settle(0.4, 0.4)
    assert gate.try_reserve(0.4) == 0.0
    gate.settle(0.4, 0.4)
    window_end = gate.current_window() + 100
    wait = gate.try_reserve(0.4)  # 0.8 spent: 0.4 more does not fit
    assert abs(wait - (window_end - clock.now)) < 1e-9
    assert gate.wait_s() > 0 and gate.closed(gate.current_window())
    assert gate.try_reserve(0.05) > 0, "a closed window stays closed, even for a small job"
    clock.now = window_end
    assert gate.wait_s() == 0.0
    assert gate.try_reserve(0.4) == 0.0


def test_a_job_waits_for_calls_in_flight_rather_than_closing_the_window():
    gate, _ = _gate(limit=1.0)
    assert gate.try_reserve(0.6) == 0.0  # in flight, at its most expensive outcome
    assert gate.try_reserve(0.6) == RESERVED_RECHECK_S  # fits once the first settles below its estimate
    assert gate.wait_s() == 0.0, "the window is not closed by a reservation"
    gate.settle(0.6, 0.1)
    assert gate.try_reserve(0.6) == 0.0


def test_a_worker_keeps_its_share_of_what_is_left_in_flight():
    gate, _ = _gate(limit=1.0)
    gate.set_fleet_size(4)
    assert gate.try_reserve(0.2) == 0.0, "one job at a time is always allowed"
    assert gate.try_reserve(0.2) == RESERVED_RECHECK_S, "a second would pass its quarter of what is left"
    gate.settle(0.2, 0.2)
    gate.set_fleet_size(1)
    assert gate.try_reserve(0.2) == 0.0 and gate.try_reserve(0.2) == 0.0, "alone, it may use all that is left"


def test_the_rest_of_the_fleet_counts():
    gate, _ = _gate(limit=1.0)
    gate.set_others(gate.current_window(), 0.95)
    assert gate.wait_s() == 0.0
    assert gate.try_reserve(0.1) > 0
    assert gate.wait_s() > 0


def test_published_spend_counts_reservations_of_the_current_window_only():
    gate, clock = _gate(limit=10.0, window_s=100)
    window = gate.current_window()
    gate.try_reserve(2.0)
    gate.settle(2.0, 0.5)
    gate.try_reserve(3.0)
    assert gate.own(window) == 3.5
    assert gate.own(window - 100) == 0.0
    clock.now += 100
    assert gate.own(window) == 0.5 and gate.spent(window) == 0.5


@given(st.lists(st.tuples(st.floats(0.001, 0.5), st.floats(0, 1), st.floats(0, 30)), min_size=1, max_size=150))
def test_one_worker_never_spends_more_than_the_limit_per_window(calls):
    """Each call costs at most its estimate (the estimate assumes all of max_tokens): whatever the order and timing,
    the settled spend of any window stays within the limit."""
    gate, clock = _gate(limit=2.0, window_s=60)
    spent_by_window: dict[int, float] = {}
    for estimate, share, advance in calls:
        clock.now += advance
        if gate.try_reserve(estimate) == 0.0:
            window = gate.current_window()
            gate.settle(estimate, estimate * share)
            spent_by_window[window] = spent_by_window.get(window, 0.0) + estimate * share
    assert all(spent <= 2.0 + 1e-9 for spent in spent_by_window.values())


def test_flow_control_pauses_every_source_while_the_spend_is_spent():
    settings = QueueSettings()
    names = settings.topic_names
    sources = [(t, 0) for t in names.consumed]
    flow = FlowControl(settings, sources, names.retry, names.interactive)
    assert flow.wanted(0, {}, {}, spend_exhausted=True) == set(sources)


def _depths(spend: float | None, paused: bool = False) -> QueueDepths:
    return QueueDepths(main=[], retry=[], interactive=[], dlq=[], parked={}, dlq_layout=DlqLayout.of(QueueSettings()),
                       spend=None if spend is None else FleetSpend(spend, 0.0, paused), spend_window=86400 * 10)


def _settings(limit: float | None) -> QueueSettings:
    return QueueSettings(llm=LLMSettings(spend=SpendBudget(limit=limit, warn_at=0.8)))


def test_the_spend_check_grades_warn_then_error():
    ok = spend_evaluation(_depths(0.5), _settings(1.0))
    warn = spend_evaluation(_depths(0.85), _settings(1.0))
    error = spend_evaluation(_depths(1.0), _settings(1.0))
    assert ok.passed and ok.check_name == LLM_SPEND
    assert not warn.passed and warn.severity == dg.AssetCheckSeverity.WARN
    assert not error.passed and error.severity == dg.AssetCheckSeverity.ERROR
    assert "intake paused until" in error.description
    paused = spend_evaluation(_depths(0.7, paused=True), _settings(1.0))
    assert not paused.passed and paused.severity == dg.AssetCheckSeverity.ERROR, "a worker paused: ERROR"
    assert spend_evaluation(_depths(None), _settings(None)).passed
    assert spend_evaluation(_depths(None), _settings(1.0)).passed, "no ledger yet: nothing spent"
    unreadable = spend_evaluation(replace(_depths(None), spend_error="KafkaException: denied"), _settings(1.0))
    assert not unreadable.passed and unreadable.severity == dg.AssetCheckSeverity.ERROR
    assert "could not be read" in unreadable.description


@given(st.integers(2, 4),
       st.lists(st.tuples(st.integers(0, 3), st.sampled_from(["reserve", "settle", "sync"]), st.floats(0.01, 0.3),
                          st.floats(0, 1), st.floats(0, 2)), max_size=300))
def test_a_fleet_overspends_by_at_most_a_job_per_worker(fleet, steps):
    """Workers that start calls, settle them later (across ledger reads and window ends, for less than their
    estimates), and read the ledger at any times, or never: the spend settled in any window stays within the limit
    plus one job per worker (what each may start on its share before it hears of the others)."""
    clock = Clock()
    gates = [SpendGate(SpendBudget(limit=2.0, window_s=60), clock) for _ in range(fleet)]
    in_flight: list[list[tuple[float, float]]] = [[] for _ in range(fleet)]
    for gate in gates:
        gate.set_fleet_size(fleet)
    totals: dict[int, float] = {}
    biggest = 0.0
    for who, action, estimate, share, advance in steps:
        clock.now += advance
        index = who % fleet
        gate = gates[index]
        window = gate.current_window()
        if action == "sync":  # the ledger: every other worker's last figures
            published = [g.published(window) for g in gates if g is not gate]
            gate.set_others(window, sum(p[0] for p in published), sum(p[1] for p in published))
        elif action == "reserve" and gate.try_reserve(estimate) == 0.0:
            in_flight[index].append((estimate, estimate * share))
            biggest = max(biggest, estimate)
        elif action == "settle" and in_flight[index]:
            reserved, cost = in_flight[index].pop(0)
            gate.settle(reserved, cost)
            totals[window] = totals.get(window, 0.0) + cost
    assert all(spent <= 2.0 + fleet * biggest + 1e-9 for spent in totals.values()), totals
    for gate, calls in zip(gates, in_flight, strict=True):
        for reserved, cost in calls:
            gate.settle(reserved, cost)
        assert gate.reserved == 0.0, "a settled reservation stayed counted"


@given(st.binary(max_size=300))
def test_the_ledger_decoder_takes_any_bytes(value):
    entry = decode_entry(value)
    assert entry is None or entry.spent >= 0


def test_a_job_dearer_than_the_whole_limit_runs_alone_in_a_fresh_window_instead_of_stalling():
    gate, clock = _gate(limit=1.0, window_s=100)
    assert gate.try_reserve(5.0) == 0.0, "capped at the limit: it fits in a window nothing was spent in"
    assert gate.reserved == 1.0
    gate.settle(5.0, 1.3)
    assert gate.wait_s() > 0, "spent past the limit: closed until the window ends"
    clock.now = gate.current_window() + 100
    assert gate.try_reserve(5.0) == 0.0, "and again in the next window"


def test_reservations_of_others_make_a_job_wait_but_never_close_the_window():
    gate, _ = _gate(limit=1.0)
    gate.set_others(gate.current_window(), 0.1, 0.85)  # the others' calls in flight, at their worst case
    assert gate.try_reserve(0.2) == RESERVED_RECHECK_S
    assert gate.wait_s() == 0.0 and not gate.closed(gate.current_window())
    gate.set_others(gate.current_window(), 0.3, 0.0)  # they settled far below their estimates
    assert gate.try_reserve(0.2) == 0.0


@given(st.lists(st.floats(0.01, 1000), min_size=1, max_size=50))
def test_the_learned_prompt_scale_follows_the_provider_and_stays_bounded(ratios):
    """Admission estimates learn what the provider counted of earlier prompts (a CV read from a file, another
    tokenizer), and no answer, however odd, makes them absurd."""
    from cv_queue.evaluation.llm.estimates import SCALE_BOUNDS, CallEstimates
    from cv_queue_tests.llm.helpers import make_job

    estimates = CallEstimates(max_tokens=100, template_chars=400, price=None)
    job = make_job()
    for ratio in ratios:
        reserved = estimates.admission_tokens(job)
        raw_prompt = (reserved - 100) / estimates.prompt_scale
        estimates.learn(reserved, max(1, round(raw_prompt * ratio)))
        assert SCALE_BOUNDS[0] <= estimates.prompt_scale <= SCALE_BOUNDS[1]
    for _ in range(60):  # a steady provider: the estimate converges on what it counts
        reserved = estimates.admission_tokens(job)
        estimates.learn(reserved, 3 * round((reserved - 100) / estimates.prompt_scale))
    assert abs(estimates.prompt_scale - 3.0) < 0.05
