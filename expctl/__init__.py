"""expctl: a persistent experiment queue and the daemon that runs its jobs as Hydra app children.

expctl knows nothing of speech: it runs ``python -m APP`` (``asr.train`` by default) with a
frozen, Hydra-composed configuration. It never imports ``asr``.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"

# Where the queue's parts live: store/ (database, migrations, the job state machine), specs/
# (composition, queue files, submission), daemon/ (loop, child, GPU locks), tracking/ (MLflow).
