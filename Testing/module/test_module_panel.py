"""The panel's decisions (Widget.py only copies them into widgets), the installer, the pure modules."""

from __future__ import annotations

import ast
import doctest
import importlib
import json


from module_helpers import LIB, MODULE_DIR, PURE_MODULES, REPO
from SlicerMedSegLib import Models, Panel, Protocol, Requirements
from SlicerMedSegLib.Parameters import FinetuneParameters, SegmentationParameters
from SlicerMedSegLib.Signal import Signal


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
    assert FinetuneParameters().steps == 0  # by default the engine sizes the steps from the correction


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
    per = {"Liver": {"before": 0.97, "after": 0.971, "cases": 1}, "Tumour": {"before": 0.62, "after": 0.81},
           "SpinalCord": {"before": 0.9, "after": 0.85}, "RightGland": {"before": None, "after": None}}
    organs = Panel.finetuneEnding(Outcome(cancelled=False, ok=True, error="", model="m", modelPath="/m",
                                          diceBefore=0.8, diceAfter=0.85, perLabel=per)).log[1]
    assert organs == "Per organ on the correction: Tumour 0.620 -> 0.810; SpinalCord 0.900 -> 0.850 (1 unchanged)."
    per["Tumour"]["edited"] = True
    assert Panel.organChanges(per).endswith("(1 unchanged). You edited Tumour; the rest was kept as the model drew it.")
    same = Panel.organChanges({"Liver": {"before": 0.9, "after": 0.9}})
    assert same == "Per organ on the correction: no organ changed."
    assert Panel.organChanges({}) == ""
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
