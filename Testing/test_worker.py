"""The long-lived worker answers several requests in one process, reusing the loaded model."""

import json
import subprocess
import sys

import SimpleITK as sitk


def test_worker_answers_two_requests_in_one_process(tmp_path, phantom):
    path = tmp_path / "ph.nii.gz"
    sitk.WriteImage(phantom.image, str(path))
    requests = [
        {"id": "a", "command": "segment", "args": {"inputs": [str(path)], "model": "phantom-unet",
                                                   "output": str(tmp_path / "o1"), "device": "cpu"}},
        {"id": "b", "command": "segment", "args": {"inputs": [str(path)], "model": "phantom-unet",
                                                   "output": str(tmp_path / "o2"), "device": "cpu"}},
        {"id": "c", "command": "segment", "args": {"inputs": [str(tmp_path / "nope.nii.gz")],
                                                   "model": "phantom-unet", "output": str(tmp_path / "o3")}},
        {"id": "d", "command": "models"},
        {"id": "e", "command": "shutdown"},
    ]
    proc = subprocess.run([sys.executable, "-m", "medseg_core", "worker"], text=True, capture_output=True,
                          input="".join(json.dumps(r) + "\n" for r in requests), timeout=120)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    last = {}
    for e in events:
        last[e["id"]] = e
    assert last["a"]["event"] == "result" and last["b"]["event"] == "result"
    assert last["a"]["outputs"]["model_was_loaded"] is False
    assert last["b"]["outputs"]["model_was_loaded"] is True  # the second request reused the model
    assert last["a"]["outputs"]["reports"][0]["seconds"]["load_model"] > 0.0
    assert last["b"]["outputs"]["reports"][0]["seconds"]["load_model"] == 0.0
    assert last["c"]["event"] == "error" and last["c"]["code"] == 2 and "nope.nii.gz" in last["c"]["message"]
    assert "phantom-unet" in {m["name"] for m in last["d"]["outputs"]}
    assert last["e"]["event"] == "result"
    assert (tmp_path / "o2" / "ph_labels.nii.gz").is_file()


def test_a_refine_after_a_segment_of_the_same_file_reads_nothing(tmp_path, phantom, monkeypatch):
    """In process: the worker reads the image once for the segment and keeps it for the refine;
    a file changed on disk is read again."""
    import io as textio
    import os

    import medseg_core.io as mio
    from medseg_core.worker import Worker

    path = tmp_path / "ph.nii.gz"
    sitk.WriteImage(phantom.image, str(path))
    reads = []
    real = mio.read_channels
    monkeypatch.setattr(mio, "read_channels", lambda p, n: reads.append(str(p)) or real(p, n))
    worker = Worker(stdout=textio.StringIO())
    seg = {"id": "1", "command": "segment", "args": {"inputs": [str(path)], "model": "phantom-unet",
                                                      "output": str(tmp_path / "o"), "device": "cpu"}}
    assert worker.handle(json.dumps(seg))
    labels = tmp_path / "o" / "ph_labels.nii.gz"
    centre = phantom.image.TransformContinuousIndexToPhysicalPoint([s / 2 for s in phantom.image.GetSize()])
    refine = {"id": "2", "command": "refine", "args": {"input": str(path), "model": "phantom-unet",
                                                        "labels": str(labels), "output": str(tmp_path / "r"),
                                                        "overwrite": True, "device": "cpu",
                                                        "prompts": [{"label": "Liver", "point": list(centre)}]}}
    assert worker.handle(json.dumps(refine))
    out = [json.loads(line) for line in worker.stdout.getvalue().splitlines()]
    assert [e["event"] for e in out if e["event"] in ("result", "error")] == ["result", "result"], out[-1]
    assert reads == [str(path)]  # one read for both requests
    os.utime(path, ns=(1, 1))  # the file changed on disk (another modification time)
    assert worker.handle(json.dumps(refine))
    assert json.loads(worker.stdout.getvalue().splitlines()[-1])["event"] == "result"
    assert reads == [str(path)] * 2
