"""Download backbones' ImageNet weights into Keras' cache, for a cluster without internet.

    python tools/fetch_weights.py --backbone resnet50,resnet101,resnet152 [--output_dir DIR]

On a machine with internet this fills Keras' cache ($KERAS_HOME/models, default
~/.keras/models) exactly as `train.py --backbone_weights=imagenet` would, and prints each file.
Copy those files into the same folder on the cluster's machines (or point KERAS_HOME at shared
storage holding a models/ folder with them); or copy them anywhere with --output_dir and pass
a file to train.py as --backbone_weights=PATH.
"""

from __future__ import annotations

import os
import shutil
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from engine import cli  # noqa: E402  (after the checkout is on the path)
from model.backbones import (  # noqa: E402
    BACKBONES,
    IMAGENET,
    BackboneWeightsError,
    build_backbone,
    keras_cache_dir,
)

FLAGS = flags.FLAGS
flags.DEFINE_list("backbone", ["resnet50"], "Backbones whose ImageNet weights to fetch "
                  "(names of model/backbones.py, not small).")
flags.DEFINE_string("output_dir", None, "Also copy each weights file here.")


def main(argv):
    del argv
    for name in FLAGS.backbone:
        cli.check(name in BACKBONES and BACKBONES[name].build is not None,
                  f"--backbone={name}: not one of "
                  f"{', '.join(n for n, s in BACKBONES.items() if s.build is not None)}")
    models = os.path.join(keras_cache_dir(), "models")
    for name in FLAGS.backbone:
        before = set(os.listdir(models)) if os.path.isdir(models) else set()
        try:
            build_backbone(name, (224, 224, 3), IMAGENET)
        except BackboneWeightsError as e:
            cli.refuse(f"--backbone={name}: {e}")
        files = sorted(set(os.listdir(models)) - before)
        if not files:
            print(f"{name}: already in {models}")
        for file in files:
            path = os.path.join(models, file)
            print(f"{name}: {path}")
            if FLAGS.output_dir:
                os.makedirs(FLAGS.output_dir, exist_ok=True)
                shutil.copy(path, os.path.join(FLAGS.output_dir, file))
                print(f"{name}: copied to {os.path.join(FLAGS.output_dir, file)}")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.flags_parser())
