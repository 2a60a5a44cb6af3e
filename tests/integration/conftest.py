"""Fixtures the integration tests share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.streams.test_notifications import Receiver


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    """A local webhook receiver (its ``url``), one per test module."""
    r = Receiver()
    yield r
    r.server.shutdown()
