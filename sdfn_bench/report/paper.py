"""The published AUCs of Liu et al. (2019), Table 1 (NIH benchmark test split, 25,596 images).

Copied from the paper's text (../shared/paper/SDFN-Liu-2019.txt, Table 1). "Entire CXR" and "Lung
region" are the paper's fine-tuned DenseNet-121s trained on the entire image and on the lung crop.
"""

from __future__ import annotations

PAPER_COLUMNS: tuple[str, ...] = (
    "Wang et al. 2017",
    "Yao et al. 2018",
    "Gündel et al. 2018",
    "Entire CXR (paper)",
    "Lung region (paper)",
    "SDFN (paper)",
)

# Rows in CLASS_NAMES order, then "Mean"; columns in PAPER_COLUMNS order.
_ROWS: dict[str, tuple[float, ...]] = {
    "Atelectasis": (0.700, 0.733, 0.767, 0.762, 0.773, 0.781),
    "Cardiomegaly": (0.814, 0.856, 0.883, 0.878, 0.868, 0.885),
    "Effusion": (0.736, 0.806, 0.828, 0.822, 0.827, 0.832),
    "Infiltration": (0.613, 0.673, 0.709, 0.693, 0.670, 0.700),
    "Mass": (0.693, 0.777, 0.821, 0.791, 0.807, 0.815),
    "Nodule": (0.669, 0.724, 0.758, 0.744, 0.759, 0.765),
    "Pneumonia": (0.658, 0.684, 0.731, 0.707, 0.708, 0.719),
    "Pneumothorax": (0.799, 0.805, 0.846, 0.855, 0.851, 0.866),
    "Consolidation": (0.703, 0.711, 0.745, 0.737, 0.738, 0.743),
    "Edema": (0.805, 0.806, 0.835, 0.837, 0.831, 0.842),
    "Emphysema": (0.833, 0.842, 0.895, 0.912, 0.909, 0.921),
    "Fibrosis": (0.786, 0.743, 0.818, 0.826, 0.825, 0.835),
    "Pleural_Thickening": (0.684, 0.724, 0.761, 0.760, 0.783, 0.791),
    "Hernia": (0.872, 0.775, 0.896, 0.902, 0.912, 0.911),
    "Mean": (0.740, 0.761, 0.807, 0.802, 0.804, 0.815),
}

def paper_table1() -> dict[str, dict[str, float]]:
    """The paper's Table 1 as ``{row: {column: auc}}``; rows are the 14 classes then ``Mean``."""
    return {row: dict(zip(PAPER_COLUMNS, values, strict=True)) for row, values in _ROWS.items()}
