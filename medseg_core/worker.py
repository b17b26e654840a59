"""``medseg worker``: a long-lived process that keeps models loaded between requests.

It reads one JSON request per line on stdin and answers with the events of the progress protocol
(``docs/protocol.md``) on stdout, each carrying the request's ``id``; the last event of a request
is a ``result`` or an ``error``. Requests are handled one at a time, in order.

Requests::

    {"id": "1", "command": "segment", "args": {"inputs": [...], "model": "hn-oar-unet", "output": "DIR",
                                             "device": "auto", "tta": false, "confidence": true,
                                             "confidence_threshold": 0.5, "roi": null, "overwrite": false}}
    {"id": "2", "command": "finetune", "args": {"model": ..., "cases": [[image, label], ...], "steps": null,
                                              "lr": null, "name": null, "device": "auto"}}
    {"id": "3", "command": "refine", "args": {"input": "ct.nii.gz", "model": "hn-oar", "labels": "out/ct_labels.nii.gz",
                                            "output": "out2", "overwrite": true, "device": "auto",
                                            "prompts": [{"label": "Larynx", "point": [x, y, z]}]}}
    {"id": "4", "command": "models"}
    {"id": "5", "command": "shutdown"}

Each request's ``args`` are checked by the command's request type (``medseg_core.commands``), as
the CLI's options are: a bad or unknown argument gets an ``error`` event (code 2) and the worker
goes on serving. A loaded model (and its device's warm-up) is reused by later ``segment``
requests for the same package, device and batch size; a ``finetune`` that creates a new model
leaves the cache as is.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TextIO

from .errors import EXIT_INPUT, MedSegError
from .progress import JsonReporter

IMAGE_CACHE = 2
"""Cases whose images the worker keeps between requests (a refine after a segment of the same
file, or a second refine, reads nothing)."""


class Worker:
    def __init__(self, stdout: TextIO | None = None):
        self.stdout = stdout or sys.stdout
        self.predictors: dict[tuple, object] = {}
        self.images: dict[tuple, list] = {}  # recent images, by path, modification time and size

    def predictor(self, model: str, device: str, batch_size: int):
        from .inference.predictor import Predictor
        from .models import find_model

        pkg = find_model(model)
        key = (str(pkg.path.resolve()), pkg.card.weights.sha256, device, batch_size)
        if key not in self.predictors:
            self.predictors[key] = Predictor(pkg, device=device, batch_size=batch_size)
        return self.predictors[key], key

    def read_images(self, path: str, n_channels: int) -> list:
        """A case's channels, kept for the next request on the same unchanged files (the last
        ``IMAGE_CACHE`` cases)."""
        from .io import channel_paths, read_channels

        stats = [p.stat() for p in channel_paths(Path(path), n_channels) if p.exists()]
        key = (str(Path(path).resolve()), n_channels, tuple((s.st_mtime_ns, s.st_size) for s in stats))
        if key not in self.images:
            images = read_channels(path, n_channels)
            while len(self.images) >= IMAGE_CACHE:
                self.images.pop(next(iter(self.images)))  # the oldest
            self.images[key] = images
        return self.images[key]

    def segment(self, args: dict, reporter: JsonReporter):
        from .commands import SegmentRequest, run_segment

        request = SegmentRequest.from_dict(args)
        pred, _ = self.predictor(request.model, request.device, request.batch_size)
        pred.progress = reporter
        cached = getattr(pred, "load_reported", False)
        reports = run_segment(request, progress=reporter, predictor=pred, read_images=self.read_images)
        return {"reports": reports, "model_was_loaded": cached}

    def finetune(self, args: dict, reporter: JsonReporter):
        from .commands import FinetuneRequest, finetune_outputs, run_finetune

        return finetune_outputs(run_finetune(FinetuneRequest.from_dict(args), progress=reporter))

    def refine(self, args: dict, reporter: JsonReporter):
        from .commands import RefineRequest, run_refine

        request = RefineRequest.from_dict(args)
        pred, _ = self.predictor(request.model, request.device, 4)
        pred.progress = reporter
        return run_refine(request, progress=reporter, predictor=pred, read_images=self.read_images)

    def models(self, args: dict, reporter: JsonReporter):
        from .commands import models_json

        return models_json()

    def handle(self, line: str) -> bool:
        """Answer one request line; returns False on shutdown."""
        try:
            req = json.loads(line)
            rid = req.get("id")
            command = req["command"]
        except (json.JSONDecodeError, KeyError, AttributeError) as exc:
            JsonReporter(self.stdout).error(f"bad request ({exc}): {line.strip()[:200]}", EXIT_INPUT)
            return True
        reporter = JsonReporter(self.stdout, extra={"id": rid})
        if command == "shutdown":
            reporter.result(None, "bye")
            return False
        handler = {"segment": self.segment, "refine": self.refine, "finetune": self.finetune,
                   "models": self.models}.get(command)
        if handler is None:
            reporter.error(f"unknown command {command!r} (segment, refine, finetune, models, shutdown)", EXIT_INPUT)
            return True
        try:
            reporter.result(handler(req.get("args", {}), reporter))
        except MedSegError as exc:
            reporter.error(str(exc), exc.exit_code)
        return True

    def serve(self, stdin: TextIO | None = None) -> int:
        for line in stdin or sys.stdin:
            if line.strip() and not self.handle(line):
                break
        return 0
