"""Scoring: the pure batch function, the streaming pipeline, atomic shards and the run folder.

- :func:`sdfn_bench.score.batch.score_batch`: score a batch of manifest rows (no state).
- :func:`sdfn_bench.score.pipeline.run_pipeline`: the same stages, overlapped, bounded memory.
- :func:`sdfn_bench.score.run.score_manifest`: a whole run (`sdfn-bench score`).
"""
