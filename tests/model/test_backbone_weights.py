"""Backbones started from Keras applications' weight files: the same features as Keras' own
model, and clear errors for a file that is not one."""

import h5py
import keras
import numpy as np
import pytest
from keras.src.legacy.saving import legacy_h5_format

from model.backbones import BACKBONES, BackboneWeightsError, build_backbone

TAPS = BACKBONES["resnet50"].taps


IMAGES = np.random.default_rng(1).uniform(0, 255, (1, 224, 224, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def resnet50(tmp_path_factory):
    """keras.applications.ResNet50(weights=None), classifier included, seed 0: its weights
    saved in both of Keras' formats, and its C3-C5 on IMAGES after its own preprocessing
    (caffe: BGR minus the ImageNet means)."""
    tmp = tmp_path_factory.mktemp("resnet50")
    keras.utils.set_random_seed(0)
    reference = keras.applications.ResNet50(weights=None)
    reference.save_weights(tmp / "resnet50.weights.h5")
    with h5py.File(tmp / "resnet50.h5", "w") as f:  # the legacy format of Keras 2's files
        legacy_h5_format.save_weights_to_hdf5_group(f, reference)
    taps = keras.Model(reference.input, [reference.get_layer(t).output for t in TAPS])
    expected = [np.asarray(o) for o in
                taps(keras.applications.resnet50.preprocess_input(IMAGES.copy()))]
    return tmp, expected


@pytest.mark.parametrize("file", ["resnet50.weights.h5", "resnet50.h5"])
def test_resnet50_from_a_weights_file_gives_keras_features(resnet50, file):
    # Both files hold the classifier on top: the .weights.h5 file is read by layer name by
    # Keras itself; the legacy .h5 one fails Keras' layer-by-layer order and is read by name.
    tmp, expected = resnet50
    ours = [np.asarray(o) for o in
            build_backbone("resnet50", (224, 224, 3), str(tmp / file))(IMAGES)]
    assert [o.shape for o in ours] == [(1, 28, 28, 512), (1, 14, 14, 1024), (1, 7, 7, 2048)]
    for got, want in zip(ours, expected, strict=True):
        assert np.abs(want).max() > 0.1  # real activations, not a dead output
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_random_weights_give_other_features(resnet50):
    # What makes the test above fail when the file is not read.
    _, expected = resnet50
    random = build_backbone("resnet50", (224, 224, 3))(IMAGES)
    assert not np.allclose(np.asarray(random[2]), expected[2], atol=1e-3)


def test_a_file_that_is_not_hdf5_names_the_file(tmp_path):
    bad = tmp_path / "resnet50.weights.h5"
    bad.write_text("not weights")
    with pytest.raises(BackboneWeightsError, match=rf"{bad}: not resnet50's weights"):
        build_backbone("resnet50", (64, 64, 3), str(bad))


def test_another_models_weights_are_refused(tmp_path):
    # A real Keras weights file of another network: nothing of ResNet50 in it.
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="dense")])
    other.save_weights(tmp_path / "dense.weights.h5")
    with pytest.raises(BackboneWeightsError, match="dense.weights.h5: not resnet50's weights"):
        build_backbone("resnet50", (64, 64, 3), str(tmp_path / "dense.weights.h5"))
    with h5py.File(tmp_path / "dense.h5", "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, other)
    with pytest.raises(BackboneWeightsError, match=r"dense.h5: not resnet50's weights.*"
                                                   r"layers with weights are not in the file"):
        build_backbone("resnet50", (64, 64, 3), str(tmp_path / "dense.h5"))


def test_a_deeper_networks_legacy_file_is_refused(tmp_path):
    # ResNet101's .h5 file has every layer name of ResNet50 (and 17 more conv4 blocks): read
    # by name it would load without a complaint, a truncated ResNet101.
    deeper = keras.applications.ResNet101(weights=None, include_top=False,
                                          input_shape=(64, 64, 3))
    with h5py.File(tmp_path / "resnet101.h5", "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, deeper)
    with pytest.raises(BackboneWeightsError, match=r"resnet101.h5: not resnet50's weights.*"
                                                   r"layers this network does not have, e\.g\. "
                                                   r"conv4_block10_1_bn"):
        build_backbone("resnet50", (64, 64, 3), str(tmp_path / "resnet101.h5"))


def test_a_missing_file_and_a_wrong_suffix(tmp_path):
    with pytest.raises(BackboneWeightsError, match="nowhere.h5: no such file"):
        build_backbone("resnet50", (64, 64, 3), str(tmp_path / "nowhere.h5"))
    (tmp_path / "weights.npz").write_bytes(b"")
    with pytest.raises(BackboneWeightsError, match="weights.npz: not a Keras applications "
                                                   "weights file"):
        build_backbone("resnet50", (64, 64, 3), str(tmp_path / "weights.npz"))


def test_small_backbone_has_no_imagenet_weights():
    with pytest.raises(BackboneWeightsError, match="small backbone has neither ImageNet"):
        build_backbone("small", (64, 64, 3), "imagenet")
