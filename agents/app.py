"""The Faust app of one Darkroom worker: router, one generated agent per task, sink.

All agents join one consumer group (the app id), so starting more workers spreads the partitions of
every topic over them. Settings that matter on the embedded broker: short session timeouts (joins
take ~timeout/2 there), no leader topic, no tables, offsets reset to earliest (latest-offset lookups
are wrong on tansu).
"""

from __future__ import annotations

import faust

from agents import processing, router, sink
from agents.runtime import Runtime


def create_app(rt: Runtime) -> faust.App:
    s = rt.settings
    app = faust.App(
        s.worker_id,
        broker=f"kafka://{rt.bootstrap}",
        key_serializer="raw",
        value_serializer="raw",
        store="memory://",
        topic_allow_declare=False,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=s.session_timeout_s,
        broker_heartbeat_interval=max(0.5, s.session_timeout_s / 6),
        broker_rebalance_timeout=s.session_timeout_s * 2,
        broker_commit_interval=1.0,
        web_enabled=s.web_port > 0,
        web_port=s.web_port or 6066,
        web_bind="127.0.0.1",
        autodiscover=False,
        datadir=str(s.data_dir / "faust"),
    )
    if "router" in s.agents:
        router.install(app, rt)
    if "tasks" in s.agents:
        for proc in rt.processors.values():
            if s.tasks is None or proc.name in s.tasks:
                processing.install(app, rt, proc)
    if "sink" in s.agents:
        sink.install(app, rt)
    return app
