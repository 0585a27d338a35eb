"""The retrieval precision-recall curve, averaged over queries (a pure function of positive ranks)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

RECALL_TOLERANCE = 1e-6  # i / R reaches level t when i / R >= t - 1e-6 (levels given in float32 round up)


def precision_recall_curve(
    ranks: Sequence[Tensor], recall_levels: Tensor | int = 11, interpolated: bool = True
) -> tuple[Tensor, Tensor]:
    """Mean precision of a set of ranked queries at fixed recall levels.

    For a query whose ``R`` positives sit at 1-based ranks ``r_1 < ... < r_R`` of its ranking (e.g.
    ``per_query_metrics(..., return_ranks=True)["ranks"]``, which follows the toolkit's tie rule), the
    ``i``-th positive gives recall ``i / R`` at precision ``P_i = i / r_i``. At a recall level ``t``:

    * interpolated (the usual PR curve): ``P(t) = max { P_i : i / R >= t }``, the best precision at
      recall ``t`` or beyond (monotone in ``t``; ``t = 0`` gives ``max_i P_i``);
    * not interpolated: ``P(t) = P_j`` with ``j`` the first positive that reaches it, ``j / R >= t``
      (with ``t = i / R`` for ``i = 1..R`` their mean is the query's non-interpolated AP).

    The curve is the unweighted mean of ``P(t)`` over the queries with at least one positive
    (``P(t) = 0`` beyond recall 1).

    Args:
        ranks: per query, the ascending ranks of its positives (int or float; empty: skipped).
        recall_levels: the levels ``t`` in [0, 1] (``[L]``), or a count for ``linspace(0, 1, count)``
            (11: the classic 11-point curve).
        interpolated: the maximum over recall ``>= t`` (True) or the precision where recall first reaches
            ``t`` (False).

    Returns:
        ``(recall_levels [L], precision [L])``, float64; precision NaN when no query has a positive.
    """
    levels = (
        torch.linspace(0, 1, recall_levels, dtype=torch.float64)
        if isinstance(recall_levels, int)
        else torch.as_tensor(recall_levels, dtype=torch.float64).flatten()
    )
    rows = [torch.as_tensor(r, dtype=torch.float64).flatten() for r in ranks]
    rows = [r for r in rows if len(r)]
    if not rows:
        return levels, torch.full_like(levels, torch.nan)
    padded = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=torch.inf)
    count = torch.tensor([len(r) for r in rows], dtype=torch.float64)
    found = torch.arange(1, padded.shape[1] + 1, dtype=torch.float64)
    precision = torch.where(torch.isfinite(padded), found / padded, 0.0)  # P_i, 0 on padding
    if interpolated:  # best precision at this positive or any later one
        precision = precision.flip(1).cummax(1).values.flip(1)
    recall = found / count[:, None]  # i / R (beyond R: above 1, never before a real level)
    first = torch.searchsorted(recall, (levels - RECALL_TOLERANCE).expand(len(rows), -1).contiguous())
    reached = first < count[:, None]
    at_level = precision.gather(1, first.clamp(max=padded.shape[1] - 1))
    return levels, torch.where(reached, at_level, 0.0).mean(0)
