"""Ranks of each query's positives in its full ranking, found by counting instead of sorting.

Ranking rule (used by every retrieval metric of the toolkit):

* database items are ordered by score, highest first;
* equal scores are ordered by ascending database index (``-0.0`` and ``+0.0`` are equal);
* NaN scores rank below every number (as a stable ascending sort of ``-scores`` does);
* junk items are taken out of the ranking: they occupy no rank, so they neither help nor hurt.

Only the positions of the positives matter to AP, precision@k and the others, so instead of sorting
each row (``O(n log n)``) the engine bins the scores of a row into about ``n / 4`` equal-width bins
(bin numbers only ever grow with the score: one subtraction and one multiplication, each exactly
rounded), counts the items of each bin (``bincount``), and compares exactly, by score then index, only
the few items that share a bin with a positive. The result is the same as a stable sort's, in a few
linear passes over cache-sized blocks of rows. Rows with NaN/inf scores or a single distinct score go
through a stable sort instead.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cbir_lightning.metrics.threads import parallel_map, single_threaded


def positive_ranks(
    scores: Tensor, positives: Tensor, junk: Tensor | None = None, workers: int | None = None
) -> Tensor:
    """1-based ranks of each row's positives among its non-junk items, ascending.

    Args:
        scores: ``[c, n]`` scores of ``c`` queries against ``n`` database items (higher = better).
        positives: ``[c, P]`` database indices of each query's positives, ``-1`` as padding; the
            indices of a row must be distinct and not junk.
        junk: optional ``[c, J]`` database indices to take out of each row's ranking, ``-1`` as padding.
        workers: CPU threads; default ``torch.get_num_threads()``. Blocks of rows run side by side,
            each on one thread: small parallel ops would each wait for every thread, which stalls
            whenever another process holds a core.

    Returns:
        ``[c, P]`` float64: ranks in ascending order, ``inf`` where ``positives`` had padding.
    """
    if not scores.is_floating_point():
        scores = scores.double()
    elif scores.dtype not in (torch.float32, torch.float64):
        scores = scores.float()  # half precision: exact in float32
    c, n = scores.shape
    workers = workers or torch.get_num_threads()
    positives = positives.to(scores.device).long()
    junk = None if junk is None or junk.numel() == 0 else junk.to(scores.device).long()
    out = torch.full(positives.shape, torch.inf, dtype=torch.float64, device=scores.device)
    if c == 0 or positives.shape[1] == 0 or n == 0:
        return out
    block = max(1, BLOCK_ELEMENTS // n)  # rows whose work arrays stay in cache

    def run(b0: int) -> None:
        b1 = min(b0 + block, c)
        out[b0:b1] = _block_ranks(scores[b0:b1], positives[b0:b1], None if junk is None else junk[b0:b1])

    starts = range(0, c, block)
    if workers == 1 or len(starts) == 1 or scores.device.type != "cpu":
        with single_threaded():
            for b0 in starts:
                run(b0)
    else:
        parallel_map(run, starts, workers)
    return out


BLOCK_ELEMENTS = 1 << 20


def _valid_pairs(index: Tensor) -> tuple[Tensor, Tensor]:
    """Row numbers and values of the non-padding entries of ``index`` ``[c, m]``."""
    rows, cols = (index >= 0).nonzero(as_tuple=True)
    return rows, index[rows, cols]


def _block_ranks(scores: Tensor, positives: Tensor, junk: Tensor | None) -> Tensor:
    lo, hi = torch.aminmax(scores, dim=1)
    bins = max(1, min(scores.shape[1] // BIN_WIDTH, MAX_BINS))
    scale = ((bins - 1) / (hi.double() - lo.double())).to(scores.dtype)
    fast = torch.isfinite(lo) & torch.isfinite(hi - lo) & (hi > lo) & torch.isfinite(scale)
    if bool(fast.all()):
        return _binned_ranks(scores, positives, junk, lo, scale, bins)
    out = torch.empty(positives.shape, dtype=torch.float64, device=scores.device)
    for rows, binned in ((fast.nonzero().squeeze(1), True), ((~fast).nonzero().squeeze(1), False)):
        if len(rows):
            j = None if junk is None else junk[rows]
            if binned:
                out[rows] = _binned_ranks(scores[rows], positives[rows], j, lo[rows], scale[rows], bins)
            else:
                out[rows] = _sorted_ranks(scores[rows], positives[rows], j)
    return out


def _binned_ranks(
    scores: Tensor, positives: Tensor, junk: Tensor | None, lo: Tensor, scale: Tensor, bins: int
) -> Tensor:
    c, n = scores.shape
    device = scores.device
    # Bin numbers are monotone in the score: s1 >= s2 => fl(s1 - lo) >= fl(s2 - lo) => ... (each operation
    # is exactly rounded), and stay below `bins`: (hi - lo) * scale <= (bins - 1)(1 + u)^3 < bins as
    # bins <= 2^22 and u <= 2^-24.
    stride = bins + 1  # bins of a row, plus one for its junk
    keys = torch.sub(scores, lo[:, None])
    keys.mul_(scale[:, None])
    key = keys.to(torch.int32)
    del keys
    if junk is not None:
        rows, cols = _valid_pairs(junk)
        key[rows, cols] = bins
    key += (torch.arange(c, device=device, dtype=torch.int32) * stride)[:, None]
    flat = key.view(-1)
    # above[r, p] = number of non-junk items of row r in bins above positive p's bin
    counts = torch.bincount(flat, minlength=c * stride).view(c, stride)
    counts[:, bins] = 0
    cumulative = counts.cumsum(1)
    valid = positives >= 0
    pos = positives.clamp(min=0)
    row_bin = torch.arange(c, device=device)[:, None] * stride
    pkey = torch.where(valid, key.gather(1, pos).long(), row_bin + bins)
    above = cumulative[:, -1:] - cumulative.gather(1, pkey - row_bin)

    # items sharing a bin with a positive are ranked exactly: score descending, then index ascending
    shared = torch.zeros(c * stride, dtype=torch.bool, device=device)
    shared[pkey.view(-1)] = True
    shared[row_bin.view(-1) + bins] = False
    linear = shared.index_select(0, flat).nonzero().squeeze(1)  # ascending: row-major
    if len(linear) == 0:  # no valid positive in any row
        return torch.full(positives.shape, torch.inf, dtype=torch.float64, device=device)
    sel_rows = linear // n
    per_row = torch.bincount(sel_rows, minlength=c)
    row_start = per_row.cumsum(0) - per_row
    slot = torch.arange(len(linear), device=device) - row_start[sel_rows]
    width = int(per_row.max())
    # 0 - score maps -0.0 and +0.0 to +0.0; padding (+inf) sorts last
    neg = torch.full((c, width), torch.inf, dtype=scores.dtype, device=device)
    neg[sel_rows, slot] = torch.sub(0.0, scores.reshape(-1).take(linear))
    sel_bin = torch.full((c, width), -1, dtype=torch.int32, device=device)
    sel_bin[sel_rows, slot] = flat.take(linear)
    order = torch.sort(neg, dim=1, stable=True).indices  # ties keep index order
    sorted_bin = sel_bin.gather(1, order)
    position = torch.arange(width, device=device).expand(c, width)
    first = torch.ones(c, width, dtype=torch.bool, device=device)
    first[:, 1:] = sorted_bin[:, 1:] != sorted_bin[:, :-1]
    start = torch.cummax(torch.where(first, position, 0), dim=1).values
    within = torch.empty(c, width, dtype=torch.int64, device=device)
    within.scatter_(1, order, position - start)  # same-bin items ranked before each selected item
    # a positive's slot: its place among its row's selected items (columns ascending)
    prow = torch.arange(c, device=device)[:, None]
    found = torch.searchsorted(linear, prow * n + pos)
    pslot = (found - row_start[:, None]).clamp(0, width - 1)
    ranks = above + within.gather(1, pslot) + 1
    ranks = torch.where(valid, ranks.double(), torch.inf)
    return torch.sort(ranks, dim=1).values


BIN_WIDTH = 4  # database items per bin, on average
MAX_BINS = 1 << 22


def _sorted_ranks(scores: Tensor, positives: Tensor, junk: Tensor | None) -> Tensor:
    """Reference path: a stable sort of each row (used for rows with NaN/inf or all-equal scores)."""
    c, n = scores.shape
    relevant = torch.zeros(c, n, dtype=torch.bool, device=scores.device)
    rows, cols = _valid_pairs(positives)
    relevant[rows, cols] = True
    kept = torch.ones(c, n, dtype=torch.bool, device=scores.device)
    if junk is not None:
        rows, cols = _valid_pairs(junk)
        kept[rows, cols] = False
    order = torch.sort(-(scores + 0.0), dim=1, stable=True).indices
    relevant, kept = relevant.gather(1, order), kept.gather(1, order)
    rank = torch.cumsum(kept, dim=1).double()
    ranks = torch.where(relevant & kept, rank, torch.inf)
    return torch.sort(ranks, dim=1).values[:, : positives.shape[1]]
