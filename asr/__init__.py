"""Speech recognition on Keras: ``from asr import load_model``.

TensorFlow is imported lazily, so ``import asr`` (and Hydra's ``--cfg job``) stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from asr.pipeline import Pipeline


def load_model(path_or_name: str, **options: Any) -> "Pipeline":
    """Load a model bundle (``.bin``) and return a ready-to-use :class:`asr.pipeline.Pipeline`."""
    from asr.pipeline import load_model as _load_model

    return _load_model(path_or_name, **options)


__all__ = ["load_model", "__version__"]
