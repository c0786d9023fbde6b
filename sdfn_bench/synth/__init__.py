"""The synthetic cohort: stand-in chest X-rays with lung masks, NIH-like labels and lesion boxes.

``make_cohort(out_dir, n=..., size=..., seed=...)`` writes the cohort; see
docs/synthetic-cohort.md for every parameter and docs/architecture.md for the layout.
"""

from __future__ import annotations

from sdfn_bench.synth.cohort import CohortSummary, SynthParams, make_cohort
from sdfn_bench.synth.labels import SynthError
from sdfn_bench.synth.render import ImageSpec, RenderParams, render_image

__all__ = ["CohortSummary", "ImageSpec", "RenderParams", "SynthError", "SynthParams", "make_cohort", "render_image"]
