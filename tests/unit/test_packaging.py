"""Packaging: the lock file pins every dependency, and the install paths (make, the image) use it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _name(requirement: str) -> str:
    name = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert name, requirement
    return re.sub(r"[-_.]+", "-", name.group(0)).lower()


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version, f"constraints.txt: {line!r} is not name==version"
            pins[_name(name)] = version
    return pins


def test_the_lock_file_pins_every_direct_dependency_and_dev_tool() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["dev"]]

    missing = sorted({_name(r) for r in wanted} - set(_pins()))

    assert not missing, f"not pinned in constraints.txt: {missing}"


def test_make_install_and_the_image_install_from_the_lock_file() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"pip install -q -c constraints\.txt -e '\.\[dev\]'", makefile)
    assert re.search(r"^\$\(VENV\)/\.installed: pyproject\.toml constraints\.txt$", makefile, re.MULTILINE)
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip install -c constraints.txt ." in dockerfile
