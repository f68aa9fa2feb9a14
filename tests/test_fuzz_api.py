"""Schemathesis against the OpenAPI schema of a real server (issue 6, part 2).

Generates valid and invalid requests for every operation in the schema and sends
them to a live uvicorn; each answer must be no 5xx, a status code and body that the
schema documents, and the declared content type. Bounded for CI by MAX_EXAMPLES.

The schema is built in-process at import (schemathesis' lazy `from_fixture` loader
does not work with pytest 9), and a test checks that the live server serves exactly
that schema.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode

from app.main import create_app
from app.settings import Settings
from tests.conftest import Server, run_server
from tests.test_bad_input import bundle_under_test, check_result

MAX_EXAMPLES = 100  # per operation; the whole module takes well under a minute on 2 cores

OPENAPI = create_app(Settings()).openapi()
schema = schemathesis.openapi.from_dict(OPENAPI)
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=MAX_EXAMPLES, deterministic=True)

STATUS_COUNTS: Counter[int] = Counter()


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with run_server(bundle_under_test(request), tmp_path_factory.mktemp("fuzz")) as live:
        yield live
        print(f"\nschemathesis: {sum(STATUS_COUNTS.values())} requests, status codes {dict(sorted(STATUS_COUNTS.items()))}")


def test_live_server_serves_this_schema(server: Server) -> None:
    assert httpx.get(f"{server.url}/openapi.json").json() == OPENAPI


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_schema(case: schemathesis.Case, server: Server) -> None:
    response = case.call_and_validate(base_url=server.url, timeout=60)
    STATUS_COUNTS[response.status_code] += 1
    assert response.status_code < 500, response.text[:500]
    if case.path == "/tag" and response.status_code == 200:
        body = case.body
        texts = [body["text"]] if body.get("text") is not None else body["texts"]
        tasks = tuple(body.get("tasks") or ("seg", "pos", "ner"))
        for text, result in zip(texts, response.json()["results"], strict=True):
            check_result(text, result, tasks)
