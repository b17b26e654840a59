"""Damaged and odd inputs through the real ``medseg`` commands: a seeded generator of over 200
of them, each must end in one error line (exit 2, 3 for a model problem) with no traceback and
nothing left behind, or, for an odd but sound input, a complete result. A damaged file accepted
in silence fails the test. Most run in-process (``cli.main``, stderr captured at the file
descriptor, so library messages count too); a sample runs as a real child process.
"""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from dicom_helpers import write_dicom_series
from medseg_core import cli
from medseg_core.data.phantom import make_phantom
from medseg_core.io.naming import stem_of
from medseg_core.models import bundled_dir

MODEL = "phantom-unet"
SEED = 2026
ERROR, SOUND = "error", "sound"  # what must happen: a refusal, or a complete result


@dataclass
class Case:
    kind: str
    args: list[str]          # after "medseg"
    expect: str              # ERROR or SOUND
    code: int = 2            # the exit code of an ERROR


def _base(shape=(16, 32, 32), dtype=np.int16) -> sitk.Image:
    ph = make_phantom(shape=shape, spacing=(2.0, 2.0, 4.0), seed=3)
    img = sitk.Cast(ph.image, sitk.sitkInt16 if dtype == np.int16 else sitk.sitkFloat32)
    return img


def _write(img: sitk.Image, path: Path) -> Path:
    sitk.WriteImage(img, str(path), path.name.endswith(".gz"))
    return path


def _nifti_field(raw: bytearray, offset: int, fmt: str, value) -> bytearray:
    out = bytearray(raw)
    out[offset:offset + struct.calcsize(fmt)] = struct.pack(fmt, *(value if isinstance(value, tuple) else (value,)))
    return out


def _segment(inp, out: Path, *extra) -> list[str]:
    return ["segment", str(inp), "--model", MODEL, "--output", str(out), "--device", "cpu", *extra]


