"""The one long-lived ``medseg worker`` of a Slicer session, and its requests.

Pure Python: imports neither slicer nor qt, so it is tested outside Slicer against the real
``medseg worker``. The worker starts on the first request and keeps its models (and the last
images) loaded between requests, so a second Apply or a refine skips Python, torch and the model.
A request (:class:`WorkerRequest`) looks like a :class:`ProcessRunner` to the logic: the same
``eventReceived`` and ``finished`` signals, ``poll``, ``wait``, ``cancel`` and ``RunResult``.

Cancel ends the worker's whole process tree (the engine removes its staged outputs on SIGTERM)
and the next request starts a fresh worker; a worker that died is restarted the same way. As with
``ProcessRunner``, threads only read the pipes into a queue; events are dispatched in the thread
that polls (in Slicer a ``qt.QTimer``, see ``EventPump``).
"""

from __future__ import annotations

import collections
import itertools
import json
import queue
import subprocess
import threading
import time
from typing import Any, Mapping, Optional, Sequence

from .ProcessRunner import CANCEL_GRACE_S, kill_process_tree, popen_tree_options
from .Protocol import RunResult, parse_line, resolve_outputs, stderr_error
from .Signal import Signal


class WorkerRequest:
    """One request to the worker: ``start()`` sends it; events arrive through ``poll()``.

    Signals (pure Python, emitted from the polling thread):
        eventReceived(Event): every event of this request (and the worker's stray lines as ``log``).
        finished(RunResult): once; ``returncode`` is 0 for a result, the error's code for an error.
    """

    def __init__(self, client: "WorkerClient", command: str, args: Optional[Mapping[str, Any]] = None):
        self.client = client
        self.command = command
        self.args = dict(args or {})
        self.id: Optional[str] = None
        self.eventReceived = Signal("event")
        self.finished = Signal("result")
        self.result: Optional[RunResult] = None
        self.cancelRequested = False
        self._sent = 0.0

    def start(self) -> "WorkerRequest":
        self.client._send(self)
        return self

    @property
    def running(self) -> bool:
        return self.id is not None and self.result is None

    def describe(self) -> str:
        """The request, as the log shows it (what ``medseg worker`` reads on stdin)."""
        return f"medseg worker <- {json.dumps({'command': self.command, 'args': self.args})}"

    @property
    def done(self) -> bool:
        return self.result is not None

    def cancel(self, grace_s: float = CANCEL_GRACE_S, blocking: bool = False) -> None:
        """End the worker's process tree; ``finished`` follows with ``cancelled=True``."""
        if self.running and not self.cancelRequested:
            self.cancelRequested = True
            self.client._kill(grace_s, blocking)

    def poll(self, timeout: float = 0.0) -> bool:
        """Dispatch what the worker wrote; True while this request goes on."""
        if self.result is None:
            self.client.poll(timeout)
        return self.result is None

    def wait(self, timeout: Optional[float] = None) -> RunResult:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll(timeout=0.1):
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"medseg worker: {self.command} still running after {timeout} s")
        return self.result

    def _finish(self, **fields) -> None:
        if self.result is not None:
            return
        if self.cancelRequested:
            fields.update(cancelled=True, error=fields.get("error") or "cancelled")
        self.result = RunResult(seconds=time.monotonic() - self._sent, **fields)
        self.finished.emit(self.result)


