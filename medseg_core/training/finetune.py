"""``medseg finetune``: adapt a model to a few corrected segmentations, as a NEW model package.

The parent package is only read. Each case is an image and its corrected label (a labelmap or a 3D Slicer
``.seg.nrrd``, read by :func:`~medseg_core.io.corrections.read_correction`: a model label the correction does
not hold is *not annotated* there, and the marginal loss neither rewards nor punishes predicting it).

Cases are preprocessed exactly like the card says (the :class:`Predictor`'s preprocessor). The parent segments
each case first, and its result, brought onto the image's grid as ``medseg segment`` writes it, is compared
with the correction organ by organ: an organ the user left as it was is *accepted*, and training fits the
parent's own model-grid labels for it (the correction's copy of it went through a resampling and back: a
staircase that, learnt, cost the other organs 0.025 Dice on new cases); only the edited organs come from the
correction, and of those only the voxels the user changed. The parent's Dice on the corrected cases is
measured on the model grid, over the annotated labels present in each correction. Then the network is trained
on patches of these cases (half of the patch centres on voxels the user changed, the rest on the organs the
new model answers for, :class:`~medseg_core.data.sampling.PatchSampler`) by the
``finetune`` recipe: Dice + CE aware of ``annotated``, deep supervision, the encoder frozen by default, and
on every voxel the correction accepts, what the network drew on that same patch before training (a frozen
copy runs beside it: ``patch_teacher``) as the label and as probabilities to distil (``distill``; the whole
volume's pass only says which voxels the user changed, and mirroring is off); through the training loop's one step
(:class:`~medseg_core.training.loop.TrainingLoop`), AdamW, warm-up then polynomial decay. The steps follow the
correction's size (:func:`steps_for`). The trained network is a copy of the parent, and the new package holds
both (:class:`~medseg_core.nets.routed.RoutedNetwork`): the organs edited in these corrections (or routed by
an earlier generation) take the copy's probabilities, the others keep the parent's, so the organs the user
accepted do not drift on new patients (``route``; ``blend`` still interpolates the copy's weights toward the
parent, WiSE-FT's way, off by default). Dice is measured again on the package as stored (its parent half's
windows are the parent's, from the first pass, unless that pass ran the package's int8 network) before it is
renamed into place: an error or an interruption leaves nothing behind.

The recipe was chosen on ``hn-oar-unet``, 2 CPU threads (``benchmarks/finetune.py``, then the clinic styles of
``benchmarks/adaptation.py``; figures in ``docs/results.md``): 12 steps for one case, 15 a case for several (at
most 75), on the CPU one
patch a step of the card's in-plane window and 32 slices (:func:`~.finetune_targets.training_patch`), peak
learning rate 7e-4, frozen encoder, bf16 autocast where native
and on CUDA, a 3D U-Net channels-last on the CPU. The accepted-organ targets took the other organs' loss on
new cases from 0.026 to 0.002, distillation closed more of a style's gap, and ``blend`` 0.5 halved what other
new cases still lost (0.018 -> 0.009) but also what the style taught, which routing keeps; L2-SP (``anchor``),
a lower learning rate, the full window and training only the finest decoder levels did not help."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from ..data.augment import Augmenter
from ..data.preprocess import Grid
from ..data.sampling import PatchSampler
from ..errors import InputError, ModelError
from ..inference.device import use_bf16
from ..inference.predictor import Predictor
from ..io.corrections import read_correction
from ..io.image import read_channels
from ..metrics.overlap import dice_per_value
from ..models.card import ModelCard, NetworkSpec
from ..models.package import ModelPackage, find_model, save_package, storage_of, user_models_dir
from ..nets.routed import RoutedNetwork
from ..nets.slicewise import volume_patch
from .finetune_card import check_name, default_name, new_card, rounded, sha256_path, summarise
from .finetune_targets import errors, refuse_disagreeing, steps_for, training_patch, what_was_edited
from .loop import TrainingLoop, to_training_layout
from .prefetch import import_in_background
from .recipes import build_recipe
from .schedule import lr_factor

DEFAULT_LR = 7e-4
DEFAULT_DISTILL = 1.0
"""Weight of the parent's probabilities distilled where the correction agrees with it."""
DEFAULT_ANCHOR = 0.0
"""Weight of the L2-SP pull toward the parent's weights."""
DEFAULT_BLEND = 1.0
"""Share of the weights' change kept after training (WiSE-FT's interpolation toward the parent);
with routing (the default) the organs the user accepted keep the parent's answer anyway."""
ERROR_FRACTION = 0.5
"""Share of patches centred on a voxel where the parent's prediction disagrees with the correction; of
the rest, two in three are centred on an organ the fine-tuned copy answers for (routing; else any organ)."""


