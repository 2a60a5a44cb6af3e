"""What the command groups share: settings, logging, topic creation, file walking."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import click

from agents.composition import Runtime
from agents.settings import Settings


def setup_logging(settings: Settings) -> None:
    from agents.logs import setup

    setup(settings.log_level, settings.log_json)


def prepare_cluster(root: Runtime) -> None:
    """Create the topics of every registered task (existing ones are left alone)."""
    from agents.kafka.topics import all_topics, ensure_topics
    from agents.streams.sweeper import ensure_epoch, join_epoch

    s = root.settings
    ensure_topics(root.bootstrap, all_topics(s, root.processors), s.partitions,
                  s.replication_factor)
    # before anything is produced: the broker's log begins its epoch here
    join_epoch(root, ensure_epoch(root)[0])


def cluster_settings() -> Settings:
    """Settings of a command that joins the cluster the workers use."""
    settings = Settings()
    if not settings.kafka_bootstrap:
        raise click.UsageError("set DARKROOM_KAFKA_BOOTSTRAP to the cluster the workers use")
    return settings


def iter_files(paths: Sequence[str]) -> Iterator[Path]:
    for p in paths:
        path = Path(p)
        if path.is_dir():
            yield from sorted(f for f in path.rglob("*") if f.is_file()
                              and not f.name.startswith("."))
        elif path.is_file():
            yield path
        else:
            raise click.BadParameter(f"no such file or folder: {p}")
