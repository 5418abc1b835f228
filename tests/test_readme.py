"""The README's promises, run as written: the curl examples against a real `perhap serve`."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import orjson

from tests.servers import ProcessServer

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_readme_quick_start_has_two_commands() -> None:
    quick = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", quick, re.S)
    setup = [b.strip() for b in blocks if not b.lstrip().startswith("curl ")]
    assert setup == ["scripts/serve", "scripts/test"]  # exactly two set-up commands
    # The curl examples come right after the serve command.
    assert blocks[0].strip() == "scripts/serve" and blocks[1].lstrip().startswith("curl ")
    ci = (Path(__file__).parent.parent / ".ci" / "run").read_text()
    assert "scripts/test" in ci


def test_seed_curl_examples_verbatim(tmp_path: Any) -> None:
    curls = [line for line in README.splitlines() if line.startswith("curl ")]
    assert len(curls) == 2
    with ProcessServer("sqlite:///./perhap.db", 8787 if _port_free(8787) else None, cwd=tmp_path) as server:
        outputs = []
        for line in curls:
            cmd = shlex.split(line.replace("127.0.0.1:8787", f"127.0.0.1:{server.port}"))
            outputs.append(subprocess.run(cmd, capture_output=True, check=True, timeout=30).stdout)
    appended = orjson.loads(outputs[0])
    read = orjson.loads(outputs[1])
    assert appended["version"] == 0
    assert read["events"][0]["event"] == {"URI": "http://example.com"}
    assert read["events"][0]["event_id"] == appended["event_id"]
    assert (tmp_path / "perhap.db").exists()  # the default store is a file in the current directory


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_readme_python_example_runs(tmp_path: Any) -> None:
    import sys

    code = re.findall(r"```python\n(.*?)```", README, re.S)[0]
    (tmp_path / "perhap.db").write_bytes(b"")  # the quick-start server's file: the example leaves it alone
    for _ in range(2):  # safe to run twice
        out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "[{'total': 42}]"
    assert (tmp_path / "perhap.db").read_bytes() == b""


def test_conformance_doc_example_runs(tmp_path: Any) -> None:
    # The third-party example, run as written outside this repository's pytest configuration (so
    # in pytest-asyncio's strict mode), on a few tests of each contract class.
    import sys

    doc = (Path(__file__).parent.parent / "docs" / "conformance.md").read_text()
    code = re.findall(r"```python\n(.*?)```", doc, re.S)[0]
    (tmp_path / "test_my_backend.py").write_text(code)
    chosen = "test_append_and_read_entity or test_seed_example_with_form_content_type or test_sse_catch_up_live"
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", chosen,
                          "test_my_backend.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "3 passed" in out.stdout, out.stdout[-3000:]
