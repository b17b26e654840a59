"""The engine's API: one request type and one ``run`` per command, under two faces.

``cli.py`` (argparse) and ``worker.py`` (JSON lines on stdin) only translate their input into a
request and its result into their output. Each request checks its own arguments when it is built
(``SegmentRequest.from_dict`` / the dataclass constructor), so both faces refuse the same bad
values with the same one-line ``InputError``: the CLI exits with 2, the worker answers an ``error``
event and keeps serving. Messages name the CLI's option (``--confidence-threshold``), the one
spelling the documentation uses.

* :mod:`.segment`: ``SegmentRequest``, ``run_segment`` (also the share of the inputs of one rank
  under ``torchrun``);
* :mod:`.finetune`: ``FinetuneRequest``, ``run_finetune``, ``finetune_outputs`` (the result event's);
* :mod:`.refine`: ``RefineRequest``, ``run_refine`` (prompts that re-segment one organ);
* :mod:`.train`: ``TrainRequest`` (with the command line the card records), ``run_train``;
* :mod:`.models`: ``models_json``, the installed models as ``medseg models --json`` prints them;
* :mod:`.checks`: the argument checks the requests share.
"""

from .finetune import FinetuneRequest, finetune_outputs, run_finetune
from .models import models_json
from .refine import RefineRequest, run_refine
from .segment import SegmentRequest, run_segment
from .train import TrainRequest, run_train

__all__ = ["FinetuneRequest", "RefineRequest", "SegmentRequest", "TrainRequest", "finetune_outputs", "models_json",
           "run_finetune", "run_refine", "run_segment", "run_train"]
