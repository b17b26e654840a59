"""The module's command lines, parameters, event parsing, model list and names, against the engine."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from module_helpers import MODULE_DIR, PHANTOM_LABELS
from SlicerMedSegLib import Commands, Geometry, Models, Parameters, Protocol
from SlicerMedSegLib.Parameters import FinetuneParameters, SegmentationParameters


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
