"""Architectures: shapes, masks, output lengths, cuDNN-eligible RNN settings, registry."""

import keras
import numpy as np
import pytest
from omegaconf import OmegaConf

from asr.configuration import ModelConfig
from asr.errors import UserError
from asr.models.architectures import build_model, output_lengths

NUM_FEATURES, NUM_LABELS = 26, 29


def tiny_config(name: str = "deepspeech2", rnn_type: str = "lstm"):
    config = OmegaConf.structured(ModelConfig(name=name))
    config.parameters.rnn_type = rnn_type
    config.parameters.rnn_sizes = [16, 16]
    config.parameters.conv_filters = [4, 4]
    config.parameters.conv_strides = [[2, 2], [1, 2]]
    config.parameters.dense_sizes = [16]
    config.parameters.context = 2
    return config


def frame_lengths(features: np.ndarray) -> np.ndarray:
    """True frame counts of a padded batch, as the model's FrameMask sees them (last non-zero frame, at least 1)."""
    nonzero = np.any(features != 0, axis=-1)
    positions = np.arange(1, features.shape[1] + 1)[None, :]
    return np.maximum(np.max(np.where(nonzero, positions, 0), axis=1), 1).astype(np.int32)


def padded_batch(lengths, seed=0):
    rng = np.random.default_rng(seed)
    batch = np.zeros((len(lengths), max(lengths), NUM_FEATURES), np.float32)
    for row, length in enumerate(lengths):
        batch[row, :length] = rng.normal(size=(length, NUM_FEATURES))
    return batch


@pytest.mark.parametrize("name,rnn_type", [("deepspeech2", "lstm"), ("deepspeech2", "gru"), ("deepspeech", "lstm")])
def test_output_shape_and_lengths_match_the_model(name, rnn_type):
    config = tiny_config(name, rnn_type)
    model = build_model(config, NUM_FEATURES, NUM_LABELS)
    batch = padded_batch([37, 20, 9])
    logits = np.asarray(model(batch, training=False))
    lengths = output_lengths(frame_lengths(batch), config)
    assert logits.shape == (3, int(output_lengths(37, config)), NUM_LABELS)
    assert lengths.tolist() == ([19, 10, 5] if name == "deepspeech2" else [37, 20, 9])
    for row, length in enumerate(lengths):  # padded frames are confident blanks
        assert (logits[row, length:].argmax(-1) == 0).all()
        assert (logits[row, :length, 1:] > -1e3).all()


@pytest.mark.parametrize("name", ["deepspeech2", "deepspeech"])
def test_an_utterance_gives_the_same_logits_alone_or_padded_in_a_batch(name):
    config = tiny_config(name)
    model = build_model(config, NUM_FEATURES, NUM_LABELS)
    batch = padded_batch([40, 13])
    together = np.asarray(model(batch, training=False))
    alone = np.asarray(model(batch[1:, :13], training=False))
    length = int(output_lengths(13, config))
    np.testing.assert_allclose(together[1, :length], alone[0, :length], atol=1e-5)


@pytest.mark.parametrize("rnn_type", ["lstm", "gru"])
def test_rnn_layers_qualify_for_the_cudnn_kernel(rnn_type):
    model = build_model(tiny_config(rnn_type=rnn_type), NUM_FEATURES, NUM_LABELS)
    rnns = [layer.forward_layer for layer in model.layers if isinstance(layer, keras.layers.Bidirectional)]
    rnns += [layer.backward_layer for layer in model.layers if isinstance(layer, keras.layers.Bidirectional)]
    assert len(rnns) == 4
    for rnn in rnns:
        assert rnn.activation is keras.activations.tanh
        assert rnn.recurrent_activation is keras.activations.sigmoid
        assert rnn.cell.recurrent_dropout == 0 and rnn.cell.dropout == 0
        assert rnn.unroll is False and rnn.cell.use_bias is True and rnn.use_cudnn == "auto"
        if rnn_type == "gru":
            assert rnn.cell.reset_after is True
        # Keras' own test: these arguments allow cuDNN (on a machine with a GPU)
        from keras.src.backend.tensorflow.rnn import _do_gru_arguments_support_cudnn, _do_lstm_arguments_support_cudnn
        arguments = dict(activation=rnn.activation, recurrent_activation=rnn.recurrent_activation,
                         unroll=rnn.unroll, use_bias=rnn.cell.use_bias)
        if rnn_type == "gru":
            assert _do_gru_arguments_support_cudnn(reset_after=rnn.cell.reset_after, **arguments)
        else:
            assert _do_lstm_arguments_support_cudnn(**arguments)


def test_the_mask_reaching_the_rnns_is_right_padded_even_with_silent_frames_inside():
    batch = padded_batch([30, 12])
    batch[0, 5:10] = 0  # all-zero frames inside an utterance stay part of it
    assert frame_lengths(batch).tolist() == [30, 12]


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(UserError, match="deepspeech, deepspeech2"):
        build_model(OmegaConf.create({"name": "wav2letter", "parameters": {}}), NUM_FEATURES, NUM_LABELS)
