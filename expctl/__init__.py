"""expctl: a persistent experiment queue and the daemon that runs its jobs as Hydra app children.

expctl knows nothing of speech: it runs ``python -m APP`` (``asr.train`` by default) with a
frozen, Hydra-composed configuration. It never imports ``asr``.
"""

import importlib

__all__ = ["__version__"]

__version__ = "0.1.0"

# Where the queue's parts live: store/ (database, migrations, the job state machine), specs/
# (composition, queue files, submission), daemon/ (loop, child, GPU locks), tracking/ (MLflow).
# The flat names of before that layout still import for scripts (``from expctl import db, jobs``).
_MOVED = {"db": "expctl.store.db", "jobs": "expctl.store.jobs"}


def __getattr__(name: str) -> object:
    if name in _MOVED:
        return importlib.import_module(_MOVED[name])
    raise AttributeError(f"module 'expctl' has no attribute {name!r}")
