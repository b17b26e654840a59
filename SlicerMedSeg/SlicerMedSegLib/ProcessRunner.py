"""Runs one ``medseg`` child process and turns its output into events; Cancel ends its whole tree.

Pure Python: imports neither slicer nor qt, so it is tested outside Slicer against the real
``medseg`` command. Threads only read the child's pipes into a queue; everything else (parsing,
callbacks, the result) happens in the thread that calls :meth:`ProcessRunner.poll`: in Slicer a
``qt.QTimer`` (see ``EventPump``), in batch scripts and tests :meth:`ProcessRunner.wait`.

The child starts in its own session (POSIX: ``start_new_session=True``, so its process group is
its pid) or process group (Windows). Cancel sends SIGTERM to the group (``medseg`` then stops
within 2 s with exit code 130 and removes its staged outputs), and SIGKILL to whatever of the
group is left after ``grace_s``. On Windows the tree is ended by ``taskkill /T /F``.
"""

from __future__ import annotations

import collections
import os
import queue
import signal
import subprocess
import threading
import time
from typing import Callable, Mapping, Optional, Sequence

from .Protocol import Event, RunResult, parse_line, resolve_outputs, stderr_error
from .Signal import Signal

CANCEL_GRACE_S = 1.5
"""Seconds between SIGTERM and SIGKILL: the tree is gone within 2 s of Cancel."""

IS_WINDOWS = os.name == "nt"


