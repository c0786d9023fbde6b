"""sdfn-bench: batch scoring and benchmarking for SDFN (Liu et al. 2019) chest X-ray classification.

The package is laid out along the pipeline:
manifest -> decode -> segment (models.segmenter) -> lrg -> crop -> extract (models.extractor)
-> fuse (models.fusion) -> score -> stats -> report.
"""

from __future__ import annotations

__version__ = "0.1.0"
