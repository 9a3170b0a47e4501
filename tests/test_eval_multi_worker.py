"""eval.py as two MultiWorkerMirroredStrategy workers on localhost (TF_CONFIG, --strategy auto)."""

import json
import os
import sys

import pytest

from tests import prewarmed
from tests.inference_fixtures import (
    LABELS,
    red_scene,
    spread_random_model,
    write_label_files,
    write_level,
    write_model_dir,
)
from tests.test_multi_worker import free_ports, run_workers
from tests.train_fixtures import ENV, REPO


@pytest.mark.slow
def test_eval_on_two_workers_equals_one_process(tmp_path):
    """Two MultiWorkerMirroredStrategy workers on localhost split the 9 records 5 / 4, so
    the first has two batches of 4 and the second one: on the last step the second gets an
    empty batch (padded to 4 rows that are not real). Both see every row; the chief writes
    the metrics of one process."""
    scenes = {f"img{i}": red_scene(i, size=(20, 24)) for i in range(9)}
    write_level(tmp_path / "records" / "level1", LABELS, scenes)
    write_label_files(tmp_path / "data")
    write_model_dir(tmp_path / "run", spread_random_model(seed=0, bias=-4.5), LABELS, 1)
    args = [sys.executable, os.path.join(REPO, "eval.py"), f"--records_dir={tmp_path / 'records'}",
            f"--data_dir={tmp_path / 'data'}", f"--model_dir={tmp_path / 'run'}",
            "--score_threshold=0.5", "--batch_size=8", "--log_every_seconds=0"]
    ports = free_ports(2)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    envs = [{**ENV, "TF_CONFIG": json.dumps({"cluster": cluster,
                                             "task": {"type": "worker", "index": i}})}
            for i in range(2)]
    stderrs = run_workers([args + [f"--output_dir={tmp_path / 'two'}"]] * 2, envs, str(tmp_path))
    assert all("eval: 9/9 images (100%)" in err for err in stderrs)
    single = prewarmed.run(args + [f"--output_dir={tmp_path / 'one'}", "--strategy=one_device"],
                           env=ENV, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert two["replicas"] == 2 and two["images"] == one["images"] == 9
    assert two["mAP"] == one["mAP"] and two["per_class"] == one["per_class"]
