"""What has been said on a call, as VAPI reported it: the turns a replacement VAPI call is given.

Bounded by turns and by characters, oldest dropped first: a long call keeps its latest
exchange, which is what an assistant needs to carry on, and a shared store never holds
an unbounded value per call.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_CHARS", "MAX_TURNS", "Conversation", "Turn"]

MAX_TURNS = 40
MAX_CHARS = 8000
ROLES = frozenset({"user", "assistant"})


@dataclass(frozen=True, slots=True)
class Turn:
    """One utterance: `role` is "user" (the caller) or "assistant"."""

    role: str
    text: str


class Conversation:
    """The latest turns of a call, within `max_turns` and `max_chars` (a longer single turn is cut)."""

    __slots__ = ("_chars", "_turns", "max_chars", "max_turns")

    def __init__(self, turns: Iterable[Turn] = (), *, max_turns: int = MAX_TURNS, max_chars: int = MAX_CHARS) -> None:
        if max_turns < 1 or max_chars < 1:
            raise ValueError("a conversation keeps at least one turn and one character")
        self.max_turns = max_turns
        self.max_chars = max_chars
        self._turns: deque[Turn] = deque()
        self._chars = 0
        for turn in turns:
            self.add(turn.role, turn.text)

    def add(self, role: str, text: str) -> None:
        """Append what `role` said (an empty text is nothing); drop the oldest turns past the bounds.

        A speaker's consecutive utterances make one turn: VAPI reports a final transcript per
        utterance, and a turn is everything one side said before the other answered.
        """
        text = text.strip()
        if not text:
            return
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}")
        if self._turns and self._turns[-1].role == role:
            previous = self._turns.pop()
            self._chars -= len(previous.text)
            text = f"{previous.text} {text}"
        # Keep the end of an over-long turn: what the speaker said last is what the next turn answers.
        text = text[-self.max_chars:]
        self._turns.append(Turn(role, text))
        self._chars += len(text)
        while len(self._turns) > self.max_turns or self._chars > self.max_chars:
            self._chars -= len(self._turns.popleft().text)

    def replace(self, turns: Iterable[Turn]) -> None:
        """Take a whole reported conversation in place of the one held (bounds still apply)."""
        self._turns.clear()
        self._chars = 0
        for turn in turns:
            self.add(turn.role, turn.text)

    def turns(self) -> tuple[Turn, ...]:
        """The turns held, oldest first."""
        return tuple(self._turns)

    def copy(self) -> Conversation:
        return Conversation(self._turns, max_turns=self.max_turns, max_chars=self.max_chars)

    def __len__(self) -> int:
        return len(self._turns)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Conversation) and self.turns() == other.turns()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"Conversation({len(self._turns)} turns, {self._chars} chars)"

    def to_json(self) -> list[dict[str, str]]:
        """Plain JSON data: `[{"role": ..., "text": ...}, ...]`, oldest first."""
        return [{"role": t.role, "text": t.text} for t in self._turns]

    @classmethod
    def from_json(cls, data: Any, *, max_turns: int = MAX_TURNS, max_chars: int = MAX_CHARS) -> Conversation:
        """Read `to_json`'s data; entries that are not a known role with a text are skipped, not fatal."""
        conversation = cls(max_turns=max_turns, max_chars=max_chars)
        if not isinstance(data, list):
            return conversation
        for item in data:
            if isinstance(item, dict):
                role, text = item.get("role"), item.get("text")
                if role in ROLES and isinstance(text, str):
                    conversation.add(role, text)
        return conversation
