"""``medseg finetune`` on phantoms: a correction moves the model, the parent stays untouched, the
card tells where the new model came from, bad corrections are refused, and an interrupted run
leaves nothing behind.

One fine-tune (module fixture, a few seconds) serves most checks: the phantom's Tumour is dilated
by 2 voxels into the liver, the correction is a ``.seg.nrrd`` that spells one segment differently
("spinal cord") and leaves RightGland out (so RightGland is not annotated: the model must not
learn to erase it).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from medseg_core.data.phantom import PHANTOM_LABELS, make_phantom
from medseg_core.errors import InputError
from medseg_core.io.corrections import read_correction
from medseg_core.training.finetune import FinetuneResult, finetune
from medseg_core.labels import name_key
from medseg_core.io import write_segmentation
from medseg_core.labels import Label
from medseg_core.losses import DiceCELoss
from medseg_core.metrics import dice
from medseg_core.models import bundled_dir, find_model, load_package
from medseg_core.models.package import sha256_file

from finetune_helpers import MODEL, RIGHT_GLAND, TUMOUR, edited_phantom as _edited, predict as _predict
STEPS = 20


def _package_hashes(folder: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """One fine-tune on an edited phantom; returns everything the tests look at."""
    root = tmp_path_factory.mktemp("ft")
    ph = make_phantom(seed=11)
    img_path = root / "case.nii.gz"
    sitk.WriteImage(ph.image, str(img_path))
    edited = _edited(ph)
    labels = [Label(1, "Liver"), Label(2, "spinal cord"), Label(3, "Tumour"), Label(4, "Left_Gland")]
    seg_path = root / "case_corrected.seg.nrrd"  # RightGland left out: not annotated
    write_segmentation(edited, labels, seg_path)
    parent_dir = bundled_dir() / MODEL
    before = _package_hashes(parent_dir)
    events = []
    annotated = []  # what the loss was told, batch by batch
    loss_forward = DiceCELoss.forward

    def spy(self, logits, target, ann=None):
        annotated.append(ann.detach().cpu().clone())
        return loss_forward(self, logits, target, ann)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small patches: one thread is nearly as quick, and far quicker on a busy machine
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDSEG_HOME", str(root / "home"))
        mp.setattr(DiceCELoss, "forward", spy)
        res = finetune(MODEL, [(img_path, seg_path)], steps=STEPS, name="phantom-fixed", device="cpu",
                       progress=lambda stage, fraction, message="", eta_s=None: events.append(
                           (stage, fraction, message, eta_s)))
    torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads
    return {"res": res, "ph": ph, "edited": edited, "img": img_path, "seg": seg_path, "home": root / "home",
            "parent_dir": parent_dir, "parent_before": before, "events": events, "annotated": annotated}


def test_finetune_moves_the_prediction_toward_the_edit(tuned):
    res, ph = tuned["res"], tuned["ph"]
    assert isinstance(res, FinetuneResult) and res.steps == STEPS
    assert res.package_dir == tuned["home"] / "models" / "phantom-fixed"
    assert res.dice_after > res.dice_before
    assert res.per_label["Tumour"]["after"] > res.per_label["Tumour"]["before"] + 0.05
    # on the input grid, through the Predictor, as a user would see it
    ref = sitk.GetArrayFromImage(tuned["edited"]) == TUMOUR
    old = _predict(MODEL, ph.image)
    new = _predict(str(res.package_dir), ph.image)
    assert dice(new == TUMOUR, ref) > dice(old == TUMOUR, ref) + 0.05
    # RightGland was not in the correction: the loss was told so at every step, and it is not erased
    ann = torch.cat(tuned["annotated"])
    assert len(ann) and ann[:, [0, 1, 2, 3, 4]].all() and not ann[:, RIGHT_GLAND].any()
    truth = sitk.GetArrayFromImage(ph.label)
    assert "RightGland" not in res.per_label
    assert dice(new == RIGHT_GLAND, truth == RIGHT_GLAND) > 0.9


def test_parent_is_untouched_and_the_card_records_the_lineage(tuned):
    res = tuned["res"]
    assert _package_hashes(tuned["parent_dir"]) == tuned["parent_before"]
    parent = find_model(MODEL).card
    pkg = load_package(res.package_dir)
    card = pkg.card
    assert card.name == "phantom-fixed" and card.version.startswith(f"{parent.version}+ft.")
    assert card.parent["name"] == MODEL and card.parent["version"] == parent.version
    assert card.parent["weights_sha256"] == parent.weights.sha256
    assert card.parent["source"] == "bundled" and Path(card.parent["path"]) == tuned["parent_dir"]
    assert card.labels == parent.labels and card.preprocessing == parent.preprocessing
    assert card.weights.dtype == parent.weights.dtype == "float16"
    ft = card.training["finetune"]
    assert ft["steps"] == STEPS and ft["device"] == "cpu" and ft["lr"] > 0
    assert ft["dice_before"] == pytest.approx(res.dice_before, abs=1e-4)
    assert ft["dice_after"] == pytest.approx(res.dice_after, abs=1e-4)
    (case,) = ft["cases"]
    assert case["image_sha256"] == sha256_file(tuned["img"]) and case["label_sha256"] == sha256_file(tuned["seg"])
    assert case["labels_trained"] == ["Liver", "SpinalCord", "Tumour", "LeftGland"]
    assert set(ft["per_label"]) == {"Liver", "SpinalCord", "Tumour", "LeftGland"}
    pkg.build("cpu")  # the weights verify against the card and fit the network
    # nothing but the new package in the user folder
    assert sorted(p.name for p in (tuned["home"] / "models").iterdir()) == ["phantom-fixed"]


def test_medseg_models_shows_the_lineage_and_the_corrections_dice(tuned, monkeypatch, capsys):
    from medseg_core.cli import main
    from medseg_core.commands import models_json

    monkeypatch.setenv("MEDSEG_HOME", str(tuned["home"]))
    parent = find_model(MODEL).card
    (entry,) = [m for m in models_json() if m["name"] == "phantom-fixed"]
    assert entry["lineage"] == [f"{MODEL} {parent.version}"]
    assert entry["finetune"]["cases"] == 1 and entry["finetune"]["generations"] == 1
    assert entry["finetune"]["dice_after"] == pytest.approx(tuned["res"].dice_after, abs=1e-4)
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert f"from {MODEL} {parent.version}" in out
    assert f"their Dice {tuned['res'].dice_before:.3f} -> {tuned['res'].dice_after:.3f}" in out
    routed = load_package(tuned["res"].package_dir).card.training["finetune"]["routed"]
    assert entry["finetune"]["routed"] == routed and f"fine-tuned organs: {', '.join(routed)}" in out


def test_progress_goes_through_the_stages_in_order(tuned):
    stages = []
    for stage, *_ in tuned["events"]:
        if not stages or stages[-1] != stage:
            stages.append(stage)
    assert stages == ["load", "prepare", "evaluate", "finetune", "evaluate", "save"]
    train = [e for e in tuned["events"] if e[0] == "finetune" and e[1] > 0]
    assert len(train) == STEPS and train[-1][1] == 1.0
    assert all("loss" in m and eta is not None and eta >= 0 for _, _, m, eta in train)


def test_the_name_must_be_new(tuned, monkeypatch):
    monkeypatch.setenv("MEDSEG_HOME", str(tuned["home"]))
    for name in ("phantom-fixed", MODEL):  # a user model, a bundled model
        with pytest.raises(InputError, match="already exists"):
            finetune(MODEL, [(tuned["img"], tuned["seg"])], steps=1, name=name, device="cpu")


def test_segments_match_by_name_and_unknown_names_are_refused(tmp_path):
    ph = make_phantom(seed=3, shape=(24, 32, 32))
    card = find_model(MODEL).card
    assert name_key("Spinal_Cord ") == name_key("spinal-cord") == "spinalcord"
    # an empty segment is kept (annotated: the user affirms absence); a missing one is not annotated
    lab = sitk.GetArrayFromImage(ph.label)
    lab[lab == 4] = 0
    img = sitk.GetImageFromArray(lab)
    img.CopyInformation(ph.label)
    seg = tmp_path / "a.seg.nrrd"
    write_segmentation(img, [Label(1, "LIVER"), Label(3, "tumour"), Label(4, "Left Gland")], seg)
    out, annotated = read_correction(seg, ph.image, card)
    assert annotated == [1, 3, 4]
    arr = sitk.GetArrayFromImage(out)
    assert set(np.unique(arr)) <= {0, 1, 3} and (arr == 3).sum() == (lab == 3).sum()
    # a segment the model does not know: one line naming the file and listing the model's labels
    bad = tmp_path / "b.seg.nrrd"
    write_segmentation(ph.label, [Label(1, "Liver"), Label(2, "Kidney")], bad)
    with pytest.raises(InputError) as err:
        read_correction(bad, ph.image, card)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(str(bad)) and "Kidney" in msg
    assert all(lab.name in msg for lab in PHANTOM_LABELS)


def test_unknown_segment_fails_before_anything_is_written(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("MEDSEG_HOME", str(home))
    ph = make_phantom(seed=3, shape=(24, 32, 32))
    sitk.WriteImage(ph.image, str(tmp_path / "i.nii.gz"))
    write_segmentation(ph.label, [Label(1, "Liver"), Label(9, "Kidney")], tmp_path / "b.seg.nrrd")
    with pytest.raises(InputError, match="Kidney.*Liver, SpinalCord, Tumour, LeftGland, RightGland"):
        finetune(MODEL, [(tmp_path / "i.nii.gz", tmp_path / "b.seg.nrrd")], steps=1, device="cpu")
    assert not (home / "models").exists() or not any((home / "models").iterdir())


def test_plain_labelmaps_map_values_and_refuse_unknown_ones(tmp_path):
    ph = make_phantom(seed=3, shape=(24, 32, 32))
    card = find_model(MODEL).card
    lab = sitk.GetArrayFromImage(ph.label)
    lab[lab == 5] = 0  # RightGland not contoured
    img = sitk.GetImageFromArray(lab)
    img.CopyInformation(ph.label)
    sitk.WriteImage(img, str(tmp_path / "l.nii.gz"))
    out, annotated = read_correction(tmp_path / "l.nii.gz", ph.image, card)
    assert annotated == [1, 2, 3, 4]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out), lab)
    lab[0, 0, 0] = 7
    bad = sitk.GetImageFromArray(lab)
    bad.CopyInformation(ph.label)
    sitk.WriteImage(bad, str(tmp_path / "bad.nii.gz"))
    with pytest.raises(InputError, match=r"bad\.nii\.gz: label value\(s\) \[7\]"):
        read_correction(tmp_path / "bad.nii.gz", ph.image, card)


def test_a_cropped_correction_is_resampled_onto_the_image_grid(tmp_path):
    ph = make_phantom(seed=3, shape=(24, 32, 32))
    card = find_model(MODEL).card
    lab = sitk.GetArrayFromImage(ph.label)
    crop = sitk.RegionOfInterest(ph.label, [20, 18, 14], [6, 7, 5])  # (x, y, z) size, index
    write_segmentation(crop, [Label(v.value, v.name) for v in PHANTOM_LABELS], tmp_path / "c.seg.nrrd")
    out, annotated = read_correction(tmp_path / "c.seg.nrrd", ph.image, card)
    arr = sitk.GetArrayFromImage(out)
    assert out.GetSize() == ph.image.GetSize() and annotated == [1, 2, 3, 4, 5]
    np.testing.assert_allclose(out.GetOrigin(), ph.image.GetOrigin())
    inside = (slice(5, 19), slice(7, 25), slice(6, 26))
    np.testing.assert_array_equal(arr[inside], lab[inside])
    outside = np.ones(arr.shape, bool)
    outside[inside] = False
    assert not arr[outside].any()


def test_sigterm_leaves_no_package_and_no_temporary_folder(tmp_path):
    ph = make_phantom(seed=5)
    sitk.WriteImage(ph.image, str(tmp_path / "i.nii.gz"))
    sitk.WriteImage(_edited(ph), str(tmp_path / "l.nii.gz"))
    home = tmp_path / "home"
    # one thread: a training step (the longest stretch in which Python cannot handle the signal)
    # stays short even when other processes share the cores
    env = dict(os.environ, MEDSEG_HOME=str(home), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "medseg_core", "finetune", "--model", MODEL,
                             "--image", str(tmp_path / "i.nii.gz"), "--label", str(tmp_path / "l.nii.gz"),
                             "--steps", "100000", "--device", "cpu", "--progress", "json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        for line in proc.stdout:  # wait until it trains: model loaded, case read, parent evaluated
            if json.loads(line).get("stage") == "finetune" or time.monotonic() > deadline:
                break
        time.sleep(0.5)
        assert proc.poll() is None, proc.stderr.read()
        t = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=10)
        waited = time.monotonic() - t
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read()
    assert code == 130, err
    assert waited < 2.0
    assert "interrupted" in err
    models = home / "models"
    assert not models.exists() or list(models.iterdir()) == []


def test_a_correction_that_disagrees_almost_everywhere_is_refused_unless_forced(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("MEDSEG_HOME", str(home))
    ph = make_phantom(seed=3)  # full size: the phantom model's own (it misses organs on smaller ones)
    sitk.WriteImage(ph.image, str(tmp_path / "i.nii.gz"))
    lab = sitk.GetArrayFromImage(ph.label)
    shifted = sitk.GetImageFromArray(np.roll(lab, (16, 20), axis=(1, 2)))  # the labels of a shifted image
    shifted.CopyInformation(ph.label)
    sitk.WriteImage(shifted, str(tmp_path / "shifted.nii.gz"))
    with pytest.raises(InputError, match=r"shifted\.nii\.gz: the correction disagrees with phantom-unet almost "
                                         r"everywhere \(mean Dice 0\.\d\d over [2-5] organs.*--force"):
        finetune(MODEL, [(tmp_path / "i.nii.gz", tmp_path / "shifted.nii.gz")], steps=1, device="cpu")
    assert not (home / "models").exists() or not any((home / "models").iterdir())
    # forced, it trains; a correction that agrees, or one organ alone (perhaps a miss), is never refused
    res = finetune(MODEL, [(tmp_path / "i.nii.gz", tmp_path / "shifted.nii.gz")], steps=1, device="cpu", force=True)
    assert res.dice_before < 0.25 and res.package_dir.is_dir()
    from medseg_core.training.finetune_targets import refuse_disagreeing

    card = find_model(MODEL).card
    refuse_disagreeing([("i", "ok")], [{1: 0.9, 2: 0.2, 3: 0.1}], card)
    refuse_disagreeing([("i", "one")], [{3: 0.0}], card)
    with pytest.raises(InputError, match="^two: .*mean Dice 0.10 over 2 organs"):
        refuse_disagreeing([("i", "one"), ("i", "two")], [{3: 0.0}, {1: 0.1, 2: 0.1}], card)
