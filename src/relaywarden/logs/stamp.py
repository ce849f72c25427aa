"""A time string made once a second, not once per line: log timestamps and the Received date
are asked for on every command, and formatting a date costs more than the rest of the line."""

from __future__ import annotations

from typing import Callable


class SecondStamp:
    """``stamp(now)``: ``format(int(now))``, recomputed only when the second changes."""

    __slots__ = ("_format", "_second", "_text")

    def __init__(self, format: Callable[[int], str]) -> None:
        self._format = format
        self._second = -1
        self._text = ""

    def __call__(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._second = second
            self._text = self._format(second)
        return self._text
