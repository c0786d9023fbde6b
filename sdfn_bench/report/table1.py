"""Table 1 of the paper beside this run's AUCs, rendered as Markdown, HTML, LaTeX and CSV.

Rows: the 14 classes and Mean. Columns: the paper's published AUCs (Wang et al. 2017, Yao et al.
2018, Gündel et al. 2018, and the paper's Entire CXR, Lung region and SDFN), this run's AUC of each
prediction set with its 95% CI, and ``model - baseline`` per baseline, marked where the
Holm-adjusted two-sided DeLong p < 0.01 (on the Mean row: DeLong's test of the mean AUC).

The Mean row is over :attr:`~sdfn_bench.stats.paired.AUCAnalysis.mean_classes`; classes left out
(no positives, a single positive...) are named in its label and the notes. The paired t-test over
bootstrap replicates is not shown here (its p shrinks as B grows); comparison.json keeps it.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from sdfn_bench.report.breakdown import MIN_PER_GROUP, SubgroupAUC
from sdfn_bench.report.leakage import LeakageReport
from sdfn_bench.report.paper import PAPER_COLUMNS, paper_table1
from sdfn_bench.report.tables import html_table, markdown_table
from sdfn_bench.stats.paired import AUCAnalysis, PairedComparison

SIGNIFICANCE = 0.01  # the paper's threshold
MARK = "*"
DISPLAY = {"entire": "Entire", "lung": "Lung", "sdfn": "SDFN"}
CI_NAMES = {"percentile": "percentile interval",
            "bca": "BCa interval (bias-corrected and accelerated, jackknife over patients; Efron 1987)"}


def display_name(scorer: str) -> str:
    return DISPLAY.get(scorer, scorer)


def format_p(p: float) -> str:
    if p is None or math.isnan(p):
        return "n/a"
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def _auc(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v:.3f}"


def _auc_ci(v: float, ci: np.ndarray) -> str:
    if math.isnan(v):
        return "n/a"
    if np.isnan(ci).any():
        return f"{v:.3f}"
    return f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def _diff(v: float, significant: bool) -> str:
    return "n/a" if math.isnan(v) else f"{v:+.3f}{MARK if significant else ''}"


@dataclass(frozen=True)
class Table1:
    """A rendered-agnostic Table 1.

    Attributes:
        title: one line; says "synthetic cohort" for a synthetic run.
        banner: the leakage warning, "" when there is none.
        columns: display headers, first the row label.
        rows: display cells, one tuple per row (14 classes then Mean).
        notes: sentences printed under the table.
        tests: per comparison, a (header, rows) table of the per-class tests.
        subgroups: (header, rows) of the subgroup mean AUCs; empty rows when none.
        frame: the numeric table (CSV): one row per class and Mean.
    """

    title: str
    banner: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    notes: tuple[str, ...]
    tests: tuple[tuple[str, tuple[str, ...], tuple[tuple[str, ...], ...]], ...]
    subgroups: tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]
    frame: pd.DataFrame


def _ci_of(analysis: AUCAnalysis, scorer: str) -> tuple[np.ndarray, np.ndarray, str]:
    s = analysis.scorer(scorer)
    if analysis.n_bootstrap > 0:
        return s.bootstrap_ci, s.mean_bootstrap_ci, "bootstrap"
    return s.delong_ci, s.mean_delong_ci, "delong"


def _significant(cmp: PairedComparison) -> tuple[np.ndarray, bool]:
    per_class = np.nan_to_num(cmp.delong_p_holm, nan=1.0) < SIGNIFICANCE
    return per_class, bool(cmp.delong.mean_p_value < SIGNIFICANCE)


def build_table1(
    analysis: AUCAnalysis,
    comparisons: Sequence[PairedComparison],
    *,
    source: str,
    synthetic: bool,
    n_excluded: int,
    leakage: LeakageReport | None,
    subgroups: Sequence[SubgroupAUC] = (),
    manifest_note: str = "",
    paper: bool = True,
    paper_note: str = "",
    extra_notes: Sequence[str] = (),
) -> Table1:
    """Assemble Table 1 from the statistics of a run.

    Args:
        analysis: every AUC number of the run.
        comparisons: the (model, baseline) comparisons to show as difference columns.
        source: the scored manifest, for the title.
        synthetic: the manifest is a synthetic cohort (said in the title).
        n_excluded: prediction rows left out (status not ok).
        leakage: the leakage guard's report.
        subgroups: subgroup mean AUCs.
        manifest_note: a sentence for the notes when the manifest could not be verified or changed.
        paper: show the paper's published columns (they describe the official test split only).
        paper_note: why they are left out (a note), when ``paper`` is False.
        extra_notes: further sentences for the notes (e.g. which official split the images are on).
    """
    paper_columns = PAPER_COLUMNS if paper else ()
    columns = ["Finding", *paper_columns]
    columns += [f"{display_name(s.name)} (this run)" for s in analysis.scorers]
    columns += [f"{display_name(c.model)} − {display_name(c.baseline)}" for c in comparisons]
    rows, frame = _main_table(analysis, comparisons, paper_columns)

    cohort = f"SYNTHETIC cohort {source} (not ChestX-ray14)" if synthetic else source
    title = f"Table 1 — ROC AUC on {cohort}: {analysis.n_images} images, {analysis.n_patients} patients"
    if synthetic and paper:
        title += " — synthetic data: the paper's columns are shown for layout, not comparable"
    banner = f"WARNING — {leakage.summary()}" if leakage is not None and leakage.leaked else ""

    notes = _method_notes(analysis, source, n_excluded, paper=paper, paper_note=paper_note, extra_notes=extra_notes)
    if manifest_note:
        notes.append(manifest_note)
    notes += _mean_and_bootstrap_notes(analysis)
    if leakage is not None:
        notes.append("Leakage guard: " + leakage.summary())
    for cmp in comparisons:
        notes += _comparison_notes(analysis, cmp)
    return Table1(
        title=title, banner=banner, columns=tuple(columns), rows=tuple(rows), notes=tuple(notes),
        tests=tuple(_tests_table(analysis, cmp) for cmp in comparisons),
        subgroups=_subgroup_table(subgroups, [s.name for s in analysis.scorers]), frame=frame,
    )


def _main_table(
    analysis: AUCAnalysis, comparisons: Sequence[PairedComparison], paper_columns: Sequence[str]
) -> tuple[list[tuple[str, ...]], pd.DataFrame]:
    """The display rows (14 classes, then Mean) and the numeric frame of table1.csv."""
    names = analysis.class_names
    published = paper_table1()
    row_keys = [*names, "Mean"]
    n_mean = len(analysis.mean_classes)
    mean_label = "Mean" if n_mean == len(names) else f"Mean ({n_mean} of {len(names)} classes)"
    # Columns of the frame in the order they are first filled (paper, scorers, comparisons).
    numeric: dict[str, list[float]] = {f"paper_{c}": [] for c in paper_columns}
    rows: list[tuple[str, ...]] = []
    sig = [_significant(c) for c in comparisons]
    for i, key in enumerate(row_keys):
        is_mean = key == "Mean"
        cells = [mean_label if is_mean else key.replace("_", " ")]
        for col in paper_columns:
            value = published.get(key, {}).get(col, float("nan"))
            cells.append(_auc(value))
            numeric[f"paper_{col}"].append(value)
        cells += [_scorer_cell(analysis, s.name, i, is_mean, numeric) for s in analysis.scorers]
        cells += [_comparison_cell(cmp, marks, i, is_mean, numeric)
                  for cmp, marks in zip(comparisons, sig, strict=True)]
        rows.append(tuple(cells))
    frame = pd.DataFrame({"finding": row_keys, **numeric})
    frame.insert(1, "n_positive", [*(int(v) for v in analysis.n_positive), int(analysis.n_positive.sum())])
    # in_mean: the class enters the Mean row; on the Mean row, how many classes do.
    frame.insert(2, "in_mean", [*(int(n in analysis.mean_classes) for n in names), n_mean])
    frame.insert(3, "bootstrap_dropped", [*(int(v) for v in analysis.bootstrap_dropped),
                                          int(analysis.bootstrap_dropped_mean)])
    return rows, frame


def _scorer_cell(analysis: AUCAnalysis, scorer: str, i: int, is_mean: bool, numeric: dict[str, list[float]]) -> str:
    """One scorer's ``AUC [CI]`` cell of row ``i`` (the Mean row when ``is_mean``); appends its
    numbers to ``numeric``."""
    summ = analysis.scorer(scorer)
    ci, mean_ci, _ = _ci_of(analysis, scorer)
    value = summ.mean_auc if is_mean else float(summ.auc[i])
    interval = mean_ci if is_mean else ci[i]
    numeric.setdefault(f"{scorer}_auc", []).append(value)
    numeric.setdefault(f"{scorer}_ci_low", []).append(float(interval[0]))
    numeric.setdefault(f"{scorer}_ci_high", []).append(float(interval[1]))
    return _auc_ci(value, interval)


def _comparison_cell(cmp: PairedComparison, marks: tuple[np.ndarray, bool], i: int, is_mean: bool,
                     numeric: dict[str, list[float]]) -> str:
    """One comparison's difference cell of row ``i`` (marked when significant); appends its
    difference, CI and p-values to ``numeric``."""
    per_class, mean_sig = marks
    tag = f"{cmp.model}_minus_{cmp.baseline}"
    diff = cmp.mean_difference if is_mean else float(cmp.difference[i])
    marked = mean_sig if is_mean else bool(per_class[i])
    dci = cmp.mean_bootstrap_diff_ci if is_mean else cmp.bootstrap_diff_ci[i]
    numeric.setdefault(f"{tag}", []).append(diff)
    numeric.setdefault(f"{tag}_ci_low", []).append(float(dci[0]))
    numeric.setdefault(f"{tag}_ci_high", []).append(float(dci[1]))
    numeric.setdefault(f"{tag}_delong_p", []).append(
        cmp.delong.mean_p_value if is_mean else float(cmp.delong.p_value[i]))
    numeric.setdefault(f"{tag}_delong_p_holm", []).append(
        float("nan") if is_mean else float(cmp.delong_p_holm[i]))
    numeric.setdefault(f"{tag}_delong_clustered_p", []).append(
        cmp.delong_clustered.mean_p_value if is_mean else float(cmp.delong_clustered.p_value[i]))
    numeric.setdefault(f"{tag}_delong_clustered_p_holm", []).append(
        float("nan") if is_mean else float(cmp.delong_clustered_p_holm[i]))
    numeric.setdefault(f"{tag}_bootstrap_p", []).append(
        cmp.mean_bootstrap_p if is_mean else float(cmp.bootstrap_p[i]))
    numeric.setdefault(f"{tag}_significant", []).append(bool(marked))
    return _diff(diff, marked)


def _method_notes(analysis: AUCAnalysis, source: str, n_excluded: int, *, paper: bool, paper_note: str,
                  extra_notes: Sequence[str]) -> list[str]:
    """The first notes: what was scored, the paper's columns, the CI and the tests behind the marks."""
    ci_method = "bootstrap" if analysis.n_bootstrap > 0 else "delong"
    return [
        f"Scored: {analysis.n_images} images of {analysis.n_patients} patients from {source}; "
        f"{n_excluded} prediction row(s) with status other than ok excluded.",
        "Paper columns: published AUCs of Liu et al. (2019) Table 1 on the NIH ChestX-ray14 test split." if paper
        else paper_note or "The paper's columns are left out.",
        *extra_notes,
        (f"This run: AUC [{analysis.level:.0%} CI]; CI = {CI_NAMES.get(analysis.ci_method, analysis.ci_method)} of "
         f"{analysis.n_bootstrap} patient-level bootstrap replicates (images of a patient resampled together, "
         f"seed {analysis.seed})"
         if ci_method == "bootstrap" else
         f"This run: AUC [{analysis.level:.0%} CI]; CI = DeLong normal-theory interval (no bootstrap)") + ".",
        f"Differences: model − baseline AUC; {MARK} = two-sided DeLong test (DeLong et al. 1988, fast algorithm of "
        f"Sun & Xu 2014), p Holm-adjusted across the classes (Holm 1979) < {SIGNIFICANCE}; on the Mean row, DeLong's "
        f"test of the mean AUC (a linear contrast of the correlated per-class AUCs) p < {SIGNIFICANCE}. DeLong "
        f"assumes independent images; the patient-clustered DeLong p (components summed per patient) and the "
        f"patient bootstrap p account for several images per patient and are given below and in table1.csv"
        + (f" (a bootstrap p cannot go below 2/(B+1) = {2 / (analysis.n_bootstrap + 1):.4f})."
           if analysis.n_bootstrap > 0 else "; no bootstrap in this run."),
    ]


