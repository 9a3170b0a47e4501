"""Box geometry shared by the input pipeline and the model: anchors, the box coder, IoU/IoA,
flips, target assignment, batched per-class NMS and canvas arithmetic. Imports nothing of
this project's other packages."""
