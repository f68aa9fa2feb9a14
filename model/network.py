"""The network: embeddings + dictionary features -> BiRNN encoder -> one CRF head per task.

Heads: `seg` (B/M/E/S), `pos` (BMES x PKU tags) and `ner` (O + BMES x PER/LOC/ORG).
At inference the POS head is decoded inside the word boundaries the segmentation
head chose, so tokens and their tags always agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from model.crf import CRF, viterbi
from model.schemes import PREFIXES, make_labels, split_label
from model.vocab import BOS, UNK

CELLS = ("lstm", "gru")
MERGES = ("concat", "sum", "mul", "ave")


@dataclass
class NetworkConfig:
    cell: str = "lstm"
    num_layers: int = 1
    merge: str = "concat"
    hidden_size: int = 256
    char_dim: int = 128
    bigram_dim: int = 64
    lexicon_dim: int = 32
    dropout: float = 0.3
    # Standard deviation of the initial embeddings; nn.Embedding's default of 1.0 is large
    # next to the steps an optimiser takes on rows that appear rarely (most bigrams).
    embedding_init_std: float = 1.0
    # In training only: the share of character and bigram ids replaced by <unk>. The model
    # otherwise memorises the bigrams of training-set names (train NER F1 0.98 against
    # dev 0.85) and has never learnt to read a name it has not seen.
    unk_dropout: float = 0.0
    # SoftLexicon word vectors: 0 = off (dictionary words enter only through the fixed-size
    # features of model/lexicon.py); > 0 = each position's B/M/E/S word sets are pooled
    # into 4 x word_dim inputs from a trained embedding of the words seen in training.
    word_dim: int = 0

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {CELLS}, not {self.cell!r}")
        if self.merge not in MERGES:
            raise ValueError(f"merge must be one of {MERGES}, not {self.merge!r}")
        if self.num_layers < 1:
            raise ValueError("num_layers must be at least 1")


def init_table(table: nn.Embedding | nn.EmbeddingBag, std: float) -> None:
    """Normal(0, std) rows, the padding row (id 0) zero."""
    nn.init.normal_(table.weight, std=std)
    with torch.no_grad():
        table.weight[0].zero_()


def only_forced(scores: Tensor, forced: Tensor, forbidden: float) -> Tensor:
    """`scores` (B, T, L) with every label but the forced one set to `forbidden` where `forced`
    (B, T) is >= 0."""
    labels = torch.arange(scores.shape[2], device=scores.device)
    others = (forced.unsqueeze(2) >= 0) & (labels != forced.unsqueeze(2))
    return scores.masked_fill(others, forbidden)


def with_data(packed: PackedSequence, data: Tensor) -> PackedSequence:
    """`data` (one row per position of `packed`, in its order) packed the same way."""
    return PackedSequence(data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices)


class TaggerNetwork(nn.Module):
    """Shared encoder and three CRF heads. `forward` decodes; `loss` trains."""

    __constants__ = ["has_words"]  # for TorchScript: without word vectors that branch is not compiled

    def __init__(
        self,
        config: NetworkConfig,
        num_chars: int,
        num_bigrams: int,
        num_lexicon_features: int,
        seg_labels: list[str],
        pos_labels: list[str],
        ner_labels: list[str],
        num_words: int = 0,
        aux_ner_heads: int = 0,
    ):
        super().__init__()
        self.merge = config.merge
        self.bos_bigram = 2  # Vocab's BOS id
        self.unk_id = 1  # Vocab's UNK id
        assert BOS == "<bos>" and UNK == "<unk>"
        self.unk_dropout = config.unk_dropout
        self.char_embedding = nn.Embedding(num_chars, config.char_dim, padding_idx=0, sparse=True)
        self.bigram_embedding = nn.Embedding(num_bigrams, config.bigram_dim, padding_idx=0, sparse=True)
        for table in (self.char_embedding, self.bigram_embedding):
            init_table(table, config.embedding_init_std)
        self.lexicon_projection = nn.Linear(num_lexicon_features, config.lexicon_dim)
        self.has_words = config.word_dim > 0
        if self.has_words:
            self.word_embedding = nn.EmbeddingBag(num_words, config.word_dim, mode="sum", padding_idx=0, sparse=True)
            init_table(self.word_embedding, config.embedding_init_std)
        input_dim = config.char_dim + 2 * config.bigram_dim + config.lexicon_dim + 4 * config.word_dim
        rnn_class = nn.LSTM if config.cell == "lstm" else nn.GRU
        self.rnn = rnn_class(
            input_dim,
            config.hidden_size,
            num_layers=config.num_layers,
            bidirectional=True,
            batch_first=True,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(config.dropout)
        self.hidden_size = config.hidden_size
        out_dim = 2 * config.hidden_size if config.merge == "concat" else config.hidden_size
        self.seg_head = nn.Linear(out_dim, len(seg_labels))
        self.pos_head = nn.Linear(out_dim, len(pos_labels))
        self.ner_head = nn.Linear(out_dim, len(ner_labels))
        self.seg_crf = CRF(seg_labels)
        self.ner_crf = CRF(ner_labels)
        # Training only: NER heads for corpora annotated by other guidelines (training's
        # ner_head_of), which train the shared encoder without pulling the served head their way;
        # dropped before export (`drop_aux_heads`).
        self.aux_ner_heads = nn.ModuleList([nn.Linear(out_dim, len(ner_labels)) for _ in range(aux_ner_heads)])
        self.aux_ner_crfs = nn.ModuleList([CRF(ner_labels) for _ in range(aux_ner_heads)])
        # ~180 POS labels make a CRF ten times slower to train than the encoder, so POS is
        # trained per character and decoded inside the words the seg head chose (`tag_words`),
        # which needs the label layouts below.
        if seg_labels != list(PREFIXES):
            raise ValueError(f"seg labels must be {list(PREFIXES)}")
        types = [split_label(label)[1] for label in pos_labels[:: len(PREFIXES)]]
        if pos_labels != make_labels(types, False):
            raise ValueError("pos labels must be make_labels(types, outside=False)")
        self.num_pos_types = len(types)

    def packed_positions(self, lengths: Tensor, batch: int, steps: int, device: torch.device) -> PackedSequence:
        """Each real position's flat index into (B * T), packed as pack_padded_sequence packs:
        the embeddings, the RNN and the heads then run on real positions only (in a server's
        batches, mixed lengths in arrival order, most of a padded (B, T) grid is padding)."""
        flat = torch.arange(batch * steps, device=device).view(batch, steps)
        return pack_padded_sequence(flat, lengths.cpu(), batch_first=True, enforce_sorted=False)

    def encode(self, chars: Tensor, bigrams: Tensor, lexicon: Tensor, lengths: Tensor, words: Tensor | None = None, word_weights: Tensor | None = None) -> PackedSequence:
        """Hidden states of the real positions of padded inputs, packed (`data` is (N, H));
        `unpack` turns per-position scores back into (B, T, L). `words` and `word_weights`
        (B, T, 4, K) are needed when the network has word vectors."""
        batch, steps = chars.shape
        positions = self.packed_positions(lengths, batch, steps, chars.device)
        rows = positions.data
        # The bigram ending at each position is the one starting at the previous position
        # (<bos> at the first).
        left_bigrams = torch.cat([torch.full_like(bigrams[:, :1], self.bos_bigram), bigrams[:, :-1]], dim=1)
        # The float inputs follow the encoder's dtype (fp16 on a GPU), read off the character
        # table: an int8 network's linear layers have no weight attribute.
        dtype = self.char_embedding.weight.dtype
        parts = [
            self.char_embedding(chars.reshape(-1)[rows]),
            self.bigram_embedding(left_bigrams.reshape(-1)[rows]),
            self.bigram_embedding(bigrams.reshape(-1)[rows]),
            torch.relu(self.lexicon_projection(lexicon.reshape(batch * steps, -1)[rows].to(dtype))),
        ]
        if self.has_words:
            assert words is not None and word_weights is not None, "this network needs words and word_weights"
            # SoftLexicon: each set's weighted sum of word vectors, the 4 sets side by side (one
            # bag per set: half the time of gathering all K vectors and summing them)
            sets = words.shape[2] * words.shape[3]
            real_words = words.reshape(batch * steps, sets)[rows].view(-1, words.shape[3])
            weights = word_weights.reshape(batch * steps, sets)[rows].view(-1, words.shape[3]).to(dtype)
            pooled = self.word_embedding(real_words, per_sample_weights=weights)
            parts.append(pooled.view(rows.shape[0], -1))
        inputs = self.dropout(torch.cat(parts, dim=1))
        hidden = self.contextualise(with_data(positions, inputs))
        # A half-precision encoder (fp16) feeds heads and CRFs that stay in fp32: Viterbi sums
        # scores over a whole sentence, too coarse in fp16. For an fp32 encoder this is no copy.
        return with_data(hidden, self.dropout(hidden.data.float()))

    def contextualise(self, inputs: PackedSequence) -> PackedSequence:
        """The BiRNN over packed inputs, the two directions merged as configured."""
        output, _ = self.rnn(inputs)
        hidden = output.data
        forward_half, backward_half = hidden[:, : self.hidden_size], hidden[:, self.hidden_size :]
        if self.merge == "sum":
            hidden = forward_half + backward_half
        elif self.merge == "mul":
            hidden = forward_half * backward_half
        elif self.merge == "ave":
            hidden = (forward_half + backward_half) / 2
        return with_data(output, hidden)

    def unpack(self, scores: Tensor, like: PackedSequence, steps: int) -> Tensor:
        """Per-position `scores` (N, L), packed as `like`, as a padded (B, steps, L) tensor
        (zeros past each length)."""
        return pad_packed_sequence(with_data(like, scores), batch_first=True, total_length=steps)[0]

    def forward(
        self,
        chars: Tensor,
        bigrams: Tensor,
        lexicon: Tensor,
        lengths: Tensor,
        want_seg: bool = True,
        want_pos: bool = True,
        want_ner: bool = True,
        words: Tensor | None = None,
        word_weights: Tensor | None = None,
        forced: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Decoded label ids (B, T) for seg, pos and ner; an empty tensor for a head not wanted.

        `forced` (B, T, 3), from a user dictionary: where a column is >= 0 it is the only seg
        label, POS type or NER label Viterbi may choose at that position (-1: free). Forcing
        inside decoding keeps the labels around a dictionary word consistent with it."""
        hidden = self.encode(chars, bigrams, lexicon, lengths, words, word_weights)
        steps = chars.shape[1]
        empty = torch.zeros(0, dtype=torch.long, device=chars.device)
        if forced is not None:
            forced = forced.to(chars.device)
        seg, pos, ner = empty, empty, empty
        if want_seg or want_pos:
            seg_scores = self.unpack(self.seg_head(hidden.data), hidden, steps)
            if forced is not None:
                seg_scores = only_forced(seg_scores, forced[:, :, 0], self.seg_crf.forbidden)
            if want_ner:
                seg, ner = self.decode_seg_and_ner(seg_scores, self.ner_scores(hidden, steps, forced), lengths)
            else:
                seg = self.seg_crf.viterbi(seg_scores, lengths)
        elif want_ner:
            ner = self.ner_crf.viterbi(self.ner_scores(hidden, steps, forced), lengths)
        if want_pos:
            # Raw scores, not log-probabilities: a character's log-softmax normaliser is the same
            # for every tag, so it cannot change which tag a word's summed scores prefer.
            pos = self.tag_words(self.unpack(self.pos_head(hidden.data), hidden, steps), seg, lengths, None if forced is None else forced[:, :, 1])
        return seg, pos, ner

    def ner_scores(self, hidden: PackedSequence, steps: int, forced: Tensor | None) -> Tensor:
        scores = self.unpack(self.ner_head(hidden.data), hidden, steps)
        return scores if forced is None else only_forced(scores, forced[:, :, 2], self.ner_crf.forbidden)

    def decode_seg_and_ner(self, seg_scores: Tensor, ner_scores: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Both CRFs' Viterbi paths from one loop over time: the seg sequences are stacked
        under the NER ones, their 4 labels padded with forbidden ones to NER's 13."""
        batch, steps, size = ner_scores.shape
        seg_padding = torch.full([batch, steps, size - seg_scores.shape[2]], self.seg_crf.forbidden, device=seg_scores.device)
        seg_start, seg_transitions, seg_end = self.seg_crf.padded_scores(size)
        ner_start, ner_transitions, ner_end = self.ner_crf.padded_scores(size)
        paths = viterbi(
            torch.cat([torch.cat([seg_scores, seg_padding], dim=2), ner_scores], dim=0),
            torch.cat([lengths, lengths]),
            torch.cat([seg_start.expand(batch, size), ner_start.expand(batch, size)]),
            torch.cat([seg_transitions.expand(batch, size, size), ner_transitions.expand(batch, size, size)]),
            torch.cat([seg_end.expand(batch, size), ner_end.expand(batch, size)]),
        )
        return paths[:batch], paths[batch:]

    def tag_words(self, pos_scores: Tensor, seg: Tensor, lengths: Tensor, forced_types: Tensor | None = None) -> Tensor:
        """POS label ids (B, T): for each word of `seg`, the tag whose B/M/E/S labels have the
        highest summed score over the word's characters.

        This is exactly the constrained Viterbi path when POS transitions carry no score:
        inside a word the tag cannot change, and between words any tag may follow any.
        """
        batch, steps, _ = pos_scores.shape
        types = self.num_pos_types
        by_type = pos_scores.view(batch, steps, types, 4)  # B, M, E, S
        # the score of label (seg prefix, type) at each position: (B, T, types)
        per_type = by_type.gather(3, seg.view(batch, steps, 1, 1).expand(batch, steps, types, 1)).squeeze(3)
        if forced_types is not None:
            per_type = only_forced(per_type, forced_types, self.seg_crf.forbidden)
        mask = torch.arange(steps, device=seg.device).unsqueeze(0) < lengths.to(seg.device).unsqueeze(1)
        per_type = per_type * mask.unsqueeze(2).to(per_type.dtype)
        starts = (seg == 0) | (seg == 3)  # B or S begins a word
        word = (starts.long().cumsum(1) - 1).clamp(min=0)
        totals = torch.zeros_like(per_type).scatter_add_(1, word.unsqueeze(2).expand(batch, steps, types), per_type)
        best = totals.argmax(dim=2).gather(1, word)
        return (best * 4 + seg).masked_fill(~mask, 0)

    @torch.jit.unused
    def hide_ids(self, ids: Tensor) -> Tensor:
        """`ids` with a random `unk_dropout` share of the non-padding ids set to <unk>."""
        hidden = (torch.rand(ids.shape, device=ids.device) < self.unk_dropout) & (ids != 0)
        return ids.masked_fill(hidden, self.unk_id)

    @torch.jit.unused
    def loss(
        self,
        chars: Tensor,
        bigrams: Tensor,
        lexicon: Tensor,
        lengths: Tensor,
        seg: Tensor | None,
        pos: Tensor | None,
        ner: Tensor | None,
        words: Tensor | None = None,
        word_weights: Tensor | None = None,
        ner_head: int = 0,
        teacher_scores: dict[str, Tensor] | None = None,
        temperature: float = 1.0,
    ) -> dict[str, Tensor]:
        """Summed loss of each head that has gold labels: CRF negative log-likelihood for
        seg and ner, cross-entropy per character for pos. `ner_head` > 0 trains auxiliary
        NER head number `ner_head` instead of the served one. With `teacher_scores` (another
        network's `head_scores` on the same batch), "distil" adds, for every head, the KL
        divergence of this network's per-character label distribution from the teacher's at
        `temperature` (times its square, so that gradients keep their size)."""
        if self.unk_dropout > 0:
            chars, bigrams = self.hide_ids(chars), self.hide_ids(bigrams)
        if words is not None and self.unk_dropout > 0:
            words = self.hide_ids(words)
        hidden = self.encode(chars, bigrams, lexicon, lengths, words, word_weights)
        steps = chars.shape[1]
        mask = torch.arange(steps, device=chars.device).unsqueeze(0) < lengths.to(chars.device).unsqueeze(1)
        losses: dict[str, Tensor] = {}
        if seg is not None:
            losses["seg"] = self.seg_crf.neg_log_likelihood(self.unpack(self.seg_head(hidden.data), hidden, steps), seg, mask)
        if pos is not None:
            gold = pos.reshape(-1)[self.packed_positions(lengths, pos.shape[0], steps, pos.device).data]
            losses["pos"] = nn.functional.cross_entropy(self.pos_head(hidden.data), gold, reduction="sum")
        if ner is not None:
            head, crf = (self.ner_head, self.ner_crf) if ner_head == 0 else (self.aux_ner_heads[ner_head - 1], self.aux_ner_crfs[ner_head - 1])
            losses["ner"] = crf.neg_log_likelihood(self.unpack(head(hidden.data), hidden, steps), ner, mask)
        if teacher_scores is not None:
            own = self.packed_head_scores(hidden)
            divergences = [
                nn.functional.kl_div((own[task] / temperature).log_softmax(1), (scores / temperature).log_softmax(1), reduction="sum", log_target=True)
                for task, scores in teacher_scores.items()
            ]
            losses["distil"] = temperature**2 * torch.stack(divergences).sum()
        return losses

    @torch.jit.unused
    def packed_head_scores(self, hidden: PackedSequence) -> dict[str, Tensor]:
        """Each served head's scores (N, labels) at the real positions of `encode`'s output,
        in its packed order."""
        return {"seg": self.seg_head(hidden.data), "pos": self.pos_head(hidden.data), "ner": self.ner_head(hidden.data)}

    @torch.jit.unused
    def head_scores(self, chars: Tensor, bigrams: Tensor, lexicon: Tensor, lengths: Tensor, words: Tensor | None = None, word_weights: Tensor | None = None) -> dict[str, Tensor]:
        """`packed_head_scores` of a batch, without gradients: what a teacher gives a student
        in distillation (in eval mode, so without dropout)."""
        with torch.no_grad():
            return self.packed_head_scores(self.encode(chars, bigrams, lexicon, lengths, words, word_weights))

    @torch.jit.unused
    def drop_aux_heads(self) -> None:
        """Remove the training-only NER heads: the bundle holds the served head alone."""
        self.aux_ner_heads = nn.ModuleList()
        self.aux_ner_crfs = nn.ModuleList()
