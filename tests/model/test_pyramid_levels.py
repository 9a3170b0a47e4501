"""Pyramid levels other than P3-P7: P2 from the backbone's C2 (--min_level=2), fewer top
levels; the anchors, heads and decoder follow the AnchorConfig."""

import numpy as np
import pytest

from boxes.anchors import AnchorConfig
from model.backbones import build_backbone
from model.config import ModelConfig
from model.fpn import FeaturePyramid
from model.retinanet import build_inference_model, build_retinanet

TINY = dict(fpn_channels=16, head_convs=1, head_channels=16, image_size=128)
P2_P7 = AnchorConfig(min_level=2, sizes=(8, 16, 32, 64, 128, 256))


def test_small_backbone_c2_has_stride_4():
    backbone = build_backbone("small", (128, 128, 3), min_level=2)
    assert [tuple(o.shape[1:3]) for o in backbone.outputs] == [(32, 32), (16, 16), (8, 8),
                                                               (4, 4)]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet50", "resnet50v2"])
def test_resnet_c2_has_stride_4(name):
    backbone = build_backbone(name, (128, 128, 3), min_level=2)
    assert [tuple(o.shape[1:3]) for o in backbone.outputs][0] == (32, 32)


def test_backbone_without_c2_is_refused():
    with pytest.raises(ValueError, match="no C2 tap"):
        build_backbone("mobilenetv3_large", (128, 128, 3), min_level=2)


def test_p2_model_shapes_and_anchor_order():
    config = ModelConfig(num_classes=3, backbone="small", anchors=P2_P7, **TINY)
    out = build_retinanet(config)(np.zeros((1, 128, 128, 3), np.uint8))
    # 9 anchors at each of 32^2 + 16^2 + 8^2 + 4^2 + 2^2 + 1^2 = 1365 locations: 12285.
    assert out["cls_logits"].shape == (1, 12285, 3) == (1, P2_P7.num_anchors(128, 128), 3)
    assert P2_P7.level_counts(128, 128)[0] == 32 * 32 * 9


def test_fewer_top_levels():
    anchors = AnchorConfig(min_level=3, max_level=5, sizes=(16, 32, 64), ratios=(1.0,),
                           scales=(1.0,))
    config = ModelConfig(num_classes=2, backbone="small", anchors=anchors, **TINY)
    out = build_retinanet(config)(np.zeros((1, 128, 128, 3), np.uint8))
    assert out["cls_logits"].shape[1] == 16 * 16 + 8 * 8 + 4 * 4


def test_fpn_layer_names_do_not_move_for_p3_p7():
    # A P3-P7 pyramid keeps the names its checkpoints were written with; P2 only adds.
    names = {w.path.split("/", 1)[1] for w in _built(FeaturePyramid(8, name="fpn"), 3).weights}
    p2 = {w.path.split("/", 1)[1] for w in _built(FeaturePyramid(8, 2, name="fpn"), 2).weights}
    assert names < p2
    assert p2 - names == {"lateral_c2/kernel", "lateral_c2/bias", "smooth_p2/kernel",
                          "smooth_p2/bias"}


def _built(fpn, min_level):
    shapes = {2: (1, 32, 32, 4), 3: (1, 16, 16, 4), 4: (1, 8, 8, 4), 5: (1, 4, 4, 4)}
    inputs = [np.zeros(shapes[lv], np.float32) for lv in range(min_level, 6)]
    outs = fpn(inputs)
    assert [o.shape[1] for o in outs] == [128 // 2 ** lv for lv in range(min_level, 8)]
    return fpn


def test_model_config_refuses_unsupported_levels():
    with pytest.raises(ValueError, match="min_level 2 or 3"):
        ModelConfig(num_classes=1, anchors=AnchorConfig(min_level=4, sizes=(1, 2, 3, 4)))


def test_p2_inference_model_decodes_with_p2_anchors():
    config = ModelConfig(num_classes=2, backbone="small", anchors=P2_P7, **TINY)
    model = build_retinanet(config)
    head = model.get_layer("class_head").out
    head.bias.assign(np.full(head.bias.shape, 10.0, np.float32))
    inference = build_inference_model(model, config)
    info = np.array([[[128, 128], [128, 128], [1, 1], [0, 0]]], np.float32)
    dets = inference([np.zeros((1, 128, 128, 3), np.uint8), info])
    assert int(dets["num_detections"][0]) > 0
    assert inference.get_layer("detections").anchors.shape[0] == 12285
