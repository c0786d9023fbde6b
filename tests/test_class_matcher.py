"""One class-name matcher for every command (compare --predictions, cams --class, synth --finding-strength)."""

from __future__ import annotations

from sdfn_bench.classes import CLASS_NAMES, class_key, match_class


def test_match_class_ignores_case_separators_and_prefix() -> None:
    assert match_class("pleural_thickening") == "Pleural_Thickening"
    assert match_class("Pleural Thickening") == "Pleural_Thickening"
    assert match_class("prob_Effusion") == "Effusion"
    assert match_class("PNEUMONIA") == "Pneumonia"
    assert match_class("Pneumothorax") == "Pneumothorax"  # not "Pneumonia" after a prefix strip
    assert match_class("Tumour") is None
    assert all(match_class(name) == name for name in CLASS_NAMES)
    assert match_class("nodule_or_mass", ("Pneumothorax", "Nodule_or_mass")) == "Nodule_or_mass"


def test_the_report_uses_the_same_matcher() -> None:
    from sdfn_bench.report import outside

    assert outside.class_key is class_key
    assert outside.normalize("Pleural_Thickening") == "pleuralthickening"


def test_synth_finding_strength_names_are_matched() -> None:
    from sdfn_bench.cli.synth import _parse_strengths

    assert _parse_strengths(["pleural thickening=2", "prob_Mass=0"]) == {"Pleural_Thickening": 2.0, "Mass": 0.0}
