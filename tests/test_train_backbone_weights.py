"""train.py's --backbone_weights as a user meets it without the internet: the ImageNet
download fails with one line that says how to pre-fetch the weights, and a bad path is refused
before anything is written."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.refusals import assert_refused
from tests.train_fixtures import ENV, REPO, make_records, train_cmd

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = tmp_path_factory.mktemp("records")
    make_records(str(root / "level1"), n=4)
    return root


def offline(tmp_path) -> dict:
    """ENV with an empty Keras cache and every download sent to a closed local port: the
    download fails as on a cluster without internet, whatever this machine can reach."""
    closed = "http://127.0.0.1:9"
    env = {k: v for k, v in ENV.items() if k.lower() not in ("no_proxy", "all_proxy")}
    return {**env, "KERAS_HOME": str(tmp_path / "keras"), "HTTPS_PROXY": closed,
            "https_proxy": closed, "HTTP_PROXY": closed, "http_proxy": closed}


def run(cmd, env=ENV):
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)


def test_imagenet_offline_says_how_to_prefetch(records, tmp_path):
    # r50.flags starts from ImageNet: a user without internet meets exactly this.
    result = run(train_cmd(str(records), str(tmp_path / "run"),
                           f"--flagfile={os.path.join(REPO, 'r50.flags')}",
                           "--image_max_side=128"),
                 env=offline(tmp_path))
    line = assert_refused(result, "--backbone_weights=imagenet: cannot download resnet50's "
                                  "ImageNet weights", with_fix=True)
    assert "tools/fetch_weights.py --backbone resnet50" in line
    assert (f"resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5 into "
            f"{tmp_path / 'keras' / 'models'}") in line
    assert "or pass the file's path as --backbone_weights" in line
    assert not os.path.exists(tmp_path / "run" / "config.json")


def test_fetch_weights_offline_is_one_line(tmp_path):
    result = run([sys.executable, "tools/fetch_weights.py", "--backbone", "resnet50"],
                 env=offline(tmp_path))
    assert_refused(result, "--backbone=resnet50: cannot download resnet50's ImageNet weights")
    assert_refused(run([sys.executable, "tools/fetch_weights.py", "--backbone", "small"]),
                   "--backbone=small: not one of")


@pytest.mark.parametrize("flags,culprit", [
    (["--backbone=resnet50", "--backbone_weights={tmp}/missing.h5"],
     "--backbone_weights={tmp}/missing.h5: no such file or train.py run directory"),
    (["--backbone=resnet50", "--backbone_weights={tmp}"],
     "--backbone_weights={tmp}: no such file or train.py run directory"),
    (["--backbone_weights=imagenet"],  # TINY_FLAGS train the small backbone
     "--backbone_weights=imagenet: the small backbone has no ImageNet weights"),
])
def test_bad_backbone_weights_are_refused_before_anything_is_written(records, tmp_path, flags,
                                                                     culprit):
    flags = [f.format(tmp=tmp_path) for f in flags]
    result = run(train_cmd(str(records), str(tmp_path / "run"), *flags))
    assert_refused(result, culprit.format(tmp=tmp_path))
    assert not os.path.exists(tmp_path / "run")


def test_a_file_that_is_not_weights_names_the_file(records, tmp_path):
    bad = tmp_path / "resnet50.weights.h5"
    bad.write_text("not weights")
    result = run(train_cmd(str(records), str(tmp_path / "run"), "--backbone=resnet50",
                           f"--backbone_weights={bad}", "--image_max_side=128"))
    assert_refused(result, f"--backbone_weights={bad}: {bad}: not resnet50's weights")
    assert not os.path.exists(tmp_path / "run" / "config.json")
