"""One tiny end-to-end ``fit`` of configs/omniglot_gem.yaml through the CLI (GeM net, PML loss, learned
whitening fitted after training and applied by the final validation, and inside ``best.model``), then
``whiten --kind pca`` of the checkpoint and of its model file (each a model file with the whitening in)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from helpers.cli import TINY_GEM_DATA, last_json, run_cli
from helpers.paths import REPO

from cbir_lightning.checkpoints import load_module
from cbir_lightning.cli import main
from cbir_lightning.cli.config_files import read_config
from cbir_lightning.metrics import retrieval_metrics
from cbir_lightning.model_file import ModelFile
from cbir_lightning.whitening import apply_whitening, load_whitening, whitening_path
from data_modules import OmniglotDataModule

ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _tiny_config(tmp_path, omniglot_root) -> tuple:
    config = read_config(REPO / "configs" / "omniglot_gem.yaml")
    config["data"]["init_args"].update(TINY_GEM_DATA, root=str(omniglot_root))
    config["trainer"]["max_epochs"] = 1
    config["trainer"]["callbacks"].append({"class_path": "cbir_lightning.callbacks.FitWhitening"})
    path = tmp_path / "gem_tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, config["data"]["init_args"]


def _val_embeddings(module, data_args) -> tuple[torch.Tensor, torch.Tensor]:
    args = {k: v for k, v in data_args.items() if k != "seed"}
    datamodule = OmniglotDataModule(**args)
    datamodule.setup("validate")
    with torch.no_grad():
        parts = [(module.embed(x.float()), y) for x, y, _ in datamodule.val_dataloader()]
    return torch.cat([e for e, _ in parts]), torch.cat([y for _, y in parts])


def test_omniglot_gem_fit_whitening_and_whiten_command(tmp_path, omniglot_root, capsys):
    config, data_args = _tiny_config(tmp_path, omniglot_root)
    proc = run_cli(["fit", "--config", str(config)], cwd=tmp_path, env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = last_json(proc.stdout)
    ckpt = result["checkpoint"]
    assert whitening_path(ckpt).is_file()
    lw = load_whitening(whitening_path(ckpt))
    assert lw["kind"] == "lw" and lw["projection"].shape == (512, 512)
    written = ModelFile.load(Path(ckpt).parent / "best.model")  # written again once the Lw file was
    assert written.whitening is not None and torch.equal(written.whitening["projection"], lw["projection"])
    assert written.similarity == "dot" and written.dim == 512

    # the final validation applied the Lw file: recompute its mAP here with and without it
    module = load_module(ckpt)
    assert type(module).__name__ == "GeMSiameseModule" and module.post_whitening is None
    torch.set_num_threads(1)
    raw, labels = _val_embeddings(module, data_args)
    whitened = apply_whitening(raw, lw)
    metric = lambda e: retrieval_metrics(e, e, labels, labels, exclude_self=True)["mAP"]  # noqa: E731
    assert abs(result["mAP"] - metric(whitened)) < 1e-4
    assert abs(metric(raw) - metric(whitened)) > 1e-4
    assert load_module(ckpt, whitening=True).post_whitening is not None

    main(["whiten", "--ckpt", ckpt, "--config", str(config), "--kind", "pca", "--dim", "16"])
    out = last_json(capsys.readouterr().out)
    assert out["kind"] == "pca" and out["dim"] == 16 and out["input_dim"] == 512
    pca = load_whitening(whitening_path(ckpt))
    assert pca["projection"].shape == (16, 512)
    assert out["model_file"] == str(Path(ckpt).with_suffix(".model"))
    assert torch.equal(ModelFile.load(out["model_file"]).whitening["projection"], pca["projection"])
    # PCA whitening of the training descriptors: identity covariance (before the L2 normalisation)
    datamodule = OmniglotDataModule(**{k: v for k, v in data_args.items() if k != "seed"})
    train, _ = datamodule.whitening_data()
    assert out["images"] == len(train)
    with torch.no_grad():
        x = torch.cat(
            [module.embed(b[0].float()) for b in torch.utils.data.DataLoader(train, batch_size=256)]
        )
    y = (x.double() - pca["mean"].double()) @ pca["projection"].double().T
    assert torch.allclose(y.T @ y / len(y), torch.eye(16, dtype=torch.float64), atol=1e-3)

    with pytest.raises(SystemExit):
        main(["whiten", "--ckpt", ckpt, "--config", str(config), "--kind", "zca"])
    assert "unknown whitening kind 'zca'; choose lw or pca" in capsys.readouterr().err

    # a model file whitened anew: the same PCA (the same module, the same images), in a new model file
    best = Path(ckpt).parent / "best.model"
    main(["whiten", "--model", str(best), "--config", str(config), "--kind", "pca", "--dim", "16"])
    out = last_json(capsys.readouterr().out)
    assert out["model_file"] == str(best.with_name("best.pca.model")) and out["dim"] == 16
    made = ModelFile.load(out["model_file"])
    assert torch.allclose(made.whitening["projection"], pca["projection"], atol=1e-6)
    assert made.dim == 16 and made.similarity == "dot" and made.whitening_sha256
    assert made.identity == written.identity  # the same module: an index of it is checked by whitening
    assert torch.equal(ModelFile.load(best).whitening["projection"], lw["projection"])  # left as it was
    with pytest.raises(SystemExit):
        main(["whiten", "--model", ckpt, "--config", str(config)])
    assert "is not a model file" in capsys.readouterr().err
