"""The Slicer module outside Slicer: its pure-Python parts, driven against the REAL ``medseg``
command as a child process on phantoms, plus static checks of the module's files.

What runs only inside Slicer (the scene, markups, segment editor) is tested by
``SlicerMedSeg/Testing/Python/SlicerMedSegModuleTest.py``; see README, "For clinicians".
"""

from __future__ import annotations

import ast
import doctest
import importlib
import json
import os
import re
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "SlicerMedSeg"
LIB = MODULE_DIR / "SlicerMedSegLib"
sys.path.insert(0, str(MODULE_DIR))

from SlicerMedSegLib import Commands, Geometry, Models, Panel, Parameters, Protocol, Requirements  # noqa: E402
from SlicerMedSegLib.Parameters import FinetuneParameters, SegmentationParameters  # noqa: E402
from SlicerMedSegLib.ProcessRunner import ProcessRunner, run_blocking  # noqa: E402
from SlicerMedSegLib.Signal import Signal  # noqa: E402

PURE_MODULES = ("Signal", "Parameters", "Geometry", "Models", "Commands", "Protocol", "ProcessRunner", "Requirements",
                "Panel")
PHANTOM_LABELS = ["Liver", "SpinalCord", "Tumour", "LeftGland", "RightGland"]
POSIX = os.name == "posix"


def _env(home) -> dict:
    env = Commands.child_environment("cpu", base=os.environ)
    env["MEDSEG_HOME"] = str(home)
    env["OMP_NUM_THREADS"] = "2"
    return env


def _write_phantom(path: Path, **kwargs):
    from medseg_core.data.phantom import make_phantom

    phantom = make_phantom(**kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(phantom.image, str(path), True)
    return phantom


# ---- one real segmentation, shared by the tests that read its outputs ------------------------------
@pytest.fixture(scope="module")
def segmented(tmp_path_factory):
    """``medseg segment`` run by the ProcessRunner as the Slicer module runs it: the input written as
    NRRD (what SceneLoader.writeVolume writes), device CPU, confidence and regions on."""
    tmp = tmp_path_factory.mktemp("segment")
    phantom = _write_phantom(tmp / "input.nrrd", seed=7)
    params = SegmentationParameters(model="phantom-unet", device="cpu", confidence=True)
    cmd = Commands.segment_command(params, "input.nrrd", "output", python=sys.executable)
    events = []
    runner = ProcessRunner(cmd, env=_env(tmp / "home"), cwd=str(tmp))
    runner.eventReceived.connect(events.append)
    finished = []
    runner.finished.connect(finished.append)
    result = runner.start().wait(timeout=120)
    return {"tmp": tmp, "phantom": phantom, "events": events, "result": result, "finished": finished}


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
    _write_phantom(tmp_path / "case.nii.gz", shape=(16, 24, 24), seed=1)
    bad_model = SegmentationParameters(model="no-such-model", device="cpu")
    res = run_blocking(Commands.segment_command(bad_model, "case.nii.gz", "out", python=sys.executable),
                       env=_env(tmp_path / "home"), cwd=str(tmp_path), timeout=60)
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
    _write_phantom(tmp_path / "big.nii.gz", shape=(64, 128, 128), spacing=(0.75, 0.75, 2.0), seed=3)
    params = SegmentationParameters(model="phantom-unet", device="cpu", tta=True)
    runner = ProcessRunner(Commands.segment_command(params, "big.nii.gz", "out", python=sys.executable),
                           env=_env(tmp_path / "home"), cwd=str(tmp_path))
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
                       env=_env(home), cwd=str(tmp_path), on_event=events.append, timeout=180)
    assert res.ok, (res.error, res.stderr_tail)
    stages = [e.stage for e in events if e.kind == "stage"]
    assert stages == ["load", "prepare", "evaluate", "finetune", "evaluate", "save"]
    tracker = Protocol.ProgressTracker(Protocol.FINETUNE_STAGES)
    shown = [tracker.overall for e in events if tracker.update(e)]
    assert shown == sorted(shown) and shown[-1] == 1.0
    assert res.outputs["name"] == "phantom-fixed" and Path(res.outputs["model"]).is_dir()
    assert 0.0 <= res.outputs["dice_before"] <= 1.0 and 0.0 <= res.outputs["dice_after"] <= 1.0

    listed = run_blocking(Commands.models_command(python=sys.executable), env=_env(home), protocol=False, timeout=60)
    assert listed.ok, listed.error
    models = {m.name: m for m in Models.parse_models_json(listed.stdout)}
    assert {"phantom-unet", "hn-oar-unet", "phantom-fixed"} <= set(models)
    new = models["phantom-fixed"]
    assert new.source == "user" and new.parent == "phantom-unet" and new.labelNames == PHANTOM_LABELS
    assert "fine-tuned" in new.displayText()


