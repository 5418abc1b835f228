"""What a new user meets first (issue 14): install hints that work, and the quick start's scripts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

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
    # The interpreter running perhap, whose pip installs where perhap runs (a bare `pip` may be
    # Debian's, which refuses outside the virtual environment).
    pip = f"{sys.executable} -m pip install"
    assert f"{pip} asyncpg" in lines[0] and f"{pip} '.[postgres]'" in lines[0], lines[0]
    assert f"{pip} cassandra-driver" in lines[1] and f"{pip} '.[cassandra]'" in lines[1], lines[1]
    assert "perhap[" not in out.stdout  # perhap is not published under that name


def test_the_scripts_use_a_virtual_environment_of_their_own() -> None:
    venv = (ROOT / "scripts" / "venv.sh").read_text()
    assert "-m venv" in venv and "python3-venv" in venv
    for script in ("serve", "test"):
        text = (ROOT / "scripts" / script).read_text()
        assert "source scripts/venv.sh" in text, script
        assert '"$PY" -m pip install' in text, script


async def test_json_answers_end_with_a_newline(client: httpx.AsyncClient, realm: str) -> None:
    # For curl users: the prompt starts on its own line, and jq/wc/grep see whole lines.
    appended = await client.post(f"/{realm}/d/e/t", json={"event": 1})
    page = await client.get(f"/{realm}/d/e")
    problem = await client.post(f"/{realm}/d/e/t", json={"nope": 1})
    keys = await client.get("/keys")
    for r in (appended, page, problem, keys):
        assert r.content.endswith(b"}\n") and r.content.count(b"\n") == 1, r.content[-40:]
        assert int(r.headers["content-length"]) == len(r.content)
