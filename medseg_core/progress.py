"""Progress reporting shared by segment, finetune and train, and the JSON-lines protocol.

Engine functions take ``progress(stage, fraction, message="", eta_s=None)``: a plain callable, so
the command line, the long-lived worker, the Slicer module and tests can all listen.

With ``--progress json`` every line on stdout is one JSON object (see ``docs/protocol.md``)::

    {"event": "stage"|"progress"|"log"|"result"|"error", "stage": ..., "fraction": ...,
     "eta_s": ..., "message": ..., "outputs": ...}

and the last line is a ``result`` or an ``error``.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Callable, TextIO

ProgressFn = Callable[..., None]


def null_progress(stage: str, fraction: float, message: str = "", eta_s: float | None = None) -> None:
    """A progress callback that ignores everything."""


class JsonReporter:
    """Writes protocol events as JSON lines (thread-safe, flushed at once).

    ``extra`` is merged into every event (the worker adds the request ``id``).
    """

    def __init__(self, stream: TextIO | None = None, extra: dict | None = None, min_interval_s: float = 0.2):
        self.stream = stream or sys.stdout
        self.extra = dict(extra or {})
        self.min_interval_s = min_interval_s
        self._lock = threading.Lock()
        self._last_stage = None
        self._last_time = 0.0

    def emit(self, event: str, **fields) -> None:
        obj = {"event": event, **self.extra, **{k: v for k, v in fields.items() if v is not None}}
        with self._lock:
            self.stream.write(json.dumps(obj) + "\n")
            self.stream.flush()

    def __call__(self, stage: str, fraction: float, message: str = "", eta_s: float | None = None) -> None:
        now = time.monotonic()
        if stage != self._last_stage:
            self._last_stage = stage
            self.emit("stage", stage=stage, message=message or stage)
        elif fraction < 1.0 and now - self._last_time < self.min_interval_s:
            return  # throttle: at most a few progress lines a second
        self._last_time = now
        self.emit("progress", stage=stage, fraction=round(float(fraction), 4),
                  eta_s=None if eta_s is None else round(float(eta_s), 1), message=message or None)

    def log(self, message: str) -> None:
        self.emit("log", message=message)

    def result(self, outputs, message: str = "done") -> None:
        self.emit("result", message=message, outputs=outputs)

    def error(self, message: str, code: int) -> None:
        self.emit("error", message=message, code=code)


class BarReporter:
    """A tqdm bar per stage on stderr, with the message as postfix."""

    def __init__(self):
        self._bar = None
        self._stage = None

    def __call__(self, stage: str, fraction: float, message: str = "", eta_s: float | None = None) -> None:
        from tqdm import tqdm

        if stage != self._stage:
            self.close()
            self._stage = stage
            self._bar = tqdm(total=1000, desc=stage, file=sys.stderr, dynamic_ncols=True, leave=False,
                             bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}")
        self._bar.n = int(1000 * min(1.0, max(0.0, fraction)))
        if message:
            self._bar.set_postfix_str(message[-60:], refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