def generate(folder: Path) -> list[Case]:
    """The damaged and odd inputs, written under ``folder``; deterministic for ``SEED``."""
    rng = random.Random(SEED)
    folder.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []
    n = iter(range(10 ** 6))

    def new(name: str) -> Path:
        return folder / f"{next(n):03d}_{name}"

    def seg(kind, inp, expect, code=2, extra=()):
        cases.append(Case(kind, _segment(inp, folder / f"out_{next(n):03d}", *extra), expect, code))

    ct, ct_f = _base(), _base(dtype=np.float32)
    good = {ext: _write(ct, new(f"good{ext}")) for ext in (".nii", ".nii.gz", ".nrrd", ".mha")}
    raw_nii = bytearray(good[".nii"].read_bytes())

    # cut short anywhere: in the header, in the data, one byte short (every format)
    for ext, path in good.items():
        data = path.read_bytes()
        cuts = [1, 100, 347, len(data) // 2, len(data) - 1] + [rng.randrange(1, len(data)) for _ in range(15)]
        for cut in cuts:
            p = new(f"cut{cut}{ext}")
            p.write_bytes(data[:cut])
            seg(f"truncated {ext}", p, ERROR)
    # flipped bytes inside a compressed stream (the gzip check sum catches them)
    gz = good[".nii.gz"].read_bytes()
    for _ in range(16):
        p = new("flip.nii.gz")
        b = bytearray(gz)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(20, len(b) - 8)] ^= rng.randrange(1, 256)
        p.write_bytes(bytes(b))
        seg("corrupted .nii.gz", p, ERROR)
    # header fields that lie (NIfTI-1 offsets): sizes, spacings, data offset, types
    lies = [(42, "<h", 0), (42, "<h", -5), (44, "<h", 30000), (40, "<h", 0), (40, "<h", 9),
            (42, "<3h", (30000, 30000, 30000)), (80, "<f", 0.0), (80, "<f", -1.0), (84, "<f", float("nan")),
            (88, "<f", float("inf")), (108, "<f", 1e7), (108, "<f", 1e12), (72, "<h", 0), (72, "<h", 7),
            (0, "<i", 1234), (70, "<h", 9999)]
    for offset, fmt, value in lies:
        for ext in (".nii", ".nii.gz"):
            p = new(f"lie{offset}{ext}")
            b = bytes(_nifti_field(raw_nii, offset, fmt, value))
            _write_maybe_gz(p, b)
            seg(f"lying header {offset}={value} {ext}", p, ERROR)
    # a sheared grid (sform axes not orthogonal)
    for shear in (0.2, 0.5, 1.0):
        b = _nifti_field(raw_nii, 254, "<h", 1)  # sform_code: scanner
        b = _nifti_field(b, 280, "<4f", (2.0, 2.0 * shear, 0.0, 0.0))
        b = _nifti_field(b, 296, "<4f", (0.0, 2.0, 0.0, 0.0))
        b = _nifti_field(b, 312, "<4f", (0.0, 0.0, 4.0, 0.0))
        for ext in (".nii", ".nii.gz"):
            p = new(f"shear{ext}")
            _write_maybe_gz(p, bytes(b))
            seg("sheared grid", p, ERROR)
    # NaN and infinite voxels, one or all, in every format
    arr = sitk.GetArrayFromImage(ct_f)
    for ext in (".nii", ".nii.gz", ".nrrd", ".mha"):
        for value in (np.nan, np.inf, -np.inf):
            for where in ("one", "all"):
                a = arr.copy()
                if where == "one":
                    a[tuple(rng.randrange(s) for s in a.shape)] = value
                else:
                    a[:] = value
                img = sitk.GetImageFromArray(a)
                img.CopyInformation(ct_f)
                seg(f"{value} voxels ({where}) {ext}", _write(img, new(f"bad{ext}")), ERROR)
    # not images at all
    for ext in (".nii.gz", ".nii", ".nrrd", ".mha"):
        for name, content in (("empty", b""), ("text", b"this is not an image\n"),
                              ("random", bytes(rng.randrange(256) for _ in range(4096))),
                              ("json", json.dumps({"a": 1}).encode())):
            p = new(f"{name}{ext}")
            p.write_bytes(content)
            seg(f"{name} file {ext}", p, ERROR)
    empty_dir = new("folder.nii.gz")
    empty_dir.mkdir()
    seg("an empty folder", empty_dir, ERROR)
    seg("a missing file", new("missing.nii.gz"), ERROR)
    if os.name == "posix":
        fifo = new("fifo.nii.gz")
        os.mkfifo(fifo)
        seg("a FIFO", fifo, ERROR)
    # tiny and degenerate grids: refused, or (big enough, constant) a warning and background
    for shape, expect in (((1, 1, 1), ERROR), ((2, 2, 2), ERROR), ((3, 3, 40), ERROR), ((1, 40, 40), ERROR),
                          ((40, 2, 2), ERROR), ((4, 4, 4), SOUND), ((6, 5, 40), SOUND)):
        img = sitk.GetImageFromArray(np.full(shape, 40, np.int16))
        img.SetSpacing((2.0, 2.0, 4.0))
        img[0, 0, 0] = 1000 if expect == SOUND else 40
        seg(f"grid {shape}", _write(img, new("tiny.nii.gz")), expect)
    seg("a constant image", _write(sitk.Image(32, 32, 16, sitk.sitkInt16), new("constant.nii.gz")), SOUND)
    # spacings far from any patient
    for spacing in ((1e5, 1e5, 1e5), (2.0, 2.0, 1e6)):
        img = sitk.Image(ct)
        img.SetSpacing(spacing)
        seg(f"spacing {spacing}", _write(img, new("spacing.nrrd")), ERROR)
    # DICOM series with a slice missing or cut short, or a damaged file among them
    for damage in ("missing", "truncated", "garbled"):
        series = new(f"dicom_{damage}")
        write_dicom_series(ct, series, "1.2.826.0.1.3680043.2.1125.1")
        files = sorted(series.iterdir())
        victim = files[len(files) // 2]
        if damage == "missing":
            victim.unlink()
        elif damage == "truncated":
            victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
        else:
            b = bytearray(victim.read_bytes())
            b[140:400] = bytes(rng.randrange(256) for _ in range(260))
            victim.write_bytes(bytes(b))
        seg(f"DICOM series, a slice {damage}", series, ERROR)
    # sound series must pass: pixel data compressed (smaller than raw), or raw
    for compress in (True, False):
        series = new(f"dicom_sound_{compress}")
        write_dicom_series(ct, series, "1.2.826.0.1.3680043.2.1125.2", compress=compress)
        seg(f"DICOM series, sound ({'compressed' if compress else 'raw'})", series, SOUND)
    # bad arguments
    for extra in (["--batch-size", "0"], ["--batch-size", "-3"], ["--confidence-threshold", "7"],
                  ["--roi", "1,2,3"], ["--roi", "a,b,c,d,e,f"], ["--roi", "0,0,0,-1,-1,-1"]):
        seg(f"argument {' '.join(extra)}", good[".nii.gz"], ERROR, extra=extra)
    # broken model cards: exit 3
    card = json.loads((bundled_dir() / MODEL / "card.json").read_text())
    for change in ({"inference": {**card["inference"], "patch_size": ["a", 8, 8]}}, {"labels": []},
                   {"format": 99}, {"network": {"name": "no-such-net", "kwargs": {}}},
                   {"inference": {**card["inference"], "patch_size": [8, -1, 8]}}):
        pkg = new("model")
        pkg.mkdir()
        (pkg / "card.json").write_text(json.dumps({**card, **change}))
        (pkg / "weights.safetensors").write_bytes((bundled_dir() / MODEL / "weights.safetensors").read_bytes())
        cases.append(Case(f"model card {sorted(change)}", ["segment", str(good[".nii.gz"]), "--model", str(pkg),
                                                           "--output", str(new("out")), "--device", "cpu"], ERROR, 3))
    # outputs that cannot be written
    taken = new("taken")
    (taken / f"{stem_of(good['.nii.gz'])}_labels.nii.gz").mkdir(parents=True)
    cases.append(Case("an output name taken by a folder", _segment(good[".nii.gz"], taken, "--overwrite"), ERROR))
    a_file = new("a_file")
    a_file.write_text("x")
    cases.append(Case("an output folder that is a file", _segment(good[".nii.gz"], a_file), ERROR))
    # a batch whose second input is bad writes nothing, not even the first case
    cases.append(Case("a batch with a bad second input", ["segment", str(good[".nii.gz"]), str(folder / "000_good.nii"),
                                                         str(new("missing.nii.gz")), "--model", MODEL, "--output",
                                                         str(new("out")), "--device", "cpu"], ERROR))
    # fine-tuning on a damaged correction writes no model
    lab_path = _write(make_phantom(shape=(16, 32, 32), spacing=(2.0, 2.0, 4.0), seed=3).label, new("label.nii.gz"))
    lab = lab_path.read_bytes()
    for cut in (len(lab) // 3, len(lab) - 9):
        p = new("label_cut.nii.gz")
        p.write_bytes(lab[:cut])
        cases.append(Case("finetune on a truncated label", ["finetune", "--model", MODEL, "--image",
                                                           str(good[".nii.gz"]), "--label", str(p), "--steps", "1",
                                                           "--device", "cpu"], ERROR))
    return cases


def _write_maybe_gz(path: Path, data: bytes) -> None:
    if path.name.endswith(".gz"):
        import gzip

        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def _outputs_of(args: list[str]) -> Path | None:
    return Path(args[args.index("--output") + 1]) if "--output" in args else None


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("fuzz"))


def test_the_generator_covers_over_200_inputs_of_many_kinds(cases):
    assert len(cases) >= 200
    assert len({c.kind.split(" ")[0] for c in cases}) >= 15
    assert sum(c.expect == SOUND for c in cases) >= 3
    assert {c.code for c in cases if c.expect == ERROR} == {2, 3}


def test_every_damaged_or_odd_input_is_refused_in_one_line_or_segmented_whole(cases, capfd, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSEG_HOME", str(tmp_path / "home"))
    problems, codes = [], {}
    for case in cases:
        out = _outputs_of(case.args)
        existed = out is not None and out.exists()
        before = set(out.iterdir()) if existed and out.is_dir() else set()
        try:
            code = cli.main(case.args + ["--progress", "none"] if case.args[0] == "segment" else case.args)
        except SystemExit as exc:  # argparse
            code = exc.code
        except Exception as exc:  # noqa: BLE001 - a traceback is what this test hunts
            code = f"traceback {type(exc).__name__}: {exc}"
        err = [ln for ln in capfd.readouterr().err.splitlines() if ln.strip()]
        codes[str(code)] = codes.get(str(code), 0) + 1
        if case.expect == ERROR:
            bad = []
            if code != case.code:
                bad.append(f"exit {code}, not {case.code}")
            if len(err) != 1 or "Traceback" in "\n".join(err):
                bad.append(f"stderr {err[:4]}")
            if out is not None and not existed and out.exists():
                bad.append(f"left {out}")
            if out is not None and existed and out.is_dir() and set(out.iterdir()) != before:
                bad.append(f"changed {out}")
            if case.args[0] == "finetune" and (tmp_path / "home" / "models").exists() and any(
                    (tmp_path / "home" / "models").iterdir()):
                bad.append("wrote a model")
        else:
            bad = [] if code == 0 else [f"exit {code}: {err[-1:] if err else ''}"]
            if code == 0 and not any(p.name.endswith("_labels.nii.gz") for p in out.iterdir()):
                bad.append("no labelmap written")
            if any("Traceback" in ln for ln in err):
                bad.append("traceback")
        if bad:
            problems.append(f"{case.kind}: {'; '.join(bad)}")
    print(f"{len(cases)} inputs, exit codes {codes}")
    assert not problems, f"{len(problems)} of {len(cases)} inputs broke the promise:\n" + "\n".join(problems[:40])


@pytest.mark.parametrize("kind", ["truncated .nii.gz", "nan voxels (one) .nii", "a FIFO", "lying header 80=0.0 .nii",
                                  "DICOM series, a slice truncated"])
def test_a_sample_through_a_real_child_process(cases, kind, tmp_path):
    case = next(c for c in cases if c.kind == kind)
    env = {**os.environ, "MEDSEG_HOME": str(tmp_path / "home")}
    run = subprocess.run([sys.executable, "-m", "medseg_core", *case.args], capture_output=True, text=True,
                         timeout=120, env=env)
    err = [ln for ln in run.stderr.splitlines() if ln.strip()]
    assert run.returncode == case.code and len(err) == 1 and err[0].startswith("medseg: error: "), (run.returncode, err)
    out = _outputs_of(case.args)
    assert out is None or not out.exists()
