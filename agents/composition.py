"""Everything one worker process shares: settings, store, config, producer, storage, pools.

Built once per worker; agents receive it instead of reaching for globals, so tests can build
several independent runtimes (e.g. two workers in one test session).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, TypeVar

from agents.kafka.producer import OutputProducer
from agents.policy.postprocess import PostProcess, PostProcessConfig, load_config
from agents.settings import Settings
from agents.streams.poison import Health, Lane, Msg, RetryPolicy, dead_letter
from processors.media.decode_cache import DecodeCache
from processors.registry import Processor, load_all
from sinks.objects.facade import Storage, build_storage
from sinks.store.metadata import MetadataStore

log = logging.getLogger("darkroom.runtime")

T = TypeVar("T")


@dataclass
class Runtime:
    settings: Settings
    bootstrap: str
    config: PostProcessConfig
    processors: dict[str, Processor]
    store: MetadataStore
    storage: Storage
    producer: OutputProducer
    pool: ThreadPoolExecutor
    decode_cache: DecodeCache
    io_pool: ThreadPoolExecutor
    handlers: list[Any]
    worker_name: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    health: Health = field(default_factory=Health)

    def __post_init__(self) -> None:
        from agents.metrics import AGENT_STALLS

        s = self.settings
        self.health.stall_attempts, self.health.stall_seconds = s.stall_attempts, s.stall_seconds
        self.health.on_change = self._report_stall
        AGENT_STALLS.set_function(lambda: len(self.health.stalled()))

    @property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(unknown_attempts=self.settings.poison_attempts)

    async def in_pool(self, fn: Callable[..., T], *args: Any, pool: Executor | None = None) -> T:
        """Run blocking ``fn`` in a worker thread (the processor pool unless told otherwise),
        with the log context of the caller."""
        from agents.logs import in_context

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(pool or self.pool, in_context(fn), *args)

    def send_dead_letter(self, topic: str, msg: Msg, reason: str, attempts: int = 1,
                         task: str | None = None, asset_id: str | None = None) -> None:
        """Blocking: queue the dead letter of ``msg`` (the caller flushes)."""
        from agents.metrics import DEAD_LETTERS

        dl = dead_letter(msg, reason, embed_limit=self.settings.dead_letter_embed_bytes,
                         attempts=attempts, task=task, asset_id=asset_id)
        DEAD_LETTERS.labels(topic.rsplit(".", 1)[-1]).inc()
        self.producer.send(topic, dl.asset_id, dl.to_bytes())

    def dead_letter_sender(self, topic: str, task: str | None = None
                           ) -> Callable[[Msg, str, int], Awaitable[None]]:
        """An async ``send(msg, reason, attempts)`` for
        :func:`agents.streams.poison.apply_batch`."""

        def send(msg: Msg, reason: str, attempts: int) -> None:
            self.send_dead_letter(topic, msg, reason, attempts, task)
            self.producer.flush_sync()

        async def run(msg: Msg, reason: str, attempts: int) -> None:
            await self.in_pool(send, msg, reason, attempts, pool=self.io_pool)

        return run

    def _report_stall(self, lane: Lane) -> None:
        """Best effort, off the event loop: `darkroom status` reads stalls from the store (the
        store may be what is failing: then only /readyz knows)."""
        stall = lane.describe() if lane.stalled else None

        def write() -> None:
            try:
                if stall is not None:
                    self.store.record_stall(self.worker_name, stall)
                else:
                    self.store.clear_stall(self.worker_name, lane.key)
            except Exception:
                log.debug("could not record the stall of %s", lane.key, exc_info=True)

        with contextlib.suppress(RuntimeError):  # shutting down
            self.io_pool.submit(write)

    @classmethod
    def build(cls, settings: Settings, bootstrap: str) -> Runtime:
        from sinks.on_success import load_handlers

        processors = load_all()
        config = load_config(settings.postprocess_config)
        handlers = load_handlers(settings.on_success_handlers)
        return cls(
            settings=settings,
            bootstrap=bootstrap,
            config=config,
            processors=processors,
            store=MetadataStore(settings.sqlalchemy_url),
            storage=build_storage(settings),
            producer=OutputProducer(bootstrap, **{"message.max.bytes": settings.max_message_bytes}),
            pool=ThreadPoolExecutor(settings.processor_threads, thread_name_prefix="darkroom-proc"),
            decode_cache=DecodeCache(
                preview_side=settings.preview_side, max_pixels=settings.max_image_pixels
            ),
            io_pool=ThreadPoolExecutor(settings.webhook_concurrency + 1,
                                       thread_name_prefix="darkroom-io"),
            handlers=list(handlers),
        )

    @cached_property
    def postprocesses(self) -> dict[str, PostProcess]:
        return {pp.name: pp for pp in self.config.postprocesses}

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.io_pool.shutdown(wait=False, cancel_futures=True)
        try:
            self.producer.flush_sync(5)
        except Exception:
            log.warning("unflushed output at shutdown", exc_info=True)
        self.store.close()
