"""Speech recognition on Keras: the public API.

    import asr
    pipeline = asr.load_model("en")            # a name (asr models list) or a bundle path
    sentences = pipeline(["a.wav", "b.flac"])   # asr.inference: batches of similar length
    pipeline = asr.Pipeline.from_configuration(asr.Configuration("new.yaml")); pipeline.train()

``Pipeline`` and ``Configuration`` are imported at first use (PEP 562): ``import asr`` must not load
TensorFlow (about 5 s), so that ``asr --help`` and Hydra's ``--cfg job`` stay fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from asr.configuration import Configuration
    from asr.pipeline import Pipeline

_LAZY = {"Pipeline": "asr.pipeline", "Configuration": "asr.configuration"}


def load_model(path_or_name: str) -> "Pipeline":
    """A ready-to-use :class:`asr.pipeline.Pipeline` from a model name or a bundle path (``.bin``).

    A name such as ``"en"`` is looked for in the package (``asr/pretrained/``), then in
    ``~/.cache/asr/models``, then in ``$ASR_MODELS_DIR``; ``asr models list`` shows what is installed.
    """
    return import_module("asr.pipeline").load_model(path_or_name)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'asr' has no attribute {name!r}")


__all__ = ["Configuration", "Pipeline", "load_model", "__version__"]
