"""The library checks what it is given where it is given: a network's, an image folder's and a learner's
arguments are one exception naming the argument and what is expected, before anything is built."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import conftest  # noqa: F401 (first: the repository on the path, fewshot's TensorFlow CPU backend set up)

import keras
import pytest

from fewshot import data, network  # noqa: E402
from fewshot.errors import DataError  # noqa: E402
from fewshot.learners import ANIL, MAML, PrototypicalNetwork  # noqa: E402


@pytest.mark.parametrize('arguments,message', [
    (dict(n_way=1), 'n_way: a whole number, 2 or more, expected; got 1'),
    (dict(n_way=5.0), 'n_way: a whole number, 2 or more, expected; got 5.0'),
    (dict(n_way=5, num_filters=0), 'num_filters: a whole number, 1 or more, expected; got 0'),
    (dict(n_way=5, image_size='28'), "image_size: a whole number, 1 or more, expected; got '28'"),
    (dict(n_way=5, channels=2), 'channels: 1 (grayscale) or 3 (RGB) expected; got 2'),
    (dict(n_way=5, precision='float16'), "precision: 'float32' or 'bfloat16' expected; got 'float16'"),
])
def test_a_network_names_its_wrong_argument(arguments, message):
    for architecture in (network.ConvNet, network.ResNet):
        with pytest.raises(ValueError) as raised:
            architecture(**arguments)
        assert str(raised.value) == message


def test_an_image_folder_names_a_wrong_image_size_not_an_image(tmp_path):
    (tmp_path / 'a').mkdir()
    with pytest.raises(DataError, match=r"^image_size '28': a whole number of pixels, 1 or more, expected$"):
        data.load_image_folder(tmp_path, image_size='28')


def _sequential():
    return keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(5)])


def test_a_keras_model_held_by_a_living_learner_is_refused_unless_shared_on_purpose():
    net = network.KerasNetwork(_sequential())
    first = MAML(net, inner_lr=0.1, num_inner_steps=1)
    for build in (lambda: MAML(net, inner_lr=0.1, num_inner_steps=1), lambda: PrototypicalNetwork(net)):
        with pytest.raises(ValueError, match=r"^net: its Keras model '\w+' already holds the meta-parameters of "
                                             r'another learner \(MAML\)'):
            build()
    shared = MAML(net, first.model, inner_lr=0.2, num_inner_steps=1)  # On purpose: evaluating at another rate.
    assert shared.model is first.model
    convnet = network.ConvNet(n_way=5, num_filters=4)  # Builds a new Keras model for every learner.
    assert MAML(convnet, inner_lr=0.1, num_inner_steps=1).model is not MAML(convnet, inner_lr=0.1,
                                                                            num_inner_steps=1).model


def test_a_learner_that_needs_a_linear_head_says_so_as_it_is_built():
    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(5),
                              keras.layers.ReLU()])
    with pytest.raises(ValueError, match=r"^net: the Keras model '\w+' must end in a Dense layer with a bias"):
        ANIL(network.KerasNetwork(model), inner_lr=0.1, num_inner_steps=1)
