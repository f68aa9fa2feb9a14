"""Security (issue 6, part 6): API keys, the body limit before parsing, private logs, CORS, pins.

One real server runs with two API keys, /metrics protected, a 4 KiB body limit and
the fault hook on (to check that a failing batch does not log its texts either).
Configuration variants that need no model use FastAPI's TestClient without the lifespan.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

import app.middleware
from app.main import create_app
from app.settings import FAULT_MARKER, Settings
from tests.conftest import ROOT, Server, run_server
from tests.test_bad_input import bundle_under_test

KEYS = ("alpha-7f3c9e1d", "beta-52aa8b06")
BODY_LIMIT = 4096
SECRET_TEXT = "隐私检查甲乙丙丁QZXJW"  # must never reach the log


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {"NER_API_KEYS": ",".join(KEYS), "NER_PROTECT_METRICS": "true", "NER_MAX_BODY_BYTES": str(BODY_LIMIT), "NER_FAULT_INJECTION": "true", "NER_ACCESS_LOG": "true"}
    with run_server(bundle_under_test(request), tmp_path_factory.mktemp("security"), env) as live:
        yield live


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http


def with_key(key: str = KEYS[0]) -> dict[str, str]:
    return {"X-API-Key": key}


# -- API keys ------------------------------------------------------------------------------


def test_missing_key_is_401_with_a_clear_message(client: httpx.Client) -> None:
    for headers in ({}, {"X-API-Key": ""}, {"Authorization": "Bearer"}, {"Authorization": KEYS[0]}):
        response = client.post("/tag", json={"text": "北京"}, headers=headers)
        assert response.status_code == 401, headers
        assert "missing API key" in response.json()["error"]
        assert "X-API-Key" in response.json()["error"]
        assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("key", ["wrong", KEYS[0][:-1], KEYS[0] + "0", KEYS[0].upper(), ",".join(KEYS), "alpha-7f3c9e1d\u00e9"])
def test_wrong_key_is_401(client: httpx.Client, key: str) -> None:
    response = client.post("/tag", json={"text": "北京"}, headers={"X-API-Key": key.encode("utf-8")})
    assert response.status_code == 401
    assert response.json()["error"] == "wrong API key"


@pytest.mark.parametrize("headers", [with_key(KEYS[0]), with_key(KEYS[1]), {"Authorization": f"Bearer {KEYS[1]}"}, {"authorization": f"bearer {KEYS[0]}"}])
def test_either_key_in_either_header_is_accepted(client: httpx.Client, headers: dict[str, str]) -> None:
    response = client.post("/tag", json={"text": "江泽民在北京。"}, headers=headers)
    assert response.status_code == 200


def test_the_key_is_checked_before_the_body_is_read(client: httpx.Client) -> None:
    """A client without a key learns that first, not what is wrong with its body."""
    for body, headers in ((b'{"text": ', {"content-type": "application/json"}), (b"\xff\xfe", {"content-type": "application/json"}), (b"{}", {"content-type": "text/plain"})):
        response = client.post("/tag", content=body, headers=headers)
        assert response.status_code == 401, response.text
        assert client.post("/tag", content=body, headers={**headers, **with_key()}).status_code == 422


def test_health_and_readiness_are_open(client: httpx.Client) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200


def test_model_and_protected_metrics_need_a_key(client: httpx.Client) -> None:
    assert client.get("/model").status_code == 401
    assert client.get("/model", headers=with_key()).status_code == 200
    refused = client.get("/metrics")
    assert refused.status_code == 401 and "missing API key" in refused.json()["error"]
    assert client.get("/metrics", headers=with_key("nope")).status_code == 401
    metrics = client.get("/metrics", headers=with_key())
    assert metrics.status_code == 200 and "ner_requests_total" in metrics.text


def test_metrics_are_open_unless_protected(tmp_path: Path) -> None:
    # No lifespan (no `with`): no model is loaded, so any model path will do.
    open_metrics = TestClient(create_app(Settings(model_path=str(tmp_path), api_keys=list(KEYS))))
    assert open_metrics.get("/metrics").status_code == 200
    assert open_metrics.post("/tag", json={"text": "北京"}).status_code == 401
    protected = TestClient(create_app(Settings(model_path=str(tmp_path), api_keys=list(KEYS), protect_metrics=True)))
    assert protected.get("/metrics").status_code == 401


def test_keys_are_compared_in_constant_time() -> None:
    check = inspect.getsource(app.middleware.key_matches)
    assert "hmac.compare_digest" in check
    assert not re.search(r"supplied\s*(==|!=|in\s)|(==|!=)\s*supplied", check), "keys must not be compared with == or `in`"


# -- the body limit comes before parsing -----------------------------------------------------


def test_body_limit_applies_before_parsing_and_authentication(client: httpx.Client) -> None:
    at_limit = b'{"text": "' + b"a" * (BODY_LIMIT - 12) + b'"}'
    assert len(at_limit) == BODY_LIMIT
    accepted = client.post("/tag", content=at_limit, headers={**with_key(), "content-type": "application/json"})
    assert accepted.status_code == 200
    over = b"\xff" * (BODY_LIMIT + 1)  # not UTF-8, not JSON: would be a 422 if it were parsed
    cases = [
        ("declared length", over, with_key()),
        ("streamed", iter([over[:1000], over[1000:]]), with_key()),
        ("no key", over, {}),
    ]
    for name, content, headers in cases:
        response = client.post("/tag", content=content, headers={**headers, "content-type": "application/json"})
        assert response.status_code == 413, name
        assert f"limit of {BODY_LIMIT} bytes" in response.json()["error"], name


# -- privacy: no request texts in the log --------------------------------------------------


def test_texts_and_keys_never_reach_the_log(client: httpx.Client, server: Server) -> None:
    tagged = client.post("/tag", json={"text": SECRET_TEXT}, headers=with_key())
    assert tagged.status_code == 200
    assert client.post("/tag", json={"texts": [SECRET_TEXT, "好"], "tasks": ["ner"]}, headers=with_key()).status_code == 200
    assert client.post("/tag", json={"text": SECRET_TEXT, "extra": SECRET_TEXT}, headers=with_key()).status_code == 422
    assert client.post("/tag", json={"text": SECRET_TEXT}, headers=with_key("wrong-" + SECRET_TEXT.encode().hex())).status_code == 401
    failed = client.post("/tag", json={"text": SECRET_TEXT + FAULT_MARKER}, headers=with_key())
    assert failed.status_code == 500
    log = server.output()
    assert failed.json()["error_id"] in log, "ids do reach the log"
    assert "POST /tag" in log
    assert f"tag {tagged.headers['x-request-id']}: 1 texts, {len(SECRET_TEXT)} characters" in log, "sizes and ids are logged"
    for secret in (SECRET_TEXT, "QZXJW", "甲乙丙丁", SECRET_TEXT.encode().hex(), *KEYS):
        assert secret not in log, f"{secret!r} was written to the server log"


def test_a_key_in_the_query_string_never_reaches_the_log(client: httpx.Client, server: Server) -> None:
    """Issue 21, finding 4: `POST /tag?api_key=...` was rejected, but uvicorn's access line
    logged the full URL with the key in it."""
    query_secret = "query-" + KEYS[1]
    assert client.post(f"/tag?api_key={query_secret}&x=1", json={"text": "好"}).status_code == 401
    assert client.get(f"/healthz?token={query_secret}").status_code == 200
    log = server.output()
    assert "POST /tag HTTP/1.1" in log and "GET /healthz HTTP/1.1" in log, "the paths are still logged"
    assert query_secret not in log


def test_blank_api_keys_are_an_error_not_authentication_off() -> None:
    """Issue 21, finding 5: NER_API_KEYS=" , " used to leave no key, i.e. no authentication."""
    for value in (" , ", ",", "alpha-7f3c9e1d, ", "alpha-7f3c9e1d,,beta-52aa8b06"):
        with pytest.raises(ValueError, match="NER_API_KEYS has a blank key"):
            Settings(api_keys=value)
    assert Settings(api_keys="").api_keys == []  # unset or empty: no authentication, as documented
    assert Settings(api_keys=" alpha-7f3c9e1d , beta-52aa8b06 ").api_keys == list(KEYS)


def test_head_on_health_endpoints(client: httpx.Client) -> None:
    """Issue 21, finding 7: load balancers and uptime checkers send HEAD; it answered 405."""
    for path in ("/healthz", "/readyz"):
        response = client.head(path)
        assert response.status_code == 200, path
        assert response.content == b""


# -- CORS ------------------------------------------------------------------------------------


PREFLIGHT = {"Origin": "https://elsewhere.example", "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}


def test_cors_is_off_by_default(client: httpx.Client) -> None:
    preflight = client.options("/tag", headers=PREFLIGHT)
    assert "access-control-allow-origin" not in preflight.headers
    simple = client.get("/healthz", headers={"Origin": "https://elsewhere.example"})
    assert "access-control-allow-origin" not in simple.headers


def test_cors_allows_only_the_configured_origins(tmp_path: Path) -> None:
    # No lifespan: no model is loaded.
    client = TestClient(create_app(Settings(model_path=str(tmp_path), cors_origins=["https://app.example"])))
    allowed = client.options("/tag", headers={**PREFLIGHT, "Origin": "https://app.example"})
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    other = client.options("/tag", headers=PREFLIGHT)
    assert other.headers.get("access-control-allow-origin") != "https://elsewhere.example"


# -- pinned dependencies ----------------------------------------------------------------------


def normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_dependencies_are_pinned_and_the_pins_are_used() -> None:
    import tomllib

    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not pinned with =="
            pins[normalised(name)] = version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    for requirement in requirements:
        name = normalised(re.match(r"[A-Za-z0-9_.-]+", requirement).group(0))
        if name != "torch":  # pinned on its own line in the Makefile and the Dockerfile
            assert name in pins, f"{name} is not pinned in constraints.txt"
    assert "pip install -q -c constraints.txt" in (ROOT / "Makefile").read_text()
    assert "-c constraints.txt" in (ROOT / "Dockerfile").read_text()
