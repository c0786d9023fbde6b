"""Issue 8 item 5: the lung crop scoring feeds the lung extractor is the crop training fed it.

Same images, same checkpoints: ``lung-boxes`` (training's path, the torch segmenter) and ``score``
(the engines built from those checkpoints) must give the same boxes, in original-image pixels,
with the segmenter checkpoint's recorded margin applied at full resolution, and the lung
extractor must receive bit-identical inputs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from test_score_fakes import make_image_folder

from sdfn_bench.classes import CLASS_NAMES
from sdfn_bench.engines import load_engines
from sdfn_bench.lrg import PAPER_MARGIN, box_to_image, lung_box
from sdfn_bench.manifest.image_root import ImageResolver
from sdfn_bench.score.batch import score_batch
from sdfn_bench.train.data import ClassifierItems, read_boxes
from sdfn_bench.train.lung_boxes import compute_lung_boxes


class _Recording:
    """Wraps an engine and keeps every input batch it receives."""

    def __init__(self, engine) -> None:
        self.engine, self.inputs = engine, []

    def run(self, inputs):
        self.inputs.append(inputs["image"].copy())
        return self.engine.run(inputs)


def test_score_crops_equal_training_crops(tiny_engines, tmp_path):
    root = tmp_path / "data"
    manifest = make_image_folder(root, 6, seed=11)
    rows = pd.read_csv(manifest)
    for c in CLASS_NAMES:  # training items need labels
        rows[c] = 0
    rows.to_csv(manifest, index=False)
    resolver = ImageResolver(root)

    boxes_path = compute_lung_boxes(manifest, tiny_engines.checkpoints / "segmenter", tmp_path / "boxes.parquet",
                                    batch_size=4).path
    train_boxes = read_boxes([boxes_path])
    engines = load_engines(tiny_engines.engines)
    assert engines.lung_margin == tiny_engines.margin.to_dict()  # recorded by build-engines
    recording = _Recording(engines.extractor_lung)
    object.__setattr__(engines, "extractor_lung", recording)
    scored = score_batch(rows, engines, resolver)

    assert (scored["status"] == "ok").all()
    assert (scored["lrg_status"] != "fallback_full_image").any()  # real boxes, not only the whole image
    items = ClassifierItems(rows, resolver, engines.pre_lung, train_boxes)
    fed = np.concatenate(recording.inputs)
    for i, image in enumerate(rows["image"]):
        box = train_boxes[image]
        row = scored.iloc[i]
        assert (row["lung_x0"], row["lung_y0"], row["lung_x1"], row["lung_y1"]) == (box.x0, box.y0, box.x1, box.y1)
        assert row["lrg_status"] == box.status
        np.testing.assert_array_equal(fed[i], items[i][0].numpy(), err_msg=image)

    # The recorded margin is the one in force, in full-resolution pixels: the old rule (the paper's
    # margin in mask pixels, then mapped up) gives other boxes.
    old_rule = [_old_rule_box(resolver, engines, image) for image in rows["image"]]
    new_rule = [(b.x0, b.y0, b.x1, b.y1) for b in (train_boxes[image] for image in rows["image"])]
    assert sum(a != b for a, b in zip(old_rule, new_rule, strict=True)) >= len(rows) // 2


def _old_rule_box(resolver, engines, image):
    from sdfn_bench.decode.reader import read_image
    from sdfn_bench.preprocess import prepare
    from sdfn_bench.score.batch import segmenter_masks

    pixels = read_image(resolver.resolve(image))
    logits = engines.segmenter.run({"image": prepare(pixels, engines.pre_segmenter)[None]})["mask_logits"]
    mask = segmenter_masks(logits, engines.mask_threshold)[0]
    b = box_to_image(lung_box(mask, PAPER_MARGIN), mask.shape, pixels.shape)
    return (b.x0, b.y0, b.x1, b.y1)
