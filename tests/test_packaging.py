"""pyproject.toml: extras that cannot break the core install, a license setuptools accepts."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
ONNXRUNTIME_DISTRIBUTIONS = re.compile(r"^onnxruntime([-_.][a-z0-9-]+)?$")


def _name(requirement: str) -> tuple[str, str]:
    match = re.match(r"^\s*([A-Za-z0-9._-]+)\s*(\[[^\]]*\])?", requirement)
    assert match, requirement
    return match.group(1).lower(), (match.group(2) or "").lower()


def test_no_extra_installs_a_second_onnxruntime_distribution():
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    core = [_name(r)[0] for r in project["dependencies"]]
    assert core.count("onnxruntime") == 1
    for extra, requirements in project["optional-dependencies"].items():
        for requirement in requirements:
            name, extras = _name(requirement)
            # onnxruntime-gpu, -openvino, -directml... all write the package `onnxruntime`
            assert not ONNXRUNTIME_DISTRIBUTIONS.match(name), f"extra {extra!r} installs {name}"
            # nvidia-modelopt[onnx] pins onnxruntime-gpu on Linux x86-64
            assert not (name == "nvidia-modelopt" and "onnx" in extras), f"extra {extra!r}: {requirement}"


def test_license_is_an_spdx_string():
    data = tomllib.loads(PYPROJECT.read_text())
    assert data["project"]["license"] == "Apache-2.0"
    setuptools = [r for r in data["build-system"]["requires"] if r.startswith("setuptools")]
    assert setuptools == ["setuptools>=77"]
