"""tf.distribute strategies for train.py, eval.py and predict.py, and the few facts about
the cluster that the engine needs (which process is the chief, waiting for every worker)."""

from __future__ import annotations

import os

import tensorflow as tf


def task_id(strategy: tf.distribute.Strategy) -> int:
    """This worker's index in its task type (0 without a cluster)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    return int(resolver.task_id) if resolver is not None and resolver.task_id is not None else 0


def num_workers(strategy: tf.distribute.Strategy) -> int:
    """Processes taking part: the chief plus the workers (1 without a cluster)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return 1
    spec = resolver.cluster_spec().as_dict()
    return max(len(spec.get("chief", [])) + len(spec.get("worker", [])), 1)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's files (the chief, or worker 0 without one)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type = resolver.task_type
    return task_type == "chief" or (task_type == "worker" and resolver.task_id == 0
                                    and "chief" not in resolver.cluster_spec().as_dict())


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The strategy of train.py, eval.py and predict.py's --strategy flag.

    auto: MultiWorkerMirroredStrategy when TF_CONFIG is set, else mirrored. mirrored:
    MirroredStrategy over every GPU (or every logical CPU device when there are several),
    else TF's default strategy: on a CPU, OneDeviceStrategy trains at 0.6-0.7x its speed
    (14 against 21-23 images/s for demo.flags in train.py on 2 cores; see
    benchmarks/bench_strategy.py).
    one_device: the first GPU, else the CPU. default: no strategy.
    """
    if name == "auto":
        name = "multi_worker" if os.environ.get("TF_CONFIG") else "mirrored"
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        if gpus or len(tf.config.list_logical_devices("CPU")) > 1:
            return tf.distribute.MirroredStrategy()
        return tf.distribute.get_strategy()
    if name == "one_device":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "default":
        return tf.distribute.get_strategy()
    raise ValueError(f"strategy must be auto, mirrored, multi_worker, one_device or default, "
                     f"got {name!r}")


def wait_for_all_workers(strategy: tf.distribute.Strategy) -> None:
    """Returns once every worker of a multi-worker strategy has called it; a no-op with one
    worker.

    A worker that exits while another still works (the chief writing the export) stops
    sending heartbeats, and the coordination service then reports it as crashed and
    aborts the other workers' collectives.
    """
    def one():
        return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM,
                                                              tf.ones([]))

    if num_workers(strategy) > 1:
        tf.function(lambda: strategy.run(one))()  # eagerly, strategy.run warns of overhead
