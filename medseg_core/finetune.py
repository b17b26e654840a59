"""``medseg finetune``: adapt a model to a few corrected segmentations, as a NEW model package.

The parent package is only read. Each case is an image and its corrected label (a labelmap or a
3D Slicer ``.seg.nrrd``):

* ``.seg.nrrd`` segments are matched to the model's labels by name (case-insensitive, spaces and
  underscores ignored). A model label without a segment is *not annotated* in that case: the
  marginal loss neither rewards nor punishes predicting it there. A segment that is present but
  empty is annotated (the user affirms the structure is absent).
* a plain labelmap's values are the model's values; the labels it holds are the annotated ones.
* a label on another grid than the image (Slicer saves cropped segmentations) is resampled onto
  the image grid, nearest neighbour.

Cases are preprocessed exactly like the card says (the :class:`Predictor`'s preprocessor). The
parent's Dice on the corrected cases is measured first, on the model grid, over the annotated
labels present in each correction; then the network is trained on patches of these cases
(half of the patch centres on voxels where the parent disagrees with the correction, the rest
from :class:`PatchSampler`, class-balanced), with Dice + CE aware of ``annotated``, deep
supervision when the network returns it, AdamW, warm-up then polynomial decay. By default the
encoder is frozen (networks with an ``encoder`` attribute): fewer weights move and a step costs
less. Dice is measured again with the new weights (rounded to the dtype they will be stored in),
and the package is written once, atomically, at the very end: an error or an interruption leaves
nothing behind.

The default recipe was chosen on ``hn-oar-unet`` with one HNOAR validation case as the
correction, 2 CPU threads (``benchmarks/finetune.py``): 30 steps of batch 2, patches of the
card's size capped at 48 x 64 x 64 on the CPU, peak learning rate 7e-4 (3 warm-up steps), frozen
encoder, bfloat16 autocast where the CPU computes it natively (and on CUDA). Over four corrected
cases it gained 0.015-0.06 Dice on the case and cost 0.01-0.015 on eight held-out cases, except
where the correction's style is atypical (a 39-voxel larynx cost that organ 0.39 on held-out
cases): one case teaches its own style, which is the point, so fine-tune on typical corrections.
Smaller patches (32 x 64 x 64, 16 x 32 x 32) fit the case worse and forget more: instance
normalisation over a small patch sees statistics the parent never saw.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .errors import InputError, ModelError
from .inference.device import use_bf16
from .labels import name_key
from .metrics.overlap import dice_per_value

CPU_PATCH_3D = (48, 64, 64)
"""Largest default training patch (z, y, x) on the CPU: about a quarter of a typical card patch."""
CPU_PATCH_2D = (160, 160)
DEFAULT_STEPS = 30
DEFAULT_LR = 7e-4
BATCH_SIZE = 2
ERROR_FRACTION = 0.5
"""Share of patches centred on a voxel where the parent's prediction disagrees with the correction."""


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
        per_label: ``{name: {"before": dice, "after": dice, "cases": n}}``.
    """

    package_dir: Path
    dice_before: float
    dice_after: float
    steps: int
    seconds: float
    per_label: dict = field(default_factory=dict)


def _names_list(card) -> str:
    return ", ".join(lab.name for lab in card.labels)


def _sha256_path(path: Path) -> str:
    """SHA-256 of a file; of a folder (a DICOM series), over its files' names and contents."""
    from .models.package import sha256_file

    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode() + b"\0" + sha256_file(f).encode())
    return h.hexdigest()


def _same_grid(a, b) -> bool:
    if a.GetSize() != b.GetSize():
        return False
    tol = 1e-3 * min(a.GetSpacing())
    return (np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=1e-4, atol=1e-6)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tol)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-4))


