"""The package version, in its own module so that recording it never imports the package root
(which lazily pulls in the notebook API)."""

from __future__ import annotations

__version__ = "0.1.0"
