"""The user dictionary through the service: NER_USER_DICT, per-request entries and the report,
reload on SIGHUP, and the API docs offline in a real headless Chromium."""

import os
import shutil
import signal
import subprocess
import time

import httpx
import pytest

from tests.conftest import run_server
from tests.test_user_dict import ISSUE_DICT, ISSUE_SENTENCES

CHROMIUM = shutil.which("chromium-headless-shell") or shutil.which("chromium")


@pytest.fixture(scope="module")
def server(shipped_bundle, tmp_path_factory):
    folder = tmp_path_factory.mktemp("user-dict-service")
    user_dict = folder / "user.txt"
    user_dict.write_text(ISSUE_DICT, encoding="utf-8")
    with run_server(shipped_bundle, folder, {"NER_USER_DICT": str(user_dict), "NER_MAX_REQUEST_ENTRIES": "3"}) as running:
        running.user_dict = user_dict
        yield running


def tag(server, **body) -> httpx.Response:
    return httpx.post(f"{server.url}/tag", json=body, timeout=30)


def test_the_issue_dictionary_holds_through_the_service(server):
    results = tag(server, texts=ISSUE_SENTENCES).json()["results"]
    entities = {(e["text"], e["type"]) for r in results for e in r["entities"]}
    tokens = {(t["text"], t["pos"]) for r in results for t in r["tokens"]}
    assert {("字节跳动", "ORG"), ("顺丰", "ORG"), ("特斯拉", "ORG"), ("余承东", "PER")} <= entities
    assert {("抖音", "nz"), ("淘宝", "nz"), ("字节跳动", "nt"), ("顺丰", "nt"), ("特斯拉", "nt"), ("余承东", "nr")} <= tokens
    assert "dictionary" not in results[0]  # only when asked for


def test_request_entries_and_the_report(server):
    text = "老番茄和特斯拉都上了热搜。"
    body = tag(server, text=text, user_dict=[{"word": "老番茄", "pos": "nr"}, {"word": "热搜", "pos": "n"}], report_dictionary=True).json()
    [result] = body["results"]
    assert [(d["text"], d["start"], d["end"], d["pos"], d["type"]) for d in result["dictionary"]] == [
        ("老番茄", 0, 3, "nr", "PER"),
        ("特斯拉", 4, 7, "nt", "ORG"),
        ("热搜", 10, 12, "n", "O"),
    ]
    assert {("老番茄", "PER"), ("特斯拉", "ORG")} <= {(e["text"], e["type"]) for e in result["entities"]}
    assert ("热搜", "n") in [(t["text"], t["pos"]) for t in result["tokens"]]
    # the entries were for that request only
    [later] = tag(server, text=text, report_dictionary=True).json()["results"]
    assert [d["text"] for d in later["dictionary"]] == ["特斯拉"]


def test_request_entries_are_checked(server):
    too_many = tag(server, text="好。", user_dict=[{"word": w} for w in "甲乙丙丁"])
    assert too_many.status_code == 413 and "NER_MAX_REQUEST_ENTRIES" in too_many.json()["error"]
    upper = tag(server, text="好。", user_dict=[{"word": "甲"}, {"word": "乙", "pos": "NZ"}])
    assert upper.status_code == 422 and "user_dict.1.pos" in upper.text
    spaced = tag(server, text="好。", user_dict=[{"word": "甲 乙"}])
    assert spaced.status_code == 422


def test_openapi_documents_the_options(server):
    schema = httpx.get(f"{server.url}/openapi.json").json()["components"]["schemas"]
    assert {"user_dict", "report_dictionary", "whole_names"} <= set(schema["TagRequest"]["properties"])
    assert "dictionary" in schema["ResultOut"]["properties"]


def test_sighup_reloads_and_a_bad_file_keeps_the_old_one(server):
    def dictionary_state(wanted):
        for _ in range(100):
            state = httpx.get(f"{server.url}/model").json()["user_dictionary"]
            if wanted(state):
                return state
            time.sleep(0.1)
        raise AssertionError(f"no reload seen: {state}")

    loaded_at = httpx.get(f"{server.url}/model").json()["user_dictionary"]["loaded_at"]
    time.sleep(1.1)  # loaded_at has whole seconds
    server.user_dict.write_text(ISSUE_DICT + "拼多多 nt\n", encoding="utf-8")
    os.kill(server.process.pid, signal.SIGHUP)
    state = dictionary_state(lambda s: s["loaded_at"] != loaded_at)
    assert (state["entries"], state["last_reload_error"]) == (7, None)
    [result] = tag(server, text="拼多多的用户很多。").json()["results"]
    assert ("拼多多", "ORG") in [(e["text"], e["type"]) for e in result["entities"]]

    server.user_dict.write_text("拼多多 nt\n这一行 不对 啊 真的\n", encoding="utf-8")
    os.kill(server.process.pid, signal.SIGHUP)
    state = dictionary_state(lambda s: s["last_reload_error"] is not None)
    assert state["entries"] == 7 and "line 2" in state["last_reload_error"]
    [result] = tag(server, text=ISSUE_SENTENCES[3]).json()["results"]
    assert ("余承东", "PER") in [(e["text"], e["type"]) for e in result["entities"]]  # the old dictionary stays
    assert "the dictionary loaded before stays in use" in server.output()


def test_docs_render_offline_in_headless_chromium(server, tmp_path):
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium-headless-shell is missing; .ci/run installs it")
        pytest.skip("no chromium-headless-shell (apt-get install chromium-headless-shell)")
    # Every host name fails to resolve except 127.0.0.1: a CDN asset could not load.
    offline = [CHROMIUM, "--no-sandbox", "--disable-gpu", "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1", "--virtual-time-budget=15000"]
    for page, marker in (("docs", 'class="opblock-summary-path" data-path="/tag"'), ("redoc", "/tag")):
        dom = subprocess.run([*offline, "--dump-dom", f"{server.url}/{page}"], capture_output=True, text=True, timeout=120).stdout
        assert marker in dom, f"/{page} did not render offline"
        assert "cdn.jsdelivr.net" not in dom
    docs = httpx.get(f"{server.url}/docs").text
    assert "/static-offline-docs/swagger-ui-bundle.js" in docs
