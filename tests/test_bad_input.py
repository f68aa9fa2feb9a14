"""Bad-input matrix against a real server (issue 6, part 1).

Every case names the status it must get and, for errors, words the message must
contain; no case may produce a 5xx, and every 2xx must satisfy the offset invariants
(checked by `check_result`, shared with the fuzz and property tests).
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Server, run_server

# The server runs with the default limits (app/settings.py).
MAX_TEXT_CHARS = 100_000
MAX_TEXTS = 256
MAX_BODY_BYTES = 4_000_000

ALL_TASKS = ("seg", "pos", "ner")
JSON = {"content-type": "application/json"}
ENTITY_TYPES = {"PER", "LOC", "ORG"}

# Characters that vary a lot but carry no punctuation (for the 100,000-character case).
CJK_NO_PUNCTUATION = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所民得经"


def check_result(text: str, result: dict[str, Any], tasks: tuple[str, ...] = ALL_TASKS) -> None:
    """The offset invariants of one result (DESIGN.md "API contract")."""
    assert result["text"] == text
    tokens = result["tokens"]
    if "seg" in tasks or "pos" in tasks:
        # Tokens (whitespace runs included, pos "w") cover the text in order.
        position = 0
        for token in tokens:
            assert token["start"] == position, (token, position)
            assert token["end"] > token["start"], token
            assert text[token["start"] : token["end"]] == token["text"], token
            assert (token["pos"] is not None) == ("pos" in tasks), token
            position = token["end"]
        assert position == len(text)
        assert "".join(token["text"] for token in tokens) == text
    else:
        assert tokens == []
    previous_end = 0
    for entity in result["entities"]:
        assert 0 <= entity["start"] < entity["end"] <= len(text), entity
        assert text[entity["start"] : entity["end"]] == entity["text"], entity
        assert entity["type"] in ENTITY_TYPES, entity
        assert entity["start"] >= previous_end, "entities overlap or are out of order"
        previous_end = entity["end"]
    if "ner" not in tasks:
        assert result["entities"] == []


@dataclass
class Case:
    name: str
    body: Any  # a JSON value (sent with json.dumps, so lone surrogates go as \ud800 escapes) or raw bytes
    status: int
    message: str | None = None  # words the error message must contain (errors only)
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON))
    whole: tuple[str, ...] = ()  # substrings no token boundary may cut (graphemes)
    streamed: bool = False  # send the body chunked, without Content-Length


def encoded(case: Case) -> bytes:
    if isinstance(case.body, bytes):
        return case.body
    return json.dumps(case.body).encode("ascii")  # ensure_ascii: every non-ASCII character as a \u escape


def streamed(body: bytes, piece: int = 256 * 1024) -> Iterator[bytes]:
    for start in range(0, len(body), piece):
        yield body[start : start + piece]


def long_cjk(length: int) -> str:
    return (CJK_NO_PUNCTUATION * (length // len(CJK_NO_PUNCTUATION) + 1))[:length]


OVERSIZED_TEXT = "a" * MAX_BODY_BYTES
GARBAGE_OVER_LIMIT = b"\xff{not json" * (MAX_BODY_BYTES // 10 + 1)

CASES = [
    # -- the body is not JSON, or not UTF-8, or not an object: 422 -------------------
    Case("invalid JSON", b'{"text": "abc",}', 422, "JSON decode error"),
    Case("truncated JSON", b'{"text": "abc"', 422, "JSON decode error"),
    Case("not JSON at all", b"hello", 422, "JSON decode error"),
    Case("content type text/plain", b'{"text": "abc"}', 422, "Content-Type: application/json", headers={"content-type": "text/plain"}),
    Case("content type form", b"text=abc", 422, "Content-Type: application/json", headers={"content-type": "application/x-www-form-urlencoded"}),
    Case("no content type", b'{"text": "abc"}', 422, "Content-Type: application/json", headers={}),
    Case("non-UTF-8 body (Latin-1)", '{"text": "café"}'.encode("latin-1"), 422, "UTF-8"),
    Case("non-UTF-8 body (GBK)", '{"text": "北京"}'.encode("gbk"), 422, "UTF-8"),
    Case("empty body", b"", 422, "Field required"),
    Case("JSON array", [], 422, "valid dictionary"),
    Case("JSON string", "北京", 422, "valid dictionary"),
    Case("JSON null", None, 422, "invalid request body"),
    Case("deeply nested JSON", b"[" * 100_000 + b"]" * 100_000, 422, "invalid request body"),
    Case("integer with 5000 digits", b'{"text": ' + b"9" * 5000 + b"}", 422, "a number in it is too long"),
    Case("deeply nested JSON says so", b'{"text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 422, "nested too deeply"),
    Case("gzip body", gzip.compress(b'{"text": "abc"}'), 415, "Content-Encoding 'gzip' is not supported", headers={**JSON, "content-encoding": "gzip"}),
    # -- fields missing, wrong or contradictory: 422 -------------------------------
    Case("no fields", {}, 422, "exactly one of `text`"),
    Case("only tasks", {"tasks": ["seg"]}, 422, "exactly one of `text`"),
    Case("misspelt field", {"txt": "北京"}, 422, "txt: Extra inputs are not permitted"),
    Case("unknown extra field", {"text": "北京", "lang": "zh"}, 422, "lang: Extra inputs are not permitted"),
    Case("text is a number", {"text": 42}, 422, "text: Input should be a valid string"),
    Case("text is a list", {"text": ["北京"]}, 422, "text: Input should be a valid string"),
    Case("text is an object", {"text": {"value": "北京"}}, 422, "text: Input should be a valid string"),
    Case("text is null", {"text": None}, 422, "exactly one of `text`"),
    Case("text is a boolean", {"text": True}, 422, "text: Input should be a valid string"),
    Case("texts is a string", {"texts": "北京"}, 422, "texts: Input should be a valid list"),
    Case("texts holds a number", {"texts": ["北京", 7]}, 422, "texts.1: Input should be a valid string"),
    Case("texts holds null", {"texts": [None]}, 422, "texts.0: Input should be a valid string"),
    Case("both text and texts", {"text": "北京", "texts": ["上海"]}, 422, "exactly one of `text`"),
    Case("empty texts list", {"texts": []}, 422, "`texts` is empty"),
    Case("unknown task", {"text": "北京", "tasks": ["chunk"]}, 422, "tasks.0: Input should be 'seg', 'pos' or 'ner'"),
    Case("task in upper case", {"text": "北京", "tasks": ["seg", "NER"]}, 422, "tasks.1: Input should be 'seg', 'pos' or 'ner'"),
    Case("empty task list", {"text": "北京", "tasks": []}, 422, "tasks: List should have at least 1 item"),
    Case("tasks is a string", {"text": "北京", "tasks": "seg"}, 422, "tasks: Input should be a valid list"),
    Case("lone high surrogate", {"text": "北京\ud800"}, 422, "lone UTF-16 surrogate"),
    Case("lone low surrogate in texts", {"texts": ["好", "\udfff上海"]}, 422, "texts.1: Value error, character 0 is a lone UTF-16 surrogate"),
    Case("surrogates reversed", {"text": "\ude00\ud83d"}, 422, "lone UTF-16 surrogate"),
    # -- over the limits: 413 --------------------------------------------------------
    Case("one character over the max length", {"text": long_cjk(MAX_TEXT_CHARS + 1)}, 413, f"text 0 has {MAX_TEXT_CHARS + 1} characters, the limit is {MAX_TEXT_CHARS}"),
    Case("second text over the max length", {"texts": ["好", "a" * (MAX_TEXT_CHARS + 1)]}, 413, "text 1 has"),
    Case("one text more than allowed", {"texts": ["好"] * (MAX_TEXTS + 1)}, 413, f"too many texts: {MAX_TEXTS + 1}, the limit is {MAX_TEXTS}"),
    Case("body over the byte limit", {"text": OVERSIZED_TEXT}, 413, f"limit of {MAX_BODY_BYTES} bytes"),
    Case("body over the byte limit, streamed", {"text": OVERSIZED_TEXT}, 413, f"limit of {MAX_BODY_BYTES} bytes", streamed=True),
    Case("garbage over the byte limit (refused before parsing)", GARBAGE_OVER_LIMIT, 413, "NER_MAX_BODY_BYTES"),
    # -- accepted: 200, offsets checked ------------------------------------------------
    Case("empty string", {"text": ""}, 200),
    Case("whitespace only", {"text": " \t\n\u3000 "}, 200),
    Case("one character", {"text": "我"}, 200),
    Case("one Latin letter", {"text": "a"}, 200),
    Case("exactly the max length, no punctuation (chunked)", {"text": long_cjk(MAX_TEXT_CHARS)}, 200),
    Case("100,000 Latin letters without a space", {"text": "x" * MAX_TEXT_CHARS}, 200),
    Case("exactly the max number of texts", {"texts": ["北京欢迎你。"] * MAX_TEXTS}, 200),
    Case("NUL character", {"text": "北京\u0000上海"}, 200),
    Case("control characters", {"text": "\u0001北\u0008京\u001b[0m\u007f上\u0085海\u200b。"}, 200),
    Case("line breaks", {"text": "第一行\r\n第二行\n\n第三行\u2028第四行"}, 200),
    Case("emoji", {"text": "我爱😀北京🇨🇳！"}, 200, whole=("😀",)),
    Case("emoji as a surrogate pair escape", b'{"text": "\\ud83d\\ude00\\u5317\\u4eac"}', 200),
    Case("ZWJ family sequence", {"text": "家庭👨\u200d👩\u200d👧\u200d👦很幸福"}, 200, whole=("👨\u200d👩\u200d👧\u200d👦",)),
    Case("emoji with skin tone and variation selector", {"text": "点赞👍🏽，好❤️"}, 200, whole=("👍🏽", "❤️")),
    Case("combining marks", {"text": "Cafe\u0301里的中\u0301文和e\u0300\u0323"}, 200, whole=("Cafe\u0301", "中\u0301", "e\u0300\u0323")),
    Case("right-to-left Hebrew and Arabic", {"text": "他说：שלום עולם，مرحبا بالعالم。"}, 200),
    Case("bidi control marks", {"text": "\u202e北京\u202c\u200f上海\u200e"}, 200),
    Case("mixed full-width and half-width", {"text": "ＩＢＭ公司和IBM公司在１９９８年与1998年，ｅｍａｉｌ：a@b.com"}, 200, whole=("ＩＢＭ", "１９９８")),
    Case("traditional characters", {"text": "臺灣的經濟發展與國際貿易關係密切。"}, 200),
    Case("only punctuation", {"text": "。，！？……——《》「」“”"}, 200),
    Case("private use and noncharacters", {"text": "\ue000\ue001\uffff\U0010ffff北京"}, 200),
    Case("many whitespace runs", {"text": "北 京 " * 2000}, 200),
    Case("an empty text among others", {"texts": ["", "北京", " "]}, 200),
    Case("seg only", {"text": "江泽民在北京大学发表讲话。", "tasks": ["seg"]}, 200),
    Case("ner only", {"text": "江泽民在北京大学发表讲话。", "tasks": ["ner"]}, 200),
    Case("pos without seg", {"text": "江泽民在北京大学发表讲话。", "tasks": ["pos"]}, 200),
    Case("UTF-8 byte order mark before the JSON", b'\xef\xbb\xbf{"text": "\xe5\x8c\x97\xe4\xba\xac"}', 200),
]


def bundle_under_test(request: pytest.FixtureRequest) -> Path:
    """$TEST_BUNDLE (e.g. model/artifacts/default, to measure the shipped model), else the session's tiny bundle."""
    chosen = os.environ.get("TEST_BUNDLE")
    return Path(chosen).resolve() if chosen else request.getfixturevalue("tiny_bundle")


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with run_server(bundle_under_test(request), tmp_path_factory.mktemp("bad_input")) as live:
        yield live


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120) as http:
        yield http


