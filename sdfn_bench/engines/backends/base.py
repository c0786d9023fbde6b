"""The small interface every inference backend implements.

An :class:`Engine` is one network (segmenter, an extractor or the fusion head) loaded by one
backend: it takes named float32 arrays with a leading batch axis and returns named float32 host
arrays. A :class:`Backend` knows how to build the artifacts of an engine from an exported ONNX
file (or from the PyTorch module itself) and how to load them again.

Tensor names are fixed (see :data:`ENGINE_IO`) so that scoring code never depends on a backend.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sdfn_bench.engines import cpu_features as _cpu
from sdfn_bench.engines.precision import PRECISIONS as PRECISIONS  # re-exported: one list of precisions
from sdfn_bench.engines.precision import DeviceCaps, device_kind, refusal
from sdfn_bench.errors import EngineError

if TYPE_CHECKING:
    import torch

ENGINE_NAMES: tuple[str, ...] = ("segmenter", "extractor_entire", "extractor_lung", "fusion")
KIND_OF: dict[str, str] = {
    "segmenter": "segmenter",
    "extractor_entire": "extractor",
    "extractor_lung": "extractor",
    "fusion": "fusion",
}
# Input and output tensor names per engine kind; ``feature_maps`` is added to extractors built
# with CAMs (it is always the last output).
ENGINE_IO: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "segmenter": (("image",), ("mask_logits",)),
    "extractor": (("image",), ("features", "logits")),
    "fusion": (("features_entire", "features_lung"), ("logits",)),
}
CAM_OUTPUT = "feature_maps"
BACKENDS: tuple[str, ...] = ("onnxruntime", "openvino", "torch", "tensorrt")


def io_names(kind: str, *, cams: bool = False) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Input and output names of an engine of ``kind`` (``segmenter|extractor|fusion``)."""
    inputs, outputs = ENGINE_IO[kind]
    if cams and kind == "extractor":
        outputs = outputs + (CAM_OUTPUT,)
    return inputs, outputs


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output; ``shape[0]`` is the dynamic batch axis, written ``-1``."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TensorSpec:
        return cls(name=str(d["name"]), shape=tuple(int(v) for v in d["shape"]), dtype=str(d.get("dtype", "float32")))


@dataclass(frozen=True)
class EngineSpec:
    """What an engine takes and gives, independent of the backend."""

    name: str
    kind: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch: int

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)


@dataclass
class LoadContext:
    """Everything a backend needs to load one engine recorded in engines.json."""

    spec: EngineSpec
    engines_dir: Path
    entry: Mapping[str, Any]
    device: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def file(self, role: str) -> Path:
        files = self.entry.get("files", {})
        if role not in files:
            raise EngineError(f"{self.spec.name}: engines.json has no {role!r} file for this engine")
        return self.engines_dir / files[role]


def probe_device(device: str) -> DeviceCaps:
    """This machine's :class:`~sdfn_bench.engines.precision.DeviceCaps` for ``device`` (``cpu``,
    ``cuda[:N]``): the CPU's flags, or the GPU's name and compute capability read from PyTorch
    (no capability when no CUDA device is visible, so every CUDA precision is refused)."""
    if device_kind(device) != "cuda":
        return DeviceCaps.for_cpu(_cpu.cpu_features())
    import torch

    if not torch.cuda.is_available():
        return DeviceCaps.for_cuda(f"{device} (not visible)", None)
    index = torch.device(device).index or 0
    major, minor = torch.cuda.get_device_capability(index)
    return DeviceCaps.for_cuda(str(torch.cuda.get_device_name(index)), (int(major), int(minor)))


def to_numpy_f32(value: np.ndarray | torch.Tensor) -> np.ndarray:
    """A C-contiguous float32 host array from a numpy array or a torch tensor (any device)."""
    if not isinstance(value, np.ndarray):
        value = value.detach().to("cpu").numpy()
    return np.ascontiguousarray(value, dtype=np.float32)


# What an engine keeps after :meth:`Engine.close` (enough for its name and repr).
_KEPT_ON_CLOSE = frozenset({"spec", "precision", "device", "_closed"})


