"""What the deployment tells processors: handed in with every :class:`TaskInput`, never read from
the environment here.

The agents build one :class:`ProcessorSettings` from ``agents.settings.Settings`` (in the
composition root, :mod:`agents.composition`) and pass it as ``TaskInput.settings``; code that
runs a processor directly (tests, benchmarks) gets the defaults unless it passes its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

DEFAULT_DATA_DIR: Final = Path(".darkroom")


@dataclass(frozen=True)
class ProcessorSettings:
    """``model_threads``: intra-op threads of each model session (``DARKROOM_MODEL_THREADS``);
    ``data_dir``: where models keep derived files, e.g. ``<data_dir>/models``
    (``DARKROOM_DATA_DIR``); ``logo_library``: extract-logo's default library folder
    (``DARKROOM_LOGO_LIBRARY``; empty = none)."""

    model_threads: int = 1
    data_dir: Path = DEFAULT_DATA_DIR
    logo_library: str = ""
