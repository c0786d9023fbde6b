"""`sdfn-bench cams RUN --class C`: PNG overlays of the CAMs and a static HTML gallery.

Each overlay shows, side by side: the image with its LRG box (cyan) and the truth boxes when
known (green); the entire-image extractor's CAM; SDFN's CAM (eq. 5-6, heatmap2 on the lung box).
Each map is min-max normalised on its own and drawn with the jet colour map over the image. A
header line gives the three heads' probabilities of the class.

Files, all inside the run folder so it opens as one small report site (relative links, inline
CSS, no script, no server, no external asset)::

    RUN/gallery/<Class>/<position>_<image>.png
    RUN/gallery/gallery.json      what each class page holds (successive `cams` calls add classes)
    RUN/gallery/index.html        every class's overlays, with links to Table 1 and localization

:func:`link_reports` adds links to the gallery and the localization table to ``table1.html``
(``compare`` calls it too, so a re-written Table 1 keeps them).
"""

from __future__ import annotations

import html
import json
import re
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from sdfn_bench.cam.boxes import read_boxes
from sdfn_bench.cam.localize import truth_corners
from sdfn_bench.cam.maps import upsample
from sdfn_bench.cam.store import StoredCams, load_cams
from sdfn_bench.core.io import write_bytes, write_text
from sdfn_bench.decode.reader import read_image
from sdfn_bench.errors import CamError, ImageReadError
from sdfn_bench.lrg import LungBox
from sdfn_bench.manifest.image_root import ImageResolver
from sdfn_bench.preprocess import to_unit

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package (`make browser`)
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
                  "--hide-scrollbars")
GALLERY_DIR = "gallery"
INDEX = "index.html"
RECORD = "gallery.json"
PANEL_HEIGHT = 320
HEADER_PX = 28
LINKS_START, LINKS_END = "<!-- sdfn-links:start -->", "<!-- sdfn-links:end -->"
_CYAN, _GREEN, _WHITE = (255, 255, 0), (0, 220, 0), (255, 255, 255)  # BGR
PAGE_STYLE = ("body{font-family:sans-serif;margin:2em;background:#fafafa}figure{display:inline-block;margin:0 1em 1.5em 0;"
              "vertical-align:top}img{max-width:100%;border:1px solid #ccc}figcaption{font-size:90%;color:#333}")


@dataclass(frozen=True)
class GalleryResult:
    """What one ``cams`` call wrote.

    Attributes:
        class_name: the class shown.
        images: the manifest images drawn, in gallery order.
        pngs: the overlay files.
        index: the gallery page.
    """

    class_name: str
    images: tuple[str, ...]
    pngs: tuple[Path, ...]
    index: Path


def choose_images(
    predictions: pd.DataFrame, cams: StoredCams, class_name: str, *, top: int | None, images: Sequence[str] | None
) -> list[str]:
    """The images to draw: ``images`` as given (each must have maps), else the ``top`` by SDFN probability."""
    if images:
        for name in images:
            cams.index(name)  # CamError when the run has no maps for it
        return list(images)
    if top is None or top < 1:
        raise CamError(f"--top must be >= 1, got {top}")
    ok = predictions[predictions["status"] == "ok"]
    column = f"sdfn_{class_name}"
    if column not in ok.columns:
        raise CamError(f"predictions have no column {column!r}")
    order = np.argsort(-ok[column].to_numpy(dtype=np.float64), kind="stable")[:top]
    return [str(ok["image"].iloc[i]) for i in order]


def _gray_bgr(image: np.ndarray) -> np.ndarray:
    unit = to_unit(image) if image.dtype in (np.uint8, np.uint16) else to_unit(image.astype(np.float32))
    gray = (unit * 255.0 + 0.5).astype(np.uint8)
    return cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)