class WorkerClient:
    """Starts ``command`` (``[python, -m, medseg_core, worker]``) when a request needs it and
    routes the worker's events to the request they belong to (one at a time, as the worker serves
    them).

    Args:
        command: the worker's command line.
        env, cwd: its environment and working folder (relative output paths resolve against it).
    """

    def __init__(self, command: Sequence[str], env: Optional[Mapping[str, str]] = None, cwd: Optional[str] = None):
        self.command = [str(c) for c in command]
        self.env = dict(env) if env is not None else None
        self.cwd = str(cwd) if cwd else None
        self.process: Optional[subprocess.Popen] = None
        self.starts = 0  # how many worker processes were started (a restart adds one)
        self._queue: queue.Queue = queue.Queue()
        self._generation = 0  # lines of an ended worker are dropped
        self._ids = itertools.count(1)
        self._active: Optional[WorkerRequest] = None
        self._stderrTail: collections.deque = collections.deque(maxlen=40)

    # ---- the process ------------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> Optional[int]:
        return self.process.pid if self.alive else None

    @property
    def busy(self) -> bool:
        return self._active is not None and not self._active.done

    def _startProcess(self) -> None:
        self._generation += 1
        self._stderrTail.clear()
        self.process = subprocess.Popen(
            self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env,
            cwd=self.cwd, text=True, encoding="utf-8", errors="replace", bufsize=1, **popen_tree_options())
        self.starts += 1
        gen, proc = self._generation, self.process
        out = threading.Thread(target=self._read, args=(proc.stdout, "stdout", gen), daemon=True,
                               name="medseg-worker-out")
        err = threading.Thread(target=self._read, args=(proc.stderr, "stderr", gen), daemon=True,
                               name="medseg-worker-err")
        for t in (out, err):
            t.start()
        threading.Thread(target=self._waitForExit, args=(proc, (out, err), gen), daemon=True,
                         name="medseg-worker-wait").start()

    def _read(self, stream, source: str, generation: int) -> None:
        try:
            for line in stream:
                self._queue.put((generation, source, line.rstrip("\r\n")))
        except (OSError, ValueError):
            pass

    def _waitForExit(self, proc, readers, generation: int) -> None:
        rc = proc.wait()
        for t in readers:
            t.join(timeout=3.0)
        self._queue.put((generation, "exit", rc))

    def _kill(self, grace_s: float = CANCEL_GRACE_S, blocking: bool = False) -> None:
        if self.process is not None and self.process.poll() is None:
            kill_process_tree(self.process, grace_s=grace_s, blocking=blocking)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Ask the worker to end (a ``shutdown`` request), then end its tree if it has not."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        try:
            proc.stdin.write(json.dumps({"id": "shutdown", "command": "shutdown"}) + "\n")
            proc.stdin.flush()
            proc.wait(timeout=timeout)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            kill_process_tree(proc, blocking=True)
        if self._active is not None:
            self._active._finish(returncode=None, error="the medseg worker was shut down")

    # ---- requests ---------------------------------------------------------------------------------
    def request(self, command: str, args: Optional[Mapping[str, Any]] = None) -> WorkerRequest:
        """A request, not yet sent (``start()`` sends it, starting the worker if needed)."""
        return WorkerRequest(self, command, args)

    def run(self, command: str, args: Optional[Mapping[str, Any]] = None, on_event=None,
            timeout: Optional[float] = None) -> RunResult:
        """Send a request and block until it ends (batch scripts, tests)."""
        req = self.request(command, args)
        if on_event is not None:
            req.eventReceived.connect(on_event)
        req.start()
        return req.result if req.done else req.wait(timeout)

    def _send(self, req: WorkerRequest) -> None:
        if self.busy:
            raise RuntimeError("the medseg worker is busy with another request")
        req.id = str(next(self._ids))
        req._sent = time.monotonic()
        self._active = req
        line = json.dumps({"id": req.id, "command": req.command, "args": req.args}) + "\n"
        for attempt in range(2):  # a worker that died since the last request is started again
            try:
                if not self.alive:
                    self._startProcess()
                self.process.stdin.write(line)
                self.process.stdin.flush()
                return
            except OSError as exc:
                if attempt == 1 or not isinstance(exc, BrokenPipeError):
                    req._finish(returncode=None, error=f"could not start the medseg worker ({self.command[0]}): {exc}")
                    return
                self._kill(blocking=True)

    def poll(self, timeout: float = 0.0) -> None:
        """Dispatch the worker's lines to the active request; waits up to ``timeout`` s for the first."""
        block = timeout > 0
        while True:
            try:
                generation, source, payload = self._queue.get(block=block, timeout=timeout if block else None)
            except queue.Empty:
                return
            block = False
            if generation != self._generation:
                continue
            if source == "exit":
                self._onExit(payload)
            elif source == "stderr":
                if payload.strip():
                    self._stderrTail.append(payload)
            else:
                self._onLine(payload)

    def _onLine(self, line: str) -> None:
        req = self._active
        event = parse_line(line)
        if event is None or req is None or req.done:
            return
        rid = None
        if event.raw.startswith("{"):
            try:
                rid = json.loads(event.raw).get("id")
            except (json.JSONDecodeError, AttributeError):
                rid = None
        if rid is not None and str(rid) != req.id:
            return  # an answer to an earlier request (cannot happen while requests are serial)
        req.eventReceived.emit(event)
        if event.kind == "result":
            req._finish(returncode=0, outputs=resolve_outputs(event.outputs, self.cwd),
                        result_message=event.message, stderr_tail=list(self._stderrTail))
        elif event.kind == "error":
            code = event.code if event.code is not None else 1
            req._finish(returncode=code, error=event.message, error_code=code, cancelled=code == 130,
                        stderr_tail=list(self._stderrTail))

    def _onExit(self, returncode: int) -> None:
        self.process = None
        req = self._active
        if req is None or req.done:
            return
        detail = stderr_error(self._stderrTail)
        error = f"the medseg worker stopped (exit code {returncode})" + (f": {detail}" if detail else "")
        req._finish(returncode=returncode, error=error, stderr_tail=list(self._stderrTail))
