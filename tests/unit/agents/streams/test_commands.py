"""Every command kind the edge admits has exactly one handler in the sink."""

from __future__ import annotations

from agents.streams.commands import HANDLERS
from agents.streams.validation import COMMANDS, MESSAGE_COMMANDS


def test_every_admitted_command_has_a_handler() -> None:
    assert sorted(HANDLERS) == sorted(COMMANDS)
    assert set(MESSAGE_COMMANDS) <= set(COMMANDS)