# ---- geometry: what Slicer would compute from the written headers --------------------------------
def _nrrd_ras_corners(path) -> tuple[np.ndarray, np.ndarray]:
    """RAS of the 8 corner voxel centres, and the IJK->RAS matrix, from a NRRD header (as Slicer's
    reader does: space directions and origin in LPS, flipped to RAS)."""
    import nrrd

    header = nrrd.read_header(str(path))
    assert header["space"] == "left-posterior-superior"
    dirs = np.asarray(header["space directions"], dtype=float)
    domain = [i for i, kind in enumerate(header["kinds"]) if kind == "domain"]
    sizes = np.asarray(header["sizes"])[domain]
    dirs = dirs[[i for i in range(len(dirs)) if np.isfinite(dirs[i]).all()]]
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = dirs.T
    ijk_to_lps[:3, 3] = header["space origin"]
    ijk_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ijk_to_lps
    corners = np.array([[i, j, k, 1.0] for i in (0, sizes[0] - 1) for j in (0, sizes[1] - 1) for k in (0, sizes[2] - 1)])
    return (corners @ ijk_to_ras.T)[:, :3], ijk_to_ras


def _same_points(a, b, tol=1e-3) -> bool:
    return all(np.min(np.linalg.norm(b - p, axis=1)) < tol for p in a) and len(a) == len(b)


def test_segmentations_have_the_input_geometry_in_ras(segmented):
    outputs = segmented["result"].outputs[0]
    expected, _ = _nrrd_ras_corners(segmented["tmp"] / "input.nrrd")
    for kind in ("segmentation", "rois_segmentation"):
        corners, _ = _nrrd_ras_corners(outputs[kind])
        assert _same_points(corners, expected), kind


def _vtk_nifti(path):
    """(voxels (z, y, x), RAS of every voxel centre as a function of (i, j, k) arrays) the way VTK
    reads a NIfTI file: the sform (else qform) maps VTK's data coordinates to RAS."""
    vtk = pytest.importorskip("vtk", reason="the vtk package is not installed (pip install vtk)")
    from vtkmodules.util.numpy_support import vtk_to_numpy

    reader = vtk.vtkNIFTIImageReader()
    reader.SetFileName(str(path))
    reader.Update()
    image = reader.GetOutput()
    matrix = reader.GetSFormMatrix() or reader.GetQFormMatrix()
    m = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    nx, ny, nz = image.GetDimensions()
    voxels = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(nz, ny, nx)
    origin, spacing = np.asarray(image.GetOrigin()), np.asarray(image.GetSpacing())

    def to_ras(i, j, k):
        p = np.stack([origin[0] + spacing[0] * i, origin[1] + spacing[1] * j, origin[2] + spacing[2] * k,
                      np.ones_like(i, dtype=float)], axis=-1)
        return (p @ m.T)[..., :3]

    return voxels, to_ras


def _centroid_ras(mask_zyx, to_ras) -> np.ndarray:
    k, j, i = np.nonzero(mask_zyx)
    return to_ras(i.astype(float), j.astype(float), k.astype(float)).mean(axis=0)