def _mean_and_bootstrap_notes(analysis: AUCAnalysis) -> list[str]:
    """Notes on the classes left out of the Mean row and the bootstrap replicates dropped (none when
    every class is in the mean and there is no bootstrap)."""
    names = analysis.class_names
    notes = []
    if analysis.left_out_of_mean:
        notes.append(
            f"Mean row: mean over {len(analysis.mean_classes)} of {len(names)} classes; left out of every mean-AUC "
            "number (AUC, CI, DeLong and bootstrap tests): "
            + "; ".join(f"{c.replace('_', ' ')} ({why})" for c, why in analysis.left_out_of_mean.items())
            + ". Their own rows still show what is defined."
        )
    if analysis.n_bootstrap > 0:
        defined = [i for i, c in enumerate(names) if not math.isnan(float(analysis.scorers[0].auc[i]))]
        thin = [f"{names[i].replace('_', ' ')} {int(analysis.bootstrap_dropped[i])}"
                for i in defined if analysis.bootstrap_dropped[i] > 0]
        notes.append(
            f"Bootstrap replicates dropped for lack of positives (or negatives) of a class, out of "
            f"{analysis.n_bootstrap}: " + (", ".join(thin) if thin else "none per class")
            + f"; for the mean AUC: {analysis.bootstrap_dropped_mean}"
            + (" (its CI and p use the remaining replicates only)." if analysis.bootstrap_dropped_mean else ".")
        )
    return notes


