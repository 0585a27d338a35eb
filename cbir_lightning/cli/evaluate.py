"""``cbir-lightning evaluate``: retrieval metrics of embeddings or of a checkpoint, as one JSON line.

Three ways in:

* ``--queries Q.npy --database X.npy --gnd gnd_roxford5k.pkl``: Oxford/Paris ground truth. Rows of Q
  follow ``qimlist`` (original format: ``imlist[qidx]``), rows of X follow ``imlist``; score = dot
  product. Revisited files give ``{"easy": {"mAP", "mP@1", "mP@5", "mP@10"}, "medium": .., "hard": ..}``,
  original ones ``{"mAP"}``.
* ``--queries Q.npy --database X.npy --query-labels QL.npy --database-labels XL.npy [--exclude-self]``:
  relevance by equal labels; ``mAP``, ``mAP@R``, ``recall@1/5/10``, ``precision@10``.
* ``--config CONFIG [--ckpt CKPT] [--data.* / --model.* / --trainer.* overrides]``: exactly
  ``cbir-lightning validate --config CONFIG [--ckpt_path CKPT] ...`` (the same validation, callbacks and
  JSON line as ``validate``): the config's model with its own weights (a pretrained baseline, no
  checkpoint needed) or the checkpoint's.

Arrays may be ``.npy`` or ``.pt``. All values are fractions in [0, 1].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from cbir_lightning.checkpoints import build_datamodule
from cbir_lightning.cli.config_files import read_config
from cbir_lightning.errors import CbirError
from cbir_lightning.metrics import retrieval_metrics
from cbir_lightning.metrics.revisited import original_metrics, revisited_metrics
from cbir_lightning.rerank import reranked_similarity
from cbir_lightning.rerank.rerank import check_reranker
from data_modules.landmarks.gnd import load_gnd

LABEL_KEYS = ("mAP", "mAP@R", "recall@1", "recall@5", "recall@10", "precision@10")


def load_array(path: str, what: str) -> np.ndarray:
    """A ``.npy`` or ``.pt`` array; CbirError naming the file and the flag otherwise."""
    file = Path(path)
    if not file.is_file():
        raise CbirError(f"{what} file {file} not found")
    try:
        if file.suffix == ".npy":
            array = np.load(file, allow_pickle=False)
        elif file.suffix in (".pt", ".pth"):
            loaded = torch.load(file, map_location="cpu", weights_only=True)
            array = loaded.numpy() if isinstance(loaded, torch.Tensor) else np.asarray(loaded)
        else:
            raise CbirError(f"{what} file {file}: expected a .npy or .pt array")
    except CbirError:
        raise
    except Exception as err:
        reason = " ".join(str(err).split())[:200]
        raise CbirError(f"{what} file {file} is not a readable array ({reason})") from err
    return array


def _embeddings(path: str, what: str, double: bool = False) -> torch.Tensor:
    """A 2-D array as a tensor: float32 kept (memory, speed), anything else (or ``double``) as float64."""
    array = load_array(path, what)
    if array.ndim != 2 or array.dtype.kind not in "fiu":
        raise CbirError(
            f"{what} file {path}: expected a 2-D numeric array [rows, dim], got shape {array.shape}"
        )
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    bad = int((~torch.isfinite(tensor)).sum()) if tensor.is_floating_point() else 0
    if bad:
        raise CbirError(f"{what} file {path} holds {bad} NaN or infinite values; embed the images again")
    return tensor.double() if double or tensor.dtype != torch.float32 else tensor


def _check_rows(array: torch.Tensor, rows: int, path: str, what: str, follows: str) -> None:
    if len(array) != rows:
        hint = "; it looks transposed (save its .T)" if array.shape[1] == rows else ""
        raise CbirError(f"{what} {path} has {len(array)} rows but {follows} has {rows}{hint}")


def evaluate_gnd(queries: str, database: str, gnd: str, rerank: str = "none") -> dict:
    truth = load_gnd(gnd)
    # float64 scores: exact products of float32 descriptors, so only true ties are ties
    query, data = (
        _embeddings(queries, "--queries", double=True),
        _embeddings(database, "--database", double=True),
    )
    _check_rows(data, len(truth.imlist), database, "--database", f"imlist of {gnd}")
    follows = "qimlist" if truth.revisited else "qidx"
    _check_rows(query, truth.num_queries, queries, "--queries", f"{follows} of {gnd}")
    if query.shape[1] != data.shape[1]:
        raise CbirError(
            f"--queries {queries} has dimension {query.shape[1]}, --database {database} {data.shape[1]}"
        )
    print(f"{truth.name}: {len(query)} queries, {len(data)} database images, dot products, rerank {rerank}")
    similarity = "dot"
    if rerank != "none":
        query, data, similarity = reranked_similarity(rerank, query, data)
    if truth.revisited:
        result = revisited_metrics(query, data, truth.gnd, similarity=similarity)
        for name, values in result.items():
            print(f"  {name:6s} " + "  ".join(f"{key} {value:.4f}" for key, value in values.items()))
        return result
    result = original_metrics(query, data, truth.gnd, similarity=similarity)
    print(f"  mAP {result['mAP']:.4f}")
    return result


def _labels(path: str, what: str, rows: int, rows_from: str) -> np.ndarray:
    labels = load_array(path, what)
    if labels.ndim != 1:
        raise CbirError(f"{what} file {path}: expected a 1-D array of labels, got shape {labels.shape}")
    if len(labels) != rows:
        raise CbirError(f"{what} {path} has {len(labels)} labels but {rows_from} has {rows} rows")
    return labels


def _report(metrics: dict, what: str) -> dict:
    if not metrics["num_queries"]:  # every metric would be NaN, which is no JSON
        raise CbirError(f"{what}: no query has a relevant item in the database; check the labels")
    print(f"{what}: {int(metrics['num_queries'])} queries with at least one relevant item")
    return {key: metrics[key] for key in LABEL_KEYS}


def evaluate_labels(
    queries: str,
    database: str,
    query_labels: str,
    database_labels: str,
    exclude_self: bool,
    similarity: str,
    rerank: str = "none",
) -> dict:
    query, data = _embeddings(queries, "--queries"), _embeddings(database, "--database")
    qlabels = _labels(query_labels, "--query-labels", len(query), f"--queries {queries}")
    dlabels = _labels(database_labels, "--database-labels", len(data), f"--database {database}")
    if query.shape[1] != data.shape[1]:
        raise CbirError(
            f"--queries {queries} has dimension {query.shape[1]}, --database {database} {data.shape[1]}"
        )
    if (qlabels.dtype.kind in "OSU") != (dlabels.dtype.kind in "OSU"):
        raise CbirError(
            f"--query-labels are {qlabels.dtype} but --database-labels {dlabels.dtype}: label both alike "
            "(numbers or strings)"
        )
    if exclude_self and (len(query) != len(data) or not np.array_equal(qlabels, dlabels)):
        raise CbirError("--exclude-self needs the queries to be the database (same rows, same labels)")
    if rerank != "none":
        if similarity != "dot":
            raise CbirError("--rerank works on dot-product scores; use --similarity dot")
        query, data, similarity = reranked_similarity(rerank, query, data)
    metrics = retrieval_metrics(
        query, data, qlabels, dlabels, similarity=similarity, ks=(1, 5, 10), exclude_self=exclude_self
    )
    return _report(metrics, f"{len(query)} queries x {len(data)} database items, {similarity} scores")


TABLE_FLAGS = ("--queries", "--database", "--gnd", "--query-labels", "--query_labels")


def as_validate(args: list[str]) -> list[str]:
    """``evaluate --config C [--ckpt K] [overrides]`` as ``validate --config C [--ckpt_path K]
    [overrides]`` (one validation path for both commands); any other ``evaluate`` call unchanged."""
    flags = [a.split("=", 1)[0] for a in args[1:]]
    if not any(f in ("--config", "--config_file") for f in flags) or any(f in TABLE_FLAGS for f in flags):
        return args
    out = ["validate"]
    for token in args[1:]:
        flag, eq, value = token.partition("=")
        if flag in ("--ckpt", "--config_file", "--config"):
            flag = "--ckpt_path" if flag == "--ckpt" else "--config"
        if flag == "--rerank":
            raise CbirError("evaluate: --rerank applies to --gnd and labels modes (dot-product embeddings)")
        out.append(f"{flag}{eq}{value}")
    return out


def datamodule_from_config(config: str):
    """The ``data`` section of a ``cbir-lightning fit`` config, on its base configs (OmegaConf
    interpolation resolved)."""
    path = Path(config)
    raw = read_config(path)  # with its base configs (`extends:`)
    try:
        resolved = OmegaConf.to_container(OmegaConf.create(raw), resolve=True)
    except Exception as err:
        reason = " ".join(str(err).split())[:200]
        raise CbirError(f"config file {path} is not a readable YAML config ({reason})") from err
    if not isinstance(resolved, dict) or "data" not in resolved:
        raise CbirError(f"config file {path} has no 'data' section (class_path + init_args of a DataModule)")
    return build_datamodule(resolved["data"], f"config file {path}")


def evaluate(
    queries: str | None = None,
    database: str | None = None,
    gnd: str | None = None,
    query_labels: str | None = None,
    database_labels: str | None = None,
    exclude_self: bool = False,
    similarity: str = "dot",
    ckpt: str | None = None,
    config_file: str | None = None,
    rerank: str = "none",
) -> dict:
    """Retrieval metrics as one JSON line: Oxford/Paris ground truth, labels, or a config/checkpoint.

    Args:
        queries: ``[nq, d]`` query embeddings (.npy or .pt).
        database: ``[n, d]`` database embeddings.
        gnd: Oxford/Paris ground truth (``gnd_roxford5k.pkl``...): rows of ``queries`` follow its
            ``qimlist`` (original format: ``imlist[qidx]``), rows of ``database`` its ``imlist``.
        query_labels: ``[nq]`` labels (also ``--query-labels``).
        database_labels: ``[n]`` labels (also ``--database-labels``).
        exclude_self: the queries are the database; an item never retrieves itself (``--exclude-self``).
        similarity: ``dot``, ``cosine`` or ``l2`` for the labels mode (``--gnd`` always uses dot).
        ckpt: checkpoint of ``cbir-lightning fit`` to validate (with ``--config``; optional there).
        config_file: a YAML config (also ``--config``): runs ``validate`` with it, taking the same
            ``--data.*``/``--model.*``/``--trainer.*`` overrides.
        rerank: ``none``, ``aqe`` (alpha query expansion), ``dba`` (database-side augmentation) or
            ``diffusion`` (Iscen et al.) re-ranking of dot-product scores, for ``--gnd`` and labels modes.
    """
    check_reranker(rerank)
    if ckpt is not None or config_file is not None:  # `as_validate` routes --config calls to `validate`
        raise CbirError("evaluate: --ckpt needs --config (the YAML of the run), and not --queries/--gnd")
    if queries is None or database is None:
        raise CbirError(
            "evaluate needs --queries and --database with --gnd or with --query-labels and "
            "--database-labels, or --ckpt with --config"
        )
    if gnd is not None:
        return evaluate_gnd(queries, database, gnd, rerank)
    if query_labels is None or database_labels is None:
        raise CbirError("evaluate: give --gnd, or both --query-labels and --database-labels")
    if similarity not in ("dot", "cosine", "l2"):
        raise CbirError(f"evaluate: --similarity must be dot, cosine or l2, got {similarity!r}")
    return evaluate_labels(queries, database, query_labels, database_labels, exclude_self, similarity, rerank)