def test_nifti_outputs_land_where_the_organs_are_in_ras(segmented):
    """Orientation flips (TotalSegmentator #20/#31, nnU-Net #1956) would move the organs: compare the
    organs' RAS centroids read through VTK's NIfTI reader with the phantom's truth."""
    pytest.importorskip("vtk", reason="the vtk package is not installed (pip install vtk)")
    outputs, phantom = segmented["result"].outputs[0], segmented["phantom"]
    _, input_ijk_to_ras = _nrrd_ras_corners(segmented["tmp"] / "input.nrrd")
    truth = sitk.GetArrayFromImage(phantom.label)

    def truth_centroid(value):
        k, j, i = np.nonzero(truth == value)
        return (np.stack([i, j, k, np.ones_like(i)], axis=-1).astype(float) @ input_ijk_to_ras.T)[:, :3].mean(axis=0)

    labels, to_ras = _vtk_nifti(outputs["labels"])
    assert labels.shape == truth.shape
    expected_corners, _ = _nrrd_ras_corners(segmented["tmp"] / "input.nrrd")
    nz, ny, nx = labels.shape
    corners = np.array([to_ras(np.array(float(i)), np.array(float(j)), np.array(float(k)))
                        for i in (0, nx - 1) for j in (0, ny - 1) for k in (0, nz - 1)])
    assert _same_points(corners, expected_corners, tol=1e-2)
    for value in (1, 2, 4, 5):  # liver, cord and the two (small, lateral) glands
        assert np.linalg.norm(_centroid_ras(labels == value, to_ras) - truth_centroid(value)) < 1.5, value

    confidence, conf_to_ras = _vtk_nifti(outputs["confidence"])
    assert confidence.shape == truth.shape and 0.0 <= confidence.min() and confidence.max() <= 1.0
    assert np.allclose(conf_to_ras(np.array(3.0), np.array(4.0), np.array(5.0)), to_ras(np.array(3.0), np.array(4.0),
                                                                                         np.array(5.0)), atol=1e-3)

    # the markups ROIs made from STEM_rois.json (LPS -> RAS) sit on their organ
    regions = json.loads(Path(outputs["rois"]).read_text())["regions"]
    assert {r["label"] for r in regions} == {"LeftGland", "RightGland"}
    for region in regions:
        center, size = Geometry.lps_box_to_ras_center_size(region["box_mm"])
        organ = _centroid_ras(labels == region["value"], to_ras)
        assert np.all(np.abs(np.asarray(center) - organ) <= np.asarray(size) / 2 + 1.0), region["label"]


# ---- command lines, parameters, parsing -------------------------------------------------------------
def _parse_with_medseg(cmd):
    from medseg_core.cli import _parser

    assert cmd[:3] == [sys.executable, "-m", "medseg_core"]
    return _parser().parse_args(cmd[3:])


def test_command_lines_from_parameters():
    roi = Geometry.ras_bounds_to_lps_box([10.0, 20.0, -5.0, 5.0, 0.0, 30.0])  # RAS bounds of a markups ROI
    assert roi == [-20.0, -5.0, 0.0, -10.0, 5.0, 30.0]
    p = SegmentationParameters(model="phantom-unet", device="cpu", tta=True, confidence=True,
                               confidence_threshold=0.3, roi_lps=roi)
    cmd = Commands.segment_command(p, "in.nrrd", "out", python=sys.executable)
    a = _parse_with_medseg(cmd)
    assert (a.command, a.inputs, a.model, a.output, a.device) == ("segment", ["in.nrrd"], "phantom-unet", "out", "cpu")
    assert a.tta and a.overwrite and not a.no_confidence and a.confidence_threshold == 0.3 and a.progress == "json"
    assert a.roi == "-20,-5,0,-10,5,30"
    env = Commands.child_environment("cpu", base={"PATH": "/bin"})
    assert env["CUDA_VISIBLE_DEVICES"] == "-1" and env["PYTHONUNBUFFERED"] == "1" and env["PATH"] == "/bin"

    p = SegmentationParameters(model="hn-oar-unet", device="gpu", confidence=False)
    a = _parse_with_medseg(Commands.segment_command(p, "ct.nii.gz", "o", python=sys.executable))
    assert a.device == "cuda" and a.no_confidence and a.roi is None and not a.tta
    assert "CUDA_VISIBLE_DEVICES" not in Commands.child_environment("gpu", base={})
    assert "CUDA_VISIBLE_DEVICES" not in Commands.child_environment("auto", base={})
    assert Commands.child_environment("auto", base={"PYTHONPATH": "/a"}, pythonpath="/engine")["PYTHONPATH"] == \
        "/engine" + os.pathsep + "/a"

    f = FinetuneParameters(model="phantom-unet", steps=25, name="mine", device="cpu")
    a = _parse_with_medseg(Commands.finetune_command(f, [("i1.nrrd", "l1.seg.nrrd"), ("i2.nrrd", "l2.seg.nrrd")],
                                                     python=sys.executable))
    assert (a.command, a.model, a.image, a.label) == ("finetune", "phantom-unet", ["i1.nrrd", "i2.nrrd"],
                                                     ["l1.seg.nrrd", "l2.seg.nrrd"])
    assert a.steps == 25 and a.name == "mine" and a.device == "cpu" and a.progress == "json"
    a = _parse_with_medseg(Commands.finetune_command(FinetuneParameters(model="m", steps=0), [("i", "l")],
                                                     python=sys.executable))
    assert a.steps is None and a.name is None and a.device == "auto"
    a = _parse_with_medseg(Commands.models_command(python=sys.executable))
    assert a.command == "models" and a.json

    with pytest.raises(ValueError):
        Commands.segment_command(SegmentationParameters(model=""), "i", "o")
    with pytest.raises(ValueError):
        Commands.finetune_command(FinetuneParameters(model="m", name="bad name/.."), [("i", "l")])
    with pytest.raises(ValueError):
        Geometry.ras_bounds_to_lps_box([0, 0, 0, 1, 0, 1])
    # the "Low confidence" and region segments are left out of a correction (the engine refuses them)
    assert Commands.matching_segment_names(PHANTOM_LABELS + ["Low confidence", "LeftGland region 1", "left_gland"],
                                           PHANTOM_LABELS) == PHANTOM_LABELS + ["left_gland"]


