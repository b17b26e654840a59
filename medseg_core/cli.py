"""The ``medseg`` command line.

Exit codes: 0 done, 2 bad input or usage, 3 model problem, 130 interrupted. Errors are one line
on stderr, naming the file and the problem.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path

from . import __version__
from .commands.checks import DEVICES, RUNTIMES
from .errors import EXIT_CANCELLED, EXIT_INPUT, InputError, MedSegError


PROGRESS_HELP = ("bar (on a terminal), json (one event per line on stdout, see docs/protocol.md) or none; "
                 "default: bar when stderr is a terminal, else none")


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
    s.add_argument("--device", default="auto", choices=DEVICES)
    s.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    s.add_argument("--batch-size", type=int, default=4, help="sliding windows per forward pass")
    s.add_argument("--tta", action="store_true", help="average over the flips the model was trained with")
    s.add_argument("--no-confidence", action="store_true", help="skip the confidence map")
    s.add_argument("--confidence-threshold", type=float, default=0.5,
                   help="confidence under which voxels join the 'Low confidence' segment (default 0.5)")
    s.add_argument("--roi", metavar="x0,y0,z0,x1,y1,z1", help="segment only inside this box (LPS mm)")
    s.add_argument("--runtime", default="auto", choices=RUNTIMES,
                   help="what runs the network: auto (OpenVINO on a CPU without native bf16 when it is "
                        "installed, else PyTorch), torch or openvino")
    s.add_argument("--dicom", metavar="seg,rtstruct",
                   help="for a DICOM series input, also write STEM_seg.dcm (DICOM SEG) and/or STEM_rtstruct.dcm "
                        "(RT Structure Set of the organs), referencing the series")
    s.add_argument("--progress", choices=["bar", "json", "none"], help=PROGRESS_HELP)

    r = sub.add_parser("refine", help="re-segment prompted organs of an existing result")
    r.add_argument("input", metavar="IMAGE", help="the image (file or DICOM series folder)")
    r.add_argument("--model", required=True, help="model name or package folder")
    r.add_argument("--labels", required=True, help="the current labels on the image's grid (labelmap or .seg.nrrd)")
    r.add_argument("--output", required=True, help="output folder")
    r.add_argument("--prompt", action="append", required=True, metavar="LABEL:KIND:NUMBERS",
                   help="LABEL:point:x,y,z (the organ is here), LABEL:box:x0,y0,z0,x1,y1,z1 (it is inside) or "
                        "LABEL:negative:x,y,z (not this part); LPS mm; repeat for more")
    r.add_argument("--device", default="auto", choices=DEVICES)
    r.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    r.add_argument("--progress", choices=["bar", "json", "none"], help=PROGRESS_HELP)

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
    t.add_argument("--device", default="auto", choices=DEVICES)
    t.add_argument("--steps", type=int, help="override the config's number of steps")
    t.add_argument("--time-budget", type=float,
                   help="override the config's time budget (seconds; 0: none, train for the steps)")
    t.add_argument("--seed", type=int, help="override the config's random seed (weights, sampling, augmentation)")
    t.add_argument("--preprocess-only", action="store_true", help="build the cache and stop")
    t.add_argument("--record-command", metavar="TEXT",
                   help="the command line the model card records (default: this one); for scripts that run "
                        "medseg on temporary paths")
    t.add_argument("--progress", choices=["bar", "json", "none"], help=PROGRESS_HELP)

    f = sub.add_parser("finetune", help="fine-tune a model on corrected segmentations")
    f.add_argument("--model", required=True, help="model name or package folder (never modified)")
    f.add_argument("--image", action="append", required=True, help="an image; repeat with --label per case")
    f.add_argument("--label", action="append", required=True,
                   help="its corrected labelmap, .seg.nrrd (segments matched to the model's labels by name), or "
                        "the RT Structure Set or DICOM SEG of a DICOM series --image (TG-263 names matched too)")
    f.add_argument("--steps", type=int, default=None,
                   help="training steps (default: 8 to 30, from the correction's size)")
    f.add_argument("--lr", type=float, default=None, help="learning rate (default: the recipe's)")
    f.add_argument("--name", help="name of the new model (default NAME-ft-<date-time>)")
    f.add_argument("--device", default="auto", choices=DEVICES)
    f.add_argument("--force", action="store_true",
                   help="fine-tune even on a correction that disagrees with the model almost everywhere")
    f.add_argument("--progress", choices=["bar", "json", "none"], help=PROGRESS_HELP)

    e = sub.add_parser("evaluate", help="Dice and HD95 of predictions against references")
    e.add_argument("--pred", required=True, help="folder of predicted labelmaps")
    e.add_argument("--ref", required=True, help="folder of reference labelmaps")
    e.add_argument("--output", help="folder for metrics.csv and metrics.json (default: --pred)")
    e.add_argument("--card", help="also record the summary in this model package's card")

    sub.add_parser("worker", help="answer JSON requests on stdin, keeping models loaded (docs/protocol.md)")

    d = sub.add_parser("demo", help="segment a synthetic phantom with the bundled phantom model")
    d.add_argument("--output", default="demo_output", help="output folder")
    d.add_argument("--device", default="auto", choices=DEVICES)
    d.add_argument("--seed", type=int, default=2024, help="phantom seed")
    return p


def cmd_segment(a) -> int:
    from .commands import SegmentRequest, run_segment

    request = SegmentRequest(inputs=a.inputs, model=a.model, output=a.output, device=a.device, overwrite=a.overwrite,
                             batch_size=a.batch_size, tta=a.tta, confidence=not a.no_confidence,
                             confidence_threshold=a.confidence_threshold, roi=a.roi, runtime=a.runtime,
                             dicom=a.dicom or [])
    reports = run_segment(request, progress=_reporter(a))
    _close(a)
    if a.progress == "json":
        a.reporter.result([r["outputs"] for r in reports], f"{len(reports)} case(s) segmented")
    else:
        for r in reports:
            print(f"{r['input']}: {r['seconds']['total']:.1f} s on {r['device']} -> {r['outputs']['segmentation']}")
    return 0


def cmd_refine(a) -> int:
    from .commands import RefineRequest, run_refine

    request = RefineRequest(input=a.input, model=a.model, labels=a.labels, output=a.output, prompts=a.prompt,
                            overwrite=a.overwrite, device=a.device)
    record = run_refine(request, progress=_reporter(a))
    _close(a)
    if a.progress == "json":
        a.reporter.result(record["outputs"], f"{len(record['changes'])} prompt(s) applied")
    else:
        for c in record["changes"]:
            print(f"{c['label']} ({c['kind']}): +{c['voxels_added']} / -{c['voxels_removed']} voxels")
        print(f"{record['seconds']['total']:.2f} s -> {record['outputs']['segmentation']}")
    return 0


def cmd_models(a) -> int:
    from .commands import models_json

    if a.json:
        print(json.dumps(models_json(), indent=1))
    else:
        for m in models_json():
            dice = m["validation"].get("mean_dice")
            print(f"{m['name']:24s} {m['version']:8s} {m['modality']:4s} {len(m['labels']):2d} labels  {m['source']:7s}"
                  + (f"  validation Dice {dice:.3f}" if isinstance(dice, (int, float)) else "")
                  + (f"  (also: {', '.join(m['aliases'])})" if m["aliases"] else ""))
            ft = m["finetune"]
            if m["lineage"]:
                print(f"{'':24s} from {' <- '.join(m['lineage'])}")
            if ft and all(isinstance(ft.get(k), (int, float)) for k in ("dice_before", "dice_after")):
                print(f"{'':24s} fine-tuned on {ft['cases']} case(s): their Dice {ft['dice_before']:.3f} -> "
                      f"{ft['dice_after']:.3f}")
            if ft and ft.get("routed"):
                print(f"{'':24s} fine-tuned organs: {', '.join(ft['routed'])} (the others are the first parent's)")
    return 0


def cmd_train(a) -> int:
    from .commands import TrainRequest, run_train

    command = a.record_command if a.record_command is not None else " ".join(["medseg"] + a.argv)
    request = TrainRequest(config=a.config, run=a.run, data=a.data, cache=a.cache, split=a.split, export=a.export,
                           resume=a.resume, device=a.device, steps=a.steps, time_budget=a.time_budget, seed=a.seed,
                           preprocess_only=a.preprocess_only, command=command)
    json_mode = a.progress == "json"
    reporter = _reporter(a) if json_mode else None
    res = run_train(request, progress="none" if json_mode else a.progress, callback=reporter,
                    log=reporter.log if json_mode else print)
    if res is None:  # --preprocess-only
        return 0
    summary = f"best validation Dice {res.best_dice:.4f} after {res.steps} steps, {res.seconds:.0f} s -> {res.package_dir}"
    if json_mode:
        a.reporter.result({"model": str(res.package_dir), "best_dice": res.best_dice, "steps": res.steps}, summary)
    else:
        print(summary)
    return 0


def cmd_finetune(a) -> int:
    from .commands import FinetuneRequest, finetune_outputs, run_finetune

    if len(a.image) != len(a.label):
        raise InputError(f"--image given {len(a.image)} times but --label {len(a.label)} times; give one label per image")
    request = FinetuneRequest(model=a.model, cases=list(zip(a.image, a.label)), steps=a.steps, lr=a.lr, name=a.name,
                              device=a.device, force=a.force)
    res = run_finetune(request, progress=_reporter(a))
    _close(a)
    summary = (f"{res.package_dir}: Dice on the corrected case(s) {res.dice_before:.4f} -> {res.dice_after:.4f} "
               f"({res.steps} steps, {res.seconds:.1f} s)")
    if a.progress == "json":
        a.reporter.result(finetune_outputs(res), summary)
    else:
        print(summary)
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


def cmd_worker(a) -> int:
    from .worker import Worker

    return Worker().serve()


def cmd_demo(a) -> int:
    from .demo import run_demo

    run_demo(a.output, device=a.device, seed=a.seed)
    return 0


def _reporter(a):
    """The progress callback for ``--progress``: a JSON-lines reporter, a bar, or nothing."""
    from .progress import BarReporter, JsonReporter, null_progress

    mode = getattr(a, "progress", "none")
    a.reporter = JsonReporter() if mode == "json" else BarReporter() if mode == "bar" else null_progress
    return a.reporter


def _close(a) -> None:
    close = getattr(getattr(a, "reporter", None), "close", None)
    if close:
        close()


GRACE_S = 1.2  # after SIGTERM, how long the main thread has to clean up before a forced exit
_terminated = threading.Event()


def _terminate(signum, frame):
    """SIGTERM: interrupt the main thread; if a long native operation keeps it busy past
    ``GRACE_S``, a watchdog removes the pending temporary outputs and exits with 130 itself."""
    if not _terminated.is_set():
        _terminated.set()
        threading.Thread(target=_watchdog, daemon=True).start()
    raise KeyboardInterrupt


def _watchdog() -> None:
    import time

    from .io.atomic import remove_live_temporaries

    time.sleep(GRACE_S)
    remove_live_temporaries()
    print("medseg: interrupted", file=sys.stderr, flush=True)
    os._exit(EXIT_CANCELLED)


COMMANDS = {"segment": cmd_segment, "refine": cmd_refine, "models": cmd_models, "train": cmd_train,
            "finetune": cmd_finetune,
            "evaluate": cmd_evaluate, "demo": cmd_demo, "worker": cmd_worker}


def main(argv: list[str] | None = None) -> int:
    """Run one command. SIGTERM, like Ctrl-C, ends it with exit code 130; what it was writing is
    removed on the way out (outputs are staged under temporary names)."""
    args = _parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if hasattr(args, "progress") and args.progress is None:
        args.progress = "bar" if sys.stderr.isatty() else "none"
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    try:
        return COMMANDS[args.command](args)
    except MedSegError as exc:
        _close(args)
        _fail(args, str(exc), exc.exit_code)
        return exc.exit_code
    except KeyboardInterrupt:
        _close(args)
        _fail(args, "interrupted", EXIT_CANCELLED)
        if _terminated.is_set():  # skip the slow interpreter teardown: everything is cleaned up
            from .io.atomic import remove_live_temporaries

            remove_live_temporaries()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(EXIT_CANCELLED)
        return EXIT_CANCELLED


def _fail(args, message: str, code: int) -> None:
    print(f"medseg: error: {message}" if code != EXIT_CANCELLED else "medseg: interrupted", file=sys.stderr)
    reporter = getattr(args, "reporter", None)
    if getattr(args, "progress", None) == "json" and hasattr(reporter, "error"):
        reporter.error(message, code)


if __name__ == "__main__":
    sys.exit(main())
