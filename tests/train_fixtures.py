"""Helpers shared by the tests that run train.py: tiny records and tiny flags."""

import io
import json
import os
import sys

import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"}


def make_records(level_dir, n=8, seed=0):
    """n 100x120 JPEGs, each a 40x50 red box on grey; classes alternate c0, c1."""
    from tfrecords import proto
    from tfrecords.example import ImageAnnotation, build_example

    rng = np.random.default_rng(seed)
    os.makedirs(level_dir, exist_ok=True)
    with open(os.path.join(level_dir, "train-00000-of-00001.tfrecord"), "wb") as f:
        for i in range(n):
            img = np.full((100, 120, 3), 40, np.uint8)
            y0, x0 = rng.integers(5, 50, 2)
            img[y0:y0 + 40, x0:x0 + 50] = (220, 30, 30)
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, "JPEG")
            box = [y0 / 100, x0 / 120, (y0 + 40) / 100, (x0 + 50) / 120]
            ann = ImageAnnotation(f"img{i}", "train", [box], [i % 2], [f"/m/c{i % 2}"], [0], [0],
                                  [0], [0])
            proto.write_tfrecord(f, build_example(ann, buf.getvalue(), 100, 120, 100, 120)
                                 .SerializeToString())
    with open(os.path.join(level_dir, "labels.json"), "w") as f:
        json.dump([{"index": 0, "mid": "/m/c0", "name": "c0"},
                   {"index": 1, "mid": "/m/c1", "name": "c1"}], f)


TINY_FLAGS = ["--flagfile=" + os.path.join(REPO, "base.flags"), "--backbone=small",
              "--image_min_side=100", "--image_max_side=128", "--fpn_channels=16",
              "--head_convs=1", "--head_channels=32", "--global_batch_size=2",
              "--anchor_sizes=16,32,64,128,256", "--learning_rate=1e-3", "--log_every_steps=1",
              "--seed=0", "--strategy=one_device"]


def train_cmd(records, model_dir, *extra):
    """train.py with TINY_FLAGS; `extra` flags come last, so they override TINY_FLAGS."""
    return [sys.executable, os.path.join(REPO, "train.py"), *TINY_FLAGS,
            f"--records_dir={records}", f"--model_dir={model_dir}", *extra]
