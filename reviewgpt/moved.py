"""Module paths from before issue 14 split reviewgpt into data/, train/, eval/ and env/.

`import reviewgpt.tokenization` (or `from reviewgpt.plan import plan`) still works: the old name
gives the new module itself, the same object, so patching either name patches both. New code
imports the new paths; docs/design.md lists what moved. `reviewgpt/__init__.py` installs this
finder first in `sys.meta_path`: under an old package name (`reviewgpt.speed.loss`) Python's own
finder would otherwise load a second copy of the module from the new folder.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys

# old module (or package) -> where it lives now; a package's sub-modules follow it.
MOVED = {
    "reviewgpt.records": "reviewgpt.data.records",
    "reviewgpt.prompt": "reviewgpt.data.prompt",
    "reviewgpt.tokenization": "reviewgpt.data.tokenization",
    "reviewgpt.datacheck": "reviewgpt.data.check",
    "reviewgpt.sample": "reviewgpt.data.sample",
    "reviewgpt.llamafactory": "reviewgpt.data.llamafactory",
    "reviewgpt.oom": "reviewgpt.train.oom",
    "reviewgpt.distributed": "reviewgpt.train.distributed",
    "reviewgpt.plan": "reviewgpt.train.plan",
    "reviewgpt.bench": "reviewgpt.train.bench",
    "reviewgpt.speed.llama_mask": "reviewgpt.llama_mask",
    "reviewgpt.speed": "reviewgpt.train.speed",
    "reviewgpt.generate": "reviewgpt.eval.generate",
    "reviewgpt.likelihood": "reviewgpt.eval.likelihood",
    "reviewgpt.needle": "reviewgpt.eval.needle",
    "reviewgpt.score": "reviewgpt.eval.score",
    "reviewgpt.report": "reviewgpt.eval.report",
    "reviewgpt.coverage": "reviewgpt.eval.coverage",
    "reviewgpt.judge": "reviewgpt.eval.judge",
    "reviewgpt.doctor": "reviewgpt.env.doctor",
    "reviewgpt.tiny": "reviewgpt.env.tiny",
}


def new_name(old: str):
    """Where module `old` lives now, or None when it did not move."""
    if old in MOVED:
        return MOVED[old]
    package = max((p for p in MOVED if old.startswith(p + ".")), key=len, default=None)
    return MOVED[package] + old[len(package):] if package else None


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target
        self.spec = None

    def create_module(self, spec):
        module = importlib.import_module(self.target)
        self.spec = module.__spec__  # the import system sets the alias spec on it next
        return module

    def exec_module(self, module):
        module.__spec__ = self.spec  # already executed under its new name; keep its own spec

    def get_code(self, fullname):
        """For `python -m OLD.NAME` (runpy): the new module's code."""
        return importlib.util.find_spec(self.target).loader.get_code(self.target)


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        target_name = new_name(fullname) if fullname.startswith("reviewgpt.") else None
        if target_name is None:
            return None
        if fullname in MOVED:  # a module of that name that is really there wins (e.g. mid-move)
            real = importlib.machinery.PathFinder.find_spec(fullname, path)
            if real is not None and real.has_location:  # not a namespace left by a stale __pycache__
                return None
        else:  # under an old package name: only when that package is an alias itself
            parent_name = fullname.rpartition(".")[0]
            parent = sys.modules.get(parent_name)
            if parent is None or parent.__name__ == parent_name:
                return None
        return importlib.util.spec_from_loader(fullname, _Alias(target_name))


def install() -> None:
    if not any(isinstance(f, MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, MovedModuleFinder())