class _FakeSettings:
    """QSettings with an INI backend hands values back as strings."""

    def __init__(self):
        self.data = {}

    def setValue(self, key, value):
        self.data[key] = str(value).lower() if isinstance(value, bool) else str(value)

    def value(self, key):
        return self.data.get(key)


def test_parameters_survive_a_round_trip_through_settings():
    settings = _FakeSettings()
    seg = SegmentationParameters(model="hn-oar-unet", device="cpu", tta=True, confidence=False,
                                 confidence_threshold=0.25, show_regions=False, roi_lps=[0, 0, 0, 1, 1, 1])
    Parameters.save(seg, settings)
    Parameters.save(FinetuneParameters(model="hn-oar-unet", steps=80, name="x"), settings)
    back = Parameters.load(SegmentationParameters, settings)
    assert back == SegmentationParameters(model="hn-oar-unet", device="cpu", tta=True, confidence=False,
                                          confidence_threshold=0.25, show_regions=False)  # the ROI is not saved
    assert Parameters.load(FinetuneParameters, settings).steps == 80
    settings.data["SlicerMedSeg/SegmentationParameters/device"] = "tpu"
    settings.data["SlicerMedSeg/SegmentationParameters/confidence_threshold"] = "garbage"
    back = Parameters.load(SegmentationParameters, settings)
    assert back.device == "auto" and back.confidence_threshold == 0.5
    assert Parameters.load(SegmentationParameters, _FakeSettings()) == SegmentationParameters()


def test_protocol_parsing_and_time_left():
    e = Protocol.parse_line('{"event": "progress", "stage": "infer", "fraction": 0.25, "eta_s": 90.4, "message": "p"}')
    assert (e.kind, e.stage, e.fraction, e.eta_s, e.message) == ("progress", "infer", 0.25, 90.4, "p")
    e = Protocol.parse_line('{"event": "error", "message": "x.nii: bad", "code": 2}')
    assert (e.kind, e.code, e.message) == ("error", 2, "x.nii: bad")
    assert Protocol.parse_line("not json {").kind == "log"
    assert Protocol.parse_line('{"no": "event"}').kind == "log"
    assert Protocol.parse_line("   ") is None
    assert Protocol.parse_line('{"event": "stage"}', source="stderr").kind == "log"
    clock = iter([0.0, 0.0, 0.0, 10.0, 10.0, 20.0]).__next__
    t = Protocol.ProgressTracker(Protocol.SEGMENT_STAGES, clock=clock)
    t.update(Protocol.Event("stage", stage="infer", message="pass 1/1"))
    t.update(Protocol.Event("progress", stage="infer", fraction=0.5))
    assert t.stage_eta() == pytest.approx(10.0)  # no eta_s: from the stage's own pace
    t.update(Protocol.Event("progress", stage="infer", fraction=0.6, eta_s=75))
    assert "Segmenting" in t.status_text() and "60 %" in t.status_text() and "1 min 15 s left" in t.status_text()
    assert Protocol.format_seconds(None) == "" and Protocol.format_seconds(3600 * 2 + 60) == "about 2 h 1 min left"


