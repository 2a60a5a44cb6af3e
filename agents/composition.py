"""The composition root: the one object that builds, owns and closes every service of a process.

A :class:`Runtime` is made from :class:`agents.settings.Settings` (and a Kafka bootstrap address
where the process talks to Kafka). Every service is built on first use, so each process builds
only what it uses — the worker most of them, the API its store, storage and producer, a CLI
command one or two — and :meth:`Runtime.close` closes what was built, in one place:

    settings            the Settings it was made from
    bootstrap           Kafka bootstrap (argument, else DARKROOM_KAFKA_BOOTSTRAP)
    processors          the registered tasks (processors.registry.load_all)
    config              the post-process configuration (DARKROOM_POSTPROCESS_CONFIG): the bootstrap
    definitions         config + the definitions stored over the API, reloaded live
    postprocesses       config's post-processes by name
    handlers            on-success Python handlers
    store               the metadata store (one per process: SQLite/PostgreSQL)
    storage             object storage (local / S3)
    producer            the output producer (confluent-kafka)
    lanes               where processors run: light / cpu / long (agents.streams.lanes)
    io_pool             store and broker calls of the agents (DARKROOM_IO_THREADS)
    webhook_pool        webhook deliveries (DARKROOM_WEBHOOK_CONCURRENCY), so a slow receiver
                        never holds a store call
    decode_cache        decoded images shared by the image tasks
    health              agent lanes and stalls (/readyz, darkroom_agent_stalls)
    processor_settings  what processors are told (TaskInput.settings: model threads, data dir,
                        logo library)

Faust agents receive it (``agents.streams.*``), the API holds one (``agents.api.app``), every CLI
command builds one (``agents.cli``); tests build as many independent ones as they like.
:func:`reset_caches` clears the process-wide caches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterator, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from agents.kafka.producer import OutputProducer
from agents.osthreads import name_os_thread
from agents.policy.postprocess import PostProcess, PostProcessConfig, load_config
from agents.settings import Settings
from agents.streams.coalesce import Coalescer, isolated
from agents.streams.lanes import WorkLane
from agents.streams.poison import Health, Lane, Msg, RetryPolicy, dead_letter
from processors.media.decode_cache import DecodeCache
from processors.registry import Processor, load_all
from processors.settings import ProcessorSettings
from sinks.objects.facade import Storage, build_storage
from sinks.store.metadata import MetadataStore

if TYPE_CHECKING:
    from agents.policy.definitions import LiveDefinitions
    from agents.streams.tasks import Publication

log = logging.getLogger("darkroom.runtime")

T = TypeVar("T")

_LIVE: weakref.WeakSet[Runtime] = weakref.WeakSet()
"""Runtimes not yet closed, so :func:`reset_caches` can clear their decode caches."""


class _Lazy(Generic[T]):
    """A service of the root: built by ``build(root)`` on first access, under the root's lock
    (so two threads never build two), then kept on the instance."""

    def __init__(self, build: Callable[[Runtime], T]) -> None:
        self.build = build
        self.name = build.__name__
        self.__doc__ = build.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, root: None, owner: type) -> _Lazy[T]: ...

    @overload
    def __get__(self, root: Runtime, owner: type) -> T: ...

    def __get__(self, root: Runtime | None, owner: type) -> _Lazy[T] | T:
        if root is None:
            return self
        found = root.__dict__.get(self.name, _MISSING)
        if found is _MISSING:
            with root._lock:
                found = root.__dict__.get(self.name, _MISSING)
                if found is _MISSING:
                    if root.closed:
                        raise RuntimeError(f"the runtime is closed: no {self.name}")
                    found = root.__dict__[self.name] = self.build(root)
        return found  # type: ignore[no-any-return]


_MISSING: Any = object()


def lazy(build: Callable[[Runtime], T]) -> _Lazy[T]:
    return _Lazy(build)


WORKER_SERVICES = ("processors", "config", "definitions", "handlers", "store", "storage",
                   "producer", "health")
"""What :meth:`Runtime.build` builds at once (a worker uses each of them)."""


class Runtime:
    """The composition root (see the module docstring). ``producer_options`` are extra
    librdkafka settings of this process's producer (the API sends with ``linger.ms=0``)."""

    def __init__(self, settings: Settings, bootstrap: str | None = None, *,
                 producer_options: Mapping[str, Any] | None = None) -> None:
        self.settings = settings
        self._bootstrap = bootstrap
        self.producer_options = dict(producer_options or {})
        self.worker_name = f"{socket.gethostname()}:{os.getpid()}"
        #: how to start this process afresh in place (``darkroom worker`` sets it)
        self.reexec_argv: list[str] | None = None
        #: the broker log's epoch this process joined (agents.streams.sweeper.join_epoch)
        self.epoch_id: str | None = None
        self.closed = False
        self._lock = threading.RLock()
        _LIVE.add(self)

    @classmethod
    def build(cls, settings: Settings, bootstrap: str) -> Runtime:
        """The worker's root, with what every worker uses built at once, so that a broken
        configuration (post-processes, handlers, database, storage, broker address) stops the
        worker at start rather than at its first message; the rest is built on first use."""
        root = cls(settings, bootstrap)
        try:
            root.warm(*WORKER_SERVICES)
        except BaseException:
            root.close()
            raise
        return root

    def warm(self, *names: str) -> None:
        """Build the named services now (a process that knows it needs them fails at start,
        not at first use)."""
        for name in names:
            if not isinstance(getattr(type(self), name, None), _Lazy):
                raise AttributeError(f"{name!r} is not a service of the runtime")
            getattr(self, name)

    @classmethod
    @contextlib.contextmanager
    def open(cls, settings: Settings, bootstrap: str | None = None,
             **options: Any) -> Iterator[Runtime]:
        """A root for the block, closed at its end."""
        root = cls(settings, bootstrap, **options)
        try:
            yield root
        finally:
            root.close()

    @property
    def bootstrap(self) -> str:
        found = self._bootstrap or self.settings.kafka_bootstrap
        if not found:
            raise RuntimeError("no Kafka bootstrap: pass one or set DARKROOM_KAFKA_BOOTSTRAP")
        return found

    # ------------------------------------------------------------------------- services
    @lazy
    def processors(self) -> dict[str, Processor]:
        return load_all()

    @lazy
    def config(self) -> PostProcessConfig:
        return load_config(self.settings.postprocess_config)

    @lazy
    def postprocesses(self) -> dict[str, PostProcess]:
        return {pp.name: pp for pp in self.config.postprocesses}

    @lazy
    def definitions(self) -> LiveDefinitions:
        """The live set: ``config`` (the YAML bootstrap) with the definitions stored over the
        API laid over it, reloaded when they change (agents.policy.definitions)."""
        from agents.policy.definitions import LiveDefinitions

        live = LiveDefinitions(self.config, self.settings.postprocess_config,
                               lambda: self.store.engine, self.processors,
                               self.settings.definitions_poll_ms)
        live.refresh()
        return live

    @lazy
    def handlers(self) -> list[Any]:
        from sinks.on_success import load_handlers

        return list(load_handlers(self.settings.on_success_handlers))

    @lazy
    def store(self) -> MetadataStore:
        from sinks.indexes.similarity import set_threads

        # the indexes live in the store's database: their process-wide faiss threads too
        set_threads(self.settings.index_threads)
        settings, processors = self.settings, self.processors
        from agents.streams.outputs import update_bytes

        budget = settings.update_budget
        return MetadataStore(settings.sqlalchemy_url, info={
                name: proc.info_of for name, proc in processors.items() if proc.info},
            encode_update=lambda asset: update_bytes(asset, budget))

    @lazy
    def storage(self) -> Storage:
        return build_storage(self.settings)

    @lazy
    def producer(self) -> OutputProducer:
        return OutputProducer(self.bootstrap, **{
            "message.max.bytes": self.settings.max_message_bytes, **self.producer_options})

    @lazy
    def lanes(self) -> dict[str, WorkLane]:
        """The processors' lanes by name (``Processor.work_lane``): ``light`` header-only
        tasks, ``cpu`` the others, ``long`` tasks declared long (see agents.streams.lanes)."""
        s = self.settings
        return {"light": WorkLane("light", s.light_task_threads),
                "cpu": WorkLane("cpu", s.processor_threads),
                "long": WorkLane("long", s.long_task_concurrency, nice=s.long_task_nice)}

    @lazy
    def io_pool(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(self.settings.io_threads, thread_name_prefix="darkroom-io",
                                  initializer=name_os_thread)

    @lazy
    def webhook_pool(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(self.settings.webhook_concurrency,
                                  thread_name_prefix="darkroom-webhook",
                                  initializer=name_os_thread)

    @lazy
    def task_starts(self) -> Coalescer[tuple[tuple[str, str, str], ...], list[str | None]]:
        """The task agents' start marks (agents.streams.tasks.start_marks: each handler's
        request and those it carries): those made at the same moment go in one transaction
        (agents.streams.coalesce)."""
        from agents.streams.tasks import start_marks

        store = self.store
        return Coalescer(lambda items: isolated(lambda batch: start_marks(store, batch), items),
                         self.in_pool)

    @lazy
    def task_results(self) -> Coalescer[Publication, None]:
        """The task agents' results (agents.streams.tasks.publish_many): those ready at the
        same moment are sent with one flush."""
        from agents.streams.tasks import publish_many

        return Coalescer(lambda items: isolated(lambda batch: publish_many(self, batch), items),
                         self.in_pool)

    @lazy
    def decode_cache(self) -> DecodeCache:
        s = self.settings
        return DecodeCache(max_entries=s.decode_cache_entries, preview_side=s.preview_side,
                           max_pixels=s.max_image_pixels)

    @lazy
    def health(self) -> Health:
        from agents.metrics import AGENT_STALLS

        s = self.settings
        health = Health(stall_attempts=s.stall_attempts, stall_seconds=s.stall_seconds,
                        on_change=self._report_stall)
        AGENT_STALLS.set_function(lambda: len(health.stalled()))
        return health

    @lazy
    def processor_settings(self) -> ProcessorSettings:
        s = self.settings
        return ProcessorSettings(model_threads=s.model_threads, data_dir=s.data_dir,
                                 logo_library=s.logo_library or "")

    # ------------------------------------------------------------------------- helpers
    @property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(unknown_attempts=self.settings.poison_attempts)

    def built(self, name: str) -> bool:
        """Whether service ``name`` has been built (tests: each process builds what it uses)."""
        return name in self.__dict__ and isinstance(getattr(type(self), name, None), _Lazy)

    def lane(self, proc: Processor) -> WorkLane:
        """The lane ``proc``'s work runs on."""
        return self.lanes[proc.work_lane]

    async def in_pool(self, fn: Callable[..., T], *args: Any, pool: Executor | None = None) -> T:
        """Run blocking store/broker work ``fn`` in a thread (the I/O pool unless told
        otherwise), with the log context of the caller. Processors run on their lanes
        (:meth:`lane`), never here."""
        from agents.logs import in_context

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(pool or self.io_pool, in_context(fn), *args)

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

    def close(self) -> None:
        """Close what was built (pools, producer: flushed, store); idempotent."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            built = dict(self.__dict__)
        _LIVE.discard(self)
        if "lanes" in built:
            for work_lane in built["lanes"].values():
                work_lane.close()  # running jobs' deadlines cancelled: ffmpeg children killed
        for name in ("io_pool", "webhook_pool"):
            if name in built:
                built[name].shutdown(wait=False, cancel_futures=True)
        if "producer" in built:
            try:
                built["producer"].flush_sync(5)
            except Exception:
                log.warning("unflushed output at shutdown", exc_info=True)
        if "store" in built:
            built["store"].close()


def reset_caches() -> None:
    """Clear every process-wide cache (for tests; nothing else in the process keeps state):

    * model instances and the located model files (``processors.models.loading``);
    * MobileNetV2's class names and the tables ``tag`` and ``classify-scene`` derive from them;
    * ``extract-logo``'s library features;
    * the decode cache of every open :class:`Runtime`;
    * the router's parameter-JSON, known-reply-topic and logged-unknown-name caches
      (``agents.streams.router``);
    * the in-memory face and similarity indexes (and the faiss thread count applied);
    * media-kind lookups (``processors.media.probe``), ffmpeg binary and capability lookups
      (``processors.media.ffmpeg``);
    * the webhook TLS context (``sinks.webhooks``) and :func:`agents.settings.get_settings`.

    Modules not imported yet hold nothing and are not imported. The processor registry is not a
    cache (``processors.registry.load_all`` builds a new mapping per call)."""
    loaded = sys.modules.__contains__
    if loaded("processors.models.loading"):
        from processors.models.loading import clear_models

        clear_models()
    if loaded("processors.models.mobilenet"):
        from processors.models.mobilenet import clear_class_names

        clear_class_names()
    if loaded("processors.tasks.extract_logo"):
        from processors.tasks.extract_logo import clear_library_cache

        clear_library_cache()
    if loaded("agents.streams.router"):
        from agents.streams.router import clear_caches

        clear_caches()
    if loaded("sinks.indexes.similarity"):
        from sinks.indexes.similarity import clear_indexes

        clear_indexes()
    if loaded("sinks.indexes.faces"):
        from sinks.indexes.faces import clear_indexes as clear_face_indexes

        clear_face_indexes()
    if loaded("sinks.webhooks"):
        from sinks.webhooks import clear_tls_context

        clear_tls_context()
    for name in ("processors.tasks.tag", "processors.tasks.classify_scene",
                 "processors.media.probe", "processors.media.ffmpeg", "agents.settings"):
        _clear_function_caches(sys.modules.get(name))
    for root in list(_LIVE):
        if root.built("decode_cache"):
            root.decode_cache.clear()


def _clear_function_caches(module: Any) -> None:
    """``cache_clear()`` every functools cache defined in ``module`` (by name-independent
    inspection, so renaming a cached function cannot make this miss it)."""
    if module is None:
        return
    for obj in list(vars(module).values()):
        clear = getattr(obj, "cache_clear", None)
        if callable(clear) and getattr(obj, "__module__", None) == module.__name__:
            clear()
