"""``config``: the post-process configuration."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from agents.composition import Runtime
from agents.settings import Settings


@click.group()
def config() -> None:
    """Post-process configuration."""


@config.command("check")
@click.argument("file", required=False, type=click.Path(path_type=Path))
def config_check(file: Path | None) -> None:
    """Load FILE (default: DARKROOM_POSTPROCESS_CONFIG) and report every mistake."""
    from agents.policy.postprocess import ConfigError, load_config
    from agents.policy.rules import describe

    settings = Settings()
    path = file or settings.postprocess_config
    try:
        cfg = load_config(path, Runtime(settings).processors)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    click.echo(f"{path}: OK, {len(cfg.postprocesses)} post-processes")
    for pp in cfg.postprocesses:
        flow = ""
        if pp.after is not None:
            flow = f" after {pp.after}" + (f" when {describe(pp.when)!r}" if pp.when else "")
        click.echo(f"  {pp.name:<20} task={pp.task:<16} mode={pp.mode:<5} "
                   f"{'automatic' if pp.enabled else 'manual-only'}{flow}")


COMMANDS = (config,)
