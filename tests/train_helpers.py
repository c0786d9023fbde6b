"""A tiny labeled cohort with lung masks for the training tests (64-px PNGs, 2 images per patient)."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd

from sdfn_bench.classes import CLASS_NAMES

SIDE = 64


def write_cohort(root, n=24, seed=0):
    rng = np.random.default_rng(seed)
    (root / "images").mkdir()
    (root / "masks").mkdir()
    rows, seg = [], []
    yy, xx = np.mgrid[:SIDE, :SIDE]
    for i in range(n):
        mask = np.zeros((SIDE, SIDE), bool)
        for cx in (20 + rng.integers(-2, 3), 44 + rng.integers(-2, 3)):
            mask |= ((xx - cx) / 9.0) ** 2 + ((yy - 32) / 20.0) ** 2 <= 1
        img = np.full((SIDE, SIDE), 180.0) - 120 * mask + rng.normal(0, 8, (SIDE, SIDE))
        labels = np.zeros(len(CLASS_NAMES), int)
        labels[i % 3] = 1
        if labels[0]:
            img[28:36, 16:24] += 90  # a visible "finding" for class 0
        name = f"img{i:03d}.png"
        cv2.imwrite(str(root / "images" / name), np.clip(img, 0, 255).astype(np.uint8))
        cv2.imwrite(str(root / "masks" / name), mask.astype(np.uint8) * 255)
        pid = f"p{i // 2:03d}"
        rows.append({"image": f"images/{name}", "patient_id": pid, "view": "PA", "age": 50, "sex": "M",
                     **dict(zip(CLASS_NAMES, labels.tolist(), strict=True))})
        seg.append({"image": f"images/{name}", "mask": f"masks/{name}", "patient_id": pid})
    df, sdf = pd.DataFrame(rows), pd.DataFrame(seg)
    df.iloc[: n * 2 // 3].to_csv(root / "train.csv", index=False)
    df.iloc[n * 2 // 3:].to_csv(root / "val.csv", index=False)
    sdf.iloc[: n * 2 // 3].to_csv(root / "seg_train.csv", index=False)
    sdf.iloc[n * 2 // 3:].to_csv(root / "seg_val.csv", index=False)
    sdf.to_csv(root / "seg_all.csv", index=False)
    return root