def test_models_list_and_modality_warning():
    from medseg_core.commands import models_json

    models = Models.parse_models_json(json.dumps(models_json()))
    phantom = next(m for m in models if m.name == "phantom-unet")
    assert phantom.modality == "CT" and phantom.labelNames == PHANTOM_LABELS and phantom.version
    assert phantom.validation_dice == pytest.approx(0.9601)
    text = phantom.displayText()
    assert "CT" in text and "5 labels" in text and "Dice 0.96" in text and phantom.version in text
    assert "Liver" in phantom.summary() and "0.960" in phantom.summary()
    with pytest.raises(ValueError):
        Models.parse_models_json("not json")

    from medseg_core.data.phantom import make_phantom

    ct = sitk.GetArrayFromImage(make_phantom(shape=(16, 24, 24), seed=2).image)
    assert Models.modality_warning("CT", Models.intensity_stats(ct)) == ""
    mr_like = (ct - ct.min()).astype(np.float32) / 4.0  # positive, arbitrary units
    assert "Hounsfield" in Models.modality_warning("CT", Models.intensity_stats(mr_like))
    assert "looks like CT" in Models.modality_warning("MR", Models.intensity_stats(ct))
    assert Models.modality_warning("MR", Models.intensity_stats(mr_like)) == ""


def test_the_module_knows_the_engines_output_names():
    from medseg_core.io.naming import OUTPUT_SUFFIXES

    assert Protocol.SEGMENT_OUTPUT_SUFFIXES == OUTPUT_SUFFIXES


def test_the_modules_terminology_context_lists_every_project_code_the_engine_writes():
    from medseg_core.io import terminology as t

    context = json.loads((MODULE_DIR / "Resources" / "Terminology" /
                          "SegmentationCategoryTypeModifier-SlicerMedSeg.term.json").read_text())
    assert context["SegmentationCategoryTypeContextName"] == t.MEDSEG_CONTEXT
    listed = {(c["CodingSchemeDesignator"], c["CodeValue"], c["CodeMeaning"]):
              {(y["CodingSchemeDesignator"], y["CodeValue"], y["CodeMeaning"]) for y in c["Type"]}
              for c in context["SegmentationCodes"]["Category"]}
    written = [t.project_terminology(code) for code in (t.LOW_CONFIDENCE_CODE, t.SMALL_ORGAN_REGION_CODE,
                                                         t.MODEL_LABEL_CODE)]
    written += [t.terminology_for(name) for name in ("GTV", "CTV", "PTV", "Low confidence")]
    for entry in written:
        assert entry["contextName"] == t.MEDSEG_CONTEXT
        assert tuple(entry["type"]) in listed[tuple(entry["category"])], entry


def test_the_module_matches_segment_names_by_the_engines_rule():
    from medseg_core.labels import name_key

    names = ["Right_Parotid ", "right parotid", "RIGHT-PAROTID", "Spinal cord", "SpinalCord", "PTV 70", "ptv_70",
             "Low confidence", "Brain-stem", "Parotid (L)", "Ösophagus", ""]
    assert [Commands.normalize_segment_name(n) for n in names] == [name_key(n) for n in names]
    assert Commands.matching_segment_names(["right-parotid", "My notes", "Low confidence"],
                                           ["RightParotid", "LeftParotid"]) == ["right-parotid"]


# ---- the panel's decisions (Widget.py only copies them into the widgets) ------------------------------
def test_panel_buttons_follow_the_apply_cancel_state_machine():
    idle = dict(hasInput=True, model="phantom-unet", modelCount=3, hasCorrection=True, hasFinetuneVolume=True)
    b = Panel.buttons(None, **idle)
    assert (b.applyText, b.applyEnabled, b.finetuneText, b.finetuneEnabled, b.inputsEnabled) == \
        ("Apply", True, "Fine-tune", True, True)
    # segmenting: Apply is Cancel (enabled), nothing else can start, the inputs are locked
    b = Panel.buttons("segment", **idle)
    assert (b.applyText, b.applyEnabled, b.finetuneText, b.finetuneEnabled, b.inputsEnabled) == \
        ("Cancel", True, "Fine-tune", False, False)
    b = Panel.buttons("finetune", **idle)
    assert (b.applyText, b.applyEnabled, b.finetuneText, b.finetuneEnabled, b.inputsEnabled) == \
        ("Apply", False, "Cancel", True, False)
    # what Apply and Fine-tune need
    assert not Panel.buttons(None, **{**idle, "hasInput": False}).applyEnabled
    assert not Panel.buttons(None, **{**idle, "model": ""}).applyEnabled  # a list without a selection
    assert Panel.buttons(None, **{**idle, "model": "", "modelCount": 0}).applyEnabled  # Apply reads the list first
    assert not Panel.buttons(None, **{**idle, "hasCorrection": False}).finetuneEnabled
    assert not Panel.buttons(None, **{**idle, "hasFinetuneVolume": False}).finetuneEnabled