def _rect(img: np.ndarray, box: tuple[float, float, float, float], scale: float, color: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = (int(round(v * scale)) for v in box)
    cv2.rectangle(img, (x0, y0), (max(x0, x1 - 1), max(y0, y1 - 1)), color, 2)


def overlay(gray: np.ndarray, heatmap: np.ndarray | None, alpha: float = 0.45) -> np.ndarray:
    """A (H, W, 3) BGR image with a min-max normalised jet heatmap (H, W) blended over it."""
    if heatmap is None:
        return gray.copy()
    m = heatmap.astype(np.float64)
    span = float(m.max() - m.min())
    norm = np.zeros_like(m) if span <= 0 else (m - m.min()) / span
    colour = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.addWeighted(colour, alpha, gray, 1.0 - alpha, 0.0)


def render_overlay(
    image: np.ndarray,
    entire_map: np.ndarray,
    sdfn_map: np.ndarray,
    lung_box: LungBox,
    truth_xywh: np.ndarray,
    header: str,
    panel_height: int = PANEL_HEIGHT,
) -> np.ndarray:
    """Three panels (image + boxes, entire CAM, SDFN CAM) under a header line, (h, w, 3) BGR uint8."""
    h, w = image.shape
    scale = panel_height / h
    size = (max(1, round(w * scale)), panel_height)
    gray = cv2.resize(_gray_bgr(image), size, interpolation=cv2.INTER_AREA)
    maps = [None, upsample(entire_map, size[1], size[0]), upsample(sdfn_map, size[1], size[0])]
    titles = ["image, LRG box, truth", "entire-image CAM", "SDFN CAM (eq. 5-6)"]
    panels = []
    truth = truth_corners(truth_xywh) if len(truth_xywh) else np.zeros((0, 4))
    for i, (m, title) in enumerate(zip(maps, titles, strict=True)):
        p = overlay(gray, m)
        if i != 1:
            _rect(p, (lung_box.x0, lung_box.y0, lung_box.x1, lung_box.y1), scale, _CYAN)
        for t in truth:
            _rect(p, tuple(t), scale, _GREEN)
        cv2.putText(p, title, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, _WHITE, 1, cv2.LINE_AA)
        panels.append(p)
    body = np.concatenate(panels, axis=1)
    top = np.full((HEADER_PX, body.shape[1], 3), 32, np.uint8)
    cv2.putText(top, header, (6, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.55, _WHITE, 1, cv2.LINE_AA)
    return np.concatenate([top, body], axis=0)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).stem)[:80]


def _truth_boxes(run_dir: Path, boxes_path: str | Path | None) -> pd.DataFrame | None:
    """The box file given, else the one the run's localize used (localization.json), else None."""
    if boxes_path is None:
        record = run_dir / "localization.json"
        if not record.is_file():
            return None
        boxes_path = json.loads(record.read_text())["boxes"]
    return read_boxes(boxes_path)


def write_gallery(
    run_dir: str | Path,
    class_name: str,
    *,
    top: int | None = 8,
    images: Sequence[str] | None = None,
    boxes_path: str | Path | None = None,
) -> GalleryResult:
    """Draw the overlays of one class and (re)write the gallery page.

    Args:
        run_dir: a ``score --cams`` run.
        class_name: one of the 14 classes.
        top: draw the ``top`` images by SDFN probability (ignored when ``images`` is given).
        images: manifest images to draw instead.
        boxes_path: truth boxes (``image, finding, x, y, w, h``); default: the box file of the
            run's last ``localize``, if any.

    Raises:
        CamError: no maps, unknown class or image, an image that cannot be read again.
    """
    run_dir = Path(run_dir)
    cams = load_cams(run_dir)
    try:
        c = cams.heads.class_index(class_name)
    except ValueError as exc:
        raise CamError(str(exc)) from exc
    predictions = pd.read_parquet(run_dir / "predictions.parquet")
    chosen = choose_images(predictions, cams, class_name, top=top, images=images)
    run = json.loads((run_dir / "run.json").read_text())
    resolver = ImageResolver.for_manifest(run["manifest"], run.get("image_root"))
    truth = _truth_boxes(run_dir, boxes_path)
    by_image = predictions.set_index("image")
    out_dir = run_dir / GALLERY_DIR / _safe(class_name)
    out_dir.mkdir(parents=True, exist_ok=True)
    entries, pngs = [], []
    for name in chosen:
        row = cams.index(name)
        path = resolver.resolve(name)
        try:
            if path is None:
                raise ImageReadError(Path(resolver.root) / name, "file not found under the image root")
            image = read_image(path)
        except ImageReadError as exc:
            raise CamError(f"cannot draw {name!r}: {exc}") from exc
        if tuple(image.shape) != tuple(int(v) for v in cams.image_shapes[row]):
            raise CamError(f"{path}: shape {image.shape} differs from the scored image {tuple(cams.image_shapes[row])}")
        probs = {h: float(by_image.loc[name, f"{h}_{class_name}"]) for h in ("entire", "lung", "sdfn")}
        mine = (truth[(truth["image"] == name) & (truth["finding"] == class_name)][["x", "y", "w", "h"]].to_numpy(float)
                if truth is not None else np.zeros((0, 4)))
        header = f"{class_name}: p(entire) {probs['entire']:.3f}  p(lung) {probs['lung']:.3f}  p(SDFN) {probs['sdfn']:.3f}"
        picture = render_overlay(image, cams.entire[row, c].astype(np.float32),
                                 cams.sdfn_map(row, class_name), cams.lung_boxes[row], mine, header)
        png = out_dir / f"{row:06d}_{_safe(name)}.png"
        ok, encoded = cv2.imencode(".png", picture)
        if not ok:
            raise CamError(f"{png}: PNG encoding failed")
        write_bytes(png, encoded.tobytes())
        pngs.append(png)
        entries.append({"image": name, "png": png.relative_to(run_dir / GALLERY_DIR).as_posix(), **probs,
                        "truth_boxes": int(len(mine))})
    record_path = run_dir / GALLERY_DIR / RECORD
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    record[class_name] = entries
    write_text(record_path, json.dumps(record, indent=1) + "\n")
    index = write_index(run_dir, record)
    link_reports(run_dir)
    return GalleryResult(class_name=class_name, images=tuple(chosen), pngs=tuple(pngs), index=index)


