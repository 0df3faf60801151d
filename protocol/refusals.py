"""Refused input: every refusal counted, but a flood of them never floods the log.

A hostile or broken peer can send thousands of bad messages a second; logging
each one turns the attack into a disk-filling one. So each category is logged
in full for its first few refusals, then summarised at most once per interval
("412 more ... in the last 10 s"), while the counts stay complete for metrics.
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Callable

__all__ = ["RefusalLog"]

FIRST_LOGGED = 5
SUMMARY_SECONDS = 10.0


class RefusalLog:
    def __init__(self, logger: logging.Logger, what: str = "refused", first: int = FIRST_LOGGED,
                 interval: float = SUMMARY_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.what = what
        self.first = first
        self.interval = interval
        self.clock = clock
        self.counts: Counter[str] = Counter()
        self.total = 0  # read from other threads (heartbeats): a plain int stays consistent there
        self._unlogged: Counter[str] = Counter()
        self._latest: dict[str, str] = {}
        self._summarised_at: dict[str, float] = {}

    def refuse(self, category: str, text: str, count: int = 1) -> None:
        """Count `count` refusals of `category`; log them if the category is new or its summary is due."""
        self.counts[category] += count
        self.total += count
        if self.counts[category] - count < self.first:
            self.logger.warning("%s (%s #%d): %s", self.what, category, self.counts[category], text)
            self._summarised_at.setdefault(category, self.clock())
            return
        self._unlogged[category] += count
        self._latest[category] = text
        self.summarise_due()

    def summarise_due(self) -> None:
        """One line per category whose unlogged refusals have waited an interval; call this now and then."""
        now = self.clock()
        for category, count in list(self._unlogged.items()):
            since = self._summarised_at.get(category, now)
            if now - since >= self.interval:
                self.logger.warning("%s %d more (%s) in the last %.0fs, %d in all; the latest: %s", self.what, count,
                                    category, now - since, self.counts[category], self._latest[category])
                del self._unlogged[category]
                self._summarised_at[category] = now
