"""coordinator/train/feeds.py: both feeds answer everything the trainer asks of a feed."""
from __future__ import annotations

import inspect

import pytest

from dni.coordinator.train.batch_feed import BatchFeed
from dni.coordinator.train.chunk_feed import ChunkFeed
from dni.coordinator.train.feeds import Feed

MEMBERS = sorted({*Feed.__annotations__, *(name for name, _ in inspect.getmembers(Feed, inspect.isfunction)
                                           if not name.startswith("_"))})


@pytest.mark.parametrize("feed", [BatchFeed, ChunkFeed])
def test_a_feed_has_every_member_of_the_protocol(feed):
    init = inspect.getsource(feed.__init__)
    missing = [name for name in MEMBERS if not hasattr(feed, name) and f"self.{name}" not in init]
    assert missing == []
    assert len(MEMBERS) > 15, "the protocol's members were found"
