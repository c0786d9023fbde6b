"""ImageResolver: direct paths, the flat and the spread NIH layouts, manifest-folder default."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdfn_bench.errors import ImageReadError
from sdfn_bench.manifest.image_root import ImageResolver


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_flat_layout(tmp_path: Path) -> None:
    a = _touch(tmp_path / "images" / "00000001_000.png")
    resolver = ImageResolver(tmp_path)
    assert resolver.resolve("00000001_000.png") == a
    assert resolver.resolve("images/00000001_000.png") == a  # direct
    assert resolver.resolve("00000002_000.png") is None
    assert resolver.n_indexed == 1


def test_spread_layout(tmp_path: Path) -> None:
    a = _touch(tmp_path / "images_001" / "images" / "00000001_000.png")
    b = _touch(tmp_path / "images_012" / "images" / "00030805_000.png")
    _touch(tmp_path / "images_xyz" / "images" / "00000009_000.png")  # not a layout folder
    resolver = ImageResolver(tmp_path)
    assert resolver.resolve("00000001_000.png") == a
    assert resolver.resolve("00030805_000.png") == b
    assert resolver.resolve("00000009_000.png") is None
    assert [p.relative_to(tmp_path).as_posix() for p in resolver.layout_folders()] == [
        "images_001/images",
        "images_012/images",
    ]


def test_direct_path_wins_and_duplicates_are_recorded(tmp_path: Path) -> None:
    direct = _touch(tmp_path / "sub" / "x.png")
    _touch(tmp_path / "images" / "x.png")
    first = _touch(tmp_path / "images" / "y.png")
    _touch(tmp_path / "images_003" / "images" / "y.png")
    resolver = ImageResolver(tmp_path)
    assert resolver.resolve("sub/x.png") == direct
    assert resolver.resolve("other/y.png") == first
    assert resolver.duplicate_names == ["y.png"]


def test_index_is_built_once(tmp_path: Path) -> None:
    _touch(tmp_path / "images" / "a.png")
    resolver = ImageResolver(tmp_path)
    _touch(tmp_path / "images_001" / "images" / "late.png")  # appears after construction
    assert resolver.resolve("late.png") is None


def test_for_manifest_defaults_to_manifest_folder(tmp_path: Path) -> None:
    img = _touch(tmp_path / "data" / "imgs" / "a.png")
    manifest = tmp_path / "data" / "m.csv"
    manifest.write_text("image\n")
    assert ImageResolver.for_manifest(manifest, None).resolve("imgs/a.png") == img
    other = _touch(tmp_path / "elsewhere" / "imgs" / "a.png")
    assert ImageResolver.for_manifest(manifest, tmp_path / "elsewhere").resolve("imgs/a.png") == other


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="image root is not an existing folder"):
        ImageResolver(tmp_path / "absent")


def test_entries_are_confined_by_their_text_and_links_inside_are_followed(tmp_path: Path) -> None:
    """Absolute paths and ``..`` are refused, exactly like missing files; links inside the root are
    followed by default (``ROOT/images -> /data/nih/images``) and refused only with ``confine``."""
    root = tmp_path / "root"
    inside = _touch(root / "images" / "a.png")
    outside = _touch(tmp_path / "secret" / "b.png")
    (root / "images" / "escape.png").symlink_to(outside)  # also lands in the NIH name index
    (root / "alias.png").symlink_to(inside)  # a link that stays inside is fine
    (root / "linked_dir").symlink_to(tmp_path / "secret", target_is_directory=True)
    resolver = ImageResolver(root)
    for entry in (str(outside), "../secret/b.png", "images/../../secret/b.png", "linked_dir/../../secret/b.png",
                  "/etc/hostname", "../secret/missing.png", "images/a\x00.png", "x" * 5000):
        assert resolver.resolve(entry) is None, entry
    assert resolver.resolve("alias.png") == root / "alias.png"
    assert resolver.resolve("a.png") == inside
    # Links made by whoever owns the disk are followed.
    assert resolver.resolve("linked_dir/b.png") == root / "linked_dir" / "b.png"
    assert resolver.resolve("images/escape.png") == root / "images" / "escape.png"
    assert resolver.resolve("escape.png") == root / "images" / "escape.png"
    # Opt-in confinement: every file, links resolved, inside the resolved root.
    confined = ImageResolver(root, confine=True)
    for entry in ("linked_dir/b.png", "images/escape.png", "escape.png"):
        assert confined.resolve(entry) is None, entry
    assert confined.resolve("alias.png") == root / "alias.png"
    # A symlinked root is resolved once and is fine.
    (tmp_path / "root_link").symlink_to(root, target_is_directory=True)
    assert ImageResolver(tmp_path / "root_link").resolve("images/a.png") == tmp_path / "root_link" / "images" / "a.png"
    assert ImageResolver(tmp_path / "root_link", confine=True).resolve("images/a.png") is not None


def test_a_data_folder_linked_into_the_root_is_scored_as_on_shared_clusters(tmp_path: Path) -> None:
    from sdfn_bench.score.batch import resolve_path

    data = _touch(tmp_path / "data" / "nih" / "images" / "00000001_000.png")
    root = tmp_path / "root"
    root.mkdir()
    (root / "images").symlink_to(data.parent, target_is_directory=True)
    assert resolve_path("images/00000001_000.png", ImageResolver(root)) == root / "images" / "00000001_000.png"
    assert ImageResolver(root).resolve("00000001_000.png") == root / "images" / "00000001_000.png"  # NIH index


def test_absolute_paths_only_when_allowed(tmp_path: Path) -> None:
    outside = _touch(tmp_path / "elsewhere" / "b.png")
    root = tmp_path / "root"
    root.mkdir()
    assert ImageResolver(root).resolve(str(outside)) is None
    allowed = ImageResolver.for_manifest(root / "m.csv", None, allow_absolute=True)
    assert allowed.resolve(str(outside)) == outside
    assert allowed.resolve(str(tmp_path / "elsewhere" / "none.png")) is None
    assert allowed.resolve("../elsewhere/b.png") is None  # relative entries stay confined


def test_score_error_text_does_not_reveal_existence(tmp_path: Path) -> None:
    from sdfn_bench.score.batch import resolve_path

    _touch(tmp_path / "secret" / "exists.png")
    root = tmp_path / "root"
    root.mkdir()
    resolver = ImageResolver(root)
    texts = []
    for entry in ("../secret/exists.png", "../secret/absent.png", "absent.png"):
        with pytest.raises(ImageReadError) as info:
            resolve_path(entry, resolver)
        texts.append(info.value.reason)
    assert len(set(texts)) == 1 and "not found under the image root" in texts[0]
    # An absolute entry is refused for its text, whether the file exists or not, naming the flag.
    absolute = []
    for entry in (str(tmp_path / "secret" / "exists.png"), str(tmp_path / "secret" / "absent.png")):
        with pytest.raises(ImageReadError) as info:
            resolve_path(entry, resolver)
        absolute.append(info.value.reason)
    assert len(set(absolute)) == 1 and "--allow-absolute-paths" in absolute[0]