def _comparison_notes(analysis: AUCAnalysis, cmp: PairedComparison) -> list[str]:
    """The two notes of one comparison: the mean AUC's tests and the paper's "paired t-test"."""
    m, b = display_name(cmp.model), display_name(cmp.baseline)
    ta = cmp.t_across_classes
    return [
        f"{m} vs {b}, mean AUC: Δ {cmp.mean_difference:+.4f} "
        f"(bootstrap {analysis.level:.0%} CI [{cmp.mean_bootstrap_diff_ci[0]:+.4f}, {cmp.mean_bootstrap_diff_ci[1]:+.4f}]); "
        f"DeLong z = {cmp.delong.mean_z:.2f}, p = {format_p(cmp.delong.mean_p_value)}; "
        f"DeLong clustered by patient z = {cmp.delong_clustered.mean_z:.2f}, "
        f"p = {format_p(cmp.delong_clustered.mean_p_value)}; "
        f"paired bootstrap p = {format_p(cmp.mean_bootstrap_p)}.",
        f"{m} vs {b}, the paper's \"paired t-test\" (the paper does not say what was paired): "
        f"(a) across the per-class AUCs of the mean's {ta.n_pairs} classes: t = {ta.statistic:.2f}, "
        f"df = {ta.df:.0f}, p = {format_p(ta.p_value)}; (b) the t-test over bootstrap replicates is in "
        f"comparison.json only: it is not a test (its p shrinks as the number of replicates grows).",
    ]


