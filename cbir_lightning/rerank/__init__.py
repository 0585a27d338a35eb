"""Re-ranking of retrieval results: alpha-QE and DBA (Radenovic et al. 2018), diffusion (Iscen et al. 2017).

Pure functions on descriptors (tensors in, tensors out); scores are dot products of the descriptors.
"""

from cbir_lightning.rerank.diffusion import diffusion_scores, mutual_knn_affinity
from cbir_lightning.rerank.expansion import alpha_query_expansion, database_side_augmentation
from cbir_lightning.rerank.rerank import RERANKERS, rerank_scores, reranked_similarity

__all__ = [
    "RERANKERS",
    "alpha_query_expansion",
    "database_side_augmentation",
    "diffusion_scores",
    "mutual_knn_affinity",
    "rerank_scores",
    "reranked_similarity",
]