def write_index(run_dir: Path, record: dict[str, list[dict[str, object]]]) -> Path:
    """``RUN/gallery/index.html`` from the gallery record (classes in the record's order)."""
    e = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>CAM gallery</title>",
             f"<style>{PAGE_STYLE}</style></head><body>", "<h1>Class activation maps</h1>", "<p>"]
    links = [("../table1.html", "Table 1"), ("../localization.html", "Localization")]
    parts.append(" · ".join(f"<a href='{href}'>{e(text)}</a>" for href, text in links
                            if (run_dir / GALLERY_DIR / href).resolve().is_file()))
    parts.append("</p><p>Left: the image with the lung box of the Lung Region Generator (cyan) and the truth boxes "
                 "(green); middle: the entire-image extractor's CAM; right: SDFN's CAM, eq. 5-6. Each map is "
                 "normalised on its own.</p>")
    for class_name, entries in record.items():
        parts.append(f"<h2 id='{e(_safe(class_name))}'>{e(class_name)}</h2>")
        for entry in entries:
            caption = (f"{entry['image']}: p(SDFN) {float(entry['sdfn']):.3f}, p(entire) {float(entry['entire']):.3f}, "
                       f"p(lung) {float(entry['lung']):.3f}; {entry['truth_boxes']} truth box(es)")
            parts.append(f"<figure><img src='{e(str(entry['png']))}' alt='{e(caption)}'>"
                         f"<figcaption>{e(caption)}</figcaption></figure>")
    parts.append("</body></html>")
    index = run_dir / GALLERY_DIR / INDEX
    write_text(index, "\n".join(parts) + "\n")
    return index


def link_reports(run_dir: str | Path) -> bool:
    """Add links to the gallery and the localization table to ``RUN/table1.html`` (idempotent).

    Returns:
        Whether table1.html exists (and now holds the links of the pages that exist).
    """
    run_dir = Path(run_dir)
    table = run_dir / "table1.html"
    if not table.is_file():
        return False
    text = table.read_text(encoding="utf-8")
    text = re.sub(re.escape(LINKS_START) + ".*?" + re.escape(LINKS_END), "", text, flags=re.S)
    links = [(f"{GALLERY_DIR}/{INDEX}", "CAM gallery"), ("localization.html", "Localization from CAMs")]
    present = [(href, label) for href, label in links if (run_dir / href).is_file()]
    if present:
        nav = (LINKS_START + "<p>" + " · ".join(f"<a href='{href}'>{html.escape(label)}</a>" for href, label in present)
               + "</p>" + LINKS_END)
        text = text.replace("<body>", "<body>" + nav, 1)
    write_text(table, text)
    return True


def screenshot(page: Path, out_png: Path, *, width: int = 1280, height: int = 1400, chromium: Path = CHROMIUM,
               timeout_s: float = 120.0) -> Path | None:
    """A headless-Chromium screenshot of a local page (its own ``--screenshot``); None without Chromium.

    Raises:
        CamError: Chromium ran but wrote no screenshot (its output is in the message).
    """
    if not chromium.is_file():
        return None
    out_png = Path(out_png).resolve()
    with tempfile.TemporaryDirectory(prefix="sdfn-chromium-") as profile:
        cmd = [str(chromium), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
               f"--screenshot={out_png}", Path(page).resolve().as_uri()]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise CamError(f"{chromium}: screenshot of {page} failed: {exc}") from exc
    if not out_png.is_file():
        raise CamError(f"{chromium}: no screenshot of {page} (exit {done.returncode}): {done.stderr[-500:]}")
    return out_png
