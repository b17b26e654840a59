"""Importing a module on a background thread while the CPU waits on other work.

PyTorch's optimisers import ``torch._dynamo`` the first time one is built (1.6 s of Python on the
machine of ``docs/results.md``); a fine-tune builds its optimiser after the parent's pass over the
corrected cases, which spends its time in the network runtime with the GIL released, so the
import can run beside it.
"""

from __future__ import annotations

import importlib
import threading


def import_in_background(name: str) -> threading.Thread:
    """Starts importing ``name`` on a daemon thread and returns the thread (``join`` it before the
    import is needed; an import that fails there fails again, with its error, where it is used)."""

    def run():
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the import proper, later, reports it
            pass

    thread = threading.Thread(target=run, name=f"import {name}", daemon=True)
    thread.start()  # an imported module returns at once
    return thread
