"""OpenVINO engines leave the thread's alternate signal stack mapped (see ``shared_core``).

Each OpenVINO CPU plugin installs its own alternate signal stack and puts back the one it found
when destroyed; two plugins freed first-in first-out left the thread on an unmapped stack, and the
next SIGCHLD (a ``subprocess.run``) corrupted the heap: pytest died with a segmentation fault in a
later, unrelated test. The check runs in a fresh interpreter so that a regression cannot take the
test process down with it.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from sdfn_bench.engines.backends.openvino import OpenVinoBackend

SCRIPT = r"""
import ctypes, gc, subprocess, sys
import numpy as np, onnx
from onnx import TensorProto, helper, numpy_helper
from sdfn_bench.engines.backends.openvino import OpenVinoBackend

libc = ctypes.CDLL(None)

def signal_stack_mapped():
    ss = ctypes.create_string_buffer(24)  # stack_t: void *ss_sp; int ss_flags; size_t ss_size
    assert libc.sigaltstack(None, ss) == 0
    sp = int.from_bytes(ss.raw[:8], "little")
    if sp == 0:
        return True
    for line in open("/proc/self/maps"):
        lo, hi = (int(v, 16) for v in line.split()[0].split("-"))
        if lo <= sp < hi:
            return True
    return False

w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 1, 3, 3)).astype(np.float32), "w")
graph = helper.make_graph([helper.make_node("Conv", ["image", "w"], ["y"], pads=[1, 1, 1, 1])], "conv",
                          [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])], [w])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 8
onnx.save(model, sys.argv[1])
backend = OpenVinoBackend()
first, _ = backend._compile("a", sys.argv[1], "fp32", 1)
second, _ = backend._compile("b", sys.argv[1], "fp32", 1)
del first; gc.collect()
del second; gc.collect()
print("mapped" if signal_stack_mapped() else "UNMAPPED", flush=True)
for _ in range(3):  # a child's SIGCHLD is delivered on that stack
    subprocess.run([sys.executable, "-c", "raise SystemExit(1)"], capture_output=True, check=False)
print("survived")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sigaltstack and /proc/self/maps are Linux's")
def test_engines_freed_in_any_order_leave_the_signal_stack_mapped(tmp_path) -> None:
    why_not = OpenVinoBackend().supports("fp32", "cpu") if OpenVinoBackend().is_available() else "not installed"
    if why_not:
        pytest.skip(f"OpenVINO: {why_not}")
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "conv.onnx")], capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0 and done.stdout.split() == ["mapped", "survived"], (done.returncode, done.stdout,
                                                                                   done.stderr[-2000:])
