"""Prometheus scrapes of /metrics, parsed, and the per-process files behind them."""

from __future__ import annotations

import re
import struct
from collections import defaultdict
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families


class Scrape:
    """One parsed /metrics answer: sample name -> [(labels, value)]."""

    def __init__(self, text: str):
        self.text = text
        self.samples: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
        self.types: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for s in family.samples:
                self.samples[s.name].append((dict(s.labels), s.value))

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples of `name` whose labels include `labels` (0 when none)."""
        return sum(v for lab, v in self.samples.get(name, []) if all(lab.get(k) == x for k, x in labels.items()))

    def has(self, name: str, **labels: str) -> bool:
        return any(all(lab.get(k) == x for k, x in labels.items()) for lab, _ in self.samples.get(name, []))

    def by(self, name: str, *keys: str, nonzero: bool = True) -> dict[tuple[str, ...], float]:
        out: dict[tuple[str, ...], float] = defaultdict(float)
        for lab, v in self.samples.get(name, []):
            out[tuple(lab.get(k, "") for k in keys)] += v
        return {k: v for k, v in out.items() if v or not nonzero}


def scrape(url: str) -> Scrape:
    # a fresh connection each time, so successive scrapes can land on different workers
    response = requests.get(url + "/metrics", timeout=15, headers={"Connection": "close"})
    assert response.status_code == 200, (response.status_code, response.text[:500])
    assert response.headers["Content-Type"].startswith("text/plain"), response.headers["Content-Type"]
    return Scrape(response.text)


def per_process_counts(metrics_dir: Path, sample: str) -> dict[int, float]:
    """From prometheus_client's multiprocess files: pid -> total of `sample` written by that process.

    A worker creates its file when it first counts something, and the file is empty (or its header
    half written) for a moment: such a file counts 0 for now, as nothing in it is complete yet, so
    a caller polling for a count sees it on its next look instead of failing on this one."""
    from prometheus_client.multiprocess import MultiProcessCollector

    out: dict[int, float] = {}
    for f in sorted(metrics_dir.glob("counter_*.db")):
        m = re.search(r"_(\d+)\.db$", f.name)
        if not m:
            continue
        total = 0.0
        try:
            if f.stat().st_size < 8:  # not even the header (used bytes, padding) is there yet
                raise ValueError("a file being created")
            for family in MultiProcessCollector.merge([str(f)], accumulate=True):
                for s in family.samples:
                    if s.name == sample:
                        total += s.value
        except (OSError, ValueError, struct.error, UnicodeDecodeError):
            total = 0.0
        out[int(m.group(1))] = total
    return out
