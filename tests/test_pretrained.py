"""Pretrained inputs: LAC's table read into the right rows (through q2b), gensim vectors likewise."""

from __future__ import annotations

import tarfile

import numpy as np
import pytest
import torch

from model.vocab import Vocab
from tests.conftest import write_lac
from training.pretrained import PretrainedError, lac_characters, lac_rows, read_lac, set_rows, train_bigram_vectors, vector_rows


def test_lac_table_rows_follow_word_dic_and_q2b(tmp_path):
    table = write_lac(tmp_path / "LAC-2.1.2")
    index, read, q2b = read_lac(tmp_path / "LAC-2.1.2")
    assert index["北京"] == 4 and q2b["國"] == "国"
    assert np.array_equal(read, table)
    vocab = Vocab(["中", "國", "萬", "猫", "\ue000"])  # ids 3..7
    vectors, found = lac_rows(vocab.items, tmp_path / "LAC-2.1.2")
    assert found.tolist() == [False, False, False, True, True, True, False, False]
    assert vectors[3:6, 0].tolist() == [2.0, 3.0, 4.0]  # 中 directly, 國 -> 国, 萬 -> 万
    assert sorted(lac_characters(tmp_path / "LAC-2.1.2")) == sorted([" ", "中", "国", "万", "萬", "國"])


def test_lac_source_distribution_is_read_without_unpacking(tmp_path):
    table = write_lac(tmp_path / "unpacked" / "LAC-2.1.2")
    archive = tmp_path / "LAC-2.1.2.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "unpacked" / "LAC-2.1.2", arcname="LAC-2.1.2")
    assert np.array_equal(read_lac(archive)[1], table)


def test_missing_or_broken_lac_source_names_the_file(tmp_path):
    with pytest.raises(PretrainedError, match=r"LAC-2\.1\.2\.tar\.gz: not found; get it with `make lac`"):
        read_lac(tmp_path / "LAC-2.1.2.tar.gz")
    write_lac(tmp_path / "LAC")
    (tmp_path / "LAC" / "LAC" / "lac_model" / "model" / "word_emb").write_bytes(b"\0" * 30)
    with pytest.raises(PretrainedError, match="word_emb is not a 6-row float32 tensor file"):
        read_lac(tmp_path / "LAC")


def test_set_rows_scales_and_leaves_other_rows(tmp_path):
    embedding = torch.nn.Embedding(5, 4)
    before = embedding.weight.detach().clone()
    vectors = np.array([[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [1, -1, 1, -1], [2, -2, 2, -2]], dtype=np.float32)
    found = np.array([False, False, False, True, True])
    assert set_rows(embedding, vectors, found, std=0.1) == 2
    weight = embedding.weight.detach()
    assert torch.equal(weight[:3], before[:3])
    assert abs(float(weight[3:].std(unbiased=False)) - 0.1) < 1e-5
    assert torch.allclose(weight[4], 2 * weight[3])  # directions and ratios kept
    with pytest.raises(PretrainedError, match="4 dimensions, the table 3"):
        set_rows(torch.nn.Embedding(5, 3), vectors, found, std=0.1)


def test_gensim_bigram_vectors_fill_the_vocabulary_rows(tmp_path):
    texts = ["北京大学在北京。", "上海大学在上海。"] * 50
    vectors = train_bigram_vectors(texts, dim=8, epochs=1, min_count=1)
    path = tmp_path / "bigrams.kv"
    vectors.save(str(path))
    vocab = Vocab(["北京", "大学", "没有"])
    rows, found = vector_rows(vocab.items, path)
    assert found.tolist() == [False, False, False, True, True, False]
    assert np.allclose(rows[3], vectors["北京"]) and np.allclose(rows[4], vectors["大学"])
    with pytest.raises(PretrainedError, match="make pretrain"):
        vector_rows(vocab.items, tmp_path / "absent.kv")
