"""Webhook delivery agents: first attempts on ``darkroom.webhooks``, retries on fixed-delay tiers.

A failed attempt is re-published to the retry tier of its delay (``darkroom.webhooks.retry.10s``,
``.1m``, ...; ``DARKROOM_WEBHOOK_RETRY_SCHEDULE_S``) with its due time. Every message of a tier has
the same delay, so each tier's partitions are in due order and its agent only ever waits for the
head: the schedule lives in Kafka and survives worker restarts (an unacknowledged message is read
again). After the last tier the delivery becomes a dead letter on ``darkroom.dlq.webhooks``;
``darkroom webhooks replay`` sends dead letters again. The outbox row in the store is the truth
about each delivery, so a duplicate or replayed message never delivers twice.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Any

import faust

from agents.composition import Runtime
from agents.kafka.headers import TRACE, child
from agents.logs import bind
from agents.metrics import WEBHOOK_ATTEMPTS
from agents.streams import validation
from agents.streams.poison import Lane, Msg, Poison, dead_letter, dead_letter_now, settle
from schemas.records import WebhookDelivery, now_ms

log = logging.getLogger("darkroom.delivery")

DONE = ("delivered", "refused")


def attempt(rt: Runtime, d: WebhookDelivery) -> str:
    """Blocking: one delivery attempt, its bookkeeping and the next step. Returns the state."""
    state = _attempt(rt, d)
    WEBHOOK_ATTEMPTS.labels(state).inc()
    return state


def _attempt(rt: Runtime, d: WebhookDelivery) -> str:
    from sinks.webhooks import deliver, idempotency_key, webhook_headers

    s = rt.settings
    row = rt.store.delivery(d.delivery_id)
    if row is None and rt.store.get_asset(d.asset_id) is None:
        from sinks.store.lifecycle import tombstone

        if tombstone(rt.store, d.asset_id) is not None:
            log.info("webhook %s of deleted asset %s dropped", d.event, d.asset_id)
            return "dropped"  # the asset was deleted with its deliveries: nothing to send
    if row is None:
        raise Poison(f"no delivery {d.delivery_id!r} in the outbox: only the sink queues "
                     "webhooks")
    differ = [name for name, ours, theirs in (
        ("asset_id", row["asset_id"], d.asset_id), ("url", row["url"], d.url),
        ("event", row["event"], d.event), ("version", int(row["version"]), d.version))
        if ours != theirs]
    if differ:
        raise Poison(f"the message's {', '.join(differ)} differ from outbox entry "
                     f"{d.delivery_id!r}")
    if row["state"] in DONE:
        return str(row["state"])  # a duplicate or a replay of something already settled
    # the outbox row is the truth: what is sent is what the sink recorded
    d = replace(d, payload=bytes(row["payload"]))
    # signed now (receivers reject stale timestamps); the key is the same for every attempt
    # one key per destination: the upload's notification_url and a global URL get different ones
    headers = webhook_headers(d.payload, s.webhook_secret_value(), event=d.event,
                              idempotency_key=idempotency_key(d.asset_id, d.version, d.event,
                                                              d.url),
                              style=s.webhook_header_style)
    trace = TRACE.get()
    if trace:
        headers["traceparent"] = trace
    out = deliver(d.url, d.payload, headers, allow=s.webhook_allow,
                  connect_timeout=s.webhook_connect_timeout_s,
                  read_timeout=s.webhook_read_timeout_s,
                  max_response_bytes=s.webhook_max_response_bytes)
    if out.status in DONE:
        rt.store.mark_delivery(d.delivery_id, out.status, d.attempt, out.http_status, out.error)
        if out.status == "refused":
            log.warning("webhook %s for %s refused: %s", d.url, d.asset_id, out.error)
        return str(out.status)
    schedule = s.webhook_retry_schedule_s
    error = out.error or f"HTTP {out.http_status}"
    if d.attempt <= len(schedule):
        delay = schedule[d.attempt - 1]
        topic = dict((dl, t) for dl, t in s.retry_topics())[delay]
        nxt = replace(d, attempt=d.attempt + 1, due_at=now_ms() + int(delay * 1000))
        rt.producer.send(topic, d.asset_id, nxt.to_bytes())
        rt.producer.flush_sync()
        rt.store.mark_delivery(d.delivery_id, "retrying", d.attempt, out.http_status, error)
        log.info("webhook %s for %s failed (attempt %d: %s); retry in %gs", d.url, d.asset_id,
                 d.attempt, error, delay)
        return "retrying"
    original = Msg(s.topic("webhooks"), -1, -1, d.asset_id.encode(), d.to_bytes())
    dl = dead_letter(original, f"{d.attempt} attempts failed; last: {error}",
                     embed_limit=max(s.dead_letter_embed_bytes, len(original.value or b"")),
                     kind="transient", attempts=d.attempt, asset_id=d.asset_id, task="webhook")
    rt.producer.send(s.topic("dlq", "webhooks"), d.asset_id, dl.to_bytes())
    rt.producer.flush_sync()
    rt.store.mark_delivery(d.delivery_id, "dead", d.attempt, out.http_status, error)
    log.warning("webhook %s for %s dead after %d attempts: %s", d.url, d.asset_id, d.attempt,
                error)
    return "dead"


async def handle(rt: Runtime, lane: Lane, msg: Msg) -> None:
    """One delivery message. Never raises: an invalid one is dead-lettered, store trouble is
    retried (the outbox row in the store decides, so a retry never delivers twice)."""
    s = rt.settings
    lane.start(msg)
    TRACE.set(child(msg.traceparent))  # the delivery's span: sent on in the HTTP request too
    try:
        d = validation.webhook_delivery(msg, s.max_message_bytes)
        latest = now_ms() + int((max(s.webhook_retry_schedule_s or [0.0]) + 300) * 1000)
        if d.due_at > latest:
            raise Poison(f"due_at {d.due_at} is later than any retry tier can schedule")
        bind(d.asset_id, "webhook")
        wait_ms = d.due_at - now_ms()
        if wait_ms > 0:
            await asyncio.sleep(wait_ms / 1000)  # the head of a tier: nothing behind it is due
        # slow receivers must not hold the processors' threads: deliveries have their own pool
        await settle(lane, lambda: rt.in_pool(attempt, rt, d, pool=rt.webhook_pool),
                     rt.retry_policy)
    except Poison as exc:
        await dead_letter_now(lane, msg, exc.reason,
                              rt.dead_letter_sender(s.topic("dlq", "webhooks"), "webhook"))
    finally:
        lane.finish()


def install(app: faust.App, rt: Runtime) -> None:
    s = rt.settings
    longest_wait = max(s.webhook_retry_schedule_s or [0.0])
    busy = longest_wait + s.webhook_connect_timeout_s + s.webhook_read_timeout_s + 120

    def make(topic_name: str, concurrency: int, name: str) -> None:
        topic = app.topic(topic_name, key_type=bytes, value_type=bytes)

        async def agent(stream: Any) -> None:
            lane = rt.health.lane(name, busy_seconds=busy)
            async for event in stream.events():
                await handle(rt, lane, Msg.of(event))

        agent.__name__ = name.replace(".", "_").replace("-", "_")
        app.agent(topic, name=name, concurrency=concurrency)(agent)

    make(s.topic("webhooks"), s.webhook_concurrency, "darkroom.webhooks")
    for _delay, topic in s.retry_topics():
        # one at a time per tier: its messages are in due order, the head is the next due
        make(topic, 1, f"darkroom.{topic}")


def resend_stale(rt: Runtime) -> int:
    """Blocking (sweeper): re-send queued deliveries whose first message may have been lost."""
    s = rt.settings
    stale = rt.store.stale_deliveries(now_ms() - 60_000)
    for row in stale:
        d = WebhookDelivery(delivery_id=row["delivery_id"], asset_id=row["asset_id"],
                            version=row["version"], event=row["event"], url=row["url"],
                            payload=bytes(row["payload"]), attempt=1, due_at=0,
                            created_at=row["created_at"])
        if rt.producer.send(s.topic("webhooks"), d.asset_id, d.to_bytes()):
            rt.store.touch_delivery(d.delivery_id)
        else:  # refused for good (an outbox row from before payloads were bounded)
            rt.store.mark_delivery(d.delivery_id, "dead", 0, None,
                                   "the delivery message is larger than the broker accepts")
    if stale:
        rt.producer.flush_sync()
    return len(stale)
