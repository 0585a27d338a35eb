"""``EnsembleNet``: several Siamese nets (e.g. one recipe trained with different seeds) as one net, so an
ensemble is one checkpoint that ``oneshot``, ``index``, ``search`` and ``export`` use like any other.

``embed(x) = [e_1(x) | ... | e_M(x)]`` (the members' embeddings side by side) and
``similarity(q, d) = (1/M) sum_m s_m(q_m, d_m)``, each member scoring its own slice: the mean score over
members, the ensemble ``cbir-lightning oneshot --ckpt '[a, b]'`` computes. For Koch nets the mean of
weighted L1 logits is again a weighted L1 logit over the concatenated embedding, with weights ``w_m / M``.
Built by ``cbir-lightning ensemble`` from finished checkpoints
(:func:`~cbir_lightning.ensemble_checkpoint.pack_ensemble`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cbir_lightning.contracts import SiameseNet, WeightedL1Net
from cbir_lightning.errors import CbirError


class EnsembleNet(nn.Module):
    """Args:
    members: the nets (:class:`~cbir_lightning.contracts.SiameseNet`), all of one input size.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise CbirError("EnsembleNet needs at least one member net")
        for m in members:
            if not isinstance(m, SiameseNet):
                raise CbirError(
                    f"EnsembleNet members are Siamese nets (e.g. KochSiameseNet), not {type(m).__name__}"
                )
        sizes = {m.input_size for m in members}
        if len(sizes) != 1:
            raise CbirError(f"EnsembleNet members must share one input size, got {sorted(map(str, sizes))}")
        self.members = nn.ModuleList(members)
        self.input_size = sizes.pop()
        self.dims = [int(m.embedding_dim) for m in members]
        self.embedding_dim = sum(self.dims)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """``[n, c, h, w]`` -> ``[n, sum_m d_m]``: every member's embedding, side by side."""
        return torch.cat([m.embed(images) for m in self.members], dim=1)

    def _split(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if embeddings.shape[-1] != self.embedding_dim:
            raise CbirError(
                f"EnsembleNet scores {self.embedding_dim}-d embeddings (members {self.dims}), got "
                f"{embeddings.shape[-1]}-d"
            )
        return torch.split(embeddings, self.dims, dim=-1)

    def similarity(self, queries: torch.Tensor, database: torch.Tensor) -> torch.Tensor:
        """``[nq, nd]``: the members' mean score."""
        parts = zip(self.members, self._split(queries), self._split(database), strict=True)
        return torch.stack([m.similarity(q, d) for m, q, d in parts]).mean(0)

    def pair_logits(self, e1: torch.Tensor, e2: torch.Tensor) -> torch.Tensor:
        """``[n]``: the members' mean logit on aligned pairs."""
        parts = zip(self.members, self._split(e1), self._split(e2), strict=True)
        return torch.stack([m.pair_logits(a, b) for m, a, b in parts]).mean(0)

    def l1_head(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Members that all score by weighted L1 make the ensemble one: ``w = [w_1 | ... | w_M] / M``,
        ``b = mean_m b_m`` (see ``WeightedL1Net``)."""
        if not all(isinstance(m, WeightedL1Net) for m in self.members):
            raise CbirError("EnsembleNet has a weighted L1 head only when every member has one (Koch nets)")
        heads = [m.l1_head() for m in self.members]
        count = len(heads)
        return torch.cat([w for w, _ in heads]) / count, torch.stack([b for _, b in heads]).mean()

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        return self.pair_logits(self.embed(x1), self.embed(x2))
