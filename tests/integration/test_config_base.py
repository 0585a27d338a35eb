"""Experiment configs on a base config (``extends:``, cbir_lightning/cli/config_files.py): every shipped
config gives LightningCLI the same effective config as its flat version before the bases
(tests/flat_configs.yaml); the merge rule; interpolation across the files after command-line overrides;
the run folder's config.yaml is the whole config; a bad ``extends`` is one line."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest
import yaml
from helpers.paths import REPO
from jsonargparse import get_loader

from cbir_lightning.cli import main
from cbir_lightning.cli.config_files import merge, read_config
from cbir_lightning.cli.evaluate import datamodule_from_config
from cbir_lightning.cli.lightning_cli import run_lightning_cli
from cbir_lightning.errors import CbirError

CONFIGS = REPO / "configs"
FLAT = get_loader("yaml")(Path(__file__).with_name("flat_configs.yaml").read_text())


def effective_config(path, *overrides: str) -> dict:
    """What ``cbir-lightning fit --config PATH [overrides] --print_config`` prints, parsed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        run_lightning_cli(["fit", "--config", str(path), *overrides, "--print_config"])
    assert exit_info.value.code in (0, None), out.getvalue()[-2000:]
    return yaml.safe_load(out.getvalue())


def write(path, text: str):
    path.write_text(text)
    return path


def test_every_shipped_config_is_on_a_base():
    shipped = sorted(p.stem for p in CONFIGS.glob("*.yaml") if not p.stem.startswith("base"))
    assert set(FLAT) <= set(shipped)  # a config added later has no flat version to compare with
    for name in shipped:  # directly, or through the configs it extends (omniglot_best -> omniglot_koch)
        chain = [name]
        while not chain[-1].startswith("base"):
            text = (CONFIGS / f"{chain[-1]}.yaml").read_text()
            found = re.search(r"^extends: ([\w.-]+)\.yaml$", text, re.M)
            assert found and "WandbLogger" not in text, chain
            assert found.group(1) not in chain, f"extends cycle: {chain}"
            chain.append(found.group(1))


@pytest.mark.parametrize("name", sorted(FLAT))
def test_config_on_its_base_gives_the_flat_configs_effective_config(name, tmp_path):
    """The flat version: seed_everything and trainer as written before the bases, data and model as now
    (those sections are the experiment's own, the bases hold none)."""
    merged = read_config(CONFIGS / f"{name}.yaml")
    flat = {**FLAT[name], "data": merged["data"], "model": merged["model"]}
    flat_path = write(tmp_path / f"{name}.yaml", yaml.safe_dump(flat, sort_keys=False))
    assert effective_config(CONFIGS / f"{name}.yaml") == effective_config(flat_path)


def test_bases_hold_no_data_and_only_the_recipe_base_a_model():
    for base in CONFIGS.glob("base*.yaml"):
        assert "data" not in read_config(base), base
        assert "model" not in read_config(base) or base.name == "base_finetune.yaml", base


def test_every_config_that_keeps_a_best_checkpoint_writes_the_model_file():
    """base_fit.yaml's named callbacks, or a list that replaces them (sfm120k_gem_resnet101.yaml): a
    config with a monitored ModelCheckpoint also writes checkpoints/best.model (ModelFileWriter)."""
    checked = []
    for path in sorted(CONFIGS.glob("*.yaml")):
        callbacks = read_config(path).get("trainer", {}).get("callbacks") or {}
        listed = callbacks.values() if isinstance(callbacks, dict) else callbacks
        listed = [c for c in listed if isinstance(c, dict)]
        best = [c for c in listed if str(c.get("class_path")).endswith("ModelCheckpoint")
                and (c.get("init_args") or {}).get("monitor")]  # fmt: skip
        if best:
            names = [c.get("class_path") for c in listed]
            assert "cbir_lightning.callbacks.ModelFileWriter" in names, path.name
            checked.append(path.stem)
    assert {"base_fit", "sfm120k_gem_resnet101", "omniglot_koch"} <= set(checked)


def test_merge_rule_and_named_callbacks(tmp_path):
    write(
        tmp_path / "root.yaml",
        "a: {x: 1, y: [1, 2], z: {k: 1}}\nb: 1\ntrainer:\n  default_root_dir: runs/root\n  callbacks:\n"
        "    metrics: {class_path: M, init_args: {ks: [1, 5]}}\n"
        "    best: {class_path: C, init_args: {dirpath: '${trainer.default_root_dir}/ckpt', monitor: m}}\n"
        "    last: {class_path: C, init_args: {filename: last}}\n",
    )
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / "mid.yaml", "extends: ../root.yaml\nb: 2\n")
    write(
        tmp_path / "sub" / "exp.yaml",
        "extends: mid.yaml\na: {y: [3], z: null}\nc: '${b}'\ntrainer:\n  callbacks:\n"
        "    best: {init_args: {monitor: val/other}}\n    last: null\n    extra: {class_path: E}\n",
    )
    config = read_config(tmp_path / "sub" / "exp.yaml")
    assert config["a"] == {"x": 1, "y": [3], "z": None}  # mappings merge, lists and null replace
    assert config["b"] == 2 and config["c"] == "${b}"  # a chain of bases; interpolation left as written
    assert "extends" not in config
    best = {"dirpath": "${trainer.default_root_dir}/ckpt", "monitor": "val/other"}
    assert config["trainer"]["callbacks"] == [
        {"class_path": "M", "init_args": {"ks": [1, 5]}},
        {"class_path": "C", "init_args": best},
        {"class_path": "E"},
    ]
    write(tmp_path / "listed.yaml", "extends: root.yaml\ntrainer:\n  callbacks: [{class_path: L}]\n")
    assert read_config(tmp_path / "listed.yaml")["trainer"]["callbacks"] == [{"class_path": "L"}]
    assert merge({"k": {"a": 1}}, {"k": [1]}) == {"k": [1]}


