import keras
import numpy as np
import pytest

from boxes.anchors import AnchorConfig
from model.backbones import BACKBONES, build_backbone
from model.config import ModelConfig
from model.heads import group_norm_groups
from model.retinanet import _all_layers, build_inference_model, build_retinanet

TINY = dict(fpn_channels=32, head_convs=1, head_channels=32, image_size=128)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_backbone_taps_have_strides_8_16_32(name):
    backbone = build_backbone(name, (128, 128, 3))
    assert [tuple(o.shape[1:3]) for o in backbone.outputs] == [(16, 16), (8, 8), (4, 4)]


@pytest.mark.parametrize("norm", ["group", "batch", "none"])
def test_model_shapes(norm):
    config = ModelConfig(num_classes=5, backbone="small", head_norm=norm, **TINY)
    model = build_retinanet(config)
    out = model(np.zeros((2, 128, 128, 3), np.uint8))
    anchors = config.anchors.num_anchors(128, 128)
    assert out["cls_logits"].shape == (2, anchors, 5)
    assert out["box_deltas"].shape == (2, anchors, 4)
    # The prior: every anchor starts at foreground probability 0.01.
    probs = 1 / (1 + np.exp(-out["cls_logits"].numpy()))
    assert abs(probs.mean() - 0.01) < 0.005


def test_custom_anchors_change_the_count():
    config = ModelConfig(num_classes=2, backbone="small",
                         anchors=AnchorConfig(ratios=(1.0,), scales=(1.0,)), **TINY)
    out = build_retinanet(config)(np.zeros((1, 128, 128, 3), np.uint8))
    assert out["cls_logits"].shape[1] == 16 * 16 + 8 * 8 + 4 * 4 + 2 * 2 + 1


def test_inference_model_shares_weights():
    config = ModelConfig(num_classes=3, backbone="small", **TINY)
    model = build_retinanet(config)
    inference = build_inference_model(model, config)
    assert {id(w) for w in model.weights} <= {id(w) for w in inference.weights}
    head = model.get_layer("class_head").out
    head.bias.assign(np.full(head.bias.shape, 10.0, np.float32))  # every anchor confident
    info = np.array([[[128, 128], [128, 128], [1, 1], [0, 0]]], np.float32)
    dets = inference([np.zeros((1, 128, 128, 3), np.uint8), info])
    assert int(dets["num_detections"][0]) > 0
    boxes = dets["boxes"].numpy()[0]
    assert (boxes >= 0).all() and (boxes <= 1).all()


def test_serializable(tmp_path):
    import keras

    config = ModelConfig(num_classes=3, backbone="small", **TINY)
    model = build_retinanet(config)
    path = str(tmp_path / "m.keras")
    model.save(path)
    again = keras.saving.load_model(path)
    x = np.random.default_rng(0).integers(0, 255, (1, 128, 128, 3)).astype(np.uint8)
    np.testing.assert_allclose(again(x)["cls_logits"], model(x)["cls_logits"], atol=1e-5)


def test_unknown_backbone():
    with pytest.raises(ValueError, match="unknown backbone 'vgg'"):
        build_backbone("vgg", (128, 128, 3))


def test_image_size_multiple_of_128():
    with pytest.raises(ValueError, match="multiple of 128"):
        ModelConfig(num_classes=1, image_size=300)


@pytest.mark.parametrize("channels,groups", [
    (256, 32),  # RetinaNet's heads: 8 channels a group
    (512, 32),  # never more than 32 groups
    (64, 8),    # the demo's heads: 8, not 32 groups of 2 channels
    (100, 10),  # 12 groups would not divide 100; the largest divisor below is 10
    (4, 1),     # fewer than 8 channels: one group (LayerNorm over channels and space)
])
def test_group_norm_groups(channels, groups):
    assert group_norm_groups(channels) == groups


def test_backbone_batchnorm_frozen_only_with_pretrained_weights(tmp_path):
    """A backbone trained from scratch needs its BatchNorm; pretrained statistics are kept."""
    def bn_trainable(config):
        model = build_retinanet(config)
        return {layer.trainable for layer in _all_layers(model)
                if isinstance(layer, keras.layers.BatchNormalization)}

    base = dict(num_classes=2, backbone="resnet50", image_size=128, fpn_channels=16,
                head_convs=1, head_channels=16)
    assert bn_trainable(ModelConfig(**base)) == {True}
    assert bn_trainable(ModelConfig(**base, freeze_backbone_bn=True)) == {False}
    weights = tmp_path / "resnet50.weights.h5"
    keras.applications.ResNet50(include_top=False, weights=None,
                                input_shape=(128, 128, 3)).save_weights(weights)
    assert bn_trainable(ModelConfig(**base, backbone_weights=str(weights))) == {False}
    assert bn_trainable(ModelConfig(**base, backbone_weights=str(weights),
                                    freeze_backbone_bn=False)) == {True}


def test_small_backbone_batch_norm_momentum_and_serialization(tmp_path):
    config = ModelConfig(num_classes=3, backbone="small", backbone_norm="batch",
                         head_norm="batch", bn_momentum=0.9, **TINY)
    model = build_retinanet(config)
    bns = [layer for layer in _all_layers(model) if isinstance(layer, keras.layers.BatchNormalization)]
    heads = [norm for head in ("class_head", "box_head")
             for per_level in model.get_layer(head).norms for norm in per_level]
    # 6 backbone convolutions from the third stage on; 1 conv x 5 levels x 2 heads.
    assert len(bns) == 6 and len(heads) == 10
    assert all(layer.momentum == 0.9 and layer.synchronized for layer in bns + heads)
    assert not [layer for layer in _all_layers(model)
                if isinstance(layer, keras.layers.GroupNormalization)]
    # One training-mode call moves the moving mean by (1 - momentum) of the batch mean.
    x = np.random.default_rng(0).integers(0, 255, (2, 128, 128, 3)).astype(np.uint8)
    model(x, training=True)
    assert np.abs(bns[0].moving_mean.numpy()).max() > 0
    path = str(tmp_path / "m.keras")
    model.save(path)
    again = keras.saving.load_model(path)
    np.testing.assert_allclose(again(x)["cls_logits"], model(x)["cls_logits"], atol=1e-5)
    assert again.get_layer("class_head").bn_momentum == 0.9


def test_small_backbone_rejects_an_unknown_norm():
    with pytest.raises(ValueError, match="group or batch, got 'layer'"):
        build_backbone("small", (128, 128, 3), norm="layer")


def test_small_backbone_width_multiplies_the_channels():
    # Stages 16, 32, 64, 128, 192 x 1.5 = 24, 48, 96, 192, 288; C3-C5 are the last three.
    wide = build_backbone("small", (128, 128, 3), width=1.5)
    assert [o.shape[-1] for o in wide.outputs] == [96, 192, 288]
    assert wide.get_layer("small_s0_b0_conv").filters == 24
    # 0.3 rounds every stage to a multiple of 8, never below 8: 8, 8, 16, 40, 56.
    narrow = build_backbone("small", (128, 128, 3), width=0.3)
    assert [o.shape[-1] for o in narrow.outputs] == [16, 40, 56]
    assert narrow.get_layer("small_s0_b0_conv").filters == 8
    config = ModelConfig(num_classes=2, backbone="small", backbone_width=1.5, **TINY)
    model = build_retinanet(config)
    assert model.get_layer("backbone_small").outputs[2].shape[-1] == 288
    with pytest.raises(ValueError, match="width must be positive"):
        build_backbone("small", (128, 128, 3), width=0)