@dataclass
class FinetuneResult:
    """What a fine-tuning run produced.

    Attributes:
        package_dir: the new package's folder.
        dice_before, dice_after: mean Dice over labels (each label: mean over the corrected cases
            that contain it) of the parent's and of the new model's prediction, model grid; NaN
            when no correction holds any voxel of an annotated label.
        steps: optimiser steps taken.
        seconds: wall time of the whole call (loading to saving).
        per_label: ``{name: {"before": dice, "after": dice, "cases": n, "edited": bool}}`` (edited:
            the user changed it in at least one correction; the others were accepted).
    """

    package_dir: Path
    dice_before: float
    dice_after: float
    steps: int
    seconds: float
    per_label: dict = field(default_factory=dict)


@dataclass
class _Case:
    """One corrected case on the model grid."""

    image: np.ndarray   # (C, z, y, x), normalised
    label: np.ndarray   # (z, y, x) model values
    annotated: list[int]
    record: dict        # what the card records of it
    drawn: np.ndarray   # the correction on the image's own grid (z, y, x), model values
    grid: Grid          # the model grid
    reference: object   # the image (SimpleITK), whose grid the user corrected on
    target: np.ndarray | None = None  # what training fits: edited organs as corrected, the rest as the parent drew
    edited: list[int] = field(default_factory=list)
    routed: list[int] = field(default_factory=list)  # edited organs the fine-tuned copy answers for


