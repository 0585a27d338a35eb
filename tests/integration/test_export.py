"""``cbir-lightning export``: ONNX embedders equal their checkpoints; ``index``/``search --model``."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.benchmarks import run_benchmark
from helpers.cli import last_json
from helpers.search import photo_folder, reference_vectors
from PIL import Image

from cbir_lightning.cli import main
from cbir_lightning.export.onnx_embedder import OnnxSearchModel
from cbir_lightning.export.preprocess import check_spec, preprocess, spec_of_datamodule
from cbir_lightning.search.manifest import EMBEDDINGS, read_manifest
from cbir_lightning.search.model import SearchModel, datamodule_from_checkpoint
from cbir_lightning.search.query import SearchIndex, search_image

pytest.importorskip("onnxruntime")


def run(args: list[str]) -> dict | list:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(args)
    return last_json(out.getvalue())


def fail(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code in (1, 2)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def save_checkpoint(module, datamodule_args: dict, class_path: str, path: Path, template: Path) -> Path:
    """A checkpoint as ``cbir-lightning fit`` writes it (class paths of module and DataModule)."""
    lightning_version = torch.load(template, map_location="cpu", weights_only=True)[
        "pytorch-lightning_version"
    ]
    hparams = {k: list(v) if isinstance(v, tuple) else v for k, v in dict(module.hparams).items()}
    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": {**hparams, "_class_path": class_path},
            "datamodule_hyper_parameters": datamodule_args,
            "pytorch-lightning_version": lightning_version,
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def gem_ckpt(tiny_run, tmp_path_factory) -> Path:
    """A resnet18 GeM model (no pretrained weights, random BatchNorm statistics, two scales, whitening layer)
    with a PCA whitening file beside it, evaluated on photos with the aspect kept (longer side 48 px)."""
    import warnings

    from cbir_lightning.models.gem_module import GeMSiameseModule
    from cbir_lightning.whitening import save_whitening, whitening_path

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = GeMSiameseModule(backbone="resnet18", weights=None, eval_scales=[1.0, 0.7071], whitening=128)
    for layer in module.modules():  # BatchNorm statistics other than the identity
        if isinstance(layer, torch.nn.BatchNorm2d):
            layer.running_mean.uniform_(-0.1, 0.1)
            layer.running_var.uniform_(0.5, 1.5)
    work = tmp_path_factory.mktemp("gem")
    dm = {"_class_path": "data_modules.LandmarksTestDataModule", "root": "unused", "image_size": 48}
    path = save_checkpoint(
        module, dm, "cbir_lightning.models.gem_module.GeMSiameseModule", work / "gem.ckpt", tiny_run["ckpt"]
    )
    g = torch.Generator().manual_seed(1)
    projection = torch.randn(48, 128, generator=g)
    save_whitening(
        whitening_path(path),
        {"kind": "pca", "mean": torch.randn(128, generator=g) * 0.01, "projection": projection},
    )
    return path


@pytest.fixture(scope="module")
def dsh_ckpt(tiny_run, tmp_path_factory) -> Path:
    """A 12-bit DSH model (random weights) on CIFAR-10's preprocessing (32 px, ImageNet normalisation)."""
    from cbir_lightning.models.dsh_module import DSHModule

    torch.manual_seed(0)
    module = DSHModule(bits=12, channels=(8, 8, 16), hidden=32)
    dm = {"_class_path": "data_modules.CIFAR10DataModule", "root": "unused"}
    path = tmp_path_factory.mktemp("dsh") / "dsh.ckpt"
    return save_checkpoint(module, dm, "cbir_lightning.models.dsh_module.DSHModule", path, tiny_run["ckpt"])


@pytest.fixture(scope="module")
def dsh_pretrained_ckpt(tiny_run, tmp_path_factory) -> Path:
    """A 12-bit DSH model on EfficientNet-Lite0 + GeM (``PretrainedHashNet``, random weights), its net
    named by ``class_path`` as ``fit`` saves it, on CIFAR-10's preprocessing (32 px, ImageNet
    normalisation)."""
    import warnings

    from cbir_lightning.models import DSHModule, PretrainedHashNet

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = PretrainedHashNet(bits=12, weights=None, freeze_batchnorm=True)
    module = DSHModule(net=net)
    dm = {"_class_path": "data_modules.CIFAR10DataModule", "root": "unused"}
    path = tmp_path_factory.mktemp("dsh_pretrained") / "dsh.ckpt"
    save_checkpoint(module, dm, "cbir_lightning.models.DSHModule", path, tiny_run["ckpt"])
    contents = torch.load(path, map_location="cpu", weights_only=True)
    contents["hyper_parameters"].update(
        net={
            "class_path": "cbir_lightning.models.PretrainedHashNet",
            "init_args": {"bits": 12, "weights": None, "freeze_batchnorm": True},
        },
        _instantiator="pytorch_lightning.cli.instantiate_module",
    )
    torch.save(contents, path)
    return path