def test_command_line_override_reaches_interpolations_in_the_base():
    config = effective_config(CONFIGS / "omniglot_koch.yaml", "--trainer.default_root_dir", "elsewhere")
    trainer = config["trainer"]
    assert trainer["logger"]["init_args"]["save_dir"] == "elsewhere"
    assert [c["init_args"]["dirpath"] for c in trainer["callbacks"][1:3]] == ["elsewhere/checkpoints"] * 2
    assert trainer["callbacks"][1]["init_args"]["monitor"] == "val/oneshot_20way"


def test_named_callbacks_are_overridden_and_dropped_from_the_command_line(capsys):
    """``--trainer.callbacks.NAME.KEY VALUE`` changes the named callback of the config (and its bases),
    ``NAME null`` drops it, a name the config does not have is one line naming the ones it has."""

    def callbacks(*overrides):
        listed = effective_config(CONFIGS / "photos_finetune.yaml", *overrides)["trainer"]["callbacks"]
        return {c["class_path"].rsplit(".", 1)[-1]: c.get("init_args") or {} for c in listed}

    plain = callbacks()
    assert plain["FeatureCache"]["views"] == 2 and plain["Unfreeze"]["epoch"] == 10
    changed = callbacks(
        "--trainer.callbacks.feature_cache.init_args.views",
        "4",
        "--trainer.callbacks.unfreeze.init_args.epoch=3",
    )
    assert changed["FeatureCache"]["views"] == 4 and changed["Unfreeze"]["epoch"] == 3
    assert "Unfreeze" not in callbacks("--trainer.callbacks.unfreeze", "null")
    with pytest.raises(SystemExit):
        main(
            ["fit", "--config", str(CONFIGS / "photos_finetune.yaml"), "--trainer.callbacks.cache.views", "4"]
        )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no callback 'cache'" in err and "feature_cache, unfreeze" in err


def test_whiten_reads_the_data_section_on_its_base():
    """configs/omniglot_gem.yaml's ``seed: ${seed_everything}`` is resolved from configs/base.yaml."""
    datamodule = datamodule_from_config(str(CONFIGS / "omniglot_gem.yaml"))
    assert type(datamodule).__name__ == "OmniglotDataModule" and datamodule.hparams["seed"] == 0


def test_run_folder_config_is_the_whole_config(tiny_run):
    saved = yaml.safe_load((tiny_run["work"] / "runs" / "omniglot_koch" / "config.yaml").read_text())
    assert "extends" not in saved and saved["seed_everything"] == 0
    trainer = saved["trainer"]
    assert trainer["logger"]["init_args"]["project"] == "cbir_lightning"
    assert trainer["logger"]["init_args"]["save_dir"] == "runs/omniglot_koch"
    filenames = [c["init_args"].get("filename") for c in trainer["callbacks"]]
    assert filenames == [None, "best-{epoch:02d}", "last", "metrics.jsonl", "best.model"]


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("extends: nothere.yaml\n", ["bad.yaml", "nothere.yaml", "does not exist", "relative to"]),
        ("extends: [base.yaml]\n", ["bad.yaml", "must name one base config file", "extends: base_fit.yaml"]),
        ("extends: 3\n", ["bad.yaml", "must name one base config file"]),
        ("extends: ''\n", ["bad.yaml", "must name one base config file"]),
        ("extends: bad.yaml\n", ["bad.yaml", "loops", "remove one"]),
        ("extends: empty.yaml\n", ["empty.yaml", "the base of", "not a YAML mapping"]),
        ("extends: broken.yaml\n", ["broken.yaml", "not readable YAML"]),
    ],
)
def test_bad_extends_is_one_line(tmp_path, capsys, text, needles):
    write(tmp_path / "empty.yaml", "")
    write(tmp_path / "broken.yaml", "a: [1\n")
    bad = write(tmp_path / "bad.yaml", text + "trainer:\n  max_epochs: 1\n")
    with pytest.raises(CbirError) as err:
        read_config(bad)
    for needle in needles:
        assert needle in str(err.value), str(err.value)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(bad)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 1 and lines[-1] == f"cbir-lightning: error: {err.value}"
