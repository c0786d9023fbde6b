"""The 14 ChestX-ray14 findings, in the SDFN paper's order (section 2.2.1).

Labels are matched by name, never by position: every hand-off between a manifest, a checkpoint,
an engine and a prediction file goes through :func:`check_class_names`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from sdfn_bench.errors import ClassOrderError

CLASS_NAMES: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
N_CLASSES = len(CLASS_NAMES)


# Prefixes that prediction files put before a class name (``prob_Effusion``).
CLASS_PREFIXES = ("prob", "pred")


def normalize(name: str) -> str:
    """Lower case without separators: ``Pleural_Thickening`` -> ``pleuralthickening``."""
    return re.sub(r"[^0-9a-z]", "", str(name).lower())


def class_key(name: str) -> str:
    """:func:`normalize` after dropping a ``prob``/``pred`` prefix set off by a separator
    (``prob_Effusion`` -> ``effusion``; ``Pneumonia`` keeps its letters).

    The one matcher of class names a user types or a file carries: ``compare --predictions``
    columns, ``cams --class``, ``synth --finding-strength``.
    """
    text = str(name).strip()
    match = re.match(rf"^(?:{'|'.join(CLASS_PREFIXES)})[\s_\-.:]+(.+)$", text, flags=re.IGNORECASE)
    return normalize(match.group(1) if match else text)


def match_class(name: str, names: Sequence[str] = CLASS_NAMES) -> str | None:
    """The entry of ``names`` that ``name`` means by :func:`class_key` (case, separators, prefix
    ignored), or None: ``pleural_thickening`` -> ``Pleural_Thickening``."""
    keys = {class_key(n): n for n in names}
    return keys.get(class_key(name))


def check_class_names(names: Sequence[str], *, where: str, expected: Sequence[str] = CLASS_NAMES) -> None:
    """Raise :class:`ClassOrderError` unless ``names`` equals ``expected`` exactly, in order.

    Args:
        names: the class names found in an artifact (manifest columns, checkpoint metadata...).
        where: a human description of the artifact, used in the error message.
        expected: the required names; the paper's 14 classes by default.
    """
    names = tuple(names)
    expected = tuple(expected)
    if names == expected:
        return
    missing = [n for n in expected if n not in names]
    extra = [n for n in names if n not in expected]
    detail = []
    if missing:
        detail.append(f"missing {missing}")
    if extra:
        detail.append(f"unexpected {extra}")
    if not missing and not extra:
        detail.append(f"same names in another order: {list(names)}")
    raise ClassOrderError(f"{where}: class names differ from {list(expected)}: " + "; ".join(detail))
