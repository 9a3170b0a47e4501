"""RetinaNet as pure tensors: configuration, backbones, FPN, heads, losses and the detection
decoder. Imports boxes/ only; what runs the model (strategies, training loop, inference,
export) is engine/."""
