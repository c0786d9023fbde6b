"""Build -> gate -> commit: reduced-precision engines only reach the engines folder through the gate.

``sdfn-bench build-engines --precision bf16|int8|fp16|auto --gate-manifest M`` runs
:func:`build_gated`:

1. build the candidate engines (every backend x precision asked for, each parity-checked and,
   when a network has several, timed by a short probe: :mod:`sdfn_bench.engines.candidates`);
2. compose the fastest passing candidate of each network into a staged folder beside the
   engines folder and score ``M`` with it and with the fp32 PyTorch reference (the same
   checkpoints, CPU) through `score`'s pipeline; :func:`sdfn_bench.score.gate.compare_runs`
   judges the two runs;
3. on a pass, move the staged folder into the engines folder, its engines.json holding the
   ``accuracy_gate`` object; on a failure, delete it and raise :class:`GateError` with the
   numbers: the engines folder is unchanged.

What is built comes from one precision plan (:func:`plan_build`, over the capability table of
:mod:`sdfn_bench.engines.precision`): first the device (``--device``, else the backend's default
here: a GPU when TensorRT or CUDA PyTorch can use one), then the precisions (``auto``: int8 with
calibration images, fp16 on a GPU or bf16 on a CPU that has it, fp32), then per network the
(backend, precision) candidates the table says really build there.

``--precision auto`` tries per network the fastest precision first and, when the gate fails,
moves only the networks the failure points at (:func:`sdfn_bench.score.gate.implicated`) to
their next more precise candidate, until the gate passes. Every network's last candidate is
PyTorch fp32, the gate's reference itself (:data:`~sdfn_bench.engines.precision.REFERENCE`,
ranked above the other fp32 engines), so on a CPU the last step compares the reference with itself
and passes. Without a gate manifest reduced precision is refused unless ``no_gate`` (recorded as
skipped).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sdfn_bench.engines.backends.base import ENGINE_NAMES, KIND_OF, PRECISIONS, probe_device
from sdfn_bench.engines.build import (
    BuildReport,
    Candidate,
    build_candidates,
    build_engines,
    build_from_sources,
    build_options,
    commit,
    compose,
    load_sources,
    read_calibration,
    resolve_backends,
    stage,
)
from sdfn_bench.engines.candidates import Source
from sdfn_bench.engines.precision import DeviceCaps, PrecisionPlan, make_plan, precision_rank
from sdfn_bench.engines.precision import auto_precisions as plan_auto_precisions
from sdfn_bench.errors import EngineError
from sdfn_bench.score.gate import (
    GateError,
    GateResult,
    GateThresholds,
    compare_runs,
    gate_record,
    implicated,
    labels_of,
)

Log = Callable[[str], None]


@dataclass(frozen=True)
class GatedBuild:
    """The build's report and what the gate said (``gate`` None: not gated, see ``record``)."""

    report: BuildReport
    gate: GateResult | None
    record: dict[str, Any]


def resolve_device(backend: str, device: str | None) -> str:
    """The device a build with ``backend`` runs on: ``device``, else the backend's default here
    (``auto``: a GPU when TensorRT or CUDA PyTorch can use one, else the CPU). The plan resolves it
    before choosing any precision."""
    return resolve_backends(backend, "fp32", device)[1]


def auto_precisions(device: str | DeviceCaps, *, has_calibration: bool) -> list[str]:
    """The precisions ``--precision auto`` tries on ``device`` (a resolved device string, probed
    here, or its capabilities), fastest kind first
    (:func:`sdfn_bench.engines.precision.auto_precisions`)."""
    caps = device if isinstance(device, DeviceCaps) else probe_device(device)
    return list(plan_auto_precisions(caps, has_calibration=has_calibration)[0])


def plan_build(backend: str, precision: str, device: str | None, *, has_calibration: bool) -> PrecisionPlan:
    """The precision plan of a build: the device first, then the precisions, then per network the
    (backend, precision) candidates in order (``auto``: PyTorch fp32, the reference, last).

    Raises:
        EngineError: a network with no candidate (the message says why for each precision).
    """
    resolved = resolve_device(backend, device)
    caps = probe_device(resolved)
    if precision == "auto":
        precisions, skipped = plan_auto_precisions(caps, has_calibration=has_calibration)
    else:
        precisions, skipped = (precision,), {}
    backends: dict[str, Sequence[str] | str] = {}
    for p in precisions:
        try:
            backends[p] = resolve_backends(backend, p, resolved)[0]
        except EngineError as exc:
            backends[p] = str(exc)
    plan = make_plan(precisions, resolved, caps, backends, {n: KIND_OF[n] for n in ENGINE_NAMES},
                     last_resort=precision == "auto")
    plan = replace(plan, skipped={**skipped, **plan.skipped})
    if not all(plan.choices.values()):
        raise EngineError(f"no backend can build any of {', '.join(precisions)} on {resolved}: "
                          + "; ".join(f"{k}: {v}" for k, v in plan.skipped.items()))
    return plan


