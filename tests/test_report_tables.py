"""The shared pieces of the report pages: table rendering, JSON values, the figure grid."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sdfn_bench.report.json_values import jsonable
from sdfn_bench.report.roc_figure import GRID_COLUMNS, panel_grid
from sdfn_bench.report.tables import html_table, markdown_table


def test_markdown_table_aligns_and_escapes_pipes() -> None:
    text = markdown_table(["Finding", "AUC"], [["a|b", "0.812"], ["Mean", "0.800"]])
    assert text.splitlines() == ["| Finding | AUC |", "|:---|---:|", "| a\\|b | 0.812 |", "| Mean | 0.800 |"]
    assert markdown_table(["x", "y"], [], align_first_left=False).splitlines()[1] == "|---:|---:|"


def test_html_table_escapes_every_cell() -> None:
    assert html_table(["<b>", "p"], [["a & b", "<0.0001"]]) == (
        "<table><thead><tr><th>&lt;b&gt;</th><th>p</th></tr></thead>"
        "<tbody><tr><td>a &amp; b</td><td>&lt;0.0001</td></tr></tbody></table>")


@dataclass(frozen=True)
class _Record:
    auc: np.ndarray
    p: float
    where: Path


def test_jsonable_gives_plain_values_and_null_for_non_finite() -> None:
    record = {1: _Record(np.array([0.5, np.nan]), float("inf"), Path("/r/run.json")),
              "n": np.int64(3), "ok": np.bool_(True), "pair": (np.float32(0.25), -math.inf)}
    out = jsonable(record)
    assert out == {"1": {"auc": [0.5, None], "p": None, "where": "/r/run.json"}, "n": 3, "ok": True,
                   "pair": [0.25, None]}
    json.dumps(out, allow_nan=False)  # raises on any NaN or NumPy value left
    assert type(out["n"]) is int and type(out["ok"]) is bool


def test_panel_grid_blanks_the_cells_after_the_last_panel() -> None:
    fig, panels = panel_grid(14, panel_inches=3.0, left=0.1, wspace=0.2)
    assert len(panels) == 14 and len(fig.axes) == 16 and GRID_COLUMNS == 4
    assert tuple(fig.get_size_inches()) == (12.0, 12.0)
    assert all(ax.axison for ax in panels)
    assert [ax.axison for ax in fig.axes[14:]] == [False, False]
    assert fig.subplotpars.left == 0.1 and fig.subplotpars.wspace == 0.2
    assert fig.canvas.__class__.__name__ == "FigureCanvasAgg"
