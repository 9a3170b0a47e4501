"""RetinaNet: backbone -> FPN -> shared heads; and its inference model on the same weights."""

from __future__ import annotations

import dataclasses

import keras
from keras import layers

from model.backbones import build_backbone
from model.config import ModelConfig, PostprocessConfig
from model.decoder import DetectionDecoder
from model.fpn import FeaturePyramid
from model.heads import RetinaNetHead, prior_bias


def build_retinanet(config: ModelConfig) -> keras.Model:
    """Training model: uint8 [B, S, S, 3] canvas -> {"cls_logits": [B, A, K] float32,
    "box_deltas": [B, A, 4] float32}, anchors in boxes/anchors.py order, pyramid levels
    config.anchors.min_level to max_level."""
    size = config.image_size
    image = keras.Input((size, size, 3), dtype="uint8", name="image")
    x = layers.Activation("linear", dtype="float32", name="to_float")(
        keras.ops.cast(image, "float32"))
    backbone = build_backbone(config.backbone, (size, size, 3), config.backbone_weights,
                              config.backbone_norm, config.bn_momentum, config.backbone_width,
                              config.anchors.min_level)
    set_backbone_trainable(backbone, config)
    features = FeaturePyramid(config.fpn_channels, config.anchors.min_level,
                              config.anchors.max_level, name="fpn")(backbone(x))
    k = config.anchors.anchors_per_location
    levels = len(config.anchors.levels)
    cls = RetinaNetHead(config.num_classes, k, config.head_convs, config.head_channels,
                        config.head_norm, levels, prior_bias(config.prior),
                        bn_momentum=config.bn_momentum, name="class_head")
    box = RetinaNetHead(4, k, config.head_convs, config.head_channels, config.head_norm, levels,
                        bn_momentum=config.bn_momentum, name="box_head")
    outputs = {"cls_logits": cls(features), "box_deltas": box(features)}
    return keras.Model(image, outputs, name="retinanet")


def backbone_bn_frozen(config: ModelConfig) -> bool:
    """Whether the backbone's BatchNorm runs in inference mode with its statistics fixed:
    config.freeze_backbone_bn, or by default whenever the backbone starts from pretrained
    weights (ImageNet statistics beat those of a few detection images per replica, as in the
    original system; a backbone trained from scratch needs its BatchNorm to learn)."""
    if config.freeze_backbone_bn is not None:
        return config.freeze_backbone_bn
    return bool(config.backbone_weights)


def backbone_layer(model: keras.Model, config: ModelConfig) -> keras.Model:
    """The backbone inside a build_retinanet model."""
    return model.get_layer(f"backbone_{config.backbone}")


def set_backbone_trainable(backbone: keras.Model, config: ModelConfig) -> None:
    """Applies config.freeze_backbone (nothing of the backbone trains) and
    backbone_bn_frozen(config) (its BatchNorm layers neither train nor update their
    statistics). Callable again on a built model with another config (staged training)."""
    backbone.trainable = not config.freeze_backbone  # Keras sets every sublayer alike
    if not config.freeze_backbone and backbone_bn_frozen(config):
        for layer in _all_layers(backbone):
            if isinstance(layer, layers.BatchNormalization):
                layer.trainable = False  # Keras 3: also runs it in inference mode


def build_inference_model(model: keras.Model, config: ModelConfig,
                          post: PostprocessConfig = PostprocessConfig()) -> keras.Model:
    """Detection model sharing `model`'s weights: (image [B, S, S, 3] uint8, image_info
    [B, 4, 2]) -> {"boxes" [B, M, 4] normalized to the original image, (ymin, xmin, ymax, xmax);
    "scores" [B, M]; "classes" [B, M] int32 level-local ids; "num_detections" [B]}."""
    size = config.image_size
    image = keras.Input((size, size, 3), dtype="uint8", name="image")
    image_info = keras.Input((4, 2), dtype="float32", name="image_info")
    raw = model(image, training=False)
    decoder = DetectionDecoder(size, dataclasses.asdict(config.anchors), dataclasses.asdict(post),
                               name="detections")
    return keras.Model([image, image_info],
                       decoder(raw["cls_logits"], raw["box_deltas"], image_info),
                       name="retinanet_inference")


def _all_layers(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)
        else:
            yield layer
