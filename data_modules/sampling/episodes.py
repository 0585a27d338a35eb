"""N-way K-shot episodes drawn within one alphabet (Koch's protocol: 20-way 1-shot, 400 trials).

An episode is index arithmetic on a fixed evaluation set, so it costs nothing to redo every epoch and,
with a fixed seed, every epoch is scored on the same trials.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cbir_lightning.errors import CbirError


@dataclass
class Episodes:
    queries: torch.Tensor  # long [T]: index of each trial's query image
    candidates: torch.Tensor  # long [T, ways * shots]: indices of the support images
    targets: torch.Tensor  # long [T, shots]: positions in ``candidates`` of the query's class


def make_episodes(
    groups: list[str],
    labels: torch.Tensor,
    drawers: torch.Tensor,
    ways: int = 20,
    shots: int = 1,
    trials: int = 400,
    seed: int = 0,
) -> Episodes:
    """Draw ``trials`` episodes; each picks a group (alphabet) with at least ``ways`` classes, ``ways`` of
    its classes, one drawer for the query and ``shots`` other drawers for the support images."""
    if ways < 2:  # one way is no choice: every episode would be scored against its own answer only
        raise CbirError(f"ways={ways}: an N-way episode needs at least 2 classes")
    gen = torch.Generator().manual_seed(seed)
    by_group: dict[str, list[int]] = {}
    for g, c in sorted(set(zip(groups, labels.tolist(), strict=True))):
        by_group.setdefault(g, []).append(c)
    eligible = [g for g, cs in by_group.items() if len(cs) >= ways]
    if not eligible:
        largest = max(by_group, key=lambda g: len(by_group[g]))
        raise CbirError(
            f"ways={ways} is larger than the classes available: the largest evaluation alphabet "
            f"'{largest}' has {len(by_group[largest])}; lower ways or add alphabets with enough characters"
        )
    lookup = {
        (int(c), int(d)): i for i, (c, d) in enumerate(zip(labels.tolist(), drawers.tolist(), strict=True))
    }
    all_drawers = sorted(set(drawers.tolist()))
    queries, candidates, targets = [], [], []
    while len(queries) < trials:
        group = eligible[int(torch.randint(len(eligible), (1,), generator=gen))]
        classes = by_group[group]
        chosen = [classes[i] for i in torch.randperm(len(classes), generator=gen)[:ways].tolist()]
        picked = [
            all_drawers[i] for i in torch.randperm(len(all_drawers), generator=gen)[: shots + 1].tolist()
        ]
        if len(picked) < shots + 1 or any((c, d) not in lookup for c in chosen for d in picked):
            raise CbirError(
                f"episodes need {shots + 1} drawers of every character; alphabet '{group}' lacks some"
            )
        target = int(torch.randint(ways, (1,), generator=gen))
        queries.append(lookup[(chosen[target], picked[0])])
        candidates.append([lookup[(c, d)] for c in chosen for d in picked[1:]])
        targets.append([target * shots + s for s in range(shots)])
    return Episodes(torch.tensor(queries), torch.tensor(candidates), torch.tensor(targets))