def finetune(model: str, cases: list[tuple[str | Path, str | Path]], steps: int | None = None,
             lr: float | None = None, name: str | None = None, device: str = "auto",
             progress: Callable[..., None] | None = None, train_all: bool = False, seed: int = 0,
             patch_size: Sequence[int] | None = None, force: bool = False, distill: float | None = None,
             anchor: float | None = None, blend: float | None = None, route: bool = True,
             patch_teacher: bool = True) -> FinetuneResult:
    """Fine-tune ``model`` on corrected cases and save the result as a new user model.

    Args:
        model: parent model name or package folder (never modified).
        cases: ``(image, corrected label)`` pairs; an image may be a DICOM series folder, or for a
            multi-channel model the ``CASE_0000`` file of its channels.
        steps: optimiser steps (default: from the correction's size, :func:`steps_for`).
        lr: peak learning rate (default ``DEFAULT_LR``).
        name: the new model's name (default ``PARENT-ft-YYYYmmdd-HHMMSS``); it must not exist.
        device: "auto", "cpu", "cuda" or "mps".
        progress: ``(stage, fraction, message="", eta_s=None)``; stages "load", "prepare",
            "evaluate", "finetune", "evaluate", "save".
        train_all: also train the encoder (default: frozen when the network has one).
        seed: seeds the patch sampling, the augmentation and torch.
        patch_size: training patch (array order); default: the card's, capped at
            ``CPU_SLAB_3D`` slices (``CPU_PATCH_2D``) on the CPU (:func:`~.finetune_targets.training_patch`).
        force: fine-tune on a correction that disagrees with the parent almost everywhere
            (see :data:`~.finetune_targets.DISAGREE_DICE`), which is refused otherwise.
        distill: weight of the parent's probabilities distilled on the voxels the correction
            accepts (default ``DEFAULT_DISTILL``; 0: off).
        anchor: weight of the L2-SP pull toward the parent's weights (default ``DEFAULT_ANCHOR``).
        blend: the share of the weights' change kept after training (default ``DEFAULT_BLEND``;
            1: all of it; 0.5: halfway between parent and fine-tuned, as WiSE-FT interpolates,
            Wortsman et al., CVPR 2022).
        route: the new model answers for the organs the user edited (in these corrections or
            an earlier generation's) with the fine-tuned weights and leaves every other organ to
            the parent (:class:`~medseg_core.nets.routed.RoutedNetwork`: the package holds both);
            False: one network, fine-tuned as a whole.
        patch_teacher: the accepted voxels are taught what the network drew on the same patch
            before training (the ``finetune`` recipe's ``patch_teacher``), not the whole-volume
            pass's labels and probabilities; needs ``distill`` above zero.

    Returns:
        A :class:`FinetuneResult`.

    Raises:
        InputError: bad cases, labels, name or arguments. ModelError: the parent cannot be used.
        KeyboardInterrupt: passed on; nothing has been written.
    """
    t_start = time.perf_counter()
    report = progress or (lambda stage, fraction, message="", eta_s=None: None)
    seconds: dict[str, float] = {}
    steps = None if steps is None else int(steps)
    lr = DEFAULT_LR if lr is None else float(lr)
    distill = DEFAULT_DISTILL if distill is None else float(distill)
    anchor = DEFAULT_ANCHOR if anchor is None else float(anchor)
    for flag, v in (("--distill", distill), ("--anchor", anchor)):
        if not (v >= 0 and math.isfinite(v)):
            raise InputError(f"{flag} {v}: give a weight of zero or more")
    blend = DEFAULT_BLEND if blend is None else float(blend)
    if not 0 < blend <= 1:
        raise InputError(f"--blend {blend}: give a share in (0, 1]")
    if steps is not None and steps < 1:
        raise InputError(f"--steps {steps}: give at least one step")
    if not (lr > 0 and math.isfinite(lr)):
        raise InputError(f"--lr {lr}: the learning rate must be a positive number")
    if not cases:
        raise InputError("finetune: give at least one (image, label) case")
    cases = [(Path(i), Path(l)) for i, l in cases]
    for p in (p for pair in cases for p in pair):
        if not p.exists():
            raise InputError(f"{p}: does not exist")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")

    threads_before = torch.get_num_threads()
    torch.set_num_threads(max(1, min(threads_before, _cpu_threads())))
    try:
        report("load", 0.0, f"loading {model}")
        pkg = find_model(model)
        parent = pkg.card
        name = check_name(name) if name else default_name(parent.name, stamp)
        dest = user_models_dir() / name
        # the parent as `medseg segment` runs it (its int8 network where the CPU computes in float32):
        # a correction is that result with some organs redrawn, and the others must compare equal (the
        # float32 network differs from the int8 one on 1-5 % of every organ's voxels, so every organ
        # looked edited: all were routed and their differences taught)
        pred = Predictor(pkg, device=device)
        patch, batch = training_patch(parent, patch_size, pred.device)
        seconds["load"] = time.perf_counter() - t_start
        report("load", 1.0, f"{parent.name} {parent.version} on {pred.device}")

        t = time.perf_counter()
        prepared = _prepare(pred, cases, report)
        seconds["prepare"] = time.perf_counter() - t

        t = time.perf_counter()
        optimiser_import = import_in_background("torch._dynamo")  # AdamW's first build imports it (1.6 s)
        report("evaluate", 0.0, "Dice of the parent model on the corrected case(s)")
        memo: dict = {}  # the parent's windows, which the new model's parent half runs again
        pred.remember_windows(memo)
        before_cases, parent_preds, parent_probs = _evaluate(pred, prepared, report, keep_probs=distill > 0)
        seconds["evaluate_before"] = time.perf_counter() - t
        if not force:
            refuse_disagreeing(cases, before_cases, parent)
        changed = sum(int((c.target != p).sum()) for c, p in zip(prepared, parent_preds))
        steps = steps_for(changed, len(prepared)) if steps is None else steps

        t = time.perf_counter()
        net = _routed(pred.net, parent) if route else pred.net
        knobs = {"distill": distill, "anchor": anchor, "train_all": train_all, "batch": batch,
                 "patch_teacher": patch_teacher,  # and the routed organs:
                 "fg_classes": sorted(set(net.routed) | {v for c in prepared for v in c.routed}) if route else None}
        trainee = net.tuned if isinstance(net, RoutedNetwork) else net
        optimiser_import.join()  # imported beside the parent's pass
        start = ({k: v.detach().clone() for k, v in trainee.state_dict().items() if v.is_floating_point()}
                 if blend < 1 else {})
        recipe, amp = _train(pred, trainee, prepared, parent_preds, parent_probs, patch, steps, lr, knobs, seed,
                             report, pkg.path)
        if blend < 1:
            with torch.no_grad():
                for k, v in trainee.state_dict().items():
                    if k in start:
                        v.copy_(start[k] + float(blend) * (v - start[k]))
        if route:
            net.set_routed(set(net.routed) | {v for c in prepared for v in c.routed})
        storage = storage_of(parent.weights.dtype)  # the Dice after is measured on what is stored
        seconds["finetune"] = time.perf_counter() - t

        names = parent.label_names()
        dice_before, per_before = summarise(before_cases, names)
        edited = {names[v] for c in prepared for v in c.edited}
        record = {
            "cases": [c.record for c in prepared], "steps": steps, "voxels_changed": changed, "lr": lr,
            "batch_size": batch, "patch_size": list(patch), "encoder_frozen": bool(recipe.frozen), "seed": seed,
            "distill": distill, "anchor": anchor, "blend": float(blend), "patch_teacher": bool(patch_teacher),
            "routed": [names[v] for v in net.routed] if route else None,
            "seconds": None, "seconds_by_stage": None, "device": str(pred.device),
            "threads": torch.get_num_threads() if pred.device.type == "cpu" else None,
            "precision": "bf16-mixed" if amp else "float32",
            "dice_before": rounded(dice_before), "dice_after": None, "per_label": None,
            "dice_measured_on": "the corrected cases, model grid, annotated labels present in the correction"}
        card = new_card(pkg, name, stamp, record)
        if route:
            card.network = NetworkSpec.from_dict(net.spec())
        state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
        after = {}

        def measure(staged: ModelPackage) -> None:
            """The Dice after, of the stored weights run as ``medseg segment`` runs them (on
            OpenVINO where it runs the parent: exported here once, into the cache later runs read)."""
            t = time.perf_counter()
            report("evaluate", 0.0, "Dice of the fine-tuned model on the corrected case(s)")
            child = Predictor(staged, device=pred.device.type)
            child.share_windows(pred)  # its parent half is pred's network: those windows ran already
            after_cases, _, _ = _evaluate(child, prepared, report)
            seconds["evaluate_after"] = time.perf_counter() - t
            after["dice"], per_after = summarise(after_cases, names)
            after["per_label"] = {
                n: {"before": rounded(per_before[n][0]), "after": rounded(per_after.get(n, (float("nan"),))[0]),
                    "cases": per_before[n][1], "edited": n in edited} for n in per_before}
            record.update(dice_after=rounded(after["dice"]), per_label=after["per_label"],
                          seconds=round(time.perf_counter() - t_start, 1),
                          seconds_by_stage={k: round(v, 2) for k, v in seconds.items()})
            report("save", 0.0, f"writing {dest}")

        try:
            save_package(card, state, dest, half=storage == "half", int8=storage == "int8", before_rename=measure)
        except ModelError as exc:  # the name was taken while we trained
            raise InputError(str(exc)) from None
        report("save", 1.0, str(dest))
        dice_after, per_label = after["dice"], after["per_label"]
        return FinetuneResult(dest, dice_before, dice_after, steps, time.perf_counter() - t_start, per_label)
    finally:
        torch.set_num_threads(threads_before)