def read_correction(path: str | Path, reference, card):
    """A corrected label as a labelmap of the model's values on ``reference``'s grid.

    Returns:
        ``(label image (uint8/uint16, the reference's geometry), annotated model values)``.

    Raises:
        InputError: unknown segment name or value, a label that does not overlap the image, or one
            that holds none of the model's labels.
    """
    import SimpleITK as sitk

    from .io.segmentation import read_segmentation

    path = Path(path)
    img, segments = read_segmentation(path)
    arr = sitk.GetArrayFromImage(img)
    model_values = {lab.value for lab in card.labels}
    dtype = np.uint8 if max(model_values | {0}) < 256 else np.uint16
    if segments:
        by_name = {name_key(lab.name): lab.value for lab in card.labels}
        lut = np.zeros(int(max(int(arr.max()), max(s.value for s in segments))) + 1, dtype=dtype)
        annotated = set()
        for seg in segments:
            value = by_name.get(name_key(seg.name))
            if value is None:
                raise InputError(f"{path}: segment {seg.name!r} is not a label of model {card.name} "
                                 f"(its labels: {_names_list(card)}); rename or remove the segment")
            lut[seg.value] = value
            annotated.add(value)
        out = lut[arr]
    else:
        values = set(int(v) for v in np.unique(arr)) - {0}
        unknown = sorted(values - model_values)
        if unknown:
            known = ", ".join(f"{lab.value} {lab.name}" for lab in card.labels)
            hint = "; is it an image rather than a labelmap?" if len(values) > 255 else ""
            raise InputError(f"{path}: label value(s) {unknown[:5]} are not labels of model {card.name} "
                             f"(its values: {known}){hint}")
        out = arr.astype(dtype)
        annotated = values
    if not annotated:
        raise InputError(f"{path}: holds none of model {card.name}'s labels ({_names_list(card)})")
    lab = sitk.GetImageFromArray(out)
    lab.CopyInformation(img)
    if _same_grid(lab, reference):
        lab.CopyInformation(reference)
    else:  # e.g. Slicer saved the segmentation cropped to its extent
        had = bool(out.any())
        lab = sitk.Resample(lab, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, lab.GetPixelID())
        if had and not sitk.GetArrayViewFromImage(lab).any():
            raise InputError(f"{path}: the segmentation does not overlap the image it corrects")
    return lab, sorted(annotated)


