"""The agent zipapp: reproducible, pure Python, and it runs with no site-packages."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from io import BytesIO
from pathlib import Path

import pytest

from registration import __version__
from registration._bundle import build_bundle, node_libraries
from registration._exceptions import AutoregError


@pytest.fixture(scope="module")
def bundle_bytes() -> tuple[str, bytes]:
    bundle = build_bundle()
    return bundle.name, bundle.data


def test_the_same_installation_gives_the_same_bytes(bundle_bytes: tuple[str, bytes]) -> None:
    again = build_bundle()
    assert (again.name, again.data) == bundle_bytes
    assert again.name.startswith(f"autoreg-{__version__}-") and again.name.endswith(".pyz")


def test_it_carries_the_node_side_and_no_compiled_code(bundle_bytes: tuple[str, bytes]) -> None:
    _, data = bundle_bytes
    names = zipfile.ZipFile(BytesIO(data.split(b"\n", 1)[1])).namelist()
    assert "__main__.py" in names and "registration/_agent.py" in names
    assert {"zeroconf/__init__.py", "aiohttp/__init__.py"} <= set(names)
    assert not [n for n in names if n.endswith((".so", ".pyc", ".pyd")) or "__pycache__" in n]
    assert not [n for n in names if n.startswith(("paramiko/", "cryptography/", "click/"))]


def test_it_runs_on_the_standard_library_alone(
    bundle_bytes: tuple[str, bytes], tmp_path: Path
) -> None:
    name, data = bundle_bytes
    pyz = tmp_path / name
    pyz.write_bytes(data)
    python = shutil.which("python3") or sys.executable
    done = subprocess.run(
        [python, "-I", "-S", str(pyz), "check"], capture_output=True, timeout=60, check=True
    )
    report = json.loads(done.stdout)
    assert report["version"] == __version__
    assert all(p.startswith(str(pyz)) for p in report["modules"].values()), report


def test_a_broken_node_side_is_named(tmp_path: Path) -> None:
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'ImportError: no module named zeroconf' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(AutoregError, match=r"does not import here.*zeroconf"):
        node_libraries(str(fake))
