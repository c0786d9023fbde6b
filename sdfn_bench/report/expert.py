"""The expert-label table: the run's models against radiologist-adjudicated labels (Majkowska et al.
2019) beside the same models against the NIH labels, on the same images.

Each of the four expert findings is scored by the largest probability of its NIH classes and
compared with the NIH labels through the same map (a finding is NIH-positive when any of its
classes is): see :data:`sdfn_bench.manifest.expert.CLASS_MAP`. Fracture has no SDFN class and is
listed as not scored. The statistics are those of Table 1 (:func:`sdfn_bench.stats.paired.analyze_aucs`:
AUC with CIs, DeLong and patient-bootstrap comparisons), computed twice: with the expert labels,
and with the NIH-derived labels.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from sdfn_bench.classes import CLASS_NAMES
from sdfn_bench.errors import StatsError
from sdfn_bench.manifest.expert import CLASS_MAP, EXPERT_FINDINGS, SCORED_FINDINGS, map_labels, map_scores
from sdfn_bench.report.table1 import MARK, SIGNIFICANCE, display_name, format_p
from sdfn_bench.report.tables import html_table, markdown_table
from sdfn_bench.stats.paired import AUCAnalysis, analyze_aucs

# Below this many expert-labelled scored images the table is refused rather than printed: the
# rarest finding (Pneumothorax, ~10% of the set) would have a handful of positives.
MIN_EXPERT_IMAGES = 100


@dataclass(frozen=True)
class ExpertMatch:
    """Which scored images carry expert labels.

    Attributes:
        rows: (n_matched,) positions of the matched images among the scored rows.
        expert: (n_matched, 4) expert labels in :data:`EXPERT_FINDINGS` order.
        n_expert: images in the expert manifest.
        n_scored: scored images of the run.
    """

    rows: np.ndarray
    expert: np.ndarray
    n_expert: int
    n_scored: int


def match_expert_images(images: Sequence[str], expert: pd.DataFrame, *, source: str,
                        min_images: int = MIN_EXPERT_IMAGES) -> ExpertMatch:
    """Join scored images to an expert manifest by image name.

    Args:
        images: (n_scored,) image names of the scored rows, as in the run's manifest (a path is
            matched by its file name, the NIH ``Image Index``).
        expert: an expert manifest (:func:`sdfn_bench.manifest.expert.read_expert_manifest`).
        source: the expert manifest's path, for messages.
        min_images: fewest matched images accepted.

    Raises:
        StatsError: fewer than ``min_images`` scored images are expert-labelled (the message gives
            both counts).
    """
    names = pd.Index([Path(str(i)).name for i in images])
    position = pd.Index(expert["image"].astype(str)).get_indexer(names)
    rows = np.flatnonzero(position >= 0)
    if rows.size < min_images:
        raise StatsError(
            f"only {rows.size} of the run's {len(images)} scored images are among the {len(expert)} expert-labelled "
            f"images of {source}; the expert-label table needs at least {min_images} (score a manifest that holds "
            f"them, e.g. manifests/nih_test.csv or manifests/nih_test_expert.csv's images)")
    labels = expert[list(EXPERT_FINDINGS)].to_numpy(dtype=np.int8)[position[rows]]
    return ExpertMatch(rows=rows, expert=labels, n_expert=len(expert), n_scored=len(images))


@dataclass(frozen=True)
class ExpertComparison:
    """The expert-label analysis of a run.

    Attributes:
        source: the expert manifest.
        n_expert, n_scored, n_matched: images in the expert manifest, scored, scored and expert-labelled.
        findings: the scored findings (table rows).
        expert: AUC statistics against the expert labels.
        nih: the same against the NIH-derived labels of the same images.
        not_scored: finding -> expert positives among the matched images, for findings without a class.
        nih_agreement: (n_findings, 2) the NIH-derived label's sensitivity and specificity against
            the expert label.
        frame: the numeric table (CSV).
        markdown, html: the rendered section.
    """

    source: str
    n_expert: int
    n_scored: int
    n_matched: int
    findings: tuple[str, ...]
    expert: AUCAnalysis
    nih: AUCAnalysis
    not_scored: dict[str, int]
    nih_agreement: np.ndarray
    frame: pd.DataFrame
    markdown: str
    html: str


def _ci(analysis: AUCAnalysis, name: str) -> tuple[np.ndarray, np.ndarray]:
    s = analysis.scorer(name)
    if analysis.n_bootstrap > 0:
        return s.bootstrap_ci, s.mean_bootstrap_ci
    return s.delong_ci, s.mean_delong_ci


def _fmt(v: float, ci: np.ndarray) -> str:
    if np.isnan(v):
        return "n/a"
    return f"{v:.3f}" if np.isnan(ci).any() else f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def expert_comparison(
    match: ExpertMatch,
    nih_labels: np.ndarray,
    scores: Mapping[str, np.ndarray],
    patient_ids: np.ndarray,
    pairs: Sequence[tuple[str, str]],
    *,
    source: str,
    n_bootstrap: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> ExpertComparison:
    """AUCs against expert and NIH labels on the expert-labelled scored images.

    Args:
        match: from :func:`match_expert_images`.
        nih_labels: (n_scored, 14) NIH labels of the scored rows.
        scores: prediction set -> (n_scored, 14) probabilities.
        patient_ids: (n_scored,) patients, for the patient bootstrap and clustered DeLong.
        pairs: (model, baseline) comparisons.
        source: the expert manifest's path (for the notes).
        n_bootstrap, seed, level: as in Table 1.
    """
    rows = match.rows
    scored_cols = [EXPERT_FINDINGS.index(f) for f in SCORED_FINDINGS]
    y_expert = match.expert[:, scored_cols]
    y_nih = map_labels(np.asarray(nih_labels)[rows], CLASS_NAMES)
    mapped = {name: map_scores(np.asarray(s)[rows], CLASS_NAMES) for name, s in scores.items()}
    patients = np.asarray(patient_ids)[rows]
    names = tuple(f.replace("_", " ") for f in SCORED_FINDINGS)
    common = dict(n_bootstrap=n_bootstrap, seed=seed, level=level, class_names=names)
    expert = analyze_aucs(y_expert, mapped, patients, pairs, **common)
    nih = analyze_aucs(y_nih, mapped, patients, pairs, **common)
    pos = y_expert.astype(bool)
    agree_pos = np.array([y_nih[pos[:, k], k].mean() if pos[:, k].any() else np.nan for k in range(len(names))])
    agree_neg = np.array([(1 - y_nih[~pos[:, k], k]).mean() if (~pos[:, k]).any() else np.nan
                          for k in range(len(names))])
    agreement = np.column_stack([agree_pos, agree_neg])
    not_scored = {f: int(match.expert[:, EXPERT_FINDINGS.index(f)].sum()) for f in EXPERT_FINDINGS if not CLASS_MAP[f]}
    frame = _frame(expert, nih, agreement)
    header, body = _display(expert, nih, agreement)
    notes = _notes(match, expert, source, not_scored)
    tests = _tests(expert)
    md = _markdown(header, body, notes, tests, expert)
    page = _html(header, body, notes, tests)
    return ExpertComparison(source=source, n_expert=match.n_expert, n_scored=match.n_scored, n_matched=int(rows.size),
                            findings=names, expert=expert, nih=nih, not_scored=not_scored, nih_agreement=agreement,
                            frame=frame, markdown=md, html=page)


def _frame(expert: AUCAnalysis, nih: AUCAnalysis, agreement: np.ndarray) -> pd.DataFrame:
    keys = [*expert.class_names, "Mean"]
    data: dict[str, list[object]] = {
        "finding": keys,
        "nih_classes": [*("|".join(CLASS_MAP[f]) for f in SCORED_FINDINGS), ""],
        "n_expert_positive": [*(int(v) for v in expert.n_positive), int(expert.n_positive.sum())],
        "n_nih_positive": [*(int(v) for v in nih.n_positive), int(nih.n_positive.sum())],
        "nih_label_sensitivity": [*agreement[:, 0], np.nan],
        "nih_label_specificity": [*agreement[:, 1], np.nan],
    }
    for labels_name, analysis in (("expert", expert), ("nih", nih)):
        for s in analysis.scorers:
            ci, mean_ci = _ci(analysis, s.name)
            data[f"{s.name}_auc_{labels_name}"] = [*s.auc, s.mean_auc]
            data[f"{s.name}_auc_{labels_name}_ci_low"] = [*ci[:, 0], mean_ci[0]]
            data[f"{s.name}_auc_{labels_name}_ci_high"] = [*ci[:, 1], mean_ci[1]]
    for labels_name, analysis in (("expert", expert), ("nih", nih)):
        for c in analysis.comparisons:
            tag = f"{c.model}_minus_{c.baseline}_{labels_name}"
            data[tag] = [*c.difference, c.mean_difference]
            data[f"{tag}_delong_p"] = [*c.delong.p_value, c.delong.mean_p_value]
            data[f"{tag}_delong_p_holm"] = [*c.delong_p_holm, np.nan]
            data[f"{tag}_delong_clustered_p"] = [*c.delong_clustered.p_value, c.delong_clustered.mean_p_value]
            data[f"{tag}_bootstrap_p"] = [*c.bootstrap_p, c.mean_bootstrap_p]
    return pd.DataFrame(data)


def _display(expert: AUCAnalysis, nih: AUCAnalysis, agreement: np.ndarray) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    header = ["Finding", "NIH classes (max)", "Positives expert / NIH", "NIH label sens / spec vs expert"]
    for s in expert.scorers:
        header += [f"{display_name(s.name)} AUC, expert labels", f"{display_name(s.name)} AUC, NIH labels"]
    header += [f"{display_name(c.model)} − {display_name(c.baseline)} (expert)" for c in expert.comparisons]
    body = []
    for i, key in enumerate([*expert.class_names, "Mean"]):
        is_mean = key == "Mean"
        cells = [key]
        if is_mean:
            cells += ["", f"{int(expert.n_positive.sum())} / {int(nih.n_positive.sum())}", ""]
        else:
            sens, spec = agreement[i]
            cells += [", ".join(CLASS_MAP[SCORED_FINDINGS[i]]).replace("_", " "),
                      f"{int(expert.n_positive[i])} / {int(nih.n_positive[i])}",
                      "n/a" if np.isnan(sens) or np.isnan(spec) else f"{sens:.2f} / {spec:.2f}"]
        for s in expert.scorers:
            for analysis in (expert, nih):
                summ = analysis.scorer(s.name)
                ci, mean_ci = _ci(analysis, s.name)
                cells.append(_fmt(summ.mean_auc, mean_ci) if is_mean else _fmt(float(summ.auc[i]), ci[i]))
        for c in expert.comparisons:
            d = c.mean_difference if is_mean else float(c.difference[i])
            p = c.delong.mean_p_value if is_mean else float(np.nan_to_num(c.delong_p_holm[i], nan=1.0))
            cells.append("n/a" if np.isnan(d) else f"{d:+.3f}{MARK if p < SIGNIFICANCE else ''}")
        body.append(tuple(cells))
    return tuple(header), body


def _notes(match: ExpertMatch, expert: AUCAnalysis, source: str, not_scored: dict[str, int]) -> list[str]:
    ci = (f"{expert.n_bootstrap} patient-bootstrap replicates (seed {expert.seed})" if expert.n_bootstrap > 0
          else "DeLong normal-theory intervals")
    notes = [
        f"Images: {expert.n_images} ({expert.n_patients} patients) of the run's {match.n_scored} scored images carry "
        f"expert labels in {source} ({match.n_expert} images: radiologist-adjudicated labels of Majkowska et al., "
        f"Radiology 2019).",
        "Score of a finding: the largest probability of its NIH classes; NIH label: 1 when any of them is labelled "
        "(docs/statistics.md explains the map). Both AUC columns of a model use the same scores on the same images; "
        "only the labels differ, so their gap shows the NIH labels' noise.",
        f"AUC [{expert.level:.0%} CI]: {ci}. Differences: model − baseline against the expert labels; {MARK} = "
        f"Holm-adjusted two-sided DeLong p < {SIGNIFICANCE} (Mean row: DeLong test of the mean AUC).",
        "NIH label sens / spec: how often the NIH-derived label is positive on expert positives, negative on "
        "expert negatives.",
    ]
    for f, n_pos in not_scored.items():
        notes.append(f"Not scored: {f.replace('_', ' ')} ({n_pos} expert positives here): no SDFN class maps to it.")
    return notes


def _tests(expert: AUCAnalysis) -> list[tuple[str, tuple[str, ...], list[tuple[str, ...]]]]:
    out = []
    header = ("Finding", "Δ AUC", f"Δ {expert.level:.0%} CI (bootstrap)", "DeLong p", "Holm p",
              "clustered DeLong p", "bootstrap p")
    for c in expert.comparisons:
        rows = []
        for i, key in enumerate(expert.class_names):
            ci = c.bootstrap_diff_ci[i]
            rows.append((key, "n/a" if np.isnan(c.difference[i]) else f"{c.difference[i]:+.3f}",
                         "n/a" if np.isnan(ci).any() else f"[{ci[0]:+.3f}, {ci[1]:+.3f}]",
                         format_p(float(c.delong.p_value[i])), format_p(float(c.delong_p_holm[i])),
                         format_p(float(c.delong_clustered.p_value[i])), format_p(float(c.bootstrap_p[i]))))
        rows.append(("Mean", f"{c.mean_difference:+.3f}",
                     "n/a" if np.isnan(c.mean_bootstrap_diff_ci).any()
                     else f"[{c.mean_bootstrap_diff_ci[0]:+.3f}, {c.mean_bootstrap_diff_ci[1]:+.3f}]",
                     format_p(c.delong.mean_p_value), "", format_p(c.delong_clustered.mean_p_value),
                     format_p(c.mean_bootstrap_p)))
        out.append((f"{display_name(c.model)} vs {display_name(c.baseline)}, expert labels: per-finding tests",
                    header, rows))
    return out


TITLE = "Expert-adjudicated labels (Majkowska et al. 2019) beside the NIH labels"


def _markdown(header: Sequence[str], body: Sequence[Sequence[str]], notes: Sequence[str],
              tests: Sequence[tuple[str, Sequence[str], Sequence[Sequence[str]]]], expert: AUCAnalysis) -> str:
    parts = [f"## {TITLE}: {expert.n_images} images, {expert.n_patients} patients", "", markdown_table(header, body), ""]
    parts += [f"- {n}" for n in notes] + [""]
    for title, theader, rows in tests:
        parts += [f"### {title}", "", markdown_table(theader, rows), ""]
    return "\n".join(parts)


def _html(header: Sequence[str], body: Sequence[Sequence[str]], notes: Sequence[str],
          tests: Sequence[tuple[str, Sequence[str], Sequence[Sequence[str]]]]) -> str:
    e = html.escape
    parts = [f"<h2 id='expert-labels'>{e(TITLE)}</h2>", html_table(header, body),
             "<ul>" + "".join(f"<li>{e(n)}</li>" for n in notes) + "</ul>"]
    for title, theader, rows in tests:
        parts += [f"<h3>{e(title)}</h3>", html_table(theader, rows)]
    return "\n".join(parts)
