"""Dictionary-match features from jieba's dictionary (and any words added to it).

For every position of the model string and every dictionary word that covers it, the
word contributes to one feature according to its role there -- Begin, Middle, End or
Single -- and, for B/M/E, its length bucket (2, 3, 4, 5+). Each feature holds the
largest frequency weight log(1 + freq) / log(1 + max_freq) among the words in it.
A second block does the same by entity type for words that jieba tags as person
(nr, nrfg, nrt), place (ns) or organisation (nt). This is a cheaper, fixed-size
variant of SoftLexicon: no word vectors, 25 numbers per character.

Words added at run time with `jieba.add_word` or `jieba.load_userdict` flow into the
features, since they are read from the live tokenizer.
"""

from __future__ import annotations

import math

import jieba
import jieba.posseg
import numpy as np

LENGTH_BUCKETS = 4  # 2, 3, 4, 5+
ENTITY_TAGS = {"nr": 0, "nrfg": 0, "nrt": 0, "ns": 1, "nt": 2}
N_PLAIN = 3 * LENGTH_BUCKETS + 1
N_FEATURES = N_PLAIN + 3 * 4


class Lexicon:
    """Computes dictionary features with a jieba tokenizer (the global one by default)."""

    size = N_FEATURES

    def __init__(self, pos_tokenizer: jieba.posseg.POSTokenizer | None = None):
        self.pos_tokenizer = pos_tokenizer or jieba.posseg.dt
        self.tokenizer = self.pos_tokenizer.tokenizer
        self.tokenizer.check_initialized()
        self._log_max = math.log1p(max(self.tokenizer.FREQ.values()))

    def add_words(self, path: str) -> tuple[int, list[str]]:
        """Load a user dictionary (`word [freq] [pos]` per line) into the tokenizer.

        Returns the number of words added and the lines that could not be used.
        """
        added, rejected = 0, []
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                parts = line.strip().split()
                if not parts or line.lstrip().startswith("#"):
                    continue
                if len(parts) > 3 or (len(parts) >= 2 and not parts[1].isdigit()):
                    rejected.append(line.rstrip("\n"))
                    continue
                freq = int(parts[1]) if len(parts) >= 2 else None
                tag = parts[2] if len(parts) == 3 else None
                self.tokenizer.add_word(parts[0], freq, tag)
                added += 1
        return added, rejected

    def features(self, model_text: str) -> np.ndarray:
        """A float32 array of shape (len(model_text), N_FEATURES)."""
        n = len(model_text)
        out = np.zeros((n, N_FEATURES), dtype=np.float32)
        if n == 0:
            return out
        self.pos_tokenizer.makesure_userdict_loaded()
        freq = self.tokenizer.FREQ
        tags = self.pos_tokenizer.word_tag_tab
        log_max = self._log_max
        dag = self.tokenizer.get_DAG(model_text)
        for start, ends in dag.items():
            for last in ends:
                word = model_text[start : last + 1]
                count = freq.get(word)
                if not count:
                    continue
                weight = min(1.0, math.log1p(count) / log_max)
                length = last - start + 1
                kind = ENTITY_TAGS.get(tags.get(word, ""))
                if length == 1:
                    out[start, N_PLAIN - 1] = max(out[start, N_PLAIN - 1], weight)
                    if kind is not None:
                        column = N_PLAIN + kind * 4 + 3
                        out[start, column] = max(out[start, column], weight)
                    continue
                bucket = min(length, 5) - 2
                roles = [(start, 0)] + [(k, 1) for k in range(start + 1, last)] + [(last, 2)]
                for position, role in roles:
                    column = role * LENGTH_BUCKETS + bucket
                    if weight > out[position, column]:
                        out[position, column] = weight
                    if kind is not None:
                        column = N_PLAIN + kind * 4 + role
                        if weight > out[position, column]:
                            out[position, column] = weight
        return out
