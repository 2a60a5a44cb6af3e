"""The topics Darkroom uses, created with the admin client (existing ones are left alone)."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from agents.kafka.clients import client_config
from agents.settings import Settings

log = logging.getLogger("darkroom.topics")


def all_topics(settings: Settings, tasks: Iterable[str]) -> list[str]:
    names = [settings.topic("uploads"), settings.topic("assets"), settings.topic("dlq", "uploads"),
             settings.topic("dlq", "results"), settings.topic("webhooks"),
             settings.topic("dlq", "webhooks"), settings.topic("commands"),
             *(t for _, t in settings.retry_topics())]
    for task in tasks:
        names += [
            settings.topic("tasks", task),
            settings.topic("results", task),
            settings.topic("dlq", task),
        ]
    return names


def ensure_topics(bootstrap: str, names: Iterable[str], partitions: int, replication: int,
                  config: dict[str, str] | None = None) -> None:
    """Create missing topics with the admin client (with topic ``config``, e.g. retention);
    existing ones are left as they are."""
    admin = AdminClient(client_config({"bootstrap.servers": bootstrap, "log_level": 0}))
    existing = set(admin.list_topics(timeout=10).topics)
    wanted = [n for n in dict.fromkeys(names) if n not in existing]
    if not wanted:
        return
    futures = admin.create_topics(
        [NewTopic(n, num_partitions=partitions, replication_factor=replication,
                  config=dict(config or {})) for n in wanted],
        operation_timeout=10,
    )
    for name, fut in futures.items():
        try:
            fut.result()
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
        log.debug("created topic %s (%d partitions)", name, partitions)


