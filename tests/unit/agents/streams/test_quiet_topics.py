"""Topics a worker read nothing on for a while are left out of most fetches, never out of what
is read: a record there is fetched at the next poll, and a topic that moves is named again."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiokafka.structs import TopicPartition

from agents.streams.transport import QuietTopics

QUIET_AFTER, POLL = 5.0, 0.1


@dataclass
class State:
    position: int = 0
    has_valid_position: bool = True
    paused: bool = False


@dataclass
class Assignment:
    states: dict[TopicPartition, State]

    @property
    def tps(self) -> frozenset[TopicPartition]:
        return frozenset(self.states)

    def state_value(self, tp: TopicPartition) -> State:
        return self.states[tp]


@dataclass
class Fetcher:
    """What QuietTopics uses of aiokafka's Fetcher: one fetch naming every partition given."""

    _records: dict[TopicPartition, Any] = field(default_factory=dict)

    def _get_actions_per_node(self, assignment: Any) -> Any:
        named = sorted(assignment.tps)
        return ([(0, named)] if named else []), {}, 0.2, False, []


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


BUSY, IDLE = TopicPartition("darkroom.uploads", 0), TopicPartition("darkroom.commands", 0)


def setup() -> tuple[Fetcher, Assignment, Clock]:
    fetcher, clock = Fetcher(), Clock()
    QuietTopics(fetcher, QUIET_AFTER, POLL, clock=clock)
    return fetcher, Assignment({BUSY: State(), IDLE: State()}), clock


def named(fetcher: Fetcher, assignment: Assignment) -> set[TopicPartition]:
    requests = fetcher._get_actions_per_node(assignment)[0]
    return {tp for _, tps in requests for tp in tps}


def run_busy(fetcher: Fetcher, a: Assignment, clock: Clock, seconds: float,
             step: float = 0.02) -> list[set[TopicPartition]]:
    """Records keep coming on BUSY for ``seconds``: what each fetch named."""
    out = []
    for _ in range(int(seconds / step)):
        clock.now += step
        a.states[BUSY].position += 1
        out.append(named(fetcher, a))
    return out


def test_every_partition_is_named_while_its_topic_is_active() -> None:
    fetcher, a, clock = setup()
    assert all(n == {BUSY, IDLE} for n in run_busy(fetcher, a, clock, QUIET_AFTER * 0.9))


def test_a_quiet_topic_is_named_only_at_each_poll() -> None:
    fetcher, a, clock = setup()
    run_busy(fetcher, a, clock, QUIET_AFTER + 1)
    fetches = run_busy(fetcher, a, clock, 1.0)
    with_idle = sum(IDLE in n for n in fetches)
    assert all(BUSY in n for n in fetches)
    assert 8 <= with_idle <= 12  # every POLL, 1 s of fetches every 20 ms


def test_the_wait_for_the_next_fetch_ends_at_the_next_poll() -> None:
    fetcher, a, clock = setup()
    run_busy(fetcher, a, clock, QUIET_AFTER + 1)
    del a.states[BUSY]  # only the quiet topic is left: nothing to fetch until its poll
    named(fetcher, a)
    clock.now += 0.03
    requests, _, timeout, _, _ = fetcher._get_actions_per_node(a)
    assert requests == [] and 0 < timeout <= POLL


def test_a_record_on_a_quiet_topic_makes_it_active_again() -> None:
    fetcher, a, clock = setup()
    run_busy(fetcher, a, clock, QUIET_AFTER + 1)
    a.states[IDLE].position += 1  # read at a poll
    assert all(IDLE in n for n in run_busy(fetcher, a, clock, 1.0))


def test_partitions_being_reset_paused_or_holding_records_are_always_handed_on() -> None:
    fetcher, a, clock = setup()
    run_busy(fetcher, a, clock, QUIET_AFTER + 1)
    clock.now += 0.01
    assert IDLE not in named(fetcher, a)
    for change in ({"has_valid_position": False}, {"paused": True}):
        a.states[IDLE] = State(**change)  # type: ignore[arg-type]
        fetcher._records.clear()
        clock.now += 0.01
        assert IDLE in named(fetcher, a)
    a.states[IDLE] = State(position=a.states[IDLE].position)
    named(fetcher, a)
    fetcher._records[IDLE] = object()
    clock.now += 0.01
    assert IDLE in named(fetcher, a)


def test_after_an_idle_spell_every_topic_is_named_at_once() -> None:
    fetcher, a, clock = setup()
    clock.now += QUIET_AFTER + 1
    named(fetcher, a)  # the whole consumer is quiet
    a.states[BUSY].position += 1  # the first upload after the pause
    # its next hops (here: IDLE) are named in every fetch for a while, not only at polls
    assert all(IDLE in n for n in run_busy(fetcher, a, clock, QUIET_AFTER * 0.9))
