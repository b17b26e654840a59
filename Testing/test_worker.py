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