def _tests_table(
    analysis: AUCAnalysis, cmp: PairedComparison
) -> tuple[str, tuple[str, ...], tuple[tuple[str, ...], ...]]:
    """(title, header, rows) of one comparison's per-class tests."""
    header = ("Finding", "Δ AUC", f"Δ {analysis.level:.0%} CI (bootstrap)", "DeLong p", "Holm p",
              "clustered DeLong p", "clustered Holm p", "bootstrap p", "replicates dropped")
    rows = []
    for i, key in enumerate(analysis.class_names):
        ci = cmp.bootstrap_diff_ci[i]
        rows.append((
            key.replace("_", " "), _diff(float(cmp.difference[i]), False),
            "n/a" if np.isnan(ci).any() else f"[{ci[0]:+.3f}, {ci[1]:+.3f}]",
            format_p(float(cmp.delong.p_value[i])), format_p(float(cmp.delong_p_holm[i])),
            format_p(float(cmp.delong_clustered.p_value[i])), format_p(float(cmp.delong_clustered_p_holm[i])),
            format_p(float(cmp.bootstrap_p[i])),
            f"{int(analysis.bootstrap_dropped[i])}/{analysis.n_bootstrap}" if analysis.n_bootstrap > 0 else "n/a",
        ))
    return (f"{display_name(cmp.model)} vs {display_name(cmp.baseline)}: per-class tests", header, tuple(rows))


