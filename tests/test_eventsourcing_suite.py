"""eventsourcing's own test cases, unchanged, against perhap.eventsourcing: in process and over HTTP,
on every backend under test.

The library's abstract test cases (eventsourcing.tests.persistence and .application) are subclassed
here with only what they are designed to have overridden: the factory methods (``create_recorder``,
the expected classes), the environment (``setUp``), and ``EXPECT_CONTIGUOUS_NOTIFICATION_IDS``
where positions have gaps. docs/eventsourcing.md lists every override, and every test case left out
on Cassandra with its reason (LEFT_OUT below is that list).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    ProcessRecorder,
    TrackingRecorder,
)
from eventsourcing.tests import application as es_application
from eventsourcing.tests import persistence as es
from eventsourcing.utils import Environment

from perhap.eventsourcing import (
    Factory,
    PerhapAggregateRecorder,
    PerhapApplicationRecorder,
    PerhapProcessRecorder,
    PerhapTrackingRecorder,
)
from tests.conftest import BACKENDS, get_provider
from tests.servers import ThreadServer

TRANSPORTS = ("inprocess", "http")

#: Test cases left out, per backend or per backend and transport, each with its reason
#: (docs/eventsourcing.md repeats them). A key ending in '*' leaves out a whole case.
LEFT_OUT: dict[str, dict[str, str]] = {
    "cassandra": {
        "ApplicationRecorder.test_insert_select":
            "expects notification ids 1, 2, 3: Cassandra's positions are increasing but not contiguous",
        "ProcessRecorder.test_insert_select":
            "stores events with a tracking record, which needs multi-entity appends (not on Cassandra)",
        "ProcessRecorder.test_performance": "the same: events with a tracking record",
    },
    "cassandra-inprocess": {
        "ProcessRecorder*": "the factory refuses a process recorder on a store without multi-entity appends",
        "InfrastructureFactory.test_create_process_recorder": "the same",
    },
}


class TrackingSubclass(PerhapTrackingRecorder):
    """For the factory test case's check that a tracking recorder class can be chosen."""


@pytest.fixture(scope="class")
def perhap_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One fresh store per test class; over HTTP, a real server in front of it."""
    cls = request.cls
    store_url = get_provider(cls.backend, tmp_path_factory).new_url()
    if cls.transport == "http":
        with ThreadServer(store_url, heartbeat=1.0) as server:
            cls.url = server.url
            yield
    else:
        cls.url = store_url
        yield


class PerhapCase:
    """What every generated test class shares: its store, and a fresh realm per recorder."""

    __test__ = False  # only the generated classes below are collected
    backend: ClassVar[str]
    transport: ClassVar[str]
    url: ClassVar[str]
    factories: list[Factory]

    def new_env(self, **extra: str) -> dict[str, str]:
        return {"PERSISTENCE_MODULE": "perhap.eventsourcing", "PERHAP_URL": self.url,
                "PERHAP_REALM": f"es-{uuid.uuid4().hex[:12]}", **extra}

    def new_factory(self) -> Factory:
        factory = Factory(Environment(env=self.new_env()))
        if not hasattr(self, "factories"):
            self.factories = []
        self.factories.append(factory)
        return factory

    def tearDown(self) -> None:
        for factory in getattr(self, "factories", []):
            factory.close()
        self.factories = []
        super().tearDown()  # type: ignore[misc]  # the TestCase after this mixin


class AggregateCase(PerhapCase, es.AggregateRecorderTestCase):
    def create_recorder(self) -> AggregateRecorder:
        return self.new_factory().aggregate_recorder()

class ApplicationCase(PerhapCase, es.ApplicationRecorderTestCase[PerhapApplicationRecorder]):
    def create_recorder(self) -> PerhapApplicationRecorder:
        return self.new_factory().application_recorder()

    def test_insert_subscribe(self) -> None:
        self.optional_test_insert_subscribe()

class TrackingCase(PerhapCase, es.TrackingRecorderTestCase):
    def create_recorder(self) -> TrackingRecorder:
        return self.new_factory().tracking_recorder()

class ProcessCase(PerhapCase, es.ProcessRecorderTestCase):
    def create_recorder(self) -> ProcessRecorder:
        return self.new_factory().process_recorder()

class NonInterleavingCase(PerhapCase, es.NonInterleavingNotificationIDsBaseCase):
    def create_recorder(self) -> ApplicationRecorder:
        return self.new_factory().application_recorder()

class FactoryCase(PerhapCase, es.InfrastructureFactoryTestCase[Factory]):
    def expected_factory_class(self) -> type[Factory]:
        return Factory

    def expected_aggregate_recorder_class(self) -> type[AggregateRecorder]:
        return PerhapAggregateRecorder

    def expected_application_recorder_class(self) -> type[ApplicationRecorder]:
        return PerhapApplicationRecorder

    def expected_tracking_recorder_class(self) -> type[TrackingRecorder]:
        return PerhapTrackingRecorder

    def tracking_recorder_subclass(self) -> type[TrackingRecorder]:
        return TrackingSubclass

    def expected_process_recorder_class(self) -> type[ProcessRecorder]:
        return PerhapProcessRecorder

    def setUp(self) -> None:
        self.env = Environment("TestCase", self.new_env())
        super().setUp()


class ExampleApplicationCase(PerhapCase, es_application.ExampleApplicationTestCase):
    expected_factory_topic = "perhap.eventsourcing.factory:Factory"

    def setUp(self) -> None:
        super().setUp()
        self.saved_environ = dict(os.environ)
        os.environ.update(self.new_env())

    def tearDown(self) -> None:
        os.environ.clear()
        os.environ.update(self.saved_environ)
        super().tearDown()


CASES: dict[str, type[Any]] = {
    "AggregateRecorder": AggregateCase,
    "ApplicationRecorder": ApplicationCase,
    "TrackingRecorder": TrackingCase,
    "ProcessRecorder": ProcessCase,
    "NonInterleaving": NonInterleavingCase,
    "InfrastructureFactory": FactoryCase,
    "ExampleApplication": ExampleApplicationCase,
}


def _left_out(backend: str, transport: str, case: str) -> tuple[bool, list[str]]:
    """Whether the whole case is left out on this backend and transport, and which of its tests are."""
    listed = {**LEFT_OUT.get(backend, {}), **LEFT_OUT.get(f"{backend}-{transport}", {})}
    if any(key.endswith("*") and case.startswith(key[:-1]) for key in listed):
        return True, []
    return False, [key.split(".", 1)[1] for key in listed if key.startswith(case + ".")]


def _generate() -> None:
    for backend in BACKENDS:
        for transport in TRANSPORTS:
            for case, base in CASES.items():
                whole, methods = _left_out(backend, transport, case)
                if whole:
                    continue
                name = f"Test{case}_{backend}_{transport}"
                attrs: dict[str, Any] = {"__test__": True, "backend": backend, "transport": transport,
                                         "__module__": __name__}
                attrs.update(dict.fromkeys(methods))  # None is not collected: see LEFT_OUT
                if backend == "cassandra" and issubclass(base, es.ApplicationRecorderTestCase):
                    attrs["EXPECT_CONTIGUOUS_NOTIFICATION_IDS"] = False
                cls = type(name, (base,), attrs)
                globals()[name] = pytest.mark.usefixtures("perhap_url")(cls)


_generate()
