"""The workers' Faust transport: Faust's aiokafka transport with a configurable fetch wait.

Faust builds its worker consumer with ``fetch_max_wait_ms=1500`` and has no setting for it. On a
broker that holds a fetch for the whole wait when no data is there (tansu: it does not answer a
waiting fetch when data arrives), that costs ~0.75 s per hop on average. The classes here cap
it (``DARKROOM_FETCH_MAX_WAIT_MS``) for the consumer of one app only, nothing process-wide:
:class:`WorkerApp` builds a :class:`FetchWaitTransport` (its ``Consumer`` runs a
:class:`FetchWaitConsumerThread`, whose ``_create_worker_consumer`` applies the cap to the
aiokafka consumer before it starts).
"""

from __future__ import annotations

from typing import Any, ClassVar

import faust
from faust.transport import drivers
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import ConsumerT, TransportT

FAUST_FETCH_MAX_WAIT_MS = 1500  # what faust passes; the cap never raises it


class FetchWaitConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread; the worker consumer it creates waits at most the transport's
    ``fetch_max_wait_ms`` for data."""

    def _create_worker_consumer(self, transport: faust_aiokafka.Transport) -> Any:
        consumer = super()._create_worker_consumer(transport)
        cap = getattr(transport, "fetch_max_wait_ms", None)
        if cap is None:
            return consumer
        # aiokafka keeps the constructor's value here and hands it to its Fetcher in start()
        if not isinstance(getattr(consumer, "_fetch_max_wait_ms", None), int):
            raise RuntimeError("this aiokafka version keeps no _fetch_max_wait_ms: the fetch "
                               "wait cannot be capped (agents/streams/transport.py)")
        consumer._fetch_max_wait_ms = min(consumer._fetch_max_wait_ms, int(cap))
        return consumer


class FetchWaitConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> FetchWaitConsumerThread:
        return FetchWaitConsumerThread(self, loop=self.loop, beacon=self.beacon)


class FetchWaitTransport(faust_aiokafka.Transport):
    """Faust's aiokafka transport whose consumer caps the fetch wait at
    ``fetch_max_wait_ms`` (None: Faust's own 1500 ms)."""

    Consumer: ClassVar[type[ConsumerT]] = FetchWaitConsumer
    fetch_max_wait_ms: int | None = None


class WorkerApp(faust.App):
    """A Faust app whose consumer transport is :class:`FetchWaitTransport` with
    ``fetch_max_wait_ms`` (the broker URL still names the scheme: ``kafka://``)."""

    def __init__(self, id: str, *, fetch_max_wait_ms: int | None = None,
                 **options: Any) -> None:
        self.fetch_max_wait_ms = fetch_max_wait_ms
        super().__init__(id, **options)

    def _new_transport(self) -> TransportT:
        scheme = self.conf.broker_consumer[0].scheme
        if drivers.by_url(self.conf.broker_consumer[0]) is not faust_aiokafka.Transport:
            raise ValueError(f"the workers need Faust's aiokafka transport, not {scheme}://")
        transport = FetchWaitTransport(self.conf.broker_consumer, self)
        transport.fetch_max_wait_ms = self.fetch_max_wait_ms
        return transport
