"""API fuzzing from the served OpenAPI document (schemathesis) against a real daemon process,
every route included (``/v2`` and the OpenAI-compatible ``/v1``): no 5xx, no status, content
type, header or body that the document does not declare, and schema-invalid input refused
with a 4xx. Bounded to 50 examples per operation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from orchestratord import create_app
from orchestratord.testing import make_config
from orchestratord.testing.processes import DaemonProcess
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.config import SchemathesisConfig
from schemathesis.generation.case import Case

CONFIG = """
[queue]
capacity = 20

[timeout]
default_s = 1.0   # a /v1 answer waits for its job (no worker here): never for long

[[models]]
model_ref = "m1"
aliases = ["model-one"]
context_length = 4096
"""

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    d = DaemonProcess(Path(tmp_path_factory.mktemp("fuzz")), CONFIG)
    try:
        yield d.start()
    finally:
        d.stop()


@pytest.fixture(scope="module")
def api_schema(daemon: DaemonProcess) -> schemathesis.BaseSchema:
    # A body over server.max_body_bytes is refused with 413 PAYLOAD_TOO_LARGE before it is read:
    # for generated negative data that is a correct rejection, so accept it besides 4xx defaults.
    config = SchemathesisConfig.from_str(
        "[checks.negative_data_rejection]\n"
        'expected-statuses = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429, "5XX"]\n'
    )
    return schemathesis.openapi.from_url(daemon.url + "/openapi.json", config=config)


def _operations() -> list[tuple[str, str, GenerationMode]]:
    """(METHOD, path, mode) of every operation, read from the app's own document at
    collection. Negative cases only where there is something to break (a body, a query
    parameter or a constrained header); path parameters are free-form strings."""
    doc = create_app(make_config()).openapi()
    out = []
    for path, item in doc["paths"].items():
        for method, op in item.items():
            out.append((method.upper(), path, GenerationMode.POSITIVE))
            params = [p for p in op.get("parameters", []) if p["in"] != "path"]
            if "requestBody" in op or params:
                out.append((method.upper(), path, GenerationMode.NEGATIVE))
    return out


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("method", "path", "mode"), _operations())
def test_api_conforms_to_its_openapi_document(
    api_schema: schemathesis.BaseSchema,
    daemon: DaemonProcess,
    method: str,
    path: str,
    mode: GenerationMode,
) -> None:
    operation = api_schema[path][method]

    @settings(
        max_examples=50,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: Case) -> None:
        case.call_and_validate(base_url=daemon.url, checks=CHECKS)

    check()
