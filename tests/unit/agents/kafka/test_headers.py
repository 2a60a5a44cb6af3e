"""Trace ids: valid W3C traceparents, a child keeps its parent's trace and flags."""

from __future__ import annotations

from agents.kafka.headers import child, new_trace, valid_traceparent


def test_new_traces_and_children_are_valid_and_distinct() -> None:
    traces = {new_trace() for _ in range(2000)}
    assert len(traces) == 2000
    assert all(valid_traceparent(t) == t for t in traces)
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
    kids = {child(parent) for _ in range(2000)}
    assert len(kids) == 2000
    for k in kids:
        assert valid_traceparent(k) == k
        _, trace, span, flags = k.split("-")
        assert (trace, flags) == ("4bf92f3577b34da6a3ce929d0e0e4736", "00")
        assert span != "00f067aa0ba902b7"
    assert valid_traceparent(child("garbage")) is not None  # a new trace where none was