def by_speed(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Passing candidates, fastest probe first (untimed ones last, in build order)."""
    passing = [c for c in candidates if c.passed]
    return sorted(passing, key=lambda c: -(c.images_per_s or 0.0))


def score_predictions(engines_dir: Path, manifest: Path, image_root: Path | None, out: Path, batch_size: int) -> Any:
    """Score ``manifest`` with the engines of ``engines_dir``; the predictions frame."""
    import pandas as pd

    from sdfn_bench.engines import load_engines
    from sdfn_bench.score.run import score_manifest

    # One engine set per gate attempt: released here, not when the collector gets to it.
    with load_engines(engines_dir) as engines:
        result = score_manifest(manifest, engines=engines, image_root=image_root, out=out, batch_size=batch_size,
                                decoder="cpu")
    return pd.read_parquet(result.predictions)


def build_gated(
    checkpoints_dir: str | Path,
    out_dir: str | Path,
    *,
    backend: str = "auto",
    precision: str = "fp32",
    gate_manifest: str | Path | None = None,
    gate_image_root: str | Path | None = None,
    no_gate: bool = False,
    thresholds: GateThresholds = GateThresholds(),
    calib_manifest: str | Path | None = None,
    calib_image_root: str | Path | None = None,
    max_batch: int = 32,
    cams: bool = False,
    device: str | None = None,
    torch_compile: bool = False,
    progress: Callable[[str, str], None] | None = None,
    log: Log | None = None,
    sources: Mapping[str, Source] | None = None,
    segmenter: str | Path | None = None,
) -> GatedBuild:
    """Build engines in ``precision`` behind the accuracy gate (see the module docstring).

    Args:
        precision: ``fp32|fp16|bf16|int8|auto``.
        gate_manifest, gate_image_root: the manifest the gate scores (labelled: AUC deltas too).
        no_gate: build reduced precision without the gate (recorded in engines.json).
        calib_manifest, calib_image_root: int8 calibration images (int8 and ``auto``).
        sources: already loaded checkpoints (default: loaded from ``checkpoints_dir``).
        segmenter: a segmenter checkpoint (or ``builtin:lungs``) used instead of ``checkpoints_dir``'s.

    Raises:
        GateError: reduced precision without a gate manifest or ``no_gate``; a failed gate.
        EngineError: build failures.
    """
    say = log or (lambda _msg: None)
    started = time.perf_counter()  # build_s in engines.json: from here to the composed folder (gate excluded)
    if precision not in (*PRECISIONS, "auto"):
        raise EngineError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}, auto")
    if precision == "int8" and calib_manifest is None:
        raise EngineError("int8 needs calibration images: pass --calib-manifest MANIFEST (its first images are used)")
    if gate_manifest is None and not no_gate and precision != "fp32":
        raise GateError(
            f"--precision {precision} refused: reduced precision must pass the accuracy gate; pass "
            "--gate-manifest MANIFEST (a labelled manifest scored with the new engines and with fp32 PyTorch) "
            "or --no-gate to build without it (engines.json records that)"
        )
    out = Path(out_dir).resolve()
    requested = {"backend": backend, "precision": precision}
    if gate_manifest is None and precision == "fp32":
        record = {"required": False, "reason": "fp32 engines are checked by parity against PyTorch fp32"}
        report = build_engines(checkpoints_dir, out, backend=backend, precision="fp32", max_batch=max_batch, cams=cams,
                               device=device, torch_compile=torch_compile, progress=progress,
                               extra={"accuracy_gate": record}, segmenter=segmenter)
        return GatedBuild(report, None, record)

    plan = plan_build(backend, precision, device, has_calibration=calib_manifest is not None)
    choices, device = {n: list(c) for n, c in plan.choices.items()}, plan.device
    sources = sources or load_sources(checkpoints_dir, segmenter)
    calibration = None
    if calib_manifest is not None and any(p == "int8" for cs in choices.values() for _, p in cs):
        say("int8 calibration inputs (the lung extractor on lung crops)")
        calibration = read_calibration(sources, calib_manifest, calib_image_root)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.candidates-", dir=out.parent))
    options = build_options(torch_compile, calib_manifest, segmenter)
    common: dict[str, Any] = {"requested": requested, "device": device, "max_batch": max_batch, "cams": cams,
              "build_options": options, "checkpoints_dir": Path(checkpoints_dir), "started": started}
    try:
        say(f"building candidates: {', '.join(sorted({f'{b}/{p}' for cs in choices.values() for b, p in cs}))}")
        candidates = build_candidates(sources, work / "candidates", choices, max_batch=max_batch, cams=cams,
                                      device=device, torch_compile=torch_compile, calibration=calibration,
                                      progress=progress)
        ordered = {n: by_speed(c) for n, c in candidates.items()}
        for name, cands in ordered.items():
            if not cands:
                raise EngineError("; ".join(c.message for c in candidates[name]) + "; nothing was written")
        selection = {**plan.to_dict(), "candidates": {n: [c.summary() for c in cs] for n, cs in candidates.items()}}
        picks = {n: cs[0] for n, cs in ordered.items()}
        if no_gate or gate_manifest is None:  # None only with no_gate here (refused above otherwise)
            record = {"skipped": True, "reason": "--no-gate: reduced precision built without the accuracy gate"}
            report = compose(sources, picks, out, selection=selection, extra={"accuracy_gate": record}, **common)
            return GatedBuild(report, None, record)
        return _gate_loop(sources, picks, ordered, out, work, common, selection, Path(gate_manifest),
                          Path(gate_image_root) if gate_image_root else None, thresholds,
                          auto=precision == "auto", say=say)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _plan(picks: Mapping[str, Candidate]) -> dict[str, str]:
    return {n: f"{c.backend}/{c.precision}" for n, c in picks.items()}


def _gate_loop(sources: Mapping[str, Source], picks: dict[str, Candidate], ordered: Mapping[str, list[Candidate]],
               out: Path, work: Path, common: dict[str, Any], selection: dict[str, Any], manifest: Path,
               image_root: Path | None, thresholds: GateThresholds, *, auto: bool, say: Log) -> GatedBuild:
    from sdfn_bench.manifest.schema import read_manifest

    batch = min(16, int(common["max_batch"]))
    rows = read_manifest(manifest)
    say("fp32 PyTorch reference for the gate")
    reference_dir = work / "reference"
    build_from_sources(sources, reference_dir, backend="torch", precision="fp32", device="cpu",
                       max_batch=int(common["max_batch"]), checkpoints_dir=common["checkpoints_dir"])
    reference = score_predictions(reference_dir, manifest, image_root, work / "reference-run", batch)
    class_names = tuple(sources["fusion"].meta.get("class_names") or ())
    labels = labels_of(rows, class_names)
    attempts: list[dict[str, Any]] = []
    while True:
        staged = stage(out)
        try:
            compose(sources, picks, staged, selection=selection, **common)
            say(f"gate: scoring {manifest.name} with {_plan(picks)}")
            candidate = score_predictions(staged, manifest, image_root, work / f"run-{len(attempts)}", batch)
            result = compare_runs(candidate, reference, labels, class_names, thresholds)
            attempts.append({"plan": _plan(picks), "passed": result.passed, "failures": list(result.failures)})
            record = gate_record(result, manifest=str(manifest.resolve()),
                                 image_root=str(image_root.resolve()) if image_root else None, attempts=attempts)
            if result.passed:
                say("gate passed:\n" + result.summary())
                report = commit(staged, out, extra={"accuracy_gate": record})
                return GatedBuild(report, result, record)
        finally:
            if staged.exists():
                shutil.rmtree(staged, ignore_errors=True)
        say("gate failed: " + "; ".join(result.failures))
        step = _step_down(picks, ordered, implicated(result)) if auto else None
        if step is None:
            raise GateError(
                f"accuracy gate failed for {_plan(picks)} on {manifest} ({result.n_images} images); "
                f"the engines folder {out} is unchanged:\n  - " + "\n  - ".join(result.failures)
                + "\n" + result.summary()
            )
        picks = step


def _step_down(picks: Mapping[str, Candidate], ordered: Mapping[str, list[Candidate]],
               names: Sequence[str]) -> dict[str, Candidate] | None:
    """``picks`` with each named network that still has a more precise candidate moved to the
    fastest of them; None when none of the named networks can move (or none was named).

    A named network already at its most precise candidate stays: its head may only have failed
    through another network (the lung head through the segmenter's boxes).
    """
    new = dict(picks)
    for name in names:
        current = precision_rank(picks[name].backend, picks[name].precision)
        better = [c for c in ordered[name] if precision_rank(c.backend, c.precision) > current]
        if better:
            new[name] = better[0]
    return None if new == dict(picks) else new


__all__ = ["GateError", "GatedBuild", "auto_precisions", "build_gated", "plan_build", "resolve_device"]
