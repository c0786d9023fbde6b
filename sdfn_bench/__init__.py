"""sdfn-bench: batch scoring and benchmarking for SDFN (Liu et al. 2019) chest X-ray classification.

The package is laid out along the pipeline:
manifest -> decode -> segment (models.segmenter) -> lrg -> crop -> extract (models.extractor)
-> fuse (models.fusion) -> score -> stats -> report.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sdfn_bench.core.version import __version__

# The notebook API (sdfn_bench.api), imported on first use so that `import sdfn_bench` (the CLI's
# version lookup) stays free of torch and the engine backends.
_API = ("ImageScore", "load_engines", "score_images")
# Predictions-only evaluation (sdfn_bench.report.evaluate): pandas and the statistics, no torch.
_EVALUATE = ("evaluate",)
__all__ = ["ImageScore", "__version__", "evaluate", "load_engines", "score_images"]

if TYPE_CHECKING:
    from sdfn_bench.api import ImageScore, load_engines, score_images
    from sdfn_bench.report.evaluate import evaluate


def __getattr__(name: str) -> Any:
    if name in _API:
        from sdfn_bench import api

        return getattr(api, name)
    if name in _EVALUATE:
        from sdfn_bench.report import evaluate as evaluate_module

        return getattr(evaluate_module, name)
    raise AttributeError(f"module 'sdfn_bench' has no attribute {name!r}")
