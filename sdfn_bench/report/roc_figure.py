"""ROC curves per class, one panel each, like the paper's Fig. 8."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sdfn_bench.core.io import atomic_write
from sdfn_bench.stats.roc import RocCurve

COLORS = {"entire": "#1f77b4", "lung": "#ff7f0e", "sdfn": "#d62728"}
LABELS = {"entire": "Entire CXR", "lung": "Lung region", "sdfn": "SDFN"}
GRID_COLUMNS = 4


def panel_grid(n_panels: int, *, panel_inches: float, **spacing: float) -> tuple[Figure, list[Axes]]:
    """A figure of ``n_panels`` square panels in rows of :data:`GRID_COLUMNS` (the paper's 4 x 4 for
    14 classes), on an Agg canvas of its own (no pyplot, no global backend switch); the cells after
    the last panel are blanked.

    Args:
        n_panels: panels wanted (one per class).
        panel_inches: width and height of one cell.
        spacing: :meth:`Figure.subplots_adjust` arguments (``left``, ``wspace``...): a fixed layout,
            as constrained layout re-solves on every save and triples the drawing time.

    Returns:
        The figure and its ``n_panels`` axes, row by row.
    """
    nrows = -(-n_panels // GRID_COLUMNS)
    fig = Figure(figsize=(panel_inches * GRID_COLUMNS, panel_inches * nrows))
    fig.subplots_adjust(**spacing)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, GRID_COLUMNS, squeeze=False).ravel()
    for blank in axes[n_panels:]:
        blank.set_axis_off()
    return fig, list(axes[:n_panels])


def draw_roc_figure(curves: Mapping[str, Sequence[RocCurve]], class_names: Sequence[str], *, title: str) -> Figure:
    """A 4 x 4 grid (14 classes) of ROC curves with the AUC in each legend.

    The figure is attached to an Agg canvas directly (no pyplot, no global backend switch).

    Args:
        curves: scorer -> one :class:`RocCurve` per class.
        class_names: panel titles, in the curves' order.
        title: the figure's title.

    Returns:
        The figure; save it with :func:`save_figure`.
    """
    fig, panels = panel_grid(len(class_names), panel_inches=4.0, left=0.05, right=0.99, bottom=0.04, top=0.95,
                             wspace=0.22, hspace=0.22)
    for i, (name, ax) in enumerate(zip(class_names, panels, strict=True)):
        ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="#999999")
        for scorer, per_class in curves.items():
            curve = per_class[i]
            label = f"{LABELS.get(scorer, scorer)} (AUC {curve.auc:.3f})" if curve.defined else f"{LABELS.get(scorer, scorer)} (undefined)"
            if curve.defined:
                ax.plot(curve.fpr, curve.tpr, lw=1.6, color=COLORS.get(scorer), label=label)
            else:
                ax.plot([], [], color=COLORS.get(scorer), label=label)
        ax.set_title(name.replace("_", " "), fontsize=12)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_aspect("equal")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=9)
        if i % GRID_COLUMNS == 0:
            ax.set_ylabel("True positive rate")
        if i + GRID_COLUMNS >= len(class_names):  # the bottom panel of its column
            ax.set_xlabel("False positive rate")
    fig.suptitle(title, fontsize=14)
    return fig


def save_figure(fig: Figure, path: Path) -> None:
    """Write ``fig`` to ``path`` atomically (:func:`sdfn_bench.core.io.atomic_write`), in the format
    its suffix names (PNG at 110 dpi)."""
    path = Path(path)
    fmt = path.suffix.lstrip(".")
    with atomic_write(path) as f:
        fig.savefig(f, format=fmt, dpi=110 if fmt == "png" else None)
