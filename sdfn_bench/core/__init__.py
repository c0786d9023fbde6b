"""The small layer every package may import: atomic file writes, file digests, the version.

Nothing here imports another part of sdfn_bench (and this ``__init__`` imports nothing), so any
module, the package root included, can depend on it without a cycle.
"""
