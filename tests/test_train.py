"""train.py end to end: distribution equivalence, resume after kill -9, export."""

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from PIL import Image

from tests import prewarmed
from tests.train_fixtures import ENV, REPO, make_records, train_cmd


@pytest.mark.slow
# GroupNorm without XLA is the path of both others minus one feature each (synchronized
# BatchNorm, XLA), so it has no case of its own.
@pytest.mark.parametrize("norm,jit", [("batch", False), ("group", True)])
def test_mirrored_two_devices_same_loss_and_gradients_as_one_device(norm, jit):
    # BatchNorm (small backbone and heads) must see the global batch's statistics on every
    # replica, or two devices of 2 images would normalize differently from one device of 4.
    # With XLA (jit) each replica's forward and backward pass is compiled; synchronized
    # BatchNorm cannot sum across replicas inside it, so that combination is refused.
    norm_args = ('backbone_norm="batch", head_norm="batch", bn_momentum=0.9' if norm == "batch"
                 else 'head_norm="group"')
    script = textwrap.dedent("""
        import numpy as np, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        import keras
        from boxes.anchors import AnchorConfig
        from model.config import LossConfig, ModelConfig
        from engine.trainer import Trainer, TrainConfig

        config = ModelConfig(num_classes=3, backbone="small", image_size=128, fpn_channels=16,
                             head_convs=1, head_channels=32, NORM_ARGS,
                             anchors=AnchorConfig(sizes=(16, 32, 64, 128, 256)))
        rng = np.random.default_rng(0)
        batch = {"image": rng.integers(0, 255, (4, 128, 128, 3)).astype(np.uint8),
                 "boxes": np.array([[[10, 10, 60, 70], [0, 0, 0, 0]]] * 4, np.float32)
                          + np.arange(4, dtype=np.float32)[:, None, None] * 5,
                 "classes": np.array([[0, -1], [1, -1], [2, -1], [1, -1]], np.int32),
                 "num_boxes": np.array([1, 1, 1, 1], np.int32),
                 "group_of": np.zeros((4, 2), bool)}
        batch["num_boxes"][3] = 0  # an image without boxes: its anchors are all background
        results = {}
        for name, strategy in [("one", tf.distribute.OneDeviceStrategy("/cpu:0")),
                               ("two", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))]:
            keras.utils.set_random_seed(1)
            trainer = Trainer(strategy, config, LossConfig(), TrainConfig(clipnorm=0.001,
                              learning_rate=1e-3, jit_compile=JIT), "/tmp/unused_" + name)
            data = strategy.experimental_distribute_dataset(
                tf.data.Dataset.from_tensors(batch))
            @tf.function(autograph=False)
            def run(b):
                losses, grads = strategy.run(trainer.replica_step, args=(b,))
                return ({k: strategy.reduce("SUM", v, axis=None) for k, v in losses.items()},
                        [strategy.reduce("SUM", g, axis=None) for g in grads])
            losses, grads = run(next(iter(data)))
            @tf.function(autograph=False)
            def apply(b):
                strategy.run(lambda x: trainer._apply(trainer.replica_step(x)[1]), args=(b,))
            apply(next(iter(data)))
            results[name] = (losses, grads, [w.numpy() for w in trainer.model.trainable_weights],
                             [w.numpy() for w in trainer.model.non_trainable_weights])
        (l1, g1, w1, s1), (l2, g2, w2, s2) = results["one"], results["two"]
        for k in l1:
            np.testing.assert_allclose(l1[k].numpy(), l2[k].numpy(), rtol=1e-5, err_msg=k)
        for a, b in zip(g1, g2):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6)
        # One Adam step (lr 1e-3) moves weights by about 1e-3; for gradients near Adam's
        # epsilon, last-bit differences in the summed gradient move them up to a few 1e-5
        # apart (5% of a step); a replica that saw other data would be a whole step off.
        for a, b in zip(w1, w2):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=5e-5)
        # BatchNorm's moving statistics after the two steps (none with GroupNorm).
        assert len(s1) == len(s2) and (len(s1) > 0) == (NORM == "batch"), len(s1)
        for a, b in zip(s1, s2):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
        if NORM == "batch":
            try:
                Trainer(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), config,
                        LossConfig(), TrainConfig(jit_compile=True), "/tmp/unused_jit")
                raise AssertionError("jit_compile with synchronized BatchNorm was accepted")
            except ValueError as e:
                assert "synchronized over 2 replicas is not supported" in str(e), e
        print("OK", float(l1["loss"]), len(g1))
    """).replace("NORM_ARGS", norm_args).replace("NORM", repr(norm)) \
        .replace("JIT", repr(jit))
    out = prewarmed.run([sys.executable, "-c", script], capture_output=True, text=True,
                        env=ENV, cwd=REPO, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    assert out.stdout.startswith("OK")


@pytest.mark.slow
def test_kill_9_then_restart_resumes_and_exports(tmp_path):
    records, model_dir = str(tmp_path / "records"), str(tmp_path / "run")
    make_records(os.path.join(records, "level1"))
    cmd = train_cmd(records, model_dir, "--epochs=3", "--steps_per_epoch=20",
                    "--checkpoint_every_steps=5")
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    import tensorflow as tf

    ckpt_dir = os.path.join(model_dir, "checkpoints")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if tf.train.latest_checkpoint(ckpt_dir):  # a complete checkpoint
            break
        time.sleep(0.1)
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    saved = int(tf.train.latest_checkpoint(ckpt_dir).rsplit("-", 1)[1])
    assert 5 <= saved < 60
    out = prewarmed.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"resumed from {ckpt_dir}/ckpt-{saved} at step {saved}" in out.stderr
    first_logged = [int(line.split("step ")[1].split("/")[0]) for line in out.stderr.splitlines()
                    if " INFO step " in line][0]
    assert first_logged == saved + 1
    assert tf.train.latest_checkpoint(ckpt_dir).endswith("ckpt-60")
    with open(os.path.join(model_dir, "config.json")) as f:
        config = json.load(f)
    assert config["model"]["backbone"] == "small" and config["model"]["num_classes"] == 2
    assert any(f.startswith("events") for f in os.listdir(os.path.join(model_dir, "logs")))
    assert os.path.exists(os.path.join(model_dir, "export", "saved_model.pb"))
    # The last checkpoint holds every weight, trainable or not, and load_model restores them.
    from engine.run_dir import load_model

    model, _ = load_model(model_dir)
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(ckpt_dir))
    for w in model.weights:
        key = "weights/" + w.path.replace("/", ".S") + "/.ATTRIBUTES/VARIABLE_VALUE"
        np.testing.assert_array_equal(reader.get_tensor(key), w.numpy(), err_msg=w.path)


