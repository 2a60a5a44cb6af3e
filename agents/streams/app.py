"""The Faust app of one Darkroom worker: router, one generated agent per task, sink.

All agents join one consumer group (the app id), so starting more workers spreads the partitions of
every topic over them. Settings that matter on the embedded broker: short session timeouts (joins
take ~timeout/2 there), no leader topic, no tables, offsets reset to earliest (latest-offset lookups
are wrong on tansu), and a fetch wait capped at DARKROOM_FETCH_MAX_WAIT_MS through the app's own
transport (:mod:`agents.streams.transport`).
"""

from __future__ import annotations

import logging

import faust

from agents.composition import Runtime
from agents.streams import delivery, router, subscriptions, sweeper
from agents.streams.transport import WorkerApp

log = logging.getLogger("darkroom.app")


def install_web(app: faust.App, rt: Runtime) -> None:
    """/metrics, /healthz, /readyz on the worker's web server (DARKROOM_WEB_PORT > 0)."""
    from faust.web import Request, Response, View

    from agents.metrics import render

    @app.page("/metrics")
    class Metrics(View):
        async def get(self, request: Request) -> Response:
            body, ctype = render()
            return self.bytes(body, content_type=ctype.split(";")[0])

    @app.page("/healthz")
    class Health(View):
        async def get(self, request: Request) -> Response:
            return self.json({"status": "ok"})

    @app.page("/readyz")
    class Ready(View):
        async def get(self, request: Request) -> Response:
            """Ready: partitions assigned, no rebalance, and no agent stuck on a message (the
            stalled ones are named with topic, partition and offset)."""
            assigned = len(app.consumer.assignment()) if app.consumer else 0
            stalled = rt.health.stalled()
            ready = assigned > 0 and not app.rebalancing and not stalled
            return self.json({"ready": ready, "partitions": assigned, "stalled": stalled},
                             status=200 if ready else 503)

    del Metrics, Health, Ready


def create_app(rt: Runtime) -> faust.App:
    s = rt.settings
    _ = rt.health  # built now: /readyz and the stall gauge read it from the start
    s.data_dir.mkdir(parents=True, exist_ok=True)  # Faust creates its datadir inside
    app = WorkerApp(
        s.group_id,
        broker=f"kafka://{rt.bootstrap}",
        key_serializer="raw",
        value_serializer="raw",
        store="memory://",
        topic_allow_declare=False,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        # a topic recreated (or auto-created with other partitions) after a broker restart is
        # picked up within seconds, not aiokafka's default 5 minutes
        consumer_metadata_max_age_ms=15_000,
        broker_session_timeout=s.session_timeout_s,
        broker_heartbeat_interval=max(0.5, s.session_timeout_s / 6),
        broker_rebalance_timeout=s.session_timeout_s * 2,
        broker_commit_interval=1.0,
        web_enabled=s.web_port > 0,
        web_port=s.web_port or 6066,
        web_bind="127.0.0.1",
        autodiscover=False,
        datadir=str(s.data_dir / "faust"),
        fetch_max_wait_ms=s.fetch_max_wait_ms,  # through the transport (agents/streams/transport)
        fetch_idle_wait_ms=s.fetch_idle_wait_ms,
        fetch_busy_wait_ms=s.fetch_busy_wait_ms, fetch_busy_min_bytes=s.fetch_busy_min_bytes,
        fetch_idle_after_s=s.fetch_idle_after_s,
        quiet_after_s=s.fetch_quiet_after_s or None,
        quiet_poll_s=s.fetch_quiet_poll_ms / 1000,
    )
    install_web(app, rt)
    if "router" in s.agents:
        router.install(app, rt)
    # the task agents and the sink's result topics: those of the tasks in use
    subscriptions.install(app, rt)
    if "sink" in s.agents:
        sweeper.install(app, rt)
        delivery.install(app, rt)
    install_topic_guard(app, rt)
    return app


def install_topic_guard(app: faust.App, rt: Runtime) -> None:
    """Topics are ensured on every (re)connection: after each rebalance (a restarted broker
    makes the group rejoin) the missing ones are created with the configured partitions."""
    from agents.kafka.topics import all_topics, ensure_topics

    s = rt.settings

    async def ensure(*_args: object, **_kwargs: object) -> None:
        try:
            await rt.in_pool(ensure_topics, rt.bootstrap, all_topics(s, rt.processors),
                             s.partitions, s.replication_factor, pool=rt.io_pool)
        except Exception:
            log.warning("ensuring topics after a rebalance failed", exc_info=True)

    app.on_rebalance_complete.connect(ensure)
