"""The benchmark's output: one JSON line per scenario, then a table shaped like the seed's."""

import json

from cv_queue.cli.tables import render


def add_ratios(rows: list[dict]) -> None:
    """ratio_vs_seed_before for every row measured with the same handler as a seed-before row of this run."""
    base = {r["handler_ms"]: r["jobs_per_s"] for r in rows if r["scenario"] == "seed-before"}
    bare = next((r["jobs_per_s"] for r in rows if r["scenario"] == "bare-consumer"), None)
    for row in rows:
        ref = base.get(row["handler_ms"])
        row["ratio_vs_seed_before"] = round(row["jobs_per_s"] / ref, 2) if ref else None
        if bare and row["scenario"] == "cv-queue" and row["handler_ms"] == 0:
            row["share_of_bare_consumer"] = round(row["jobs_per_s"] / bare, 3)


def json_lines(rows: list[dict]) -> str:
    return "\n".join(json.dumps(row) for row in rows)


def _fmt(value: object, suffix: str = "") -> str:
    return "-" if value is None else f"{value}{suffix}"


def seed_table(rows: list[dict]) -> str:
    """The seed's 'Performance Improvements' table, filled with measured numbers."""
    columns = [r for r in rows if r["scenario"] in ("seed-before", "seed-after", "cv-queue") and r["handler_ms"]]
    if not columns:
        return ""
    headers = ["metric", *(f"{r['scenario']}" for r in columns)]
    metrics = [
        ("partitions", lambda r: r["partitions"]),
        ("workers", lambda r: r["workers"]),
        ("parallel jobs", lambda r: r["in_flight"]),
        ("throughput", lambda r: f"{r['jobs_per_s']} jobs/s"),
        ("vs seed-before", lambda r: _fmt(r.get("ratio_vs_seed_before"), "x")),
        ("efficiency (Little)", lambda r: _fmt(r["efficiency"])),
        ("latency p50 / p99", lambda r: f"{_fmt(r['latency_p50_ms'])} / {_fmt(r['latency_p99_ms'])} ms"),
        ("jobs, wall time", lambda r: f"{r['jobs']} in {r['seconds']} s"),
        ("peak worker RSS", lambda r: _fmt(r["peak_worker_rss_mb"], " MB")),
    ]
    return render(headers, [[name, *(fn(r) for r in columns)] for name, fn in metrics])


def other_table(rows: list[dict]) -> str:
    others = [r for r in rows if r["scenario"] in ("bare-consumer", "dlq-replay", "hung-job") or
              (r["scenario"] == "cv-queue" and not r["handler_ms"])]
    if not others:
        return ""
    return render(["scenario", "handler", "records", "seconds", "per second", "vs bare consumer", "peak RSS"],
                  [[r["scenario"], f"{r['handler_ms']} ms", r["jobs"], r["seconds"], r["jobs_per_s"],
                    _fmt(r.get("share_of_bare_consumer")), _fmt(r["peak_worker_rss_mb"], " MB")] for r in others])


def llm_table(rows: list[dict]) -> str:
    """The LLM evaluator over HTTP: the async path against the thread path, both against a 1 s server."""
    llm = [r for r in rows if r["scenario"].startswith("llm-") and "budget" not in r]
    if not llm:
        return ""
    return render(["scenario", "jobs", "seconds", "jobs/s", "in flight (limit)", "in flight (reached)", "efficiency",
                   "peak worker RSS"],
                  [[r["scenario"], r["jobs"], r["seconds"], r["jobs_per_s"], r["in_flight"],
                    _fmt(r.get("llm_max_in_flight")), _fmt(r["efficiency"]), _fmt(r["peak_worker_rss_mb"], " MB")]
                   for r in llm])


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f} %"


def release_table(rows: list[dict]) -> str:
    """head-of-line and crash-rework, one line per CVQ_WORKER__RELEASE_OUTPUTS mode."""
    release = [r for r in rows if "release_outputs" in r]
    if not release:
        return ""
    return render(["scenario", "release_outputs", "fast p50 / p99", "fast within 3 s", "re-executed (jobs / calls)",
                   "unsettled at kill", "lost", "duplicated"],
                  [[r["scenario"], r["release_outputs"], f"{_fmt(r['fast_p50_ms'])} / {_fmt(r['fast_p99_ms'])} ms",
                    _share(r.get("fast_share_within_3s")),
                    f"{r['reexecuted_jobs']} / {r['extra_calls']}" if "reexecuted_jobs" in r else "-",
                    _fmt(r.get("victim_unsettled_at_kill")), r["lost"], r["duplicated"]] for r in release])


def quota_table(rows: list[dict]) -> str:
    """llm-quota: the same fleet against a provider's quota without and with the fleet's budget."""
    quota = [r for r in rows if "budget" in r]
    if not quota:
        return ""
    return render(["budget", "jobs", "seconds", "limit used", "429s / calls", "dead-lettered / parked",
                   "interactive p99", "bulk p99", "interactive / bulk", "total cost"],
                  [["on" if r["budget"] else "off (baseline)", r["jobs"], r["seconds"],
                    f"{_share(r['share_of_limit_used'])} ({r['binding_limit']})", _share(r["share_429"]),
                    f"{r['dead_lettered']} / {r['parked']}", f"{r['interactive_p99_ms']} ms", f"{r['bulk_p99_ms']} ms",
                    _fmt(r["interactive_over_bulk_p99"]), r["total_cost"]] for r in quota])
