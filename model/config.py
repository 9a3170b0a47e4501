"""Model, loss and post-processing configuration: frozen dataclasses built once from flags."""

from __future__ import annotations

import dataclasses

from boxes.anchors import AnchorConfig


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Attributes:
      num_classes: the level's classes.
      backbone: a key of model.backbones.BACKBONES.
      backbone_weights: None (random), "imagenet", a Keras applications weights file (.h5 or
        .weights.h5) or a train.py run directory (engine.run_dir.build_model copies its backbone).
      image_size: side of the square input canvas, pixels (multiple of 128).
      head_norm: "group", "batch" or "none" in the heads.
      backbone_norm: "group" or "batch" in the small backbone (the keras.applications
        backbones keep their own normalization).
      bn_momentum: moving-average momentum of the heads' and the small backbone's BatchNorm.
        Keras' 0.99 averages over about 100 steps; a run of a few hundred steps wants 0.9,
        or the inference statistics lag behind weights that are still changing fast.
      backbone_width: channel multiplier of the small backbone.
      prior: initial foreground probability of every anchor (focal loss prior).
      freeze_backbone: train only FPN and heads.
      freeze_backbone_bn: run the backbone's BatchNorm layers in inference mode (the
        pretrained statistics are better than those of small detection batches). None: only
        when backbone_weights are given (a backbone trained from scratch needs its BatchNorm).
    """

    num_classes: int
    backbone: str = "resnet50"
    backbone_weights: str | None = None
    image_size: int = 1024
    fpn_channels: int = 256
    head_convs: int = 4
    head_channels: int = 256
    head_norm: str = "group"
    backbone_norm: str = "group"
    bn_momentum: float = 0.99
    backbone_width: float = 1.0
    prior: float = 0.01
    anchors: AnchorConfig = AnchorConfig()
    freeze_backbone: bool = False
    freeze_backbone_bn: bool | None = None

    def __post_init__(self):
        if self.image_size % 128:
            raise ValueError(f"image_size must be a multiple of 128, got {self.image_size}")
        if self.anchors.min_level not in (2, 3) or self.anchors.max_level not in (5, 6, 7):
            raise ValueError(f"pyramid levels P{self.anchors.min_level}-P"
                             f"{self.anchors.max_level}: the FPN builds min_level 2 or 3 "
                             "(P2 from the backbone's C2) up to max_level 5, 6 or 7")


CLS_LOSSES = ("focal", "quality_focal")
BOX_LOSSES = ("smooth_l1", "huber", "giou", "diou")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """A classification loss plus a box loss on positive anchors, both normalized by the
    number of positive anchors over the global batch.

    cls_loss: "focal" (Lin et al. 2017: alpha, gamma) or "quality_focal" (GFL, Li et al.
      2020: the target of a positive anchor's class is the IoU of its decoded prediction with
      its box, so the score learns to rank by localization quality; gamma is the paper's
      beta, alpha is not used).
    box_loss: on the encoded deltas, "smooth_l1" (beta = box_delta; keras-retinanet's sigma 3
      is beta 1/9) or "huber" (delta = box_delta); on the decoded boxes, "giou" (1 - GIoU,
      Rezatofighi et al. 2019) or "diou" (1 - DIoU, Zheng et al. 2020), box_delta unused.
    box_weight: multiplier of the box loss.
    """

    alpha: float = 0.25
    gamma: float = 2.0
    box_loss: str = "smooth_l1"
    box_delta: float = 1.0 / 9.0
    box_weight: float = 1.0
    cls_loss: str = "focal"

    def __post_init__(self):
        if self.cls_loss not in CLS_LOSSES:
            raise ValueError(f"cls_loss must be one of {', '.join(CLS_LOSSES)}, "
                             f"got {self.cls_loss!r}")
        if self.box_loss not in BOX_LOSSES:
            raise ValueError(f"box_loss must be one of {', '.join(BOX_LOSSES)}, "
                             f"got {self.box_loss!r}")

    @property
    def needs_decoded_boxes(self) -> bool:
        """Whether the loss decodes predictions against the anchors."""
        return self.cls_loss == "quality_focal" or self.box_loss in ("giou", "diou")


@dataclasses.dataclass(frozen=True)
class PostprocessConfig:
    """score_threshold: drop scores below; pre_nms_top_k: (anchor, class) candidates kept per
    image before NMS (1000: at 5000 the padded NMS takes 2-4x longer on a CPU for the same
    top detections); nms_iou: per-class NMS threshold; max_detections: per image. eval.py,
    predict.py and the exported serving signature all use these defaults."""

    score_threshold: float = 0.05
    pre_nms_top_k: int = 1000
    nms_iou: float = 0.5
    max_detections: int = 300
