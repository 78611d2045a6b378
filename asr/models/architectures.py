"""Model architectures: a registry of functional Keras models that output CTC logits.

Every model takes ONE input, the zero-padded features ``[B, T, F]`` of ``asr.audio.features.get_features``,
and returns logits ``[B, T', len(alphabet) + 1]`` (index 0 is the CTC blank). The frame mask
comes from the input itself: :class:`FrameMask` marks frames up to the last non-zero one, the
mask travels along Keras' mask propagation (strided by :class:`MaskedConv2D`), the RNNs see a
right-padded mask (so Keras picks its cuDNN kernel on a GPU) and :class:`BlankPadding` turns
padded output frames into confident blanks. The model is a plain chain of layers, so
``for layer in model.layers[1:]: x = layer(x)`` reproduces ``model(x)`` eagerly.
"""

from __future__ import annotations

from typing import Any, Callable

import keras
from keras import layers, ops

from asr.errors import UserError

PACKAGE = "asr"
BLANK_LOGIT_GAP = 1e4  # padded frames: blank logit 0, others -1e4 (fits float16 too)


def _time_mask(mask: Any) -> Any:
    """A ``[B, T]`` mask from a ``[B, T]`` or ``[B, T, F]`` one."""
    return mask if len(mask.shape) == 2 else mask[:, :, 0]


def _positions(reference: Any) -> Any:
    """1, 2, ..., T along axis 1 of a ``[B, T]`` tensor (works with unknown T)."""
    return ops.cumsum(ops.ones_like(reference, dtype="int32"), axis=1)


def _over_frequency(time_mask: Any, frequencies: int) -> Any:
    """``[B, T]`` -> ``[B, T, F]``."""
    return ops.repeat(ops.expand_dims(time_mask, -1), frequencies, axis=-1)


@keras.saving.register_keras_serializable(package=PACKAGE)
class FrameMask(layers.Layer):
    """Passes features through and attaches a right-padded mask: frames up to the last non-zero one.

    Padding frames are all zeros; a real frame that happens to be all zeros in the middle of an
    utterance stays unmasked, and every utterance keeps at least one frame (cuDNN refuses fully
    masked rows).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.supports_masking = True

    def frame_lengths(self, inputs: Any) -> Any:
        nonzero = ops.any(ops.not_equal(inputs, 0), axis=-1)  # [B, T]
        lengths = ops.max(ops.where(nonzero, _positions(nonzero), 0), axis=1)
        return ops.maximum(lengths, 1)

    def call(self, inputs: Any, mask: Any = None) -> Any:
        return inputs

    def compute_mask(self, inputs: Any, mask: Any = None) -> Any:
        nonzero = ops.any(ops.not_equal(inputs, 0), axis=-1)
        return ops.less_equal(_positions(nonzero), ops.expand_dims(self.frame_lengths(inputs), 1))

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape


@keras.saving.register_keras_serializable(package=PACKAGE)
class AddChannel(layers.Layer):
    """``[B, T, F]`` -> ``[B, T, F, 1]`` for the 2-D convolutions; the mask becomes ``[B, T, F]``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, inputs: Any, mask: Any = None) -> Any:
        return ops.expand_dims(inputs, -1)

    def compute_mask(self, inputs: Any, mask: Any = None) -> Any:
        if mask is None:
            return None
        return _over_frequency(_time_mask(mask), inputs.shape[2])

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (*input_shape, 1)