def popen_tree_options() -> dict:
    """Popen keyword arguments that make the child the root of a tree we can end as a whole."""
    if IS_WINDOWS:
        flags = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0x200) | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        return {"creationflags": flags}
    return {"start_new_session": True}


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_process_tree(proc: subprocess.Popen, grace_s: float = CANCEL_GRACE_S, blocking: bool = True) -> None:
    """End ``proc`` and every process it started.

    POSIX: SIGTERM to the process group, then SIGKILL to the group after ``grace_s`` if anything
    of it is still there. Windows: ``taskkill /PID pid /T /F``. With ``blocking=False`` the
    escalation runs in a background thread and this returns at once.
    """
    if IS_WINDOWS:
        def windows_kill():
            subprocess.run(["taskkill", "/PID", str(proc.pid), "/T", "/F"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()

        if blocking:
            windows_kill()
        else:
            threading.Thread(target=windows_kill, name="medseg-kill", daemon=True).start()
        return

    pgid = proc.pid  # start_new_session=True: the child leads its own group
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    except PermissionError:
        proc.terminate()

    def escalate():
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            if proc.poll() is not None and not _group_alive(pgid):
                return
            time.sleep(0.02)
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            proc.kill()

    if blocking:
        escalate()
    else:
        threading.Thread(target=escalate, name="medseg-kill", daemon=True).start()


class ProcessRunner:
    """One child process: start, poll (dispatch events), wait, cancel.

    Signals (pure Python, emitted from the polling thread):
        eventReceived(Event): every protocol event, and every other line as a ``log`` event.
        finished(RunResult): once, after the last event.

    Args:
        command: the full command line.
        env: the child's environment (default: this process's).
        cwd: its working folder; relative output paths are resolved against it.
        protocol: parse stdout as JSON-lines events; with False, stdout is only collected
            (``medseg models --json``).
    """

    def __init__(self, command: Sequence[str], env: Optional[Mapping[str, str]] = None, cwd: Optional[str] = None,
                 protocol: bool = True):
        self.command = [str(c) for c in command]
        self.env = dict(env) if env is not None else None
        self.cwd = str(cwd) if cwd else None
        self.protocol = protocol
        self.eventReceived = Signal("event")
        self.finished = Signal("result")
        self.result: Optional[RunResult] = None
        self.process: Optional[subprocess.Popen] = None
        self._queue: queue.Queue = queue.Queue()
        self._cancelRequested = False
        self._cancelTime: Optional[float] = None
        self._started = 0.0
        self._resultEvent: Optional[Event] = None
        self._errorEvent: Optional[Event] = None
        self._stdout: list[str] = []
        self._stderrTail: collections.deque = collections.deque(maxlen=40)

    # ---- life cycle -----------------------------------------------------------------------------
    def start(self) -> "ProcessRunner":
        if self.process is not None:
            raise RuntimeError("this runner was already started")
        self._started = time.monotonic()
        try:
            self.process = subprocess.Popen(
                self.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env=self.env, cwd=self.cwd, text=True, encoding="utf-8", errors="replace", bufsize=1,
                **popen_tree_options())
        except OSError as exc:
            self.result = RunResult(returncode=None, error=f"could not start {self.command[0]}: {exc}")
            self.finished.emit(self.result)
            return self
        readers = [threading.Thread(target=self._read, args=(self.process.stdout, "stdout"), daemon=True,
                                    name="medseg-stdout"),
                   threading.Thread(target=self._read, args=(self.process.stderr, "stderr"), daemon=True,
                                    name="medseg-stderr")]
        for t in readers:
            t.start()
        threading.Thread(target=self._waitForExit, args=(readers,), daemon=True, name="medseg-wait").start()
        return self

    def _read(self, stream, source: str) -> None:
        try:
            for line in stream:
                self._queue.put((source, line.rstrip("\r\n")))
        except (OSError, ValueError):
            pass
        finally:
            try:
                stream.close()
            except OSError:
                pass

    def _waitForExit(self, readers) -> None:
        rc = self.process.wait()
        for t in readers:  # every line before the exit; a grandchild holding a pipe open cannot stall us
            t.join(timeout=3.0)
        self._queue.put(("exit", rc))

    @property
    def running(self) -> bool:
        return self.process is not None and self.result is None

    def describe(self) -> str:
        """The command line, as the log shows it."""
        return "$ " + " ".join(self.command)

    @property
    def pid(self) -> Optional[int]:
        return self.process.pid if self.process is not None else None

    def cancel(self, grace_s: float = CANCEL_GRACE_S, blocking: bool = False) -> None:
        """End the child's whole process tree (returns at once unless ``blocking``); the
        ``finished`` result then has ``cancelled=True``."""
        if self.process is None or self.result is not None or self._cancelRequested:
            return
        self._cancelRequested = True
        self._cancelTime = time.monotonic()
        kill_process_tree(self.process, grace_s=grace_s, blocking=blocking)

    # ---- event dispatch -----------------------------------------------------------------------
    def poll(self, timeout: float = 0.0) -> bool:
        """Dispatch what the child wrote since the last call; wait up to ``timeout`` s for the first
        item. Returns True while the run goes on, False once ``finished`` was emitted."""
        if self.result is not None:
            return False
        if self.process is None:
            raise RuntimeError("start() the runner first")
        block = timeout > 0
        while True:
            try:
                source, payload = self._queue.get(block=block, timeout=timeout if block else None)
            except queue.Empty:
                return True
            block = False
            if source == "exit":
                self._finish(payload)
                return False
            self._handleLine(payload, source)

    def wait(self, timeout: Optional[float] = None) -> RunResult:
        """Block (dispatching events) until the child ends; the blocking mode of batch scripts and
        tests. Raises TimeoutError after ``timeout`` seconds (the child keeps running)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll(timeout=0.1):
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{' '.join(self.command[:4])}... still running after {timeout} s")
        return self.result

    def _handleLine(self, line: str, source: str) -> None:
        if source == "stderr":
            if line.strip():
                self._stderrTail.append(line)
        elif not self.protocol:
            self._stdout.append(line)
            return
        event = parse_line(line, source=source)
        if event is None:
            return
        if event.kind == "result":
            self._resultEvent = event
        elif event.kind == "error":
            self._errorEvent = event
        elif event.kind == "log" and source == "stdout":
            self._stdout.append(line)
        self.eventReceived.emit(event)

    def _finish(self, returncode: int) -> None:
        cancelled = self._cancelRequested or returncode == 130 or \
            (self._errorEvent is not None and self._errorEvent.code == 130)
        error = ""
        error_code = None
        if self._errorEvent is not None:
            error, error_code = self._errorEvent.message, self._errorEvent.code
        elif returncode != 0:
            error = stderr_error(self._stderrTail) or f"{self.command[0]} exited with code {returncode}"
        elif self.protocol and self._resultEvent is None:
            error = "the child ended without a result line"
        if cancelled:
            error = error or "cancelled"
        outputs = resolve_outputs(self._resultEvent.outputs, self.cwd) if self._resultEvent is not None else None
        self.result = RunResult(returncode=returncode, cancelled=cancelled, outputs=outputs,
                                error=error,
                                error_code=error_code, stdout="\n".join(self._stdout),
                                stderr_tail=list(self._stderrTail), seconds=time.monotonic() - self._started,
                                result_message=self._resultEvent.message if self._resultEvent else "")
        self.finished.emit(self.result)

    @property
    def secondsSinceCancel(self) -> Optional[float]:
        return None if self._cancelTime is None else time.monotonic() - self._cancelTime


def run_blocking(command: Sequence[str], env: Optional[Mapping[str, str]] = None, cwd: Optional[str] = None,
                 protocol: bool = True, on_event: Optional[Callable[[Event], None]] = None,
                 timeout: Optional[float] = None) -> RunResult:
    """Start ``command``, dispatch its events to ``on_event`` and return how it ended."""
    runner = ProcessRunner(command, env=env, cwd=cwd, protocol=protocol)
    if on_event is not None:
        runner.eventReceived.connect(on_event)
    runner.start()
    if runner.result is not None:
        return runner.result
    try:
        return runner.wait(timeout=timeout)
    except TimeoutError:
        runner.cancel(blocking=True)
        runner.wait()
        raise