def sent_texts(case: Case) -> list[str]:
    body = case.body if not isinstance(case.body, bytes) else json.loads(case.body.decode("utf-8-sig"))
    return [body["text"]] if "text" in body else body["texts"]


def test_the_matrix_is_large_enough() -> None:
    assert len(CASES) >= 40
    assert len({case.name for case in CASES}) == len(CASES), "case names must be unique"


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input(case: Case, client: httpx.Client) -> None:
    body = encoded(case)
    content = streamed(body) if case.streamed else body
    response = client.post("/tag", content=content, headers=case.headers)
    assert response.status_code < 500, response.text[:500]
    assert response.status_code == case.status, response.text[:500]
    assert response.headers["content-type"].startswith("application/json")
    payload = response.json()
    if case.status >= 400:
        assert case.message and case.message in payload["error"], payload
        assert "sys." not in payload["error"], "the message names interpreter internals"
        return
    texts = sent_texts(case)
    tasks = tuple(json.loads(body.decode("utf-8-sig")).get("tasks", ALL_TASKS))
    assert len(payload["results"]) == len(texts)
    for text, result in zip(texts, payload["results"]):
        check_result(text, result, tasks)
        for grapheme in case.whole:
            if grapheme in text:
                start = text.index(grapheme)
                cuts = {token["start"] for token in result["tokens"]} | {token["end"] for token in result["tokens"]}
                assert not any(start < cut < start + len(grapheme) for cut in cuts), f"a token boundary cuts {grapheme!r}"


def test_long_text_without_punctuation_is_chunked(client: httpx.Client) -> None:
    """Longer than the model's window, so the tagger chunks it: many tokens, all covering."""
    text = long_cjk(20_000)
    response = client.post("/tag", json={"text": text, "tasks": ["seg"]})
    assert response.status_code == 200
    [result] = response.json()["results"]
    check_result(text, result, ("seg",))
    assert len(result["tokens"]) > 100


def test_errors_of_other_routes_are_json(client: httpx.Client) -> None:
    for method, path, status in (("GET", "/no-such-route", 404), ("GET", "/tag", 405), ("DELETE", "/tag", 405)):
        response = client.request(method, path)
        assert response.status_code == status
        assert response.json()["error"]


def test_server_still_answers_after_the_matrix(client: httpx.Client, server: Server) -> None:
    response = client.post("/tag", json={"text": "江泽民在北京大学发表讲话。"})
    assert response.status_code == 200
    assert server.process.poll() is None
    assert "Traceback" not in server.output()