@pytest.fixture(scope="module")
def exported(tiny_run, gem_ckpt, dsh_ckpt, dsh_pretrained_ckpt, tmp_path_factory) -> dict:
    """``{"koch"|"gem"|"dsh"|"dsh_pretrained": (checkpoint, onnx file, export JSON)}``, each exported once
    by the CLI."""
    work = tmp_path_factory.mktemp("onnx")
    found = {}
    named = [("koch", tiny_run["ckpt"]), ("gem", gem_ckpt), ("dsh", dsh_ckpt)]
    for name, ckpt in [*named, ("dsh_pretrained", dsh_pretrained_ckpt)]:
        out = work / f"{name}.onnx"
        found[name] = (ckpt, out, run(["export", "--ckpt", str(ckpt), "--out", str(out)]))
    return found


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return photo_folder(tmp_path_factory.mktemp("export_photos") / "photos", count=14)


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.jpg"))


def test_preprocessing_spec_equals_each_datamodules_eval_transform(tiny_run, photos):
    from data_modules import CIFAR10DataModule, LandmarksTestDataModule, PhotoCollectionDataModule

    real = [Image.open(p) for p in image_files(photos)[:3]]
    omniglot = datamodule_from_checkpoint(tiny_run["ckpt"])
    modules = [
        omniglot,
        CIFAR10DataModule(root="unused", image_size=24),
        CIFAR10DataModule(root="unused", mean=None, std=None),
        LandmarksTestDataModule(root="unused", image_size=48),
        LandmarksTestDataModule(root="unused", image_size=40, keep_aspect=False),
        PhotoCollectionDataModule(root="unused", image_size=36),
    ]
    for dm in modules:
        spec = json.loads(json.dumps(spec_of_datamodule(dm)))  # as read back from the metadata
        assert check_spec(spec, dm.eval_transform) <= 1e-6
        assert check_spec(spec, dm.eval_transform, real) <= 1e-6
    assert spec_of_datamodule(omniglot)["invert"] and preprocess(
        real[0], spec_of_datamodule(omniglot)
    ).shape == (1, 28, 28)


def test_koch_export_equals_the_checkpoint(tiny_run, exported, photos):
    _, out, result = exported["koch"]
    assert result["onnx"] == str(out) and out.is_file()
    assert result["input_size"] == [28, 28] and result["channels"] == 1 and result["dimension"] == 32
    assert result["scoring"] == "weighted_l1" and 0 <= result["max_abs_diff"] <= 1e-4
    model = OnnxSearchModel.load(out)
    files = image_files(photos)
    ours = torch.cat([model.embed_image(Image.open(f)) for f in files])
    assert (ours - reference_vectors(tiny_run["ckpt"], files)).abs().max() <= 1e-4
    batch = torch.stack([model.transform(Image.open(f)) for f in files[:5]])
    assert torch.allclose(model.embed(batch), ours[:5], atol=1e-5)  # dynamic batch axis
    reference = SearchModel.load(tiny_run["ckpt"])
    assert torch.allclose(
        model.similarity(ours[:3], ours, "model"), reference.similarity(ours[:3], ours, "model"), atol=1e-4
    )
    import onnx

    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(props["input_size"]) == [28, 28]
    assert json.loads(props["normalization"]) == {"mean": None, "std": None, "mode": "L"}


def test_gem_export_folds_in_multiscale_and_whitening(gem_ckpt, exported, photos):
    _, out, result = exported["gem"]
    assert result["dimension"] == 48 and result["whitening"] and result["scoring"] == "dot"
    assert result["max_abs_diff"] <= 1e-4 and result["input_size"] == "aspect kept, longer side 48"
    model, reference = OnnxSearchModel.load(out), SearchModel.load(gem_ckpt)
    shapes = set()
    for f in image_files(photos)[:6]:  # landscape and portrait photos: height and width are dynamic
        image = Image.open(f)
        shapes.add(tuple(model.transform(image).shape))
        assert torch.equal(model.transform(image), reference.transform(image))
        assert (model.embed_image(image) - reference.embed_image(image)).abs().max() <= 1e-4
    assert len(shapes) > 1
    assert model.describe_whitening() == reference.describe_whitening()


