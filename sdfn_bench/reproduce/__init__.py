"""`sdfn-bench reproduce`: the paper on NIH ChestX-ray14 and JSRT/SCR, as one resumable run.

Laid out like the demo, each step the same library call as its own command::

    W/manifests/   nih_train.csv, nih_val.csv, nih_test.csv (sdfn-bench manifest nih), jsrt.csv
                   (sdfn-bench manifest jsrt), excluded.csv (training images left out, and why)
    W/checkpoints/ segmenter, extractor_entire, extractor_lung, fusion (sdfn-bench train ...),
                   init/ (the imported ImageNet weights), seg_cv/ (sdfn-bench seg-eval --folds K);
                   with ``--segmenter builtin:lungs`` (or a checkpoint) ``segmenter`` is a copy of it, the
                   JSRT training is skipped and ``--jsrt``/``--scr`` are not needed
    W/boxes/       boxes_train.parquet, boxes_val.parquet (sdfn-bench lung-boxes)
    W/engines/     sdfn-bench build-engines
    W/reports/runs/<id>/   sdfn-bench score nih_test.csv; sdfn-bench compare -> Table 1
    W/reproduce.log        one timestamped line per step start and end
    W/reproduce.json       the state: the current run folder, the finished steps' summaries

A finished step is reused after an interruption and a long step resumes inside itself (training
epochs, lung-box chunks, scoring shards). Training images whose file is missing (found by the
data step) or cannot be decoded (found by the lung-box step) are left out of the training and
validation manifests and listed in ``excluded.csv``; the test split is scored in full, an
unreadable test image being an error row that the comparison reports.

:func:`inspect_data` and :func:`estimate_plan` are the dry run: they find the data and time a short
probe of every network on this machine's device.
"""

from __future__ import annotations

from sdfn_bench.reproduce.data import DataReport, ReproduceError, SplitFiles, inspect_data
from sdfn_bench.reproduce.plan import Plan, PlanStep, Probe, estimate_plan, probe
from sdfn_bench.reproduce.run import PAPER_MEAN_AUC, STEPS, ReproduceResult, run_reproduce

__all__ = ["PAPER_MEAN_AUC", "STEPS", "DataReport", "Plan", "PlanStep", "Probe", "ReproduceError", "ReproduceResult",
           "SplitFiles", "estimate_plan", "inspect_data", "probe", "run_reproduce"]