def _subgroup_table(
    subgroups: Sequence[SubgroupAUC], scorers: Sequence[str]
) -> tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]:
    """(header, rows) of the subgroup mean AUCs; no rows when there are no subgroups."""
    need = subgroups[0].min_per_group if subgroups else MIN_PER_GROUP
    header = ("Factor", "Subgroup", "Images", "Patients", f"Classes in mean (≥{need} pos. and neg.)",
              *(f"{display_name(s)} mean AUC" for s in scorers))
    rows = tuple(
        (g.factor, g.level, str(g.n_images), str(g.n_patients), str(g.n_classes_defined),
         *(_auc(g.mean_auc[s]) if g.n_classes_defined else f"too few positives (max {g.max_positives})"
           for s in scorers))
        for g in subgroups
    )
    return header, rows


def to_markdown(t: Table1) -> str:
    """Table 1 as GitHub Markdown: banner, table, notes, per-class tests, subgroups."""
    parts = [f"# {t.title}", ""]
    if t.banner:
        parts += [f"> **{t.banner}**", ""]
    parts += [markdown_table(t.columns, t.rows), ""]
    parts += [f"- {n}" for n in t.notes] + [""]
    for title, header, rows in t.tests:
        parts += [f"## {title}", "", markdown_table(header, rows), ""]
    header, rows = t.subgroups
    parts += ["## Subgroups (mean AUC over the classes with enough positives and negatives in each subgroup)", ""]
    parts += [markdown_table(header, rows) if rows else "The manifest has no view, sex or age values.", ""]
    return "\n".join(parts)


def to_html(t: Table1) -> str:
    """Table 1 as a standalone HTML page."""
    e = html.escape
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}td:first-child,th:first-child"
             "{text-align:left}.banner{background:#fdd;border:2px solid #c00;padding:1em;font-weight:bold}")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(t.title)}</title>"
             f"<style>{style}</style></head><body>", f"<h1>{e(t.title)}</h1>"]
    if t.banner:
        parts.append(f"<div class='banner'>{e(t.banner)}</div>")
    parts.append(html_table(t.columns, t.rows))
    parts.append("<ul>" + "".join(f"<li>{e(n)}</li>" for n in t.notes) + "</ul>")
    for title, header, rows in t.tests:
        parts += [f"<h2>{e(title)}</h2>", html_table(header, rows)]
    header, rows = t.subgroups
    if rows:
        parts += ["<h2>Subgroups (mean AUC)</h2>", html_table(header, rows)]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "−": "--", "Δ": r"$\Delta$",
        "ü": r"\"u", "—": "---"}


def _tex(s: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in s)


def to_latex(t: Table1) -> str:
    """Table 1 as a LaTeX ``table`` (booktabs) with the notes as a footnote block."""
    cols = "l" + "r" * (len(t.columns) - 1)
    lines = [r"\begin{table}[ht]", r"\centering", r"\scriptsize", f"\\caption{{{_tex(t.title)}}}"]
    if t.banner:
        lines.append(f"\\par\\textbf{{{_tex(t.banner)}}}\\par")
    lines += [f"\\begin{{tabular}}{{{cols}}}", r"\toprule", " & ".join(_tex(c) for c in t.columns) + r" \\", r"\midrule"]
    for i, r in enumerate(t.rows):
        if i == len(t.rows) - 1:
            lines.append(r"\midrule")
        lines.append(" & ".join(_tex(c) for c in r) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\par\smallskip", r"\begin{minipage}{\linewidth}\tiny"]
    lines += [_tex(n) + r"\par" for n in t.notes]
    lines += [r"\end{minipage}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def to_csv(t: Table1) -> str:
    """The numeric table: one row per class and Mean, every AUC, CI, difference and p-value."""
    return t.frame.to_csv(index=False, float_format="%.6g")
