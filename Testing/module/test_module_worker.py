"""The module's WorkerClient drives ONE real ``medseg worker`` per session: started on first use,
kept warm between requests, restarted after it died or was cancelled, Cancel within 2 s."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest
import SimpleITK as sitk

from module_helpers import POSIX, child_env, write_phantom
from SlicerMedSegLib import Commands
from SlicerMedSegLib.Parameters import SegmentationParameters
from SlicerMedSegLib.WorkerClient import WorkerClient


@pytest.fixture
def client(tmp_path):
    c = WorkerClient(Commands.worker_command(sys.executable), env=child_env(tmp_path / "home"), cwd=str(tmp_path))
    yield c
    c.shutdown(timeout=10)


def _segment_args(tmp_path, name, **kwargs):
    params = SegmentationParameters(model="phantom-unet", device="cpu", **kwargs)
    return Commands.segment_args(params, str(tmp_path / f"{name}.nii.gz"), str(tmp_path / f"out_{name}"))


def test_one_worker_serves_every_request_and_keeps_the_model_loaded(client, tmp_path):
    write_phantom(tmp_path / "a.nii.gz", shape=(16, 32, 32), seed=1)
    assert client.starts == 0 and not client.alive  # nothing runs before the first request
    events = []
    first = client.run("segment", _segment_args(tmp_path, "a"), on_event=events.append, timeout=120)
    assert first.ok, (first.error, first.stderr_tail)
    pid = client.pid
    report, = first.outputs["reports"]
    labels = sitk.ReadImage(report["outputs"]["labels"])
    assert labels.GetSize() == (32, 32, 16)
    assert [e.stage for e in events if e.kind == "stage"][:2] == ["load", "read"]
    assert events[-1].kind == "result"
    second = client.run("segment", _segment_args(tmp_path, "a"), timeout=120)
    assert second.ok and second.outputs["model_was_loaded"] is True  # warm: the same process and model
    assert client.pid == pid and client.starts == 1


def test_a_bad_request_is_an_error_and_the_worker_goes_on(client, tmp_path):
    args = _segment_args(tmp_path, "missing")
    bad = client.run("segment", args, timeout=60)
    assert not bad.ok and bad.error_code == 2 and "missing.nii.gz" in bad.error
    unknown = client.run("segment", {**args, "colour": "red"}, timeout=60)
    assert unknown.error_code == 2 and "colour" in unknown.error
    models = client.run("models", timeout=60)
    assert models.ok and any(m["name"] == "phantom-unet" for m in models.outputs)
    assert client.starts == 1


@pytest.mark.skipif(not POSIX, reason="process groups are POSIX; Windows uses taskkill /T")
def test_cancel_ends_the_worker_within_2s_then_the_next_request_starts_a_new_one(client, tmp_path):
    write_phantom(tmp_path / "big.nii.gz", shape=(64, 128, 128), spacing=(0.75, 0.75, 2.0), seed=3)
    req = client.request("segment", _segment_args(tmp_path, "big", tta=True))
    cancelled_at = []

    def on_event(event):  # Cancel while it works (as the Cancel button would)
        if event.kind == "stage" and event.stage == "preprocess" and not cancelled_at:
            cancelled_at.append(time.monotonic())
            req.cancel()

    req.eventReceived.connect(on_event)
    pid = req.start() and client.pid
    result = req.wait(timeout=60)
    assert cancelled_at and time.monotonic() - cancelled_at[0] < 2.0
    assert result.cancelled and not result.ok
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # nothing of the worker's tree is left
    out = tmp_path / "out_big"
    assert not out.exists() or sorted(p.name for p in out.rglob("*")) == []  # no partial output
    write_phantom(tmp_path / "a.nii.gz", shape=(16, 32, 32), seed=1)
    again = client.run("segment", _segment_args(tmp_path, "a"), timeout=120)
    assert again.ok and client.starts == 2 and client.pid != pid


@pytest.mark.skipif(not POSIX, reason="signals")
def test_a_worker_that_died_is_reported_and_restarted(client, tmp_path):
    assert client.run("models", timeout=60).ok
    os.kill(client.pid, signal.SIGKILL)  # between requests: the next one starts a new worker
    time.sleep(0.2)
    assert client.run("models", timeout=60).ok and client.starts == 2
    write_phantom(tmp_path / "big.nii.gz", shape=(64, 128, 128), spacing=(0.75, 0.75, 2.0), seed=3)
    req = client.request("segment", _segment_args(tmp_path, "big", tta=True))
    req.eventReceived.connect(lambda e: e.stage == "preprocess" and client.alive and os.kill(client.pid,
                                                                                             signal.SIGKILL))
    result = req.start().wait(timeout=60)  # during a request: it ends with the worker's end
    assert not result.ok and not result.cancelled and "the medseg worker stopped" in result.error
    assert client.run("models", timeout=60).ok and client.starts == 3
