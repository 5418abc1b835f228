"""Schema-driven fuzzing of the running server against its own /_openapi.json (schemathesis):
no 5xx, and every response (status, content type, body) matches the document. Bounded in
examples per operation so the whole module takes seconds."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    positive_data_acceptance,
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
    schema = schemathesis.openapi.from_url(f"{fuzz_server.url}/_openapi.json")
    # A body breaking a batch's maxItems is often over the body limit as well: 413 refuses it too.
    schema.config.checks.negative_data_rejection.expected_statuses.append("413")
    return schema


def operations(negatable: bool = False) -> list[str]:
    """Every operation of the document; ``negatable``: only those with a parameter or a body to break."""
    from perhap.http.openapi import openapi_document

    return [f"{m.upper()} {p}" for p, item in openapi_document()["paths"].items() for m, op in item.items()
            if not negatable or "{" in p or op.get("parameters") or op.get("requestBody")]


def run_cases(schema: schemathesis.BaseSchema, operation: str, mode: GenerationMode, checks: list[Any],
              headers: dict[str, str] | None = None) -> None:
    method, path = operation.split(" ", 1)
    op = schema[path][method]

    @given(case=op.as_strategy(mode, headers=headers))
    @settings(max_examples=25, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
    def run(case: schemathesis.Case) -> None:
        # A stream never ends on its own; the document's reads are fuzzed as JSON pages.
        case.headers = {**(case.headers or {}), "Accept": "application/json"}
        if mode is GenerationMode.POSITIVE and case.query:
            without_clashes(case.query)
        case.call_and_validate(checks=checks, timeout=10)

    run()


def without_clashes(query: dict[str, Any]) -> None:
    """Drop what makes valid parameters clash: OpenAPI cannot relate one parameter to another, so
    the document allows `following` with `after_position`, which the server refuses (400, by design).
    And cap a group's long poll."""
    if query.get("following") is not None:
        query.pop("after_position", None)
        query.pop("before_position", None)
    query.pop("before_position" if query.get("order") != "desc" else "after_position", None)
    # A long poll on a group that exists waits as long as it is told: keep it short.
    if isinstance(query.get("wait"), (int, float)):
        query["wait"] = min(query["wait"], 0.5)
    low, high = query.get("after_version"), query.get("until_version")
    if isinstance(low, int) and isinstance(high, int) and high < low:
        query["after_version"], query["until_version"] = high, low


# The Python API rather than schemathesis' pytest plugin: one test per operation, and no
# dependence on the plugin keeping up with pytest's internals.
@pytest.mark.timeout(60)
@pytest.mark.parametrize("operation", operations())
def test_api_matches_its_document(fuzz_schema: schemathesis.BaseSchema, operation: str) -> None:
    # Every request the document allows is served as it says, and accepted: a query parameter it
    # lists is one the server takes (the server refuses any other, tests/test_http_strictness.py).
    run_cases(fuzz_schema, operation, GenerationMode.POSITIVE, [*CHECKS, positive_data_acceptance])


@pytest.mark.timeout(60)
@pytest.mark.parametrize("operation", operations(negatable=True))
def test_api_refuses_what_its_document_forbids(fuzz_schema: schemathesis.BaseSchema, operation: str) -> None:
    # Every request the document forbids (a bad name, limit, id or body) is a 4xx, never served.
    # Last-Event-ID is held valid: it is read only with Accept: text/event-stream, not on JSON pages.
    run_cases(fuzz_schema, operation, GenerationMode.NEGATIVE, [*CHECKS, negative_data_rejection],
              headers={"Last-Event-ID": str(uuid.uuid4())})
