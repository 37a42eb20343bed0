"""A Keras model run by LiteRT (TensorFlow Lite) for single requests.

A server's photo goes through the backbone one request at a time. TensorFlow's runtime spends
most of such a call on per-op overhead and its oneDNN kernels for depthwise convolutions;
LiteRT's XNNPACK kernels run the same EfficientNet-Lite0 graph in about a third of the time on
a CPU (``bench/reports/serve.md``), with the same features to float rounding (~1e-5).

``LiteModel`` converts the model once (``tf.lite.TFLiteConverter``, a few seconds, when a
server loads its bundle) and keeps one interpreter per calling thread: an interpreter is not
safe to share, and a server answers from more than one thread. Each interpreter is resized to
the batch shape it is given, so a different batch size costs one re-allocation.
"""
from __future__ import annotations

import logging
import math
import os
import threading
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def available_cpus(cpu_max: str | Path = "/sys/fs/cgroup/cpu.max") -> int:
    """The CPUs this process may use: its affinity, capped by a cgroup v2 CPU quota (a pod's CPU
    limit, which ``os.cpu_count`` ignores: a 2-CPU pod on a 16-core node would otherwise start
    16 threads a call)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = Path(cpu_max).read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):  # no cgroup v2 file here, or not "quota period"
        pass
    return n


class LiteModel:
    """``model`` (one float input, one output) converted to TensorFlow Lite and called like a
    function: float-castable array [N, ...] -> float32 array [N, ...]."""

    def __init__(self, model, threads: int = 0):
        import tensorflow as tf

        if len(model.inputs) != 1 or len(model.outputs) != 1:
            raise ValueError(f"LiteModel runs a model of one input and one output; {model.name} "
                             f"has {len(model.inputs)} and {len(model.outputs)}")
        start = time.perf_counter()
        self.flatbuffer = tf.lite.TFLiteConverter.from_keras_model(model).convert()
        self.name = model.name
        self.threads = threads or available_cpus()
        self._local = threading.local()
        log.info("%s converted to TensorFlow Lite in %.1f s (%.1f MB), %d threads a call",
                 model.name, time.perf_counter() - start, len(self.flatbuffer) / 1e6,
                 self.threads)

    def _interpreter(self, shape: tuple[int, ...]):
        local = self._local
        if getattr(local, "interpreter", None) is None:
            from ai_edge_litert.interpreter import Interpreter

            local.interpreter = Interpreter(model_content=self.flatbuffer,
                                            num_threads=self.threads)
            local.input = local.interpreter.get_input_details()[0]["index"]
            local.output = local.interpreter.get_output_details()[0]["index"]
            local.shape = None
        if local.shape != shape:
            local.interpreter.resize_tensor_input(local.input, shape)
            local.interpreter.allocate_tensors()
            local.shape = shape
        return local

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        local = self._interpreter(x.shape)
        local.interpreter.set_tensor(local.input, x)
        local.interpreter.invoke()
        return local.interpreter.get_tensor(local.output).copy()
