"""The engine API (``medseg_core.commands``) under its two faces: the CLI and the worker refuse the
same bad arguments with the same one-line message; the worker keeps serving after one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk

from medseg_core.cli import main
from medseg_core.commands import FinetuneRequest, SegmentRequest
from medseg_core.errors import InputError

PACKAGE = Path(__file__).resolve().parents[2] / "medseg_core"

# (worker args beyond the valid ones, CLI options beyond the valid ones, the message both give)
BAD_SEGMENT = [
    ({"confidence_threshold": 7}, ["--confidence-threshold", "7"], "--confidence-threshold 7.0: must be within [0, 1]"),
    ({"confidence_threshold": -0.1}, ["--confidence-threshold", "-0.1"], "must be within [0, 1]"),
    ({"roi": "1,2,3"}, ["--roi", "1,2,3"], "--roi 1,2,3: expected six numbers"),
    ({"roi": [0, 0, 0, 5, "x", 5]}, ["--roi", "0,0,0,5,x,5"], "--roi 0,0,0,5,x,5: expected six numbers"),
    ({"roi": "0,0,0,0,5,5"}, ["--roi=0,0,0,0,5,5"], "the box is empty along one axis"),
    ({"batch_size": 0}, ["--batch-size", "0"], "--batch-size 0: must be a whole number of at least 1"),
    ({"batch_size": -3}, ["--batch-size", "-3"], "--batch-size -3: must be a whole number of at least 1"),
]


@pytest.fixture
def case(tmp_path, phantom):
    path = tmp_path / "ph.nii.gz"
    sitk.WriteImage(phantom.image, str(path))
    return path


@pytest.mark.parametrize("args, options, message", BAD_SEGMENT)
def test_cli_and_worker_refuse_the_same_bad_segment_arguments(tmp_path, case, capsys, args, options, message):
    code = main(["segment", str(case), "--model", "phantom-unet", "--output", str(tmp_path / "cli"), *options])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "cli").exists()
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        SegmentRequest.from_dict({"inputs": [str(case)], "model": "phantom-unet", "output": str(tmp_path / "w"),
                                  **args})


def _worker(requests, timeout=120):
    proc = subprocess.run([sys.executable, "-m", "medseg_core", "worker"], text=True, capture_output=True,
                          input="".join(json.dumps(r) + "\n" for r in requests), timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    last = {}
    for line in proc.stdout.splitlines():
        event = json.loads(line)
        last[event.get("id")] = event
    return last, proc.stderr


def test_the_worker_answers_a_bad_request_with_an_error_event_and_keeps_serving(tmp_path, case):
    valid = {"inputs": [str(case)], "model": "phantom-unet", "output": str(tmp_path / "o"), "device": "cpu"}
    requests = [{"id": f"bad{i}", "command": "segment", "args": {**valid, **args}}
                for i, (args, _, _) in enumerate(BAD_SEGMENT)]
    requests += [
        {"id": "unknown", "command": "segment", "args": {**valid, "treshold": 0.5}},
        {"id": "missing", "command": "segment", "args": {"model": "phantom-unet"}},
        {"id": "one-path", "command": "segment", "args": {**valid, "inputs": str(case)}},
        {"id": "device", "command": "segment", "args": {**valid, "device": "tpu"}},
        {"id": "no-cases", "command": "finetune", "args": {"model": "phantom-unet", "cases": []}},
        {"id": "steps", "command": "finetune", "args": {"model": "phantom-unet", "cases": [[str(case), str(case)]],
                                                        "steps": 0}},
        {"id": "args", "command": "segment", "args": [1, 2]},
        {"id": "models", "command": "models"},
        {"id": "end", "command": "shutdown"},
    ]
    last, stderr = _worker(requests)
    for i, (_, _, message) in enumerate(BAD_SEGMENT):
        assert last[f"bad{i}"]["event"] == "error" and last[f"bad{i}"]["code"] == 2, last[f"bad{i}"]
        assert message in last[f"bad{i}"]["message"]
    assert "unknown argument(s) treshold" in last["unknown"]["message"]
    assert "missing argument(s) inputs, output" in last["missing"]["message"]
    assert "expected a non-empty list of paths" in last["one-path"]["message"]
    assert "--device 'tpu'" in last["device"]["message"]
    assert "at least one [image, label] pair" in last["no-cases"]["message"]
    assert "--steps 0: must be a whole number of at least 1" in last["steps"]["message"]
    assert "args must be an object" in last["args"]["message"]
    for rid in ("unknown", "missing", "one-path", "device", "no-cases", "steps", "args"):
        assert last[rid]["event"] == "error" and last[rid]["code"] == 2, last[rid]
    assert last["models"]["event"] == "result" and last["end"]["event"] == "result"
    assert "Traceback" not in stderr
    assert not (tmp_path / "o").exists()  # nothing was written for a refused request


def test_requests_keep_their_canonical_types():
    request = SegmentRequest(inputs=[Path("a.nii.gz")], model="m", output=Path("out"), roi="0,1,2,3,4,5",
                             confidence_threshold="0.25", batch_size=2.0)
    assert request.inputs == ["a.nii.gz"] and request.output == "out"
    assert request.roi == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0] and request.confidence_threshold == 0.25
    assert request.batch_size == 2 and isinstance(request.batch_size, int)
    with pytest.raises(InputError, match="--batch-size 2.5"):
        SegmentRequest(inputs=["a"], model="m", output="o", batch_size=2.5)
    with pytest.raises(InputError, match="--tta 'yes': expected true or false"):
        SegmentRequest(inputs=["a"], model="m", output="o", tta="yes")
    ft = FinetuneRequest(model="m", cases=[("i.nii.gz", Path("l.seg.nrrd"))], lr="5e-4")
    assert ft.cases == [("i.nii.gz", "l.seg.nrrd")] and ft.lr == 5e-4 and ft.steps is None
    for bad in ({"lr": 0}, {"lr": "nan"}, {"cases": [["only-one"]]}, {"name": ""}):
        with pytest.raises(InputError):
            FinetuneRequest(**{"model": "m", "cases": [("i", "l")], **bad})


@pytest.mark.parametrize("options, message", [
    (["--steps", "0"], "--steps 0: must be a whole number of at least 1"),
    (["--time-budget", "-5"], "--time-budget -5.0: must be 0 (none) or more seconds"),
    (["--seed", "-1"], "--seed -1: must be a whole number of at least 0"),
])
def test_train_refuses_bad_overrides_before_touching_the_run(tmp_path, capsys, options, message):
    config = tmp_path / "config.json"
    config.write_text("{}")
    code = main(["train", "--config", str(config), "--run", str(tmp_path / "run"), *options])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
