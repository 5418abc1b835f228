"""What a new user meets first (issue 14): install hints that work, and the quick start's scripts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_a_missing_driver_names_a_command_that_works(tmp_path: Path) -> None:
    # Hide asyncpg and cassandra-driver from a fresh interpreter; the error must name a real install.
    code = """
import asyncio, sys
sys.modules["asyncpg"] = None
sys.modules["cassandra"] = None
from perhap.backends import open_store
for url in ("postgresql://u@h/db", "cassandra://h/ks"):
    try:
        asyncio.run(open_store(url).__aenter__())
    except ValueError as exc:
        print(exc)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2, out.stdout + out.stderr
    assert "pip install asyncpg" in lines[0] and "'.[postgres]'" in lines[0]
    assert "pip install cassandra-driver" in lines[1] and "'.[cassandra]'" in lines[1]
    assert "perhap[" not in out.stdout  # perhap is not published under that name


def test_the_scripts_use_a_virtual_environment_of_their_own() -> None:
    venv = (ROOT / "scripts" / "venv.sh").read_text()
    assert "-m venv" in venv and "python3-venv" in venv
    for script in ("serve", "test"):
        text = (ROOT / "scripts" / script).read_text()
        assert "source scripts/venv.sh" in text, script
        assert '"$PY" -m pip install' in text, script