def test_panel_progress_and_log_follow_the_childs_events():
    clock = iter([0.0, 0.0, 0.0, 0.0, 5.0, 5.0, 5.0, 8.0, 8.0, 8.0, 9.0, 9.0]).__next__
    tracker = Panel.tracker("segment", clock=clock)
    shown = []
    for event in [Protocol.Event("stage", stage="load", message="model phantom-unet"),
                  Protocol.Event("stage", stage="infer", message="pass 1/1"),
                  Protocol.Event("progress", stage="infer", fraction=0.5, eta_s=30),
                  Protocol.Event("stage", stage="done"), Protocol.Event("result", message="done")]:
        if tracker.update(event):
            shown.append(Panel.progress(tracker))
    values = [v for v, _ in shown]
    assert values == sorted(values) and 0 <= values[0] and values[-1] == Panel.PROGRESS_STEPS
    assert any("30 s left" in text for _, text in shown)
    assert Panel.logLine(Protocol.Event("stage", stage="infer", message="pass 1/1")) == "[infer] pass 1/1"
    assert Panel.logLine(Protocol.Event("log", message="boom", source="stderr")) == "stderr: boom"
    assert Panel.logLine(Protocol.Event("progress", stage="infer", fraction=0.5, message="x")) is None
    assert Panel.tracker("finetune").plan == list(Protocol.FINETUNE_STAGES)


def test_panel_model_list_tooltip_selection_and_modality_warning():
    from medseg_core.commands import models_json

    models = Models.parse_models_json(json.dumps(models_json()))
    entries = Panel.modelEntries(models)
    phantom = next(e for e in entries if e.name == "phantom-unet")
    assert "5 labels" in phantom.text and "Liver" in phantom.tooltip and "Validation Dice" in phantom.tooltip
    names = [e.name for e in entries]
    assert Panel.modelIndex(names, "phantom-unet") == names.index("phantom-unet")
    assert Panel.modelIndex(names, "gone-model") == 0 and Panel.modelIndex([], "x") == -1
    assert Panel.modelInfoText(None) == "No model." and "phantom-unet" in Panel.modelInfoText(models[names.index("phantom-unet")])

    def unreadable():
        raise RuntimeError("no voxels")

    assert Panel.modalityWarning(unreadable) == "Could not check the intensities: no voxels"
    assert Panel.modalityWarning(lambda: "") == "" and Panel.modalityWarning(lambda: None) == ""


def test_panel_parameters_and_fine_tune_defaults():
    params = Panel.segmentationParameters("hn-oar", 2, True, False, 0.3, True)
    assert params == SegmentationParameters(model="hn-oar", device="cpu", tta=True, confidence=False,
                                            confidence_threshold=0.3, show_regions=True)
    assert Panel.segmentationParameters("hn-oar", -1, False, True, 0.5, False).device == "auto"  # nothing selected
    # the result's own model is fine-tuned, whatever the list shows; the name is trimmed
    ft = Panel.finetuneParameters("phantom-unet", "hn-oar", 40, "  clinic-a ", 0)
    assert (ft.model, ft.steps, ft.name, ft.device) == ("phantom-unet", 40, "clinic-a", "auto")
    assert Panel.finetuneParameters(None, "hn-oar", 0, "", 1).model == "hn-oar"
    assert FinetuneParameters().steps == 40  # the panel's default step count


