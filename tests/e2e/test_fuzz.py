"""Property-based fuzzing of every documented route from the OpenAPI schema: never a 500,
and every JSON success answer matches its documented response schema.

On the `fuzz_server` (Ollama-only, down; no local model) so generated requests cannot start
long generations or training runs; 503 "unavailable" is an honest answer, 500 is a bug.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.e2e.server import Server

pytestmark = pytest.mark.integration

MAX_EXAMPLES = 8


def test_no_route_answers_500(fuzz_server: Server) -> None:
    schema = schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8  # the schema really lists the API
    calls: dict[str, int] = {}
    validated: list[str] = []
    for operation in operations:

        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def check(case) -> None:
            response = case.call(base_url=fuzz_server.url, timeout=60)
            label = case.operation.label
            calls[label] = calls.get(label, 0) + 1
            assert response.status_code != 500, (
                f"{case.method} {case.formatted_path} -> 500: {response.text[:300]}\n"
                f"server log tail:\n{fuzz_server.log()[-2000:]}"
            )
            # Headers come as lowercase names -> lists of values.
            content_type = (response.headers.get("content-type") or [""])[0]
            if 200 <= response.status_code < 300 and content_type.startswith("application/json"):
                # A JSON success answer matches the response model its route documents.
                case.operation.validate_response(response, case=case)
                validated.append(label)

        check()
    # Every operation was really exercised, most with several generated requests.
    assert set(calls) == {op.label for op in operations}
    print(
        f"fuzzed {len(operations)} operations with {sum(calls.values())} requests; "
        f"{len(validated)} JSON success answers of {len(set(validated))} operations validated"
    )