class _FocusedSampler:
    """Patches for fine-tuning: a share centred on the parent's errors, the rest from ``base``.

    Error centres are jittered by up to a quarter patch, so the edited boundary is seen at
    different positions in the window.
    """

    def __init__(self, base, errors: list[torch.Tensor], fraction: float):
        from .data.sampling import MAX_LOCATIONS

        self.base, self.fraction = base, fraction
        self.errors = []
        for idx in errors:
            if len(idx) > MAX_LOCATIONS:
                idx = idx[torch.randperm(len(idx), generator=base.gen)[:MAX_LOCATIONS]]
            self.errors.append(idx)
        self.cases = [i for i, e in enumerate(self.errors) if len(e)]

    def _centre(self) -> tuple[int, list[int]]:
        b = self.base
        if self.cases and float(torch.rand(1, generator=b.gen)) < self.fraction:
            case = self.cases[b._randint(len(self.cases))]
            centre = self.errors[case][b._randint(len(self.errors[case]))].tolist()
            jitter = [int(torch.randint(-(p // 4), p // 4 + 1, (1,), generator=b.gen)) for p in b.patch]
            shape = b.labels[case].shape
            return case, [min(max(c + j, 0), s - 1) for c, j, s in zip(centre, jitter, shape)]
        return b._centre()

    def sample(self, batch_size: int):
        xs, ys, cases = [], [], []
        for _ in range(batch_size):
            case, centre = self._centre()
            x, y = self.base.crop(case, centre)
            xs.append(x)
            ys.append(y)
            cases.append(case)
        return torch.stack(xs), torch.stack(ys).long(), self.base.annotated[cases].to(xs[0].device)


def _summarise(per_case: list[dict[int, float]], names: dict[int, str]) -> tuple[float, dict[str, tuple[float, int]]]:
    per_label = {}
    for v, name in names.items():
        vals = [d[v] for d in per_case if v in d]
        if vals:
            per_label[name] = (float(np.mean(vals)), len(vals))
    mean = float(np.mean([d for d, _ in per_label.values()])) if per_label else float("nan")
    return mean, per_label


def _round(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 4)


def _cpu_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def _check_name(name: str) -> str:
    from .models.package import find_model, user_models_dir

    if not name or name.startswith(".") or any(c in name for c in "/\\:") or name != name.strip():
        raise InputError(f"--name {name!r}: a model name must be a plain folder name (no slashes, "
                         f"not starting with a dot)")
    if (user_models_dir() / name).exists():
        raise InputError(f"{user_models_dir() / name}: a model named {name!r} already exists; choose another --name")
    try:
        find_model(name)
    except ModelError:
        return name
    raise InputError(f"--name {name}: a model of that name already exists (a bundled one); choose another --name")


def _default_name(parent: str, stamp: str) -> str:
    from .models.package import user_models_dir

    base = f"{parent}-ft-{stamp}"
    name, n = base, 1
    while (user_models_dir() / name).exists():  # two runs in the same second
        n += 1
        name = f"{base}-{n}"
    return name


def finetune(model: str, cases: list[tuple[str | Path, str | Path]], steps: int | None = None,
             lr: float | None = None, name: str | None = None, device: str = "auto",
             progress: Callable[..., None] | None = None, train_all: bool = False, seed: int = 0,
             patch_size: Sequence[int] | None = None) -> FinetuneResult:
    """Fine-tune ``model`` on corrected cases and save the result as a new user model.

    Args:
        model: parent model name or package folder (never modified).
        cases: ``(image, corrected label)`` pairs; an image may be a DICOM series folder, or for a
            multi-channel model the ``CASE_0000`` file of its channels.
        steps: optimiser steps (default ``DEFAULT_STEPS``).
        lr: peak learning rate (default ``DEFAULT_LR``).
        name: the new model's name (default ``PARENT-ft-YYYYmmdd-HHMMSS``); it must not exist.
        device: "auto", "cpu", "cuda" or "mps".
        progress: ``(stage, fraction, message="", eta_s=None)``; stages "load", "prepare",
            "evaluate", "finetune", "evaluate", "save".
        train_all: also train the encoder (default: frozen when the network has one).
        seed: seeds the patch sampling, the augmentation and torch.
        patch_size: training patch (array order); default: the card's, capped at
            ``CPU_PATCH_3D`` (``CPU_PATCH_2D``) per axis on the CPU.

    Returns:
        A :class:`FinetuneResult`.

    Raises:
        InputError: bad cases, labels, name or arguments. ModelError: the parent cannot be used.
        KeyboardInterrupt: passed on; nothing has been written.
    """
    from .data.augment import Augmenter
    from .data.sampling import PatchSampler
    from .inference.predictor import Predictor
    from .io.image import read_image
    from .losses import DiceCELoss, deep_supervision_loss
    from .models.card import ModelCard
    from .models.package import find_model, save_package, user_models_dir
    from .segment import channel_paths
    from .training.recipes.base import step_on
    from .training.schedule import lr_factor

    t_start = time.perf_counter()
    report = progress or (lambda stage, fraction, message="", eta_s=None: None)
    seconds: dict[str, float] = {}
    steps = DEFAULT_STEPS if steps is None else int(steps)
    lr = DEFAULT_LR if lr is None else float(lr)
    if steps < 1:
        raise InputError(f"--steps {steps}: give at least one step")
    if not (lr > 0 and math.isfinite(lr)):
        raise InputError(f"--lr {lr}: the learning rate must be a positive number")
    if not cases:
        raise InputError("finetune: give at least one (image, label) case")
    cases = [(Path(i), Path(l)) for i, l in cases]
    for img_path, lab_path in cases:
        for p in (img_path, lab_path):
            if not p.exists():
                raise InputError(f"{p}: does not exist")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")

    threads_before = torch.get_num_threads()
    torch.set_num_threads(max(1, min(threads_before, _cpu_threads())))
    try:
        # -- load ---------------------------------------------------------------------------
        report("load", 0.0, f"loading {model}")
        pkg = find_model(model)
        parent = pkg.card
        name = _check_name(name) if name else _default_name(parent.name, stamp)
        dest = user_models_dir() / name
        pred = Predictor(pkg, device=device)
        net, dev = pred.net, pred.device
        n_cls, spatial_dims = parent.num_classes, parent.spatial_dims
        names = parent.label_names()
        if patch_size is not None:
            patch = tuple(int(p) for p in patch_size)
            if len(patch) != len(parent.patch_size) or min(patch) < 1:
                raise InputError(f"patch size {list(patch)}: give {len(parent.patch_size)} positive sizes")
        elif dev.type == "cpu":
            cap = CPU_PATCH_3D if spatial_dims == 3 else CPU_PATCH_2D
            patch = tuple(min(int(p), c) for p, c in zip(parent.patch_size, cap))
        else:  # a GPU: the card's patch, as the parent was trained
            patch = tuple(int(p) for p in parent.patch_size)
        seconds["load"] = time.perf_counter() - t_start
        report("load", 1.0, f"{parent.name} {parent.version} on {dev}")

        # -- prepare: read, map labels, preprocess -------------------------------------------
        t = time.perf_counter()
        pre_cases, annotated, records = [], [], []
        for k, (img_path, lab_path) in enumerate(cases):
            report("prepare", k / len(cases), f"reading {img_path.name}")
            chans = channel_paths(img_path, len(parent.channels))
            images = [read_image(p) for p in chans]
            for p, im in zip(chans[1:], images[1:]):
                if im.GetSize() != images[0].GetSize():
                    raise InputError(f"{p}: channel grid {im.GetSize()} differs from {images[0].GetSize()}")
            label, ann = read_correction(lab_path, images[0], parent)
            pre = pred.preprocessor(images, label)
            pre_cases.append(pre)
            annotated.append(ann)
            records.append({"image": str(img_path.resolve()), "label": str(lab_path.resolve()),
                            "image_sha256": _sha256_path(img_path), "label_sha256": _sha256_path(lab_path),
                            "labels_trained": [names[v] for v in ann]})
        seconds["prepare"] = time.perf_counter() - t
        report("prepare", 1.0, f"{len(cases)} case(s) ready")

        # -- evaluate the parent ---------------------------------------------------------------
        def evaluate() -> tuple[list[dict[int, float]], list[np.ndarray]]:
            net.eval()
            per_case, preds = [], []
            for k, pre in enumerate(pre_cases):
                pred.progress = lambda stage, f, *rest, k=k, **kw: report(
                    "evaluate", (k + float(f)) / len(pre_cases), f"case {k + 1}/{len(pre_cases)}")
                probs = pred.predict_array(pre.image)
                if isinstance(probs, tuple):  # (probabilities, confidence, passes)
                    probs = probs[0]
                labels = np.asarray(probs).argmax(0).astype(pre.label.dtype)
                preds.append(labels)
                per_case.append(dice_per_value(labels, pre.label, annotated[k]))
            pred.progress = lambda *a, **k: None
            report("evaluate", 1.0, "")
            return per_case, preds

        t = time.perf_counter()
        report("evaluate", 0.0, "Dice of the parent model on the corrected case(s)")
        before_cases, parent_preds = evaluate()
        dice_before, per_before = _summarise(before_cases, names)
        seconds["evaluate_before"] = time.perf_counter() - t

        # -- fine-tune -----------------------------------------------------------------------
        t = time.perf_counter()
        report("finetune", 0.0, f"{steps} steps", None)
        torch.manual_seed(seed)
        sample_patch = patch if spatial_dims == 3 else (1,) + patch
        images_t = [torch.from_numpy(np.ascontiguousarray(p.image)).to(dev) for p in pre_cases]
        labels_t = [torch.from_numpy(np.ascontiguousarray(p.label)).to(dev) for p in pre_cases]
        base = PatchSampler(images_t, labels_t, n_cls, sample_patch, fg_fraction=0.67, annotated=annotated,
                            seed=seed)
        errors = []
        for k, pre in enumerate(pre_cases):
            ann_mask = np.zeros(n_cls, dtype=bool)
            ann_mask[list(annotated[k])] = True
            p, r = parent_preds[k], pre.label
            wrong = (p != r) & ((r > 0) | ((p > 0) & ann_mask[p]))
            errors.append(torch.from_numpy(np.argwhere(wrong)))
        sampler = _FocusedSampler(base, errors, ERROR_FRACTION)
        cfg = parent.training.get("config", {}) if isinstance(parent.training, dict) else {}
        augment = Augmenter(cfg.get("mirror_axes") or [], cfg.get("mirror_swap") or [], seed=seed + 1)

        frozen = []
        if not train_all and isinstance(getattr(net, "encoder", None), torch.nn.Module):
            frozen = list(net.encoder.parameters())
            for prm in frozen:
                prm.requires_grad_(False)
        params = [prm for prm in net.parameters() if prm.requires_grad]
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=float(cfg.get("weight_decay", 1e-4)))
        warmup = max(1, min(10, steps // 10))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, s / steps, warmup))
        loss_fn = DiceCELoss()
        amp = use_bf16(dev)
        net.train()
        if frozen:
            net.encoder.eval()  # frozen: batch-norm statistics (if any) and dropout stay as trained
        running, t_loop = None, time.perf_counter()
        for step in range(1, steps + 1):
            x, y, ann = sampler.sample(BATCH_SIZE)
            x, y = augment(x, y)
            if spatial_dims == 2:
                x, y = x[:, :, 0], y[:, 0]
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                out = net(x)
            loss = deep_supervision_loss(loss_fn, out.logits.float(), [d.float() for d in out.deep_supervision],
                                         y, ann)
            step_on(opt, loss, params)  # the recipes' optimiser step (backward, clip at GRAD_CLIP, step)
            sched.step()
            lv = float(loss.detach())
            if not math.isfinite(lv):
                raise ModelError(f"{pkg.path}: the loss became {lv} at step {step}; try a lower --lr")
            running = lv if running is None else 0.9 * running + 0.1 * lv
            elapsed = time.perf_counter() - t_loop
            report("finetune", step / steps, f"step {step}/{steps} loss {running:.4f}",
                   elapsed / step * (steps - step))
        for prm in frozen:
            prm.requires_grad_(True)
        half = parent.weights.get("dtype") == "float16"
        if half:  # evaluate exactly the weights that will be stored
            with torch.no_grad():
                for v in net.state_dict().values():
                    if v.is_floating_point():
                        v.copy_(v.half().float())
        seconds["finetune"] = time.perf_counter() - t

        # -- evaluate the new weights ----------------------------------------------------------
        t = time.perf_counter()
        report("evaluate", 0.0, "Dice of the fine-tuned model on the corrected case(s)")
        after_cases, _ = evaluate()
        dice_after, per_after = _summarise(after_cases, names)
        seconds["evaluate_after"] = time.perf_counter() - t

        # -- save --------------------------------------------------------------------------
        report("save", 0.0, f"writing {dest}")
        per_label = {n: {"before": _round(per_before[n][0]), "after": _round(per_after.get(n, (float("nan"),))[0]),
                         "cases": per_before[n][1]} for n in per_before}
        total = time.perf_counter() - t_start
        card = ModelCard.from_dict(parent.to_dict(), str(pkg.path))
        card.name = name
        sep = "." if "+" in parent.version else "+"  # one '+' only (semantic versioning)
        card.version = f"{parent.version}{sep}ft.{stamp.replace('-', '')}"
        label_names = sorted({n for r in records for n in r["labels_trained"]}, key=list(names.values()).index)
        card.description = (f"{parent.name} {parent.version} fine-tuned on {len(cases)} corrected case(s) "
                            f"({', '.join(label_names)}); {steps} steps. " + (parent.description or "")).strip()
        card.parent = {"name": parent.name, "version": parent.version,
                       "weights_sha256": parent.weights.get("sha256"), "path": str(pkg.path),
                       "source": pkg.source}
        if parent.parent:
            card.parent["parent"] = parent.parent
        training = dict(parent.training)
        if "finetune" in training:
            training["previous_finetunes"] = list(training.get("previous_finetunes", [])) + [training["finetune"]]
        training["finetune"] = {
            "cases": records, "steps": steps, "lr": lr, "batch_size": BATCH_SIZE, "patch_size": list(patch),
            "encoder_frozen": bool(frozen), "seed": seed, "seconds": round(total, 1),
            "seconds_by_stage": {k: round(v, 2) for k, v in seconds.items()}, "device": str(dev),
            "threads": torch.get_num_threads() if dev.type == "cpu" else None,
            "precision": "bf16-mixed" if amp else "float32",
            "dice_before": _round(dice_before), "dice_after": _round(dice_after), "per_label": per_label,
            "dice_measured_on": "the corrected cases, model grid, annotated labels present in the correction"}
        card.training = training
        # The parent's validation figures do not describe this model: keep them, out of the way.
        card.validation = {"parent": parent.validation,
                           "note": "not re-validated after fine-tuning; 'parent' holds the parent's figures"}
        state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
        try:
            save_package(card, state, dest, half=half)
        except ModelError as exc:  # the name was taken while we trained
            raise InputError(str(exc)) from None
        report("save", 1.0, str(dest))
        return FinetuneResult(dest, dice_before, dice_after, steps, time.perf_counter() - t_start, per_label)
    finally:
        torch.set_num_threads(threads_before)
