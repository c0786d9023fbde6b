"""The README's published demo block records the digest of the code that made its numbers."""

from __future__ import annotations

from pathlib import Path

from sdfn_bench.demo_digest import (
    NUMBER_SOURCES,
    PACKAGE_ROOT,
    REPUBLISH_COMMAND,
    inputs_digest,
    mark_line,
    published_digest,
    source_files,
)

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_demo_block_matches_the_tree() -> None:
    text = README.read_text()
    recorded = published_digest(text)
    current = inputs_digest()
    assert recorded is not None, (
        f"README.md's demo block records no '{mark_line('...')}' line: re-publish with {REPUBLISH_COMMAND}")
    assert recorded == current, (
        f"the code that determines the demo's numbers ({', '.join(NUMBER_SOURCES)}) changed since README.md's "
        f"demo block was published ({recorded[:12]} then, {current[:12]} now): re-publish with {REPUBLISH_COMMAND}")


def _tree(root: Path) -> Path:
    for rel in ("stats/auc.py", "train/presets.py", "lrg.py", "report/table1.py", "demo.py"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(f"# {rel}\n")
    return root


def test_digest_follows_what_determines_the_numbers(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    first = inputs_digest(root)
    assert [p.relative_to(root).as_posix() for p in source_files(root)] == ["lrg.py", "stats/auc.py",
                                                                            "train/presets.py"]
    (root / "report" / "table1.py").write_text("# formatting only\n")
    (root / "demo.py").write_text("# a picture step\n")
    assert inputs_digest(root) == first  # neither changes a number
    (root / "train" / "presets.py").write_text("# demo preset: 3 epochs\n")
    assert inputs_digest(root) != first
    (root / "train" / "presets.py").write_text("# train/presets.py\n")
    assert inputs_digest(root) == first
    (root / "stats" / "auc.py").write_text("# stats/auc.py\r\n")  # line endings do not count
    assert inputs_digest(root) == first
    (root / "stats" / "new.py").write_text("")
    assert inputs_digest(root) != first  # a new file counts


def test_mark_round_trip() -> None:
    digest = inputs_digest()
    assert len(digest) == 64 and PACKAGE_ROOT.name == "sdfn_bench"
    assert published_digest(f"x\n<!-- demo:start -->\n{mark_line(digest)}\ntext") == digest
    assert published_digest("<!-- demo:start -->\nno mark\n") is None
