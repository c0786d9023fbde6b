"""Decoding: image files become 2-D grayscale arrays (:mod:`sdfn_bench.decode.reader`)."""