def test_panel_endings_of_runs():
    from types import SimpleNamespace as Outcome

    cancelled = Panel.segmentEnding(Outcome(cancelled=True, ok=False, error=""))
    assert "nothing was added" in cancelled.status and cancelled.errorDialog is None
    failed = Panel.segmentEnding(Outcome(cancelled=False, ok=False, error="x.nrrd: bad"))
    assert failed.status == "Failed: x.nrrd: bad" and "x.nrrd: bad" in failed.errorDialog
    done = Panel.segmentEnding(Outcome(cancelled=False, ok=True, error="", seconds=3.24, confidenceNode=object()),
                               summary="Volumes: Liver 1.0 ml")
    assert done.status.startswith("Done in 3.2 s.") and "Low confidence" in done.status
    assert done.log == ("Volumes: Liver 1.0 ml",) and done.errorDialog is None
    assert "Low confidence" not in Panel.segmentEnding(
        Outcome(cancelled=False, ok=True, error="", seconds=1.0, confidenceNode=None)).status
    new = Panel.finetuneEnding(Outcome(cancelled=False, ok=True, error="", model="m-ft", modelPath="/m",
                                       diceBefore=0.81234, diceAfter=0.9))
    assert new.selectModel == "m-ft" and "0.812 before, 0.900 after" in new.status and "/m" in new.log[0]
    assert Panel.finetuneEnding(Outcome(cancelled=True, ok=False, error="")).selectModel is None
    assert "failed" in Panel.finetuneEnding(Outcome(cancelled=False, ok=False, error="e")).errorDialog


def test_install_plan_never_replaces_slicers_packages(tmp_path):
    reqs = Requirements.read_requirements(MODULE_DIR / "Resources" / "requirements.txt")
    names = {Requirements.requirement_name(r) for r in reqs}
    assert not names & set(Requirements.PROTECTED)
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert names | {"torch", "numpy", "simpleitk"} == {Requirements.requirement_name(d) for d in deps}

    installed = {"numpy": "1.26.4", "simpleitk": "2.4.0", "requests": "2.31.0", "torch": "2.1.0", "tqdm": "4.66.0"}
    source = Requirements.find_engine_source(MODULE_DIR)
    assert source == REPO and Requirements.engine_version_in(source) == importlib.import_module("medseg_core").__version__
    plan = Requirements.make_plan(reqs, installed, source)
    assert plan.torch == Requirements.TORCH_REQUIREMENT  # torch 2.1 is too old: the PyTorch extension updates it
    assert "tqdm>=4.60" not in plan.packages and "safetensors>=0.4" in plan.packages
    assert plan.engine == REPO and not plan.empty
    text = plan.describe()
    assert "PyTorch extension" in text and "safetensors" in text and "kept as they are" in text
    pins = Requirements.constraints_text(installed)
    assert "numpy==1.26.4" in pins and "simpleitk==2.4.0" in pins and "torch==2.1.0" in pins and "tqdm" not in pins
    ready = dict(installed, torch="2.5.1", safetensors="0.4.5", slicerio="1.1.2", pynrrd="1.0.0", pillow="10.0",
                 **{"medseg-core": Requirements.engine_version_in(source)})
    assert Requirements.make_plan(reqs, ready, source).empty
    (tmp_path / "MedSegEngine").mkdir()
    wheel = tmp_path / "MedSegEngine" / "medseg_core-0.2.0-py3-none-any.whl"
    wheel.write_bytes(b"")
    assert Requirements.find_engine_source(tmp_path) == wheel
    assert Requirements.make_plan(reqs, ready, wheel).engine == wheel  # a newer bundled engine is installed


def test_signal():
    s, seen = Signal("x"), []
    s.connect(seen.append)
    s.connect(seen.append)  # once only
    s.emit(1)
    s.disconnect(seen.append)
    s.emit(2)
    assert seen == [1] and len(s) == 0


def test_pure_modules_import_neither_slicer_nor_qt_and_their_doctests_pass():
    for name in PURE_MODULES:
        tree = ast.parse((LIB / f"{name}.py").read_text())
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not imported & {"slicer", "qt", "ctk", "vtk", "PythonQt"}, (name, imported)
        module = importlib.import_module(f"SlicerMedSegLib.{name}")
        failed, _ = doctest.testmod(module)
        assert failed == 0, name
    init = ast.parse((LIB / "__init__.py").read_text())
    assert not [n for n in ast.walk(init) if isinstance(n, (ast.Import, ast.ImportFrom))]


