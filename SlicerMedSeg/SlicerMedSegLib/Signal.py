"""A small pure-Python signal (Qt's Python-side signals are avoided: they crashed Slicer for others).

Pure Python: imports neither slicer nor qt.

>>> s = Signal("value")
>>> seen = []
>>> _ = s.connect(seen.append)
>>> s.emit(3)
>>> seen
[3]
"""

from __future__ import annotations

from typing import Callable


class Signal:
    """Calls every connected slot, in connection order, with the emitted arguments."""

    def __init__(self, *argumentNames: str):
        self.argumentNames = argumentNames
        self._slots: list[Callable] = []

    def connect(self, slot: Callable) -> Callable:
        if slot not in self._slots:
            self._slots.append(slot)
        return slot

    def disconnect(self, slot: Callable | None = None) -> None:
        """Disconnect ``slot``, or every slot when none is given."""
        if slot is None:
            self._slots.clear()
        elif slot in self._slots:
            self._slots.remove(slot)

    def emit(self, *args) -> None:
        for slot in list(self._slots):
            slot(*args)

    def __len__(self) -> int:
        return len(self._slots)