class Engine(ABC):
    """One loaded network. Subclasses implement :meth:`_run` for a batch of at most ``max_batch``.

    ``run`` checks names and shapes, converts inputs to float32, and splits a batch larger than
    ``max_batch`` into chunks (so callers may pass any batch size >= 1). :meth:`close` releases
    what the backend holds; an engine is also a context manager that closes on exit.
    """

    backend: str = ""

    def __init__(self, spec: EngineSpec, *, precision: str, device: str) -> None:
        self.spec = spec
        self.precision = precision
        self.device = device
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Release the backend's objects for this network (session, compiled model, execution
        context, weights on the device) now rather than at garbage collection. Idempotent;
        running or describing a closed engine raises :class:`~sdfn_bench.errors.EngineError`."""
        if self._closed:
            return
        self._closed = True
        self._release()

    def _release(self) -> None:
        """Drop every attribute the subclass set, newest first.

        ONNX Runtime sessions, OpenVINO compiled models and requests and torch modules have no
        release call of their own: they are freed when their last reference goes, and an engine
        holds its backend's objects only as attributes. Newest first: what was created from an
        object (an execution context from an engine, a request from a compiled model) goes
        before it. A backend that must do more first (wait for its stream) overrides this and
        calls it.
        """
        for name in reversed(list(vars(self))):
            if name not in _KEPT_ON_CLOSE:
                delattr(self, name)

    def _check_open(self) -> None:
        if self._closed:
            raise EngineError(f"{self.name}: the engine was closed (its {self.backend} objects are released)")

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def input_names(self) -> tuple[str, ...]:
        return self.spec.input_names

    @property
    def output_names(self) -> tuple[str, ...]:
        return self.spec.output_names

    @property
    def max_batch(self) -> int:
        return self.spec.max_batch

    def check_inputs(self, inputs: Mapping[str, Any]) -> int:
        """Validate names and shapes (and that the engine is open); return the batch size."""
        self._check_open()
        names = set(inputs)
        if names != set(self.input_names):
            raise EngineError(
                f"{self.name}: expected inputs {list(self.input_names)}, got {sorted(names)}"
            )
        batch = None
        for spec in self.spec.inputs:
            shape = tuple(inputs[spec.name].shape)
            if len(shape) != len(spec.shape) or shape[1:] != spec.shape[1:]:
                raise EngineError(
                    f"{self.name}: input {spec.name!r} must have shape (B, {', '.join(map(str, spec.shape[1:]))}), "
                    f"got {shape}"
                )
            if batch is None:
                batch = shape[0]
            elif shape[0] != batch:
                raise EngineError(f"{self.name}: inputs disagree on the batch size ({batch} vs {shape[0]})")
        if not batch:
            raise EngineError(f"{self.name}: empty batch")
        return int(batch)

    def run(self, inputs: Mapping[str, np.ndarray | torch.Tensor]) -> dict[str, np.ndarray]:
        """Run a batch.

        Args:
            inputs: every input name mapped to a float array (numpy or torch, any device), batch first,
                e.g. ``{"image": (B, 1, S, S)}``.

        Returns:
            Every output name mapped to a float32 host array with the same batch size B.
        """
        batch = self.check_inputs(inputs)
        if batch <= self.max_batch:
            return self._run(inputs)
        parts = [
            self._run({k: v[i : i + self.max_batch] for k, v in inputs.items()})
            for i in range(0, batch, self.max_batch)
        ]
        return {name: np.concatenate([p[name] for p in parts]) for name in self.output_names}

    @abstractmethod
    def _run(self, inputs: Mapping[str, np.ndarray | torch.Tensor]) -> dict[str, np.ndarray]:
        """Run a validated batch of 1..max_batch rows."""

    def run_tensors(self, inputs: Mapping[str, np.ndarray | torch.Tensor]) -> dict[str, torch.Tensor]:
        """Like :meth:`run` but returns float32 torch tensors; GPU backends (torch, tensorrt) leave
        them on the device (batch <= max_batch there), so one engine's output can feed the next
        without a host round trip. Here: host tensors sharing memory with :meth:`run`'s arrays."""
        import torch

        return {name: torch.from_numpy(array) for name, array in self.run(inputs).items()}

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly description (backend, precision, device, tensor specs)."""
        self._check_open()
        return {
            "name": self.name,
            "kind": self.spec.kind,
            "backend": self.backend,
            "precision": self.precision,
            "device": self.device,
            "max_batch": self.max_batch,
            "inputs": [t.to_dict() for t in self.spec.inputs],
            "outputs": [t.to_dict() for t in self.spec.outputs],
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.backend}, {self.precision}, {self.device})"


@dataclass(frozen=True)
class BuildJob:
    """One engine to build: the exported ONNX file(s), where to write, and the options."""

    spec: EngineSpec
    out_dir: Path
    onnx_path: Path | None
    precision: str
    device: str
    module: Any = None  # the eval-mode wrapper module (torch backend)
    options: Mapping[str, Any] = field(default_factory=dict)


class Backend(ABC):
    """Builds engine artifacts and loads them. One instance per backend name."""

    name: str = ""
    needs_onnx: bool = True

    @abstractmethod
    def is_available(self) -> bool:
        """Whether the backend's package is importable here (no device check)."""

    @abstractmethod
    def version(self) -> str:
        """Version string recorded in engines.json and compared at load time."""

    @abstractmethod
    def default_device(self) -> str:
        """``cuda:0`` when the backend can use a GPU here, else ``cpu``."""

    def supports(self, precision: str, device: str) -> str | None:
        """None when the combination works, else the reason it does not.

        By default the capability table's answer (:func:`sdfn_bench.engines.precision.refusal`)
        for this machine's device; a backend may refuse more (a missing package, a failing
        self-test), never less: builds also check the table (``engines/candidates.py``).
        """
        return refusal(self.name, precision, probe_device(device))

    @abstractmethod
    def build(self, job: BuildJob) -> tuple[dict[str, str], dict[str, Any]]:
        """Write the artifacts into ``job.out_dir``.

        Returns:
            (``{role: file name}``, build facts to record in engines.json).
        """

    @abstractmethod
    def load(self, ctx: LoadContext) -> Engine:
        """Load an engine recorded in engines.json."""