# ---- the module's files ---------------------------------------------------------------------------
def _module_files():
    return sorted(p.relative_to(MODULE_DIR).as_posix() for p in MODULE_DIR.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")


def test_every_module_file_is_listed_in_cmakelists():
    text = (MODULE_DIR / "CMakeLists.txt").read_text()
    assert "slicerMacroBuildScriptedModule" in text and "WITH_GENERIC_TESTS" in text
    assert "slicer_add_python_unittest(SCRIPT" in text
    expanded = text.replace("${MODULE_NAME}", "SlicerMedSeg").replace("${CMAKE_CURRENT_SOURCE_DIR}/", "")
    not_packaged = {"CMakeLists.txt", "README.md"}  # build script and developer notes
    missing = [f for f in _module_files() if f not in not_packaged and f not in expanded]
    assert not missing, f"not listed in SlicerMedSeg/CMakeLists.txt: {missing}"
    listed = re.findall(r"^\s+(SlicerMedSeg\S*|Resources/\S+|Testing/\S+)\s*$", expanded, re.M)
    assert len(listed) >= 17 and all((MODULE_DIR / f).is_file() for f in listed), listed
    slicer_test = re.search(r"slicer_add_python_unittest\(SCRIPT (\S+)\)", expanded).group(1)
    assert (MODULE_DIR / slicer_test).is_file()
    assert (MODULE_DIR / "Resources" / "Icons" / "SlicerMedSeg.png").read_bytes() == \
        (REPO / "Resources" / "Icons" / "SlicerMedSeg.png").read_bytes()


def test_module_files_compile():
    for rel in _module_files():
        if rel.endswith(".py"):
            compile((MODULE_DIR / rel).read_text(encoding="utf-8"), rel, "exec")  # no .pyc written
    assert (MODULE_DIR / "SlicerMedSeg.py").stat().st_size < 8000  # a thin module file


EXPECTED_WIDGETS = {
    "inputVolumeSelector": "qMRMLNodeComboBox", "roiSelector": "qMRMLNodeComboBox",
    "correctionSelector": "qMRMLNodeComboBox", "finetuneVolumeSelector": "qMRMLNodeComboBox",
    "modelComboBox": "QComboBox", "deviceComboBox": "QComboBox", "refreshModelsButton": "QPushButton",
    "applyButton": "QPushButton", "finetuneButton": "QPushButton", "progressBar": "QProgressBar",
    "statusLabel": "QLabel", "modelInfoLabel": "QLabel", "modalityWarningLabel": "QLabel",
    "logTextEdit": "QPlainTextEdit", "ttaCheckBox": "QCheckBox", "confidenceCheckBox": "QCheckBox",
    "regionsCheckBox": "QCheckBox", "confidenceThresholdSpinBox": "QDoubleSpinBox", "stepsSpinBox": "QSpinBox",
    "modelNameLineEdit": "QLineEdit", "optionsCollapsibleButton": "ctkCollapsibleButton",
    "logCollapsibleButton": "ctkCollapsibleButton", "finetuneCollapsibleButton": "ctkCollapsibleButton",
}
NODE_TYPES = {"inputVolumeSelector": ["vtkMRMLScalarVolumeNode"], "roiSelector": ["vtkMRMLMarkupsROINode"],
              "correctionSelector": ["vtkMRMLSegmentationNode"], "finetuneVolumeSelector": ["vtkMRMLScalarVolumeNode"]}


def test_every_widget_the_code_uses_exists_in_the_ui_file_with_its_class():
    root = ET.parse(MODULE_DIR / "Resources" / "UI" / "SlicerMedSeg.ui").getroot()
    widgets = {w.get("name"): w for w in root.iter("widget")}
    classes = {name: w.get("class") for name, w in widgets.items()}
    used = set()
    for path in [MODULE_DIR / "SlicerMedSeg.py", *LIB.glob("*.py"), *(MODULE_DIR / "Testing").rglob("*.py")]:
        used |= set(re.findall(r"\bui\.([A-Za-z_]\w*)", path.read_text()))
    assert used, "the code uses no widget?"
    for name in sorted(used):
        assert name in classes, f"self.ui.{name} is not in SlicerMedSeg.ui"
        assert classes[name] == EXPECTED_WIDGETS.get(name, classes[name]), (name, classes[name])
    assert set(EXPECTED_WIDGETS) <= set(classes) and set(EXPECTED_WIDGETS) >= used - {"SlicerMedSeg"}
    for name, node_types in NODE_TYPES.items():
        prop = widgets[name].find("property[@name='nodeTypes']/stringlist")
        assert [s.text for s in prop] == node_types, name
    devices = [i.find("property/string").text.lower() for i in widgets["deviceComboBox"].findall("item")]
    assert devices == list(Parameters.DEVICES)  # the combo box index is the DEVICES index
    assert root.find("widget").get("class") == "qMRMLWidget"
