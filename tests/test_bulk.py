"""`ner-bulk` on a real local Ray (2 CPUs): JSONL and Parquet in and out, the same results as
in-process `Tagger.tag`, bad rows reported and carried fields kept."""

import json
import subprocess
import sys

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from model.tagger import Tagger
from tests.test_user_dict import ISSUE_DICT, ISSUE_SENTENCES
from training.corpora import load_corpus

SENTENCES = 2000


@pytest.fixture(scope="module")
def texts():
    return [example.text for example in load_corpus("msra-test")[:SENTENCES]]


@pytest.fixture(scope="module")
def in_process(shipped_bundle, texts):
    """What `Tagger.tag` gives in-process at the default precision (int8), as `POST /tag` items."""
    tagger = Tagger.load(shipped_bundle, "cpu", precision="int8")
    return [result.to_dict() for result in tagger.tag(texts)]


def ner_bulk(*args: str) -> dict:
    run = subprocess.run([sys.executable, "-m", "app.bulk", *args], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout[run.stdout.index("{") :])


def test_jsonl_in_and_out_equals_in_process(tmp_path, texts, in_process):
    source = tmp_path / "in.jsonl"
    bad = [b'{"id": "no-text"}', b'{"id": "number", "text": 42}', b"not json at all", b'{"id": "long", "text": "' + "长" .encode() * 600 + b'"}']
    with source.open("wb") as handle:
        for index, text in enumerate(texts):
            handle.write(orjson.dumps({"id": index, "text": text, "meta": {"source": "msra-test", "line": index}}) + b"\n")
        handle.write(b"\n".join(bad) + b"\n")
    summary = ner_bulk(str(source), "--output", str(tmp_path / "out"), "--format", "jsonl", "--actors", "2", "--batch-size", "128", "--max-text-chars", "500")
    assert (summary["texts"], summary["errors"]) == (SENTENCES, 4)
    assert summary["characters"] == sum(len(text) for text in texts)
    rows = [json.loads(line) for path in sorted((tmp_path / "out").glob("*.json")) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == SENTENCES + 4
    tagged = [row for row in rows if row["error"] is None]
    assert [row["id"] for row in tagged] == list(range(SENTENCES))  # input order kept
    assert all(row["meta"] == {"source": "msra-test", "line": row["id"]} for row in tagged)
    for row, expected in zip(tagged, in_process):
        assert {key: row[key] for key in ("text", "tokens", "entities")} == expected
    errors = {row["id"]: row["error"] for row in rows if row["error"] is not None}
    assert errors.keys() == {"no-text", "number", None, "long"}
    assert "no 'text' field" in errors["no-text"] and "not a string" in errors["number"]
    assert "not valid JSON" in errors[None] and "limit is 500" in errors["long"]
    assert summary["entities"] == {kind: sum(e["type"] == kind for r in in_process for e in r["entities"]) for kind in ("PER", "LOC", "ORG")}


def test_parquet_in_and_out_equals_in_process(tmp_path, texts, in_process):
    count = 500
    folder = tmp_path / "in"
    folder.mkdir()
    for part in range(2):  # a folder of two files
        rows = range(part * count // 2, (part + 1) * count // 2)
        pq.write_table(pa.table({"doc_id": [f"d{k}" for k in rows], "body": [texts[k] for k in rows]}), folder / f"part-{part}.parquet")
    summary = ner_bulk(str(folder / "*.parquet"), "--output", str(tmp_path / "out"), "--text-field", "body", "--actors", "1", "--tasks", "seg,ner")
    assert (summary["texts"], summary["errors"]) == (count, 0)
    table = pq.read_table(tmp_path / "out")
    assert table.column("doc_id").to_pylist() == [f"d{k}" for k in range(count)]
    tokens, entities = table.column("tokens").to_pylist(), table.column("entities").to_pylist()
    for k in range(count):
        assert [(t["text"], t["start"], t["end"]) for t in tokens[k]] == [(t["text"], t["start"], t["end"]) for t in in_process[k]["tokens"]]
        assert all(t["pos"] is None for t in tokens[k])  # seg only
        assert entities[k] == in_process[k]["entities"]


def test_a_parquet_file_holds_its_blocks_in_order(tmp_path):
    """A write task's 200 one-row blocks end up in its file in order, in each of 60 rounds.
    Ray's own Parquet writer (ray.data's ParquetDatasink in place of OrderedParquetDatasink)
    wrote them in another order in some rounds of every run (6 or more of 60 in three runs): pyarrow's threaded dataset writer does
    not keep order. Ray runs the write in a job; calling it here with the task context a job
    gives it makes enough rounds cheap to catch what a job shows now and then."""
    from ray.data._internal.execution.interfaces import TaskContext
    from ray.data._internal.planner.plan_write_op import WRITE_UUID_KWARG_NAME

    from app.parquet_sink import OrderedParquetDatasink

    reordered = []
    for round_ in range(60):
        sink = OrderedParquetDatasink(str(tmp_path / f"out{round_}"))
        sink.on_write_start()
        sink.write([pa.table({"row": [k]}) for k in range(200)], TaskContext(task_idx=0, op_name="Write", kwargs={WRITE_UUID_KWARG_NAME: "w"}))
        if pq.read_table(tmp_path / f"out{round_}").column("row").to_pylist() != list(range(200)):
            reordered.append(round_)
    assert reordered == []


def test_bad_arguments_are_reported_before_ray_starts(tmp_path):
    run = subprocess.run([sys.executable, "-m", "app.bulk", str(tmp_path / "data.csv"), "--output", str(tmp_path / "out")], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "--input-format" in run.stderr


def test_user_dictionary_holds_in_bulk_jobs(tmp_path):
    user_dict = tmp_path / "user.txt"
    user_dict.write_text(ISSUE_DICT, encoding="utf-8")
    source = tmp_path / "in.txt"
    source.write_text("\n".join(ISSUE_SENTENCES) + "\n", encoding="utf-8")
    summary = ner_bulk(str(source), "--output", str(tmp_path / "out"), "--format", "jsonl", "--user-dict", str(user_dict))
    assert (summary["texts"], summary["errors"]) == (4, 0)
    rows = [json.loads(line) for path in sorted((tmp_path / "out").glob("*.json")) for line in path.read_text(encoding="utf-8").splitlines()]
    entities = {(e["text"], e["type"]) for row in rows for e in row["entities"]}
    tokens = {(t["text"], t["pos"]) for row in rows for t in row["tokens"]}
    assert {("字节跳动", "ORG"), ("顺丰", "ORG"), ("特斯拉", "ORG"), ("余承东", "PER")} <= entities
    assert {("抖音", "nz"), ("淘宝", "nz")} <= tokens