def test_missing_records_is_a_clear_error(tmp_path):
    out = prewarmed.run(train_cmd(str(tmp_path), str(tmp_path / "run")), env=ENV,
                        capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "labels.json not found: run beam_jobs/make_records.py" in out.stderr


def test_resuming_with_another_model_is_refused_and_keeps_the_config(tmp_path):
    make_records(str(tmp_path / "records" / "level1"))
    run = tmp_path / "run"
    first = prewarmed.run(train_cmd(str(tmp_path / "records"), str(run), "--epochs=1",
                                    "--steps_per_epoch=1", "--export=false"),
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    saved = (run / "config.json").read_text()
    # Same model_dir, but BatchNorm heads: the checkpoint has no moving statistics for them.
    again = prewarmed.run(train_cmd(str(tmp_path / "records"), str(run), "--epochs=2",
                                    "--steps_per_epoch=1", "--export=false",
                                    "--head_norm=batch"),
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode != 0
    assert "ckpt-1 does not fit this model" in again.stderr
    assert "train in a new --model_dir" in again.stderr
    assert (run / "config.json").read_text() == saved


def test_labeler_thresholds_are_checked_and_recorded(tmp_path):
    make_records(str(tmp_path / "records" / "level1"))
    bad = prewarmed.run(train_cmd(str(tmp_path / "records"), str(tmp_path / "bad"),
                                  "--positive_iou=0.3", "--negative_iou=0.4"),
                        env=ENV, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0
    assert "need 0 < --negative_iou <= --positive_iou <= 1, got 0.4 and 0.3" in bad.stderr
    run = tmp_path / "run"
    out = prewarmed.run(train_cmd(str(tmp_path / "records"), str(run), "--epochs=1",
                                  "--steps_per_epoch=1", "--export=false",
                                  "--positive_iou=0.45", "--negative_iou=0.35"),
                        env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    labeler = json.loads((run / "config.json").read_text())["labeler"]
    assert (labeler["positive_iou"], labeler["negative_iou"]) == (0.45, 0.35)


def test_anchor_width_and_jit_flags_are_checked_and_recorded(tmp_path):
    make_records(str(tmp_path / "records" / "level1"))
    bad = prewarmed.run(train_cmd(str(tmp_path / "records"), str(tmp_path / "bad"),
                                  "--anchor_scales=0,1"),
                        env=ENV, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2
    assert "--anchor_scales/--box_variances: anchor scales must be positive numbers, got " \
        "(0.0, 1.0)" in bad.stderr
    run = tmp_path / "run"
    out = prewarmed.run(train_cmd(str(tmp_path / "records"), str(run), "--epochs=1",
                                  "--steps_per_epoch=2", "--export=false",
                                  "--anchor_ratios=1", "--anchor_scales=0.5,1",
                                  "--backbone_width=0.5", "--jit_compile"),
                        env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["anchors"]["ratios"] == [1.0]
    assert config["model"]["anchors"]["scales"] == [0.5, 1.0]
    assert config["model"]["backbone_width"] == 0.5
    assert config["train"]["jit_compile"] is True
    # eval.py and predict.py rebuild the model from config.json: 2 anchors per location.
    from engine.run_dir import load_model

    model, model_config = load_model(str(run))
    assert model_config.anchors.anchors_per_location == 2
    assert model.get_layer("class_head").anchors_per_location == 2


@pytest.mark.slow
def test_export_in_a_fresh_process_matches_keras(tmp_path):
    import tensorflow as tf

    from engine.export import export_saved_model
    from model.config import ModelConfig
    from model.retinanet import build_inference_model, build_retinanet
    from tfrecords.input_pipeline import InputConfig, inference_canvas

    config = ModelConfig(num_classes=2, backbone="small", image_size=128, fpn_channels=16,
                         head_convs=1, head_channels=32)
    model = build_retinanet(config)
    head = model.get_layer("class_head").out
    bias = np.full(head.bias.shape, -3.0, np.float32)
    bias[::2] = 0.5  # class 0 confident everywhere: plenty of detections to compare
    head.bias.assign(bias)
    labels = [{"index": 0, "mid": "/m/a", "name": "a"}, {"index": 1, "mid": "/m/b", "name": "b"}]
    input_config = InputConfig("unused", is_training=False, image_min_side=100,
                               image_max_side=128)
    path = str(tmp_path / "export")
    export_saved_model(model, config, labels, input_config, path)

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (90, 120, 3)).astype(np.uint8)).save(buf, "PNG")
    png = str(tmp_path / "x.png")
    with open(png, "wb") as f:
        f.write(buf.getvalue())
    canvas, info = inference_canvas(tf.constant(np.asarray(Image.open(png))), input_config)
    expected = build_inference_model(model, config)([canvas[None], info[None]])
    script = textwrap.dedent(f"""
        import numpy as np, tensorflow as tf
        served = tf.saved_model.load({path!r}).signatures["serving_default"]
        out = served(encoded=tf.constant([open({png!r}, "rb").read()]))
        np.savez({str(tmp_path / "out.npz")!r}, **{{k: v.numpy() for k, v in out.items()}})
    """)
    run = prewarmed.run([sys.executable, "-c", script], env=ENV, capture_output=True, text=True,
                        timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    got = np.load(tmp_path / "out.npz", allow_pickle=True)  # mids are byte strings
    n = int(expected["num_detections"][0])
    assert n > 0 and int(got["num_detections"][0]) == n
    np.testing.assert_allclose(got["boxes"][0, :n], expected["boxes"].numpy()[0, :n], atol=1e-5)
    np.testing.assert_allclose(got["scores"][0, :n], expected["scores"].numpy()[0, :n], atol=1e-6)
    assert set(got["mids"][0, :n].tolist()) <= {b"/m/a", b"/m/b"}
    assert (got["mids"][0, n:] == b"").all()
