"""Speech recognition on Keras: ``from asr import load_model``.

TensorFlow is imported lazily, so ``import asr`` (and Hydra's ``--cfg job``) stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from asr.pipeline import Pipeline


def load_model(path_or_name: str) -> "Pipeline":
    """A ready-to-use :class:`asr.pipeline.Pipeline` from a model name or a bundle path (``.bin``).

    A name such as ``"en"`` is looked for in the package (``asr/pretrained/``), then in
    ``~/.cache/asr/models``, then in ``$ASR_MODELS_DIR``; ``asr models list`` shows what is installed.
    """
    from asr.pipeline import load_model as _load_model  # here: ``import asr`` must not load TensorFlow

    return _load_model(path_or_name)


__all__ = ["load_model", "__version__"]
