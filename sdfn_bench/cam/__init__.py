"""Class activation maps (eq. 5-6 of the paper): the maps, their storage, and localization."""

from sdfn_bench.cam.store import StoredCams, load_cams

__all__ = ["StoredCams", "load_cams"]
