"""Transcription of revisitop's evaluation (filipradenovic/revisitop, python/evaluate.py and
example_evaluate.py): an independent reference for the engine, which never sorts the database."""

from __future__ import annotations

import numpy as np


def compute_ap(ranks, nres):
    ap = 0.0
    recall_step = 1.0 / nres
    for j in np.arange(len(ranks)):
        rank = ranks[j]
        precision_0 = 1.0 if rank == 0 else float(j) / rank
        precision_1 = float(j + 1) / (rank + 1)
        ap += (precision_0 + precision_1) * recall_step / 2.0
    return ap


def compute_map(ranks, gnd, kappas=()):
    """``ranks``: [db_size, nq] database indices of each query's ranking (column per query)."""
    mean_ap, nq, nempty = 0.0, len(gnd), 0
    pr = np.zeros(len(kappas))
    for i in np.arange(nq):
        qgnd = np.array(gnd[i]["ok"])
        if qgnd.shape[0] == 0:
            nempty += 1
            continue
        qgndj = np.array(gnd[i].get("junk", []))
        pos = np.arange(ranks.shape[0])[np.isin(ranks[:, i], qgnd)]
        junk = np.arange(ranks.shape[0])[np.isin(ranks[:, i], qgndj)]
        k, ij = 0, 0
        if len(junk):
            ip = 0
            while ip < len(pos):
                while ij < len(junk) and pos[ip] > junk[ij]:
                    k += 1
                    ij += 1
                pos[ip] = pos[ip] - k
                ip += 1
        mean_ap += compute_ap(pos, len(qgnd))
        pos += 1
        for j in np.arange(len(kappas)):
            kq = min(max(pos), kappas[j])
            pr[j] += (pos <= kq).sum() / kq
    return mean_ap / (nq - nempty), pr / (nq - nempty)


PROTOCOLS = {
    "easy": (["easy"], ["junk", "hard"]),
    "medium": (["easy", "hard"], ["junk"]),
    "hard": (["hard"], ["junk", "easy"]),
}


def revisited_reference(query: np.ndarray, database: np.ndarray, gnd: list[dict], kappas=(1, 5, 10)) -> dict:
    """``{"easy": {"mAP", "mP@k"...}, ...}`` as revisitop's example_evaluate.py (float64 dot products)."""
    sim = np.dot(database.astype(np.float64), query.astype(np.float64).T)
    ranks = np.argsort(-sim, axis=0, kind="stable")
    out = {}
    for name, (ok_keys, junk_keys) in PROTOCOLS.items():
        gnd_t = [
            {
                "ok": np.concatenate([np.asarray(g[key], dtype=np.int64) for key in ok_keys]),
                "junk": np.concatenate([np.asarray(g[key], dtype=np.int64) for key in junk_keys]),
            }
            for g in gnd
        ]
        mean_ap, pr = compute_map(ranks, gnd_t, kappas)
        out[name] = {"mAP": mean_ap, **{f"mP@{k}": pr[j] for j, k in enumerate(kappas)}}
    return out


def original_reference(query: np.ndarray, database: np.ndarray, gnd: list[dict]) -> float:
    sim = np.dot(database.astype(np.float64), query.astype(np.float64).T)
    ranks = np.argsort(-sim, axis=0, kind="stable")
    return compute_map(ranks, gnd)[0]