def _prepare(pred: Predictor, cases, report) -> list[_Case]:
    """Read each case, map its correction onto the model's labels, preprocess both as the card says."""
    card, names = pred.card, pred.card.label_names()
    out = []
    for k, (img_path, lab_path) in enumerate(cases):
        report("prepare", k / len(cases), f"reading {img_path.name}")
        images = read_channels(img_path, len(card.channels))
        label, annotated = read_correction(lab_path, images[0], card, image=img_path)
        pre = pred.preprocessor(images, label)
        out.append(_Case(pre.image, pre.label, annotated, {
            "image": str(img_path.resolve()), "label": str(lab_path.resolve()),
            "image_sha256": sha256_path(img_path), "label_sha256": sha256_path(lab_path),
            "labels_trained": [names[v] for v in annotated]}, sitk.GetArrayFromImage(label), pre.grid, images[0]))
    report("prepare", 1.0, f"{len(cases)} case(s) ready")
    return out


def _evaluate(pred: Predictor, cases: list[_Case], report, keep_probs: bool = False):
    """Per case: Dice per annotated label on the model grid, the predicted labels, and with
    ``keep_probs`` the probabilities (float16, else None)."""
    pred.net.eval()
    per_case, preds, kept = [], [], []
    for k, case in enumerate(cases):
        pred.progress = lambda stage, f, *rest, k=k, **kw: report(
            "evaluate", (k + float(f)) / len(cases), f"case {k + 1}/{len(cases)}")
        probs = pred.predict_array(case.image)[0]
        labels = np.asarray(probs).argmax(0).astype(case.label.dtype)
        preds.append(labels)
        if case.target is None:  # the parent's pass: which organs did the user change?
            case.edited, case.routed, case.target = what_was_edited(pred.card, case, probs, labels)
            case.record["labels_edited"] = [pred.card.label_names()[v] for v in case.edited]
        kept.append(torch.from_numpy(np.asarray(probs, np.float32)).half().numpy() if keep_probs else None)  # 4x np
        per_case.append(dice_per_value(labels, case.label, case.annotated))
    pred.progress = lambda *a, **k: None
    report("evaluate", 1.0, "")
    return per_case, preds, kept


