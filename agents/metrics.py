"""Prometheus metrics of a worker (served at /metrics by the worker's web server) and of the API.

Counters only go up; rates and ratios are the dashboard's job (``rate(...[5m])``).
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

EVENTS_ROUTED = Counter("darkroom_events_routed_total", "Upload events routed")
TASK_REQUESTS_SENT = Counter("darkroom_task_requests_sent_total", "Task requests sent",
                             ["task"])
TASKS_STARTED = Counter("darkroom_tasks_started_total", "Task requests started", ["task"])
TASKS_SUCCEEDED = Counter("darkroom_tasks_succeeded_total", "Tasks that gave a result", ["task"])
TASKS_FAILED = Counter("darkroom_tasks_failed_total", "Tasks that ended in an error result "
                       "(and a dead letter)", ["task", "kind"])
TASKS_RETRIED = Counter("darkroom_tasks_retried_total", "Task attempts retried", ["task"])
TASK_DURATION = Histogram("darkroom_task_duration_seconds", "Task run time incl. retries",
                          ["task"], buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10,
                                             30, 60, 300))
RESULTS_MERGED = Counter("darkroom_results_merged_total", "Results that changed an asset")
WEBHOOK_ATTEMPTS = Counter("darkroom_webhook_attempts_total", "Webhook delivery attempts",
                           ["outcome"])  # delivered | retrying | dead | refused
SYNC_WAIT = Histogram("darkroom_sync_wait_seconds", "API: time a sync upload waited for its "
                      "tasks", ["outcome"], buckets=(.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10,
                                                     30, 60))

OUTPUT_REFUSED = Counter("darkroom_output_refused_total", "Messages the broker refused for good "
                         "(too large, invalid topic): recorded and dropped", ["reason"])
DEAD_LETTERS = Counter("darkroom_dead_letters_total", "Messages dead-lettered by an agent",
                       ["agent"])
FETCHES = Counter("darkroom_fetch_requests_total", "Fetch requests of the worker's consumer, by "
                  "whether records came back", ["outcome"])  # records | empty
FETCH_PARTITIONS = Counter("darkroom_fetch_partitions_total", "Partitions named in the worker "
                           "consumer's fetch requests (the embedded broker pays per partition "
                           "named, records or not)")
AGENT_STALLS = Gauge("darkroom_agent_stalls", "Agents stuck on the same message (retrying past "
                     "the stall limits); /readyz names them")


def render() -> tuple[bytes, str]:
    return generate_latest(), CONTENT_TYPE_LATEST
