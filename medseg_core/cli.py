"""The ``medseg`` command line.

Exit codes: 0 done, 2 bad input or usage, 3 model problem, 130 interrupted. Errors are one line
on stderr, naming the file and the problem.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import __version__
from .errors import EXIT_CANCELLED, EXIT_INPUT, MedSegError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # usage errors exit 2 with one line, as argparse does, but named
        self.print_usage(sys.stderr)
        print(f"medseg: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_INPUT)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="medseg", description="Medical image segmentation: segment, train, evaluate.")
    p.add_argument("--version", action="version", version=f"medseg {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("segment", help="segment images with a model")
    s.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or DICOM series folders")
    s.add_argument("--model", required=True, help="model name or package folder")
    s.add_argument("--output", required=True, help="output folder")
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "gpu", "mps"])
    s.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    s.add_argument("--batch-size", type=int, default=4, help="sliding windows per forward pass")

    m = sub.add_parser("models", help="list the installed models")
    m.add_argument("--json", action="store_true", help="machine-readable output")

    t = sub.add_parser("train", help="train a model on an nnU-Net raw dataset")
    t.add_argument("--data", help="dataset folder (dataset.json, imagesTr, labelsTr); optional with a ready --cache")
    t.add_argument("--config", required=True, help="training config JSON")
    t.add_argument("--run", required=True, help="run folder (checkpoints, best package, history)")
    t.add_argument("--cache", help="preprocessing cache folder (default RUN/cache)")
    t.add_argument("--split", help="split file (default splits.json beside dataset.json)")
    t.add_argument("--export", help="also write the final model package here")
    t.add_argument("--resume", action="store_true", help="continue from RUN/last")
    t.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "gpu", "mps"])
    t.add_argument("--steps", type=int, help="override the config's number of steps")
    t.add_argument("--preprocess-only", action="store_true", help="build the cache and stop")
    t.add_argument("--progress", default="bar", choices=["bar", "none"])

    e = sub.add_parser("evaluate", help="Dice and HD95 of predictions against references")
    e.add_argument("--pred", required=True, help="folder of predicted labelmaps")
    e.add_argument("--ref", required=True, help="folder of reference labelmaps")
    e.add_argument("--output", help="folder for metrics.csv and metrics.json (default: --pred)")
    e.add_argument("--card", help="also record the summary in this model package's card")

    d = sub.add_parser("demo", help="segment a synthetic phantom with the bundled phantom model")
    d.add_argument("--output", default="demo_output", help="output folder")
    d.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "gpu", "mps"])
    d.add_argument("--seed", type=int, default=2024, help="phantom seed")
    return p


def cmd_segment(a) -> int:
    from .segment import segment_files
    from .training import distributed as dd

    inputs, device, info = a.inputs, a.device, dd.from_env()
    if info.enabled:  # under torchrun: each rank takes its share of the inputs and its own GPU
        inputs = dd.shard(inputs, info)
        if device in ("auto", "cuda", "gpu"):
            import torch

            if torch.cuda.is_available():
                torch.cuda.set_device(info.local_rank % torch.cuda.device_count())
        if not inputs:
            return 0
    reports = segment_files(inputs, a.model, a.output, device=device, overwrite=a.overwrite,
                            batch_size=a.batch_size)
    for r in reports:
        print(f"{r['input']}: {r['seconds']['total']:.1f} s on {r['device']} -> {r['outputs']['segmentation']}")
    return 0


def cmd_models(a) -> int:
    from .models import list_models

    models = list_models()
    if a.json:
        out = []
        for m in models:
            c = m.card
            out.append({"name": c.name, "version": c.version, "description": c.description, "modality": c.modality,
                        "channels": c.channels, "labels": [lab.to_dict() for lab in c.labels],
                        "network": c.network.get("name"), "source": m.source, "path": str(m.path),
                        "validation": c.validation, "parent": c.parent, "small_organs": c.small_organs})
        print(json.dumps(out, indent=1))
    else:
        for m in models:
            c = m.card
            dice = c.validation.get("mean_dice")
            print(f"{c.name:24s} {c.version:8s} {c.modality:4s} {len(c.labels):2d} labels  {m.source:7s}"
                  + (f"  validation Dice {dice:.3f}" if isinstance(dice, (int, float)) else ""))
    return 0


def cmd_train(a) -> int:
    from .training.config import TrainConfig
    from .training.trainer import train

    cfg = TrainConfig.read(a.config)
    if a.steps:
        cfg.steps = a.steps
    os.environ.setdefault("MEDSEG_COMMAND", " ".join(["medseg"] + sys.argv[1:]))
    if a.preprocess_only:
        from .training.data import prepare_cache

        prepare_cache(cfg, a.data, Path(a.cache) if a.cache else Path(a.run) / "cache", a.split)
        return 0
    res = train(cfg, a.run, data_dir=a.data, cache_dir=a.cache, output=a.export, device=a.device,
                resume=a.resume, split_file=a.split, progress=a.progress)
    print(f"best validation Dice {res.best_dice:.4f} after {res.steps} steps, {res.seconds:.0f} s -> {res.package_dir}")
    return 0


def cmd_evaluate(a) -> int:
    from .evaluate import evaluate_folders

    out = Path(a.output or a.pred)
    result = evaluate_folders(a.pred, a.ref, out_csv=out / "metrics.csv", out_json=out / "metrics.json")
    summary = result["summary"]
    print(f"{'label':16s} {'Dice':>7s} {'HD95 median':>12s} {'HD95 found':>11s}  cases (missed)")
    for row in summary["per_label"].values():
        print(f"{row['name']:16s} {row['dice']:7.4f} {row['hd95_median']:9.2f} mm {row['hd95_detected']:8.2f} mm"
              f"  {row['n']} ({row['n_missed']})")
    mean = summary["mean"]
    print(f"{'mean':16s} {mean['dice']:7.4f} {mean['hd95_median']:9.2f} mm {mean['hd95_detected']:8.2f} mm")
    print(f"metrics written to {out / 'metrics.csv'} and {out / 'metrics.json'}")
    if a.card:
        from .models.package import record_validation

        record_validation(a.card, summary, cases=len(result["cases"]))
    return 0


def cmd_demo(a) -> int:
    from .demo import run_demo

    run_demo(a.output, device=a.device, seed=a.seed)
    return 0


COMMANDS = {"segment": cmd_segment, "models": cmd_models, "train": cmd_train, "evaluate": cmd_evaluate,
            "demo": cmd_demo}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except MedSegError as exc:
        print(f"medseg: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("medseg: interrupted", file=sys.stderr)
        return EXIT_CANCELLED


if __name__ == "__main__":
    sys.exit(main())
