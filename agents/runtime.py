"""Everything one worker process shares: settings, store, config, producer, storage, pools.

Built once per worker; agents receive it instead of reaching for globals, so tests can build
several independent runtimes (e.g. two workers in one test session).
"""

from __future__ import annotations

import logging
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from agents.broker import OutputProducer
from agents.decode_cache import DecodeCache
from agents.postprocess import PostProcess, PostProcessConfig, load_config
from agents.settings import Settings
from agents.storage import Storage, build_storage
from processors.registry import Processor, load_all
from sinks.store import MetadataStore

log = logging.getLogger("darkroom.runtime")


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
