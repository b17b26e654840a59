"""The module's ProcessRunner drives the REAL ``medseg`` child: segment, errors, Cancel, fine-tune."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
import SimpleITK as sitk

from module_helpers import PHANTOM_LABELS, POSIX, child_env, write_phantom
from SlicerMedSegLib import Commands, Models, Protocol
from SlicerMedSegLib.Parameters import FinetuneParameters, SegmentationParameters
from SlicerMedSegLib.ProcessRunner import ProcessRunner, run_blocking


def test_runner_drives_medseg_segment_and_finds_its_outputs(segmented):
    result, events = segmented["result"], segmented["events"]
    assert result.ok, (result.error, result.stderr_tail)
    assert segmented["finished"] == [result]
    protocol = [e for e in events if e.kind != "log"]
    stages = [e.stage for e in protocol if e.kind == "stage"]
    assert stages == ["load", "read", "preprocess", "infer", "resample", "write", "done"]
    assert protocol[-1].kind == "result"  # the last line, after every stage
    for e in protocol:
        if e.kind == "progress":
            assert 0.0 <= e.fraction <= 1.0
    # progress shown in order: the overall fraction never goes back and ends at 100 %
    tracker, shown = Protocol.ProgressTracker(Protocol.SEGMENT_STAGES), []
    for e in events:
        if tracker.update(e):
            shown.append(tracker.overall)
            assert tracker.status_text()
    assert shown == sorted(shown) and shown[-1] == 1.0
    outputs = result.outputs[0]
    assert set(outputs) == {"labels", "segmentation", "report", "confidence", "rois", "rois_segmentation"}
    for path in outputs.values():
        assert os.path.isabs(path) and os.path.isfile(path), path
    assert Protocol.discover_segment_outputs(str(segmented["tmp"] / "output"), "input") == \
        {k: str(Path(v).resolve()) for k, v in outputs.items()}
    report = json.loads(Path(outputs["report"]).read_text())
    assert report["model"] == "phantom-unet" and report["device"] == "cpu"


def test_runner_surfaces_the_childs_error_message(tmp_path):
    write_phantom(tmp_path / "case.nii.gz", shape=(16, 24, 24), seed=1)
    bad_model = SegmentationParameters(model="no-such-model", device="cpu")
    res = run_blocking(Commands.segment_command(bad_model, "case.nii.gz", "out", python=sys.executable),
                       env=child_env(tmp_path / "home"), cwd=str(tmp_path), timeout=60)
    assert not res.ok and res.returncode == 3 and res.error_code == 3
    assert "no-such-model: unknown model" in res.error and "phantom-unet" in res.error
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    # a failure without a protocol line (the interpreter itself) is reported from stderr
    res = run_blocking([sys.executable, "-c", "import sys; sys.stderr.write('boom: disk full\\n'); sys.exit(4)"])
    assert res.returncode == 4 and res.error == "boom: disk full" and not res.ok
    res = run_blocking(["/nonexistent/PythonSlicer", "-m", "medseg_core"])
    assert res.returncode is None and "could not start" in res.error


@pytest.mark.skipif(not POSIX, reason="process groups are POSIX; Windows uses taskkill /T")
def test_cancel_stops_medseg_within_2s_and_leaves_no_outputs(tmp_path):
    write_phantom(tmp_path / "big.nii.gz", shape=(64, 128, 128), spacing=(0.75, 0.75, 2.0), seed=3)
    params = SegmentationParameters(model="phantom-unet", device="cpu", tta=True)
    runner = ProcessRunner(Commands.segment_command(params, "big.nii.gz", "out", python=sys.executable),
                           env=child_env(tmp_path / "home"), cwd=str(tmp_path))
    cancelled_at = []

    def on_event(event):  # Cancel while it works (as the Cancel button would)
        if event.kind == "stage" and event.stage == "preprocess" and not cancelled_at:
            cancelled_at.append(time.monotonic())
            runner.cancel()

    runner.eventReceived.connect(on_event)
    result = runner.start().wait(timeout=60)
    took = time.monotonic() - cancelled_at[0]
    assert cancelled_at and took < 2.0, took
    assert result.cancelled and not result.ok
    assert result.returncode == 130, (result.returncode, result.stderr_tail)  # SIGTERM honoured: clean exit
    with pytest.raises(ProcessLookupError):
        os.killpg(runner.pid, 0)  # nothing of the tree is left
    out = tmp_path / "out"
    assert not out.exists() or sorted(p.name for p in out.rglob("*")) == []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting for a reaper is dead for our purpose
        return " Z" not in Path(f"/proc/{pid}/stat").read_text().split(")")[-1][:3]
    except OSError:
        return True


@pytest.mark.skipif(not POSIX, reason="process groups are POSIX; Windows uses taskkill /T")
def test_cancel_ends_the_whole_tree_even_a_grandchild_that_ignores_sigterm(tmp_path):
    grandchild = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)")
    child = (f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', {grandchild!r}]); "
             "print('grandchild', p.pid, flush=True); time.sleep(60)")
    runner = ProcessRunner([sys.executable, "-c", child])
    pids = []
    runner.eventReceived.connect(lambda e: pids.append(int(e.message.split()[1])) if "grandchild" in e.message else None)
    runner.start()
    while not pids:
        assert runner.poll(timeout=5.0)
    time.sleep(0.2)  # let the grandchild install its handler
    start = time.monotonic()
    runner.cancel()
    result = runner.wait(timeout=10)
    deadline = time.monotonic() + 2.0
    while _alive(pids[0]) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert time.monotonic() - start < 2.0
    assert result.cancelled and not _alive(pids[0])


def test_finetune_through_the_runner_and_the_new_model_is_listed(tmp_path):
    from medseg_core.data.phantom import make_phantom
    from medseg_core.io import write_segmentation
    from medseg_core.labels import Label

    phantom = make_phantom(shape=(32, 48, 48), seed=5)
    sitk.WriteImage(phantom.image, str(tmp_path / "image.nrrd"))
    fixed = sitk.GetArrayFromImage(phantom.label)
    fixed[fixed == 3] = 1  # the "correction": the tumour belongs to the liver
    label = sitk.GetImageFromArray(fixed)
    label.CopyInformation(phantom.label)
    # what SceneLoader.writeCorrection writes: only segments named like the model's labels
    write_segmentation(label, [lab for lab in phantom.labels if lab.name != "Tumour"] + [Label(3, "Tumour")],
                       tmp_path / "correction.seg.nrrd")
    home = tmp_path / "home"
    params = FinetuneParameters(model="phantom-unet", steps=1, name="phantom-fixed", device="cpu")
    events = []
    res = run_blocking(Commands.finetune_command(params, [("image.nrrd", "correction.seg.nrrd")], python=sys.executable),
                       env=child_env(home), cwd=str(tmp_path), on_event=events.append, timeout=180)
    assert res.ok, (res.error, res.stderr_tail)
    stages = [e.stage for e in events if e.kind == "stage"]
    assert stages == ["load", "prepare", "evaluate", "finetune", "evaluate", "save"]
    tracker = Protocol.ProgressTracker(Protocol.FINETUNE_STAGES)
    shown = [tracker.overall for e in events if tracker.update(e)]
    assert shown == sorted(shown) and shown[-1] == 1.0
    assert res.outputs["name"] == "phantom-fixed" and Path(res.outputs["model"]).is_dir()
    assert 0.0 <= res.outputs["dice_before"] <= 1.0 and 0.0 <= res.outputs["dice_after"] <= 1.0

    listed = run_blocking(Commands.models_command(python=sys.executable), env=child_env(home), protocol=False, timeout=60)
    assert listed.ok, listed.error
    models = {m.name: m for m in Models.parse_models_json(listed.stdout)}
    assert {"phantom-unet", "hn-oar-unet", "phantom-fixed"} <= set(models)
    new = models["phantom-fixed"]
    assert new.source == "user" and new.parent == "phantom-unet" and new.labelNames == PHANTOM_LABELS
    assert "fine-tuned" in new.displayText()
