"""Linear-chain CRF with BMES transition constraints; TorchScript-compatible.

Disallowed transitions (e.g. B-PER -> S-LOC, or starting with M) get a large negative
score in training and in decoding, so Viterbi can only return valid BMES sequences.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from model.schemes import allowed_transitions

FORBIDDEN = -10000.0
# Max-plus "zero" (minus infinity, kept finite so that sums stay finite): off the diagonal of
# the max-plus identity matrix, far below any path that uses only forbidden transitions.
MAX_PLUS_ZERO = -1.0e30


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
    CRFs decode in one pass (the per-step overhead dominates on a CPU).

    On a GPU each operation is a kernel launch, and a loop over time launches thousands of
    tiny ones per batch while the GPU waits; there the paths come from `scan_viterbi`, whose
    number of operations grows with log T instead of T."""
    if emissions.is_cuda:
        return scan_viterbi(emissions, lengths, start, transitions, end)
    return sequential_viterbi(emissions, lengths, start, transitions, end)


def sequential_viterbi(emissions: Tensor, lengths: Tensor, start: Tensor, transitions: Tensor, end: Tensor) -> Tensor:
    """`viterbi` as one loop over time: a few small operations per step, the fastest on a CPU."""
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


def scan_viterbi(emissions: Tensor, lengths: Tensor, start: Tensor, transitions: Tensor, end: Tensor, max_plus_zero: float = MAX_PLUS_ZERO, max_elements: int = 1 << 26) -> Tensor:
    """`viterbi` from parallel prefix scans, O(log T) operations on (B, T, L, L) tensors.

    The best score of a path ending in each label at t is a max-plus product of one matrix per
    step (transition plus emission scores), so all prefixes come from a Hillis-Steele scan;
    the backpointers then follow for every step at once, and the path is each step's
    backpointer map composed with those after it, a second scan (of index maps, by gather).
    The scores are summed in another order than the loop's, so the two can differ only where
    two paths score the same to the last bits of a float32. `max_elements` bounds the
    temporary tensor of a max-plus product (B, T, L, L, L), 256 MB in float32 by default."""
    batch, steps, n = emissions.shape
    if steps == 0:
        return torch.zeros(batch, 0, dtype=torch.long, device=emissions.device)
    positions = torch.arange(steps, device=emissions.device)
    mask = positions.unsqueeze(0) < lengths.to(emissions.device).unsqueeze(1)
    # the max-plus identity: a step past a sequence's length keeps its scores
    identity = torch.full([n, n], max_plus_zero, device=emissions.device)
    identity.fill_diagonal_(0.0)
    step_matrices = torch.where(mask[:, 1:, None, None], transitions.unsqueeze(1) + emissions[:, 1:].unsqueeze(2), identity)
    # position 0 as a matrix whose rows are all the start scores, so that row 0 of every
    # prefix product is the best score of a path ending in each label
    first = (start + emissions[:, 0]).unsqueeze(1).expand(batch, n, n)
    prefix = torch.cat([first.unsqueeze(1), step_matrices], dim=1)  # (B, T, L, L)
    span = 1
    while span < steps:  # prefix[t] becomes the product of steps t - 2 span + 1 .. t
        prefix = torch.cat([prefix[:, :span], max_plus_product(prefix[:, :-span], prefix[:, span:], max_elements)], dim=1)
        span *= 2
    score = prefix[:, :, 0]  # (B, T, L)
    label_map = torch.arange(n, device=emissions.device).view(1, 1, n)  # each label to itself
    backpointers = (score[:, :-1].unsqueeze(3) + transitions.unsqueeze(1)).max(dim=2)[1]  # label at t -> label at t - 1
    # to_step[t] maps the label at the last step to the label at t (the last maps to itself)
    to_step = torch.cat([torch.where(mask[:, 1:, None], backpointers, label_map), label_map.expand(batch, 1, n)], dim=1)
    span = 1
    while span < steps:  # to_step[t] becomes the backpointers t + 1 .. t + 2 span composed
        to_step = torch.cat([to_step[:, :-span].gather(2, to_step[:, span:]), to_step[:, -span:]], dim=1)
        span *= 2
    last = (score[:, -1] + end).argmax(dim=1)
    tags = to_step.gather(2, last.view(batch, 1, 1).expand(batch, steps, 1)).squeeze(2)
    return tags.masked_fill(~mask, 0)


def max_plus_product(left: Tensor, right: Tensor, max_elements: int) -> Tensor:
    """(..., L, L) matrices multiplied pairwise in the max-plus semiring: max over k of
    left[i, k] + right[k, j]; in slices of the first dimension when the (..., L, L, L)
    temporary would hold more than `max_elements` numbers."""
    per_row = max(1, left[0].numel() * left.shape[-1])
    rows = max(1, max_elements // per_row)
    if rows >= left.shape[0]:
        return (left.unsqueeze(-1) + right.unsqueeze(-3)).max(dim=-2)[0]
    return torch.cat([(left[i : i + rows].unsqueeze(-1) + right[i : i + rows].unsqueeze(-3)).max(dim=-2)[0] for i in range(0, left.shape[0], rows)])


def _penalty(allowed: Tensor) -> Tensor:
    return torch.where(allowed, torch.tensor(0.0), torch.tensor(FORBIDDEN))
