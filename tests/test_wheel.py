"""The built wheel ships every Lua script of the repo as budgetkit/lua/<name>.lua and py.typed, and
no copy of a public price list (the LLM meter's prices come from the genai-prices dependency)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_contains_lua_scripts_and_py_typed(tmp_path: Path) -> None:
    lua_files = sorted(p.name for p in (ROOT / "lua").glob("*.lua"))
    assert lua_files, "the repo has no lua/*.lua script"

    outdir = tmp_path / "dist"
    result = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(outdir), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, f"wheel build failed:\n{result.stdout}\n{result.stderr}"
    wheels = list(outdir.glob("budgetkit-*.whl"))
    assert len(wheels) == 1, wheels

    with zipfile.ZipFile(wheels[0]) as wheel:
        names = set(wheel.namelist())
        for name in lua_files:
            member = f"budgetkit/lua/{name}"
            assert member in names, f"{member} missing from {wheels[0].name}"
            assert wheel.read(member) == (ROOT / "lua" / name).read_bytes()
        metadata = next(wheel.read(n) for n in names if n.endswith(".dist-info/METADATA"))
    assert "budgetkit/py.typed" in names
    assert "budgetkit/prices.json" not in names  # prices come from genai-prices, a dependency
    assert b"Requires-Dist: genai-prices" in metadata