@pytest.mark.parametrize("which", ["dsh", "dsh_pretrained"])
def test_dsh_export_gives_codes_before_the_sign(exported, photos, which):
    ckpt, out, result = exported[which]
    assert result["post"] == "sign" and result["scoring"] == "hamming" and result["dimension"] == 12
    assert result["max_abs_diff"] <= 1e-4 and result["input_size"] == [32, 32] and result["channels"] == 3
    model, reference = OnnxSearchModel.load(out), SearchModel.load(ckpt)
    net = "PretrainedHashNet" if which == "dsh_pretrained" else "DSHNet"
    assert type(reference.module.net).__name__ == net
    batch = torch.stack([reference.transform(Image.open(f)) for f in image_files(photos)])
    raw = torch.from_numpy(model.session.run(None, {"images": batch.numpy()})[0])
    with torch.no_grad():
        assert (raw - reference.module.codes(batch)).abs().max() <= 1e-4
        codes = model.embed(batch)
        assert torch.equal(codes, reference.module.embed(batch))
    assert torch.equal(model.similarity(codes, codes, "model"), reference.similarity(codes, codes, "model"))


def test_export_takes_a_model_file_and_rebuilds_no_datamodule(
    tiny_run, gem_ckpt, exported, photos, tmp_path, monkeypatch, capsys
):
    """``export --model X.model`` exports with the model file's preprocessing and whitening: the same graph
    and numbers as ``export --ckpt`` of its checkpoint, no DataModule rebuilt (nor for a checkpoint that
    records its preprocessing, as every ``fit`` checkpoint does)."""
    from cbir_lightning.checkpoints import Checkpoint
    from cbir_lightning.export.onnx_embedder import read_metadata
    from cbir_lightning.model_file import ModelFile

    model_file = ModelFile.from_checkpoint(gem_ckpt).save(tmp_path / "gem.model")

    def no_datamodule(self):
        raise AssertionError("export rebuilt a DataModule")

    monkeypatch.setattr(Checkpoint, "datamodule", no_datamodule)
    out = tmp_path / "gem.onnx"
    result = run(["export", "--model", str(model_file), "--out", str(out)])
    _, by_ckpt, ckpt_result = exported["gem"]
    assert result["max_abs_diff"] == ckpt_result["max_abs_diff"] <= 1e-4
    assert result["checkpoint"] == str(model_file.resolve()) and result["whitening"]
    ours, theirs = read_metadata(out), read_metadata(by_ckpt)
    for key in ("preprocess", "input_size", "max_side", "dimension", "scoring", "eval_scales", "whitening"):
        assert ours[key] == theirs[key], key
    model, reference = OnnxSearchModel.load(out), OnnxSearchModel.load(by_ckpt)
    for f in image_files(photos)[:4]:
        image = Image.open(f)
        assert torch.equal(model.embed_image(image), reference.embed_image(image))
    koch = run(["export", "--ckpt", str(tiny_run["ckpt"]), "--out", str(tmp_path / "koch.onnx")])
    assert koch["max_abs_diff"] == exported["koch"][2]["max_abs_diff"]
    wrong = ["export", "--out", str(tmp_path / "x.onnx")]
    assert "not a model file" in fail([*wrong, "--model", str(tiny_run["ckpt"])], capsys)
    assert "not found" in fail([*wrong, "--model", str(tmp_path / "missing.model")], capsys)
    assert "exactly one of" in fail(wrong, capsys)
    assert "exactly one of" in fail([*wrong, "--model", str(model_file), "--ckpt", str(gem_ckpt)], capsys)
    assert not (tmp_path / "x.onnx").exists()


def top10(index: Path, queries: list[Path], **model) -> list[list[str]]:
    opened = SearchIndex.open(index)
    loaded = opened.load_model(**model)
    return [[r["path"] for r in search_image(opened, loaded, q, 10)] for q in queries]


@pytest.mark.parametrize("which", ["koch", "gem", "dsh"])
def test_index_built_from_onnx_returns_the_checkpoints_top10(which, exported, photos, tmp_path, capsys):
    ckpt, onnx_file, _ = exported[which]
    by_ckpt = run(
        [
            "index",
            "--ckpt",
            str(ckpt),
            "--images",
            str(photos),
            "--out",
            str(tmp_path / "a"),
            "--accelerator",
            "cpu",
        ]
    )
    by_onnx = run(["index", "--model", str(onnx_file), "--images", str(photos), "--out", str(tmp_path / "b")])
    assert by_ckpt["count"] == by_onnx["count"] == 14 and by_ckpt["dimension"] == by_onnx["dimension"]
    (ma, va), (mb, vb) = read_manifest(tmp_path / "a"), read_manifest(tmp_path / "b")
    assert [i["path"] for i in ma["items"]] == [i["path"] for i in mb["items"]]
    assert np.abs(np.load(va / EMBEDDINGS) - np.load(vb / EMBEDDINGS)).max() <= 1e-4
    assert mb["model"]["onnx"] and mb["model"]["checkpoint"] == str(onnx_file.resolve())
    assert ma["scoring"] == mb["scoring"] == ("dot" if which == "gem" else "model")
    queries = image_files(photos)[::4]
    expected = top10(tmp_path / "a", queries)
    assert top10(tmp_path / "b", queries) == expected
    assert top10(tmp_path / "a", queries, onnx_model=onnx_file) == expected  # an export of the index's ckpt
    again = run(["index", "--model", str(onnx_file), "--images", str(photos), "--out", str(tmp_path / "b")])
    assert again["reused"] == 14 and again["embedded"] == 0
    results = run(
        ["search", "--index", str(tmp_path / "b"), "--query", str(queries[0]), "--model", str(onnx_file)]
    )
    assert [r["path"] for r in results] == expected[0]
    err = fail(
        ["search", "--index", str(tmp_path / "b"), "--query", str(queries[0]), "--ckpt", str(ckpt)], capsys
    )
    assert "--model" in err


