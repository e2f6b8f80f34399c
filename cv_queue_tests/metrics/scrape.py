"""Reading a /metrics endpoint as Prometheus does: over HTTP, parsed by prometheus-client's own parser."""

import re
import urllib.request
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

URL_LINE = re.compile(r"serving metrics on (http://\S+/metrics)")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def metrics_url(log: Path) -> str | None:
    """The URL a `cv-queue` process logged when it started serving metrics (port 0 resolved), if it did yet."""
    if not log.exists():
        return None
    found = URL_LINE.search(log.read_text(errors="replace"))
    return found.group(1) if found else None


@dataclass
class Scrape:
    samples: list[Sample]
    declared: set[str]  # every series name the endpoint declares (HELP/TYPE), also those without samples yet

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples called `name` whose labels include `labels`."""
        return sum(s.value for s in self.samples if s.name == name and labels.items() <= s.labels.items())

    def by(self, name: str, label: str, **labels: str) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for s in self.samples:
            if s.name == name and labels.items() <= s.labels.items():
                out[s.labels[label]] += s.value
        return dict(out)


def scrape(url: str) -> Scrape:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples, declared = [], set()
    for family in text_string_to_metric_families(text):
        declared.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
        samples.extend(family.samples)
    return Scrape(samples, declared)


def total(scrapes: Iterable[Scrape], name: str, **labels: str) -> float:
    return sum(s.value(name, **labels) for s in scrapes)


def total_by(scrapes: Iterable[Scrape], name: str, label: str, **labels: str) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for s in scrapes:
        for key, value in s.by(name, label, **labels).items():
            out[key] += value
    return dict(out)
