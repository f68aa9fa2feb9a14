"""Linear-chain CRF with BMES transition constraints; TorchScript-compatible.

Disallowed transitions (e.g. B-PER -> S-LOC, or starting with M) get a large negative
score in training and in decoding, so Viterbi can only return valid BMES sequences.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from model.schemes import allowed_transitions

FORBIDDEN = -10000.0


class CRF(nn.Module):
    def __init__(self, labels: list[str]):
        super().__init__()
        n = len(labels)
        self.num_labels = n
        self.forbidden = FORBIDDEN  # an attribute: TorchScript cannot read module globals
        self.transitions = nn.Parameter(torch.zeros(n, n))
        self.start = nn.Parameter(torch.zeros(n))
        self.end = nn.Parameter(torch.zeros(n))
        start_ok, trans_ok, end_ok = allowed_transitions(labels)
        self.register_buffer("start_penalty", _penalty(torch.tensor(start_ok)))
        self.register_buffer("transition_penalty", _penalty(torch.tensor(trans_ok)))
        self.register_buffer("end_penalty", _penalty(torch.tensor(end_ok)))

    def _scores(self) -> tuple[Tensor, Tensor, Tensor]:
        return (
            self.start + self.start_penalty,
            self.transitions + self.transition_penalty,
            self.end + self.end_penalty,
        )

    def neg_log_likelihood(self, emissions: Tensor, tags: Tensor, mask: Tensor) -> Tensor:
        """Summed negative log-likelihood of `tags` (B, T) under `emissions` (B, T, L).

        `mask` (B, T) is True on real positions; every sequence has length >= 1 and
        its real positions come first.
        """
        start, transitions, end = self._scores()
        batch, steps, _ = emissions.shape
        maskf = mask.to(emissions.dtype)
        rows = torch.arange(batch, device=emissions.device)
        # Score of the gold path.
        gold = start[tags[:, 0]] + emissions[rows, 0, tags[:, 0]]
        for t in range(1, steps):
            step = transitions[tags[:, t - 1], tags[:, t]] + emissions[rows, t, tags[:, t]]
            gold = gold + step * maskf[:, t]
        last = tags.gather(1, (mask.sum(1, keepdim=True) - 1)).squeeze(1)
        gold = gold + end[last]
        # Partition function by the forward algorithm.
        alpha = start.unsqueeze(0) + emissions[:, 0]
        for t in range(1, steps):
            nxt = torch.logsumexp(alpha.unsqueeze(2) + transitions.unsqueeze(0), dim=1) + emissions[:, t]
            alpha = torch.where(mask[:, t : t + 1], nxt, alpha)
        log_z = torch.logsumexp(alpha + end.unsqueeze(0), dim=1)
        return (log_z - gold).sum()

    def viterbi(self, emissions: Tensor, lengths: Tensor) -> Tensor:
        """Best label ids (B, T); positions past a sequence's length are 0."""
        start, transitions, end = self._scores()
        batch, _, n = emissions.shape
        return viterbi(emissions, lengths, start.expand(batch, n), transitions.expand(batch, n, n), end.expand(batch, n))

    def padded_scores(self, size: int) -> tuple[Tensor, Tensor, Tensor]:
        """Start, transition and end scores over `size` >= num_labels labels, the extra ones
        forbidden, so that this CRF can be decoded in one batch with a larger one."""
        start, transitions, end = self._scores()
        n = self.num_labels
        start_out = torch.full([size], self.forbidden, device=start.device)
        end_out = torch.full([size], self.forbidden, device=start.device)
        transitions_out = torch.full([size, size], self.forbidden, device=start.device)
        start_out[:n] = start
        end_out[:n] = end
        transitions_out[:n, :n] = transitions
        return start_out, transitions_out, end_out


def viterbi(emissions: Tensor, lengths: Tensor, start: Tensor, transitions: Tensor, end: Tensor) -> Tensor:
    """Best label ids (B, T) with scores per sequence: start and end (B, L), transitions
    (B, L, L). Positions past a sequence's length are 0. Per-sequence scores let several
    CRFs decode in one loop over time (the loop's per-step overhead dominates on a CPU)."""
    batch, steps, n = emissions.shape
    if steps == 0:
        return torch.zeros(batch, 0, dtype=torch.long, device=emissions.device)
    positions = torch.arange(steps, device=emissions.device)
    mask = positions.unsqueeze(0) < lengths.to(emissions.device).unsqueeze(1)
    identity = torch.arange(n, device=emissions.device).unsqueeze(0).expand(batch, n)
    score = start + emissions[:, 0]
    backpointers: list[Tensor] = []
    for t in range(1, steps):
        best, index = (score.unsqueeze(2) + transitions).max(dim=1)
        keep = mask[:, t : t + 1]
        score = torch.where(keep, best + emissions[:, t], score)
        backpointers.append(torch.where(keep, index, identity))
    score = score + end
    current = score.argmax(dim=1)
    path = [current]
    for k in range(len(backpointers) - 1, -1, -1):
        current = backpointers[k].gather(1, current.unsqueeze(1)).squeeze(1)
        path.append(current)
    path.reverse()
    tags = torch.stack(path, dim=1)
    return tags.masked_fill(~mask, 0)


def _penalty(allowed: Tensor) -> Tensor:
    return torch.where(allowed, torch.tensor(0.0), torch.tensor(FORBIDDEN))
