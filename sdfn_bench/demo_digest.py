"""The digest of what determines the published demo's numbers, so the README cannot drift silently.

`sdfn-bench demo --publish` writes :func:`inputs_digest` into the README's demo block as
``<!-- demo:inputs-sha256 HEX -->``; ``tests/test_demo_digest.py`` recomputes it from the tree and
fails, naming :data:`REPUBLISH_COMMAND`, when code that shapes the numbers changed after the block
was published.

What counts (:data:`NUMBER_SOURCES`): the code and presets of the synthetic cohort, training, the
models, the engines, scoring and the statistics, and the pipeline modules scoring runs through
(decoding, preprocessing, the lung-region rules, cropping, the class list). Not counted: the
report's formatting, the CLI, and ``demo.py``'s orchestration (a picture step there changes no
number; its defaults of cohort size and seed are in the published block's own text).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent
NUMBER_SOURCES: tuple[str, ...] = (
    "synth", "train", "models", "engines", "score", "stats", "decode",
    "preprocess.py", "lrg.py", "crop.py", "classes.py",
)
MARK = "demo:inputs-sha256"
REPUBLISH_COMMAND = ".venv/bin/sdfn-bench demo --publish (from the repo root)"
_MARK_LINE = re.compile(rf"<!-- {re.escape(MARK)} ([0-9a-f]{{64}}) -->")


def source_files(package_root: Path = PACKAGE_ROOT) -> list[Path]:
    """The ``.py`` files of :data:`NUMBER_SOURCES` under ``package_root``, sorted by relative path."""
    files: list[Path] = []
    for name in NUMBER_SOURCES:
        path = package_root / name
        if path.is_dir():
            files.extend(p for p in path.rglob("*.py") if "__pycache__" not in p.parts)
        elif path.is_file():
            files.append(path)
    return sorted(files, key=lambda p: p.relative_to(package_root).as_posix())


def inputs_digest(package_root: Path = PACKAGE_ROOT) -> str:
    """sha256 over each source file's relative path and bytes (line endings normalised), in order."""
    h = hashlib.sha256()
    for path in source_files(package_root):
        h.update(path.relative_to(package_root).as_posix().encode() + b"\0")
        h.update(path.read_bytes().replace(b"\r\n", b"\n") + b"\0")
    return h.hexdigest()


def mark_line(digest: str) -> str:
    """The README line that records ``digest`` (an HTML comment: invisible when rendered)."""
    return f"<!-- {MARK} {digest} -->"


def published_digest(readme_text: str) -> str | None:
    """The digest recorded in a README's demo block, or None when it records none."""
    found = _MARK_LINE.search(readme_text)
    return None if found is None else found.group(1)
