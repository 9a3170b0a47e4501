"""RetinaNet: configs, anchors, box coder, anchor labeler, backbones, FPN, heads, losses, post-processing."""
