"""Schema-driven fuzzing of the running server against its own /_openapi.json (schemathesis):
no 5xx, and every response (status, content type, body) matches the document. Bounded in
examples per operation so the whole module takes seconds."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.servers import ThreadServer

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    # SQLite only: the HTTP layer under test is the same for every backend, and hostile inputs
    # per backend are in test_hostile.py.
    url = f"sqlite:///{tmp_path_factory.mktemp('fuzz')}/fuzz.db"
    with ThreadServer(url, heartbeat=0.2) as server:
        yield server


@pytest.fixture(scope="module")
def fuzz_schema(fuzz_server: ThreadServer) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{fuzz_server.url}/_openapi.json")


def operations() -> list[str]:
    from perhap.http.openapi import openapi_document

    return [f"{m.upper()} {p}" for p, item in openapi_document()["paths"].items() for m in item]


# The Python API rather than schemathesis' pytest plugin: one test per operation, and no
# dependence on the plugin keeping up with pytest's internals.
@pytest.mark.timeout(60)
@pytest.mark.parametrize("operation", operations())
def test_api_matches_its_document(fuzz_schema: schemathesis.BaseSchema, operation: str) -> None:
    method, path = operation.split(" ", 1)
    op = fuzz_schema[path][method]

    @given(case=op.as_strategy())
    @settings(max_examples=25, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
    def run(case: schemathesis.Case) -> None:
        # A stream never ends on its own; the document's reads are fuzzed as JSON pages.
        case.headers = {**(case.headers or {}), "Accept": "application/json"}
        case.call_and_validate(checks=CHECKS, timeout=10)

    run()
