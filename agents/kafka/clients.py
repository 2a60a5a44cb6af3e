"""What every confluent-kafka client Darkroom creates shares: librdkafka's logs go through Python
logging (logger ``darkroom.rdkafka``: the process's handlers and format, JSON lines with
``DARKROOM_LOG_JSON``), never straight to stderr.

librdkafka writes ``%3|1700000000.123|FAIL|rdkafka#producer-1| ...`` lines to stderr on its own;
with the ``logger`` setting it hands them to the Python logger instead (served from the client's
``poll``/``flush``/``consume`` calls, so they carry the process's log format).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

RDKAFKA_LOG = logging.getLogger("darkroom.rdkafka")


def client_config(conf: Mapping[str, Any]) -> dict[str, Any]:
    """``conf`` for a confluent-kafka Producer, Consumer or AdminClient, with librdkafka's logs
    sent to :data:`RDKAFKA_LOG` (``conf`` may name another ``logger``)."""
    return {"logger": RDKAFKA_LOG, **conf}
