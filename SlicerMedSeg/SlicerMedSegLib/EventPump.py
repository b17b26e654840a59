"""Drains a ProcessRunner's queue from Qt's event loop, so Slicer never blocks or busy-waits.

The runner's reader threads only fill a queue; this ``qt.QTimer`` calls ``runner.poll()`` on the
main thread every ``intervalMs`` and stops once the runner has finished (callbacks that touch the
scene therefore always run on the main thread).
"""

import qt


class EventPump:
    def __init__(self, runner, intervalMs: int = 100):
        self.runner = runner
        self.timer = qt.QTimer()
        self.timer.setInterval(intervalMs)
        self.timer.timeout.connect(self._onTimeout)

    def start(self):
        self.timer.start()
        return self

    def stop(self):
        self.timer.stop()

    def _onTimeout(self):
        try:
            running = self.runner.poll()
        except Exception:
            self.timer.stop()
            raise
        if not running:
            self.timer.stop()