def _routed(net: torch.nn.Module, parent: ModelCard) -> RoutedNetwork:
    """The network to train and save: a routed parent as it is (its fine-tuned copy trains on),
    any other wrapped with a copy of itself to train."""
    if isinstance(net, RoutedNetwork):
        return net
    return RoutedNetwork.around(net, parent.network.to_dict())


def _train(pred: Predictor, net: torch.nn.Module, cases: list[_Case], parent_preds, parent_probs, patch, steps: int,
           lr: float, knobs: dict, seed: int, report, source: Path):
    """``steps`` steps of the ``finetune`` recipe on ``cases`` training ``net`` (the predictor's
    network or the copy a routed network trains); returns (the recipe, bf16 or not).
    ``knobs``: ``distill``, ``anchor``, ``train_all``, ``batch``, ``fg_classes``; distilling needs the parent's
    probabilities (``parent_probs``) and an augmentation that leaves voxels in place (no mirroring)."""
    dev, card = pred.device, pred.card
    report("finetune", 0.0, f"{steps} steps", None)
    torch.manual_seed(seed)
    images = [torch.from_numpy(np.ascontiguousarray(c.image)).to(dev) for c in cases]
    labels = [torch.from_numpy(np.ascontiguousarray(c.target)).to(dev) for c in cases]
    focus = [errors(c, p, card.num_classes) for c, p in zip(cases, parent_preds)]
    soft = ([torch.from_numpy(p).to(dev) for p in parent_probs] if knobs["distill"] > 0 else None)
    sampler = PatchSampler(images, labels, card.num_classes, volume_patch(patch, card.spatial_dims), fg_fraction=0.67,
                           annotated=[c.annotated for c in cases], seed=seed, focus=focus,
                           focus_fraction=ERROR_FRACTION, soft=soft, fg_classes=knobs.get("fg_classes"))
    axes, swap = pred.mirror if soft is None else ([], [])
    augment = Augmenter(axes, swap, seed=seed + 1)
    recipe = build_recipe("finetune", freeze_encoder=not knobs["train_all"], distill=knobs["distill"],
                          anchor=knobs["anchor"], patch_teacher=knobs.get("patch_teacher", True))
    layout = to_training_layout(net, dev, card.spatial_dims)
    recipe.attach(net, None)
    opt = torch.optim.AdamW(recipe.parameters(net), lr=lr, weight_decay=_weight_decay(card))
    warmup = max(1, min(10, steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, s / steps, warmup))
    amp = use_bf16(dev)
    loop = TrainingLoop(recipe, net, sampler, augment, opt, sched, knobs["batch"], card.spatial_dims, dev, amp, layout)
    recipe.train_mode(net)
    running, t_loop = None, time.perf_counter()
    try:
        for step in range(1, steps + 1):
            lv = loop.step(step - 1, (step - 1) / steps)
            loop.advance(step)
            if not math.isfinite(lv):
                raise ModelError(f"{source}: the loss became {lv} at step {step}; try a lower --lr")
            running = lv if running is None else 0.9 * running + 0.1 * lv
            elapsed = time.perf_counter() - t_loop
            report("finetune", step / steps, f"step {step}/{steps} loss {running:.4f}",
                   elapsed / step * (steps - step))
    finally:
        recipe.detach(net)
        net.to(memory_format=torch.contiguous_format)  # saved and exported in the plain layout
    return recipe, amp


def _weight_decay(card: ModelCard) -> float:
    cfg = card.training.get("config", {}) if isinstance(card.training, dict) else {}
    return float(cfg.get("weight_decay", 1e-4))


def _cpu_threads() -> int:
    affinity = getattr(os, "sched_getaffinity", None)  # absent on macOS and Windows
    return max(1, len(affinity(0)) if affinity else (os.cpu_count() or 1))