@keras.saving.register_keras_serializable(package=PACKAGE)
class MaskedConv2D(layers.Conv2D):
    """Conv2D over (time, frequency) that zeroes padded frames first and strides the mask.

    Padding is explicit and the same for every utterance (``(k-1)//2`` before, ``k//2`` after),
    so a valid output frame is the same whether the utterance is batched with longer ones or
    not, and ``T' = ceil(T / stride)``. The mask is ``[B, T, F]`` (constant along frequency) so
    that BatchNormalization, which wants a mask one rank below its input, accepts it.
    """

    def __init__(self, filters: int, kernel_size: Any, strides: Any = (1, 1), **kwargs: Any) -> None:
        kwargs.pop("padding", None)
        super().__init__(filters, kernel_size, strides=strides, padding="valid", **kwargs)
        self.supports_masking = True

    def _pad(self, inputs: Any) -> Any:
        (time_kernel, freq_kernel) = self.kernel_size
        return ops.pad(inputs, [[0, 0], [(time_kernel - 1) // 2, time_kernel // 2],
                                [(freq_kernel - 1) // 2, freq_kernel // 2], [0, 0]])

    def call(self, inputs: Any, mask: Any = None) -> Any:
        if mask is not None:
            inputs = inputs * ops.cast(ops.expand_dims(mask, -1), inputs.dtype)
        return super().call(self._pad(inputs))

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        batch, time, freq, _ = input_shape
        time_stride, freq_stride = self.strides
        time_out = None if time is None else -(-time // time_stride)
        freq_out = None if freq is None else -(-freq // freq_stride)
        return (batch, time_out, freq_out, self.filters)

    def compute_mask(self, inputs: Any, mask: Any = None) -> Any:
        if mask is None:
            return None
        time_stride, freq_stride = self.strides
        # The mask is right-padded: output frame j is valid iff j * stride < length, i.e. j < ceil(length / stride).
        time_mask = _time_mask(mask)[:, ::time_stride]
        return _over_frequency(time_mask, -(-inputs.shape[2] // freq_stride))


@keras.saving.register_keras_serializable(package=PACKAGE)
class MergeFrequency(layers.Layer):
    """``[B, T, F, C]`` -> ``[B, T, F*C]``; the mask becomes ``[B, T]`` for the RNNs."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, inputs: Any, mask: Any = None) -> Any:
        shape = ops.shape(inputs)
        return ops.reshape(inputs, (shape[0], shape[1], inputs.shape[2] * inputs.shape[3]))

    def compute_mask(self, inputs: Any, mask: Any = None) -> Any:
        return None if mask is None else _time_mask(mask)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (input_shape[0], input_shape[1], input_shape[2] * input_shape[3])


@keras.saving.register_keras_serializable(package=PACKAGE)
class StackContext(layers.Layer):
    """DeepSpeech 1 context: each frame concatenated with ``context`` frames on each side (zeros at the edges)."""

    def __init__(self, context: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.context = int(context)
        self.supports_masking = True

    def call(self, inputs: Any, mask: Any = None) -> Any:
        if mask is not None:
            inputs = inputs * ops.cast(ops.expand_dims(mask, -1), inputs.dtype)
        time = ops.shape(inputs)[1]
        padded = ops.pad(inputs, [[0, 0], [self.context, self.context], [0, 0]])
        windows = [padded[:, offset: offset + time, :] for offset in range(2 * self.context + 1)]
        return ops.concatenate(windows, axis=-1)

    def compute_mask(self, inputs: Any, mask: Any = None) -> Any:
        return mask

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (input_shape[0], input_shape[1], input_shape[2] * (2 * self.context + 1))

    def get_config(self) -> dict:
        return {**super().get_config(), "context": self.context}


@keras.saving.register_keras_serializable(package=PACKAGE)
class BlankPadding(layers.Layer):
    """Logits of padded frames become a confident blank (0 for blank, -1e4 elsewhere); drops the mask."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, inputs: Any, mask: Any = None) -> Any:
        if mask is None:
            return inputs
        labels = inputs.shape[-1]
        blank = ops.convert_to_tensor([0.0] + [-BLANK_LOGIT_GAP] * (labels - 1), dtype=inputs.dtype)
        return ops.where(ops.expand_dims(_time_mask(mask), -1), inputs, blank)

    def compute_mask(self, inputs: Any, mask: Any = None) -> Any:
        return None

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape


@keras.saving.register_keras_serializable(package=PACKAGE)
class ProjectedGRU(layers.GRU):
    """Keras' GRU under the name that bundles saved before 2026-12-02 use (``asr>ProjectedGRU``), so they load.

    It used to take the input projection out of Keras' (private) CPU step loop; the speed-up did not
    reproduce when re-measured (+-1 %), so new models are built with ``keras.layers.GRU`` and this
    alias only deserialises old bundles (same weights, same outputs).
    """


RNN_LAYERS: dict[str, Callable[..., layers.Layer]] = {
    "lstm": layers.LSTM,
    "gru": lambda **settings: layers.GRU(reset_after=True, **settings),
}


def _rnn(rnn_type: str, units: int, name: str) -> layers.Layer:
    """A recurrent layer whose settings qualify for Keras' cuDNN kernel."""
    return RNN_LAYERS[rnn_type](units=units, return_sequences=True, activation="tanh", recurrent_activation="sigmoid",
                                recurrent_dropout=0.0, unroll=False, use_bias=True, name=name)


def _rnn_stack(x: Any, parameters: Any) -> Any:
    for index, units in enumerate(parameters.rnn_sizes):
        x = layers.Bidirectional(_rnn(parameters.rnn_type, int(units), f"{parameters.rnn_type}_{index}"),
                                 merge_mode="concat", name=f"birnn_{index}")(x)
        if parameters.dropout > 0:
            x = layers.Dropout(parameters.dropout, name=f"birnn_{index}_dropout")(x)
    return x


def _logits(x: Any, num_labels: int) -> Any:
    x = layers.Dense(num_labels, dtype="float32", name="logits")(x)
    return BlankPadding(dtype="float32", name="blank_padding")(x)


def build_deepspeech2(num_features: int, num_labels: int, parameters: Any) -> keras.Model:
    """DeepSpeech 2: 2-D convolutions (+BatchNorm+ReLU) over (time, frequency), BiRNNs, logits."""
    if not (len(parameters.conv_filters) == len(parameters.conv_kernels) == len(parameters.conv_strides)):
        raise UserError("model.parameters: conv_filters, conv_kernels and conv_strides must have the same length")
    features = keras.Input(shape=(None, num_features), name="features")
    x = FrameMask(name="frame_mask")(features)
    x = AddChannel(name="add_channel")(x)
    for index, (filters, kernel, stride) in enumerate(
            zip(parameters.conv_filters, parameters.conv_kernels, parameters.conv_strides)):
        x = MaskedConv2D(int(filters), tuple(int(k) for k in kernel), strides=tuple(int(s) for s in stride),
                         use_bias=False, name=f"conv_{index}")(x)
        x = layers.BatchNormalization(name=f"conv_{index}_bn")(x)
        x = layers.ReLU(max_value=20.0, name=f"conv_{index}_relu")(x)
    x = MergeFrequency(name="merge_frequency")(x)
    x = _rnn_stack(x, parameters)
    return keras.Model(features, _logits(x, num_labels), name="deepspeech2")


def build_deepspeech(num_features: int, num_labels: int, parameters: Any) -> keras.Model:
    """DeepSpeech 1: frames with context, clipped-ReLU dense layers, one BiRNN, logits."""
    features = keras.Input(shape=(None, num_features), name="features")
    x = FrameMask(name="frame_mask")(features)
    x = StackContext(int(parameters.context), name="context")(x)
    for index, units in enumerate(parameters.dense_sizes):
        x = layers.Dense(int(units), name=f"dense_{index}")(x)
        x = layers.ReLU(max_value=20.0, name=f"dense_{index}_relu")(x)
        if parameters.dropout > 0:
            x = layers.Dropout(parameters.dropout, name=f"dense_{index}_dropout")(x)
    x = _rnn_stack(x, parameters)
    return keras.Model(features, _logits(x, num_labels), name="deepspeech")


MODELS: dict[str, Callable[[int, int, Any], keras.Model]] = {
    "deepspeech2": build_deepspeech2,
    "deepspeech": build_deepspeech,
}


def _known(name: str) -> str:
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    return name


def build_model(model_config: Any, num_features: int, num_labels: int) -> keras.Model:
    """The registered architecture ``model_config.name``; ``num_labels`` = len(alphabet) + 1."""
    return MODELS[_known(model_config.name)](int(num_features), int(num_labels), model_config.parameters)


def time_strides(model_config: Any) -> list[int]:
    """The time strides of the model's front end, in order."""
    if _known(model_config.name) == "deepspeech2":
        return [int(stride[0]) for stride in model_config.parameters.conv_strides]
    return []


def output_lengths(input_lengths: Any, model_config: Any) -> Any:
    """Logit frames per utterance for ``input_lengths`` feature frames (numpy, TF or Python ints)."""
    lengths = input_lengths
    for stride in time_strides(model_config):
        lengths = (lengths + stride - 1) // stride
    return lengths

