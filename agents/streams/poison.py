"""What happens when a message cannot be handled: one policy for every agent.

Any producer can write anything to any topic, so an agent must never stop on a message. Every
failure is sorted into one of three kinds (:func:`classify`, the only place that decides):

* **poison** — the message itself is the problem (a tombstone, bytes that are not our Avro, a
  field outside the limits, a send the broker refuses for good): dead-lettered at once;
* **transient** — the world is the problem (database or broker unreachable, storage timing out):
  retried with backoff for as long as it takes; the agent's :class:`Lane` reports the stall to
  ``/readyz``, ``darkroom status`` and the ``darkroom_agent_stalls`` gauge meanwhile;
* **unknown** — anything else (a bug, an odd value): retried a few times in case it was the
  world after all, then dead-lettered with the exception as the reason.

A dead letter never embeds what cannot fit: a tombstone or a value over the embed limit is
described (kind, size, SHA-256) and located (topic, partition, offset) instead of copied, so the
dead letter itself can always be written.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from agents.policy.limits import LimitError
from schemas.records import DeadLetter, now_ms

log = logging.getLogger("darkroom.poison")

T = TypeVar("T")
Kind = Literal["poison", "transient", "unknown"]

MAX_ERROR_CHARS = 2000
MAX_KEY_BYTES = 1024


class Poison(Exception):
    """This message can never be applied; dead-letter it with ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Msg:
    """One consumed Kafka message, with where it came from (for dead letters and health)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    traceparent: str | None = None

    @classmethod
    def of(cls, event: Any) -> Msg:
        from agents.kafka.headers import traceparent_of

        m = event.message
        headers = m.headers.items() if isinstance(m.headers, dict) else m.headers
        return cls(m.topic, int(m.partition), int(m.offset), m.key, m.value,
                   traceparent_of(list(headers or ())))

    @property
    def where(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


# ---------------------------------------------------------------------------------- the policy

_PERMANENT_PATH_ERRNOS = {errno.ENAMETOOLONG, errno.EINVAL, errno.EILSEQ}


def classify(exc: BaseException) -> Kind:
    """Poison, transient or unknown — the one rule every agent follows (tests cover each)."""
    import sqlalchemy.exc as sa_exc
    from confluent_kafka import KafkaException

    from processors.registry import ProcessorError
    from schemas import SchemaError

    if isinstance(exc, Poison | SchemaError | LimitError):
        return "poison"
    if isinstance(exc, ProcessorError):  # StorageError included
        return "poison" if exc.permanent else "transient"
    if isinstance(exc, sa_exc.DataError):
        return "unknown"  # a value the database refuses: most likely this message's
    if isinstance(exc, sa_exc.SQLAlchemyError):
        return "transient"  # unreachable, locked, restarting, a conflicting writer
    if isinstance(exc, KafkaException):
        from agents.kafka.producer import permanent_kafka_error

        return "poison" if permanent_kafka_error(exc.args[0] if exc.args else None) \
            else "transient"
    if isinstance(exc, OSError):
        return "poison" if exc.errno in _PERMANENT_PATH_ERRNOS else "transient"
    return "unknown"


# ------------------------------------------------------------------------------ dead letters


def _asset_id_of(key: bytes | None) -> str | None:
    from agents.policy import limits

    if not key:
        return None
    try:
        return limits.asset_id(key.decode("utf-8"))
    except (UnicodeDecodeError, LimitError):
        return None


def dead_letter(msg: Msg, error: str, *, embed_limit: int, kind: str = "permanent",
                attempts: int = 1, asset_id: str | None = None,
                task: str | None = None) -> DeadLetter:
    """A dead letter for ``msg`` that always fits in a message (see the module docstring)."""
    value = msg.value
    if value is None:
        original, okind, size, digest = b"", "null", -1, None
    else:
        size, digest = len(value), hashlib.sha256(value).hexdigest()
        original, okind = (value, "embedded") if size <= embed_limit else (b"", "omitted")
    key = msg.key if msg.key is None or len(msg.key) <= MAX_KEY_BYTES else None
    return DeadLetter(
        source_topic=msg.topic, source_partition=msg.partition, source_offset=msg.offset,
        error=error[:MAX_ERROR_CHARS], error_kind=kind, attempts=attempts,
        asset_id=asset_id or _asset_id_of(msg.key), task=task, failed_at=now_ms(),
        original=original, original_key=key, original_kind=okind, original_size=size,
        original_sha256=digest,
    )


# ------------------------------------------------------------------------------------ health


@dataclass
class Lane:
    """Where one agent (one actor of it) is: the message it works on and how often it failed.

    Stalled when it failed ``stall_attempts`` times on the same message, or kept failing on it
    for ``stall_seconds``, or has been on it for longer than ``busy_seconds`` at all — not
    counting the time it waited for a thread (:meth:`wait` .. :meth:`resume`: a task queued
    behind others on its work lane is not stuck).
    """

    name: str
    key: str
    stall_attempts: int
    stall_seconds: float
    busy_seconds: float
    at: Msg | None = None
    since: float = 0.0
    failures: int = 0
    first_failure: float = 0.0
    last_error: str = ""
    on_change: Callable[[Lane], None] | None = None
    waiting_since: float | None = None
    _reported: bool = False

    def start(self, msg: Msg) -> None:
        if self.at is not None and (self.at.topic, self.at.partition, self.at.offset) == (
                msg.topic, msg.partition, msg.offset):
            return
        self.at, self.since = msg, time.monotonic()
        self.failures, self.first_failure, self.last_error = 0, 0.0, ""
        self.waiting_since = None

    def wait(self) -> None:
        """The message waits for a thread: from now until :meth:`resume`, time does not count
        towards ``busy_seconds``."""
        if self.waiting_since is None:
            self.waiting_since = time.monotonic()

    def resume(self) -> None:
        """The wait is over (no-op when not waiting)."""
        if self.waiting_since is not None:
            self.since += time.monotonic() - self.waiting_since
            self.waiting_since = None

    def failed(self, exc: BaseException) -> None:
        self.failures += 1
        if self.failures == 1:
            self.first_failure = time.monotonic()
        self.last_error = f"{type(exc).__name__}: {exc}"[:500]
        self._notify()

    def finish(self) -> None:
        self.at = None
        self.failures = 0
        self.waiting_since = None
        self._notify()

    @property
    def stalled(self) -> bool:
        if self.at is None:
            return False
        now = time.monotonic()
        if self.failures >= self.stall_attempts:
            return True
        if self.failures and now - self.first_failure >= self.stall_seconds:
            return True
        busy_until = self.waiting_since if self.waiting_since is not None else now
        return busy_until - self.since >= self.busy_seconds

    def describe(self) -> dict[str, Any]:
        at = self.at
        return {"agent": self.name, "lane": self.key, "topic": at.topic if at else None,
                "partition": at.partition if at else None, "offset": at.offset if at else None,
                "attempts": self.failures, "stuck_for_s": round(time.monotonic() - self.since, 1),
                "error": self.last_error}

    def _notify(self) -> None:
        stalled = self.stalled
        if self.on_change is not None and (stalled or self._reported):
            self._reported = stalled
            try:
                self.on_change(self)
            except Exception:
                log.debug("stall report failed", exc_info=True)


@dataclass
class Health:
    """Every lane of one worker process; ``/readyz`` and the stall gauge read it."""

    stall_attempts: int = 5
    stall_seconds: float = 30.0
    lanes: list[Lane] = field(default_factory=list)
    on_change: Callable[[Lane], None] | None = None

    def lane(self, name: str, busy_seconds: float = 300.0) -> Lane:
        n = sum(1 for existing in self.lanes if existing.name == name)
        lane = Lane(name, f"{name}#{n}", self.stall_attempts, self.stall_seconds, busy_seconds,
                    on_change=self.on_change)
        self.lanes.append(lane)
        return lane

    def stalled(self) -> list[dict[str, Any]]:
        return [lane.describe() for lane in self.lanes if lane.stalled]


# ------------------------------------------------------------------------------------ retrying


@dataclass(frozen=True)
class RetryPolicy:
    unknown_attempts: int = 3
    first_delay_s: float = 0.2
    max_delay_s: float = 30.0


async def settle(lane: Lane, call: Callable[[], Awaitable[T]],
                 policy: RetryPolicy = RetryPolicy()) -> T:
    """Await ``call()`` until it succeeds: transient failures retry for ever (with backoff, the
    lane reporting the stall); unknown ones ``unknown_attempts`` times; poison (and unknown past
    its attempts) raises :class:`Poison` for the caller to dead-letter."""
    delay = policy.first_delay_s
    unknown = 0
    while True:
        try:
            return await call()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            kind = classify(exc)
            lane.failed(exc)
            if kind == "poison":
                raise exc if isinstance(exc, Poison) else Poison(_reason(exc)) from exc
            if kind == "unknown":
                unknown += 1
                if unknown >= policy.unknown_attempts:
                    raise Poison(f"failed {unknown} times: {_reason(exc)}") from exc
            where = lane.at.where if lane.at else "-"
            log.warning("%s: %s on %s (%s, attempt %d); retrying in %.1fs", lane.name,
                        type(exc).__name__, where, kind, lane.failures, delay,
                        exc_info=lane.failures == 1)
            await asyncio.sleep(delay)
            delay = min(delay * 2, policy.max_delay_s)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, Poison):
        return exc.reason
    text = str(exc)
    return text if isinstance(exc, LimitError) else f"{type(exc).__name__}: {text}"


async def dead_letter_now(lane: Lane, msg: Msg, reason: str,
                          send_dead_letter: DeadLetterSend) -> None:
    """Send the dead letter of ``msg``, retrying broker trouble; never raises (a dead letter
    the broker refuses for good is logged: it is built to fit, so that is a bug)."""
    log.warning("%s: dead-lettering %s: %s", lane.name, msg.where, reason)
    attempts = lane.failures or 1
    try:
        await settle(lane, lambda: send_dead_letter(msg, reason, attempts),
                     RetryPolicy(unknown_attempts=10**9))
    except Poison as exc:
        log.error("%s: the dead letter of %s was refused: %s", lane.name, msg.where, exc.reason)


DeadLetterSend = Callable[[Msg, str, int], Awaitable[None]]
BatchApply = Callable[[Sequence[Msg]], Awaitable[Any]]


async def apply_batch(lane: Lane, msgs: Sequence[Msg], apply: BatchApply,
                      send_dead_letter: DeadLetterSend,
                      policy: RetryPolicy = RetryPolicy()) -> None:
    """Apply a batch; when it fails for a reason that is not transient, apply its messages one
    at a time so that only the culprit is dead-lettered (the others are applied again: every
    apply is idempotent)."""
    if not msgs:
        return
    lane.start(msgs[0])
    try:
        await settle(lane, lambda: apply(msgs), policy)
    except Poison as exc:
        if len(msgs) > 1:
            log.info("%s: batch of %d failed (%s); isolating the culprit", lane.name,
                     len(msgs), exc.reason)
            for m in msgs:
                await apply_batch(lane, [m], apply, send_dead_letter, policy)
            return
        await dead_letter_now(lane, msgs[0], exc.reason, send_dead_letter)
    finally:
        lane.finish()