def test_bad_inputs_are_one_line_errors(tiny_run, photos, tmp_path, capsys):
    missing = tmp_path / "missing.onnx"
    assert "not found" in fail(["export", "--ckpt", str(tmp_path / "no.ckpt"), "--out", str(missing)], capsys)
    assert ".onnx" in fail(
        ["export", "--ckpt", str(tiny_run["ckpt"]), "--out", str(tmp_path / "m.bin")], capsys
    )
    (tmp_path / "folder.onnx").mkdir()
    export = ["export", "--ckpt", str(tiny_run["ckpt"]), "--out"]
    assert "is a folder" in fail([*export, str(tmp_path / "folder.onnx")], capsys)
    assert "at --opset 0 failed" in fail([*export, str(tmp_path / "o.onnx"), "--opset", "0"], capsys)
    assert not (tmp_path / "o.onnx").exists() and list((tmp_path / "folder.onnx").iterdir()) == []
    args = ["index", "--images", str(photos), "--out", str(tmp_path / "idx")]
    assert str(missing) in fail([*args, "--model", str(missing)], capsys)
    text = tmp_path / "notes.onnx"
    text.write_text("not a model")
    assert "not an ONNX model" in fail([*args, "--model", str(text)], capsys)
    assert "PyTorch checkpoint, not an ONNX model" in fail([*args, "--model", str(tiny_run["ckpt"])], capsys)
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["images"], ["embeddings"])],
        "plain",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, [1, 4])],
    )
    onnx.save(helper.make_model(graph), str(tmp_path / "plain.onnx"))
    assert "not written by `cbir-lightning export`" in fail(
        [*args, "--model", str(tmp_path / "plain.onnx")], capsys
    )
    assert "exactly one of" in fail([*args, "--model", str(text), "--ckpt", str(tiny_run["ckpt"])], capsys)
    assert "exactly one of" in fail(args, capsys)
    assert "--devices" in fail([*args, "--model", str(text), "--devices", "2"], capsys)
    assert not (tmp_path / "idx").exists()


def test_damaged_exports_are_one_line(exported, photos, tmp_path, capsys):
    """An export whose metadata is not the JSON object export writes, or a graph that does not take the
    one ``images`` input, is one line naming the file (a JSON or ONNX Runtime traceback before)."""
    import onnx
    from onnx import TensorProto, helper

    good = onnx.load(str(exported["koch"][1]))
    meta = {p.key: p.value for p in good.metadata_props}
    args = ["index", "--images", str(photos), "--out", str(tmp_path / "idx"), "--model"]
    for name, value in (("bad_json", "{not json"), ("a_list", "[1, 2]")):
        damaged = onnx.load(str(exported["koch"][1]))
        next(p for p in damaged.metadata_props if p.key == "cbir_lightning").value = value
        onnx.save(damaged, str(tmp_path / f"{name}.onnx"))
        assert "damaged 'cbir_lightning' metadata" in fail([*args, str(tmp_path / f"{name}.onnx")], capsys)
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["embeddings"])],
        "other",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1, 105, 105])],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, [None, 1, 105, 105])],
    )
    other = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    other.ir_version = good.ir_version
    for key, value in meta.items():
        entry = other.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(other, str(tmp_path / "other.onnx"))
    assert "takes inputs ['x']" in fail([*args, str(tmp_path / "other.onnx")], capsys)
    assert not (tmp_path / "idx").exists()


def test_onnx_throughput_benchmark_prints_a_json_line(tiny_run):
    result = run_benchmark(
        "onnx_throughput.py", "--ckpt", tiny_run["ckpt"], *"--images 16 --batch-size 8 --repeats 1".split()
    )
    assert result["benchmark"] == "onnx_throughput" and result["max_abs_diff"] <= 1e-4
    assert result["onnx_images_per_s"] > 0 and result["torch_images_per_s"] > 0
    onnx_over_torch = result["onnx_images_per_s"] / result["torch_images_per_s"]
    assert result["ratio"] == pytest.approx(onnx_over_torch, rel=1e-2)
