"""Importing on a background thread (training/prefetch.py)."""

import sys

from medseg_core.training.prefetch import import_in_background


def test_a_module_is_imported_beside_the_caller_and_a_missing_one_fails_quietly(monkeypatch):
    name = "medseg_core.training.schedule"
    monkeypatch.delitem(sys.modules, name, raising=False)
    thread = import_in_background(name)
    thread.join(timeout=60)
    assert not thread.is_alive() and name in sys.modules

    missing = import_in_background("medseg_core.no_such_module")
    missing.join(timeout=60)
    assert not missing.is_alive() and "medseg_core.no_such_module" not in sys.modules


def test_an_imported_module_is_joined_at_once():
    thread = import_in_background("medseg_core")
    thread.join(timeout=60)
    assert not thread.is_alive()
