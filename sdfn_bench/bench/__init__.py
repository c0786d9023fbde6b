"""`sdfn-bench bench`: the CheXNet-style reference vs the scoring pipeline on synthetic images.

- :mod:`sdfn_bench.bench.reference`: PyTorch eager, one image at a time, Pillow + torchvision.
- :mod:`sdfn_bench.bench.flops`: convolution + linear FLOPs per image.
- :mod:`sdfn_bench.bench.peak`: this machine's measured convolution peak (int8 and CPU bf16 in
  :mod:`sdfn_bench.bench.peak_reduced`; both give a :mod:`sdfn_bench.bench.peak_result`).
- :mod:`sdfn_bench.bench.settings`: what to run (:class:`~sdfn_bench.bench.settings.BenchSettings`) and the goals.
- :mod:`sdfn_bench.bench.inputs`: the synthetic image sets and the seeded random checkpoints.
- :mod:`sdfn_bench.bench.record`: what a run measured, the verdict and the JSON record.
- :mod:`sdfn_bench.bench.run`: both runs, the comparison and ``reports/bench/latest.json``.
"""
