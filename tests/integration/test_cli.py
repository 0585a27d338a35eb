"""The command line end to end on real Omniglot: fit -> JSON + checkpoint + offline W&B run, validate,
one-shot on Lake's format, and one-line errors for bad input."""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers.cli import TINY_ARGS, last_json, make_runs, run_cli
from helpers.paths import REPO, SHARED_DATA

from cbir_lightning.ensemble_checkpoint import pack_ensemble
from cbir_lightning.errors import CbirError
from cbir_lightning.model_file import ModelFile
from cbir_lightning.wandb_offline import read_offline_run
from data_modules.omniglot.oneshot_runs import load_oneshot_runs, write_oneshot_runs

CONFIG = str(REPO / "configs" / "omniglot_koch.yaml")


def test_fit_reports_best_checkpoint_and_metrics(tiny_run):
    result = tiny_run["result"]
    assert tiny_run["ckpt"].is_file() and "best" in tiny_run["ckpt"].name
    for key in ("oneshot_20way", "mAP", "recall@1", "mAP@R", "precision@10"):
        assert 0.0 <= result[key] <= 1.0, key
    assert result["num_queries"] == 42 * 20  # every image of the held-out alphabet (Sanskrit) is a query
    assert "Traceback" not in tiny_run["stderr"]


def test_offline_wandb_run_has_metrics_config_and_grids(tiny_run):
    runs = list((tiny_run["work"] / "runs" / "omniglot_koch" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    logged = read_offline_run(runs[0])
    assert math.isclose(logged["summary"]["val/mAP"], tiny_run["result"]["mAP"], abs_tol=1e-6)
    assert math.isclose(
        logged["summary"]["val/oneshot_20way"], tiny_run["result"]["oneshot_20way"], abs_tol=1e-6
    )
    assert "config" in logged["config"]  # the whole CLI config is logged
    media = {p.name.split("_")[0] for p in (runs[0] / "files" / "media" / "images" / "val").glob("*.png")}
    assert media == {"retrievals", "oneshot"}
    # the projector table: fit's last epoch, and the validation of the best checkpoint
    tables = [r for r in logged["history"] if "val/embeddings/path" in r]
    assert tables and all(t["val/embeddings/nrows"] == 200 for t in tables)


def test_validate_checkpoint_reproduces_fit_numbers(tiny_run, omniglot_root):
    proc = run_cli(
        [
            "validate",
            "--config",
            CONFIG,
            "--data.init_args.root",
            str(omniglot_root),
            *TINY_ARGS,
            "--ckpt_path",
            str(tiny_run["ckpt"]),
        ],
        cwd=tiny_run["work"],
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = last_json(proc.stdout)
    for key in ("mAP", "oneshot_20way", "recall@1"):
        assert math.isclose(result[key], tiny_run["result"][key], abs_tol=1e-6), key


def test_oneshot_on_lake_format(tiny_run, omniglot_root, tmp_path):
    runs = make_runs(omniglot_root, tmp_path / "all_runs", "[Japanese_(katakana), Sanskrit]", 6, tmp_path)
    assert sorted(p.name for p in runs.iterdir()) == [f"run{i:02d}" for i in range(1, 7)]
    proc = run_cli(["oneshot", "--ckpt", str(tiny_run["ckpt"]), "--runs", str(runs)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = last_json(proc.stdout)
    assert len(result["per_run"]) == 6
    assert math.isclose(result["accuracy"], sum(result["per_run"].values()) / 6, abs_tol=1e-6)
    assert all(v * 20 == round(v * 20) for v in result["per_run"].values())
    # the run's model file (best.model, beside the best checkpoint) scores the same
    model_file = tiny_run["ckpt"].parent / "best.model"
    proc = run_cli(["oneshot", "--ckpt", str(model_file), "--runs", str(runs)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert last_json(proc.stdout)["per_run"] == result["per_run"]


def test_oneshot_scores_an_ensemble_and_test_time_zooms(tiny_run, omniglot_root, tmp_path):
    """The ensemble's decision is argmax of the mean of the members' scores and test-time zooms average
    the embeddings: both recomputed here by hand from the checkpoints (``checkpoints/last.ckpt`` is a
    second member, trained one epoch more or less than the best one)."""
    from cbir_lightning.checkpoints import load_module
    from cbir_lightning.models.test_time_scales import zoom
    from data_modules.omniglot.oneshot_runs import load_oneshot_runs
    from data_modules.transforms.images import resize_uint8

    runs = make_runs(omniglot_root, tmp_path / "all_runs", "[Sanskrit]", 4, tmp_path)
    first, second = tiny_run["ckpt"], tiny_run["ckpt"].parent / "last.ckpt"
    scales = [1.0, 0.8, 1.25]
    modules = [load_module(first), load_module(second)]

    def embed(module, images, zooms):
        x = resize_uint8(images, module.input_size).float() / 255
        return torch.stack([module.net.embed(zoom(x, s)) for s in zooms]).mean(0)

    def expected(zooms) -> float:
        correct = total = 0
        with torch.no_grad():
            for run in load_oneshot_runs(runs):
                pairs = [
                    (embed(m, run.test_images, zooms), embed(m, run.training_images, zooms)) for m in modules
                ]
                scores = [m.net.similarity(*pair) for m, pair in zip(modules, pairs, strict=True)]
                chosen = torch.stack(scores).mean(0).argmax(1)
                correct += int((chosen == torch.tensor(run.targets)).sum())
                total += len(run.targets)
        return correct / total

    both = f"[{first}, {second}]"
    plain = last_json(run_cli(["oneshot", "--ckpt", both, "--runs", str(runs)], cwd=tmp_path).stdout)
    assert plain["checkpoint"] == [str(first), str(second)]
    own = modules[0].hparams.test_time_scales or [1.0]  # without --test_time_scales: the checkpoint's own
    assert math.isclose(plain["accuracy"], expected(own), abs_tol=1e-6)
    zoomed = run_cli(
        ["oneshot", "--ckpt", both, "--runs", str(runs), "--test_time_scales", str(scales)], cwd=tmp_path
    )
    assert math.isclose(last_json(zoomed.stdout)["accuracy"], expected(scales), abs_tol=1e-6)


def test_ensemble_checkpoint_scores_as_its_members_together(tiny_run, omniglot_root, tmp_path):
    """`cbir-lightning ensemble` packs two checkpoints into one: `oneshot` on it gives the members' mean
    score (the list form, checked by hand above) run by run, `export` writes its concatenated embedder
    with one weighted L1 head (parity checked), and it neither overwrites a file nor mixes recipes."""
    runs = make_runs(omniglot_root, tmp_path / "all_runs", "[Sanskrit]", 4, tmp_path)
    first, second = tiny_run["ckpt"], tiny_run["ckpt"].parent / "last.ckpt"
    packed = tmp_path / "ensemble.ckpt"
    both = f"[{first}, {second}]"
    made = last_json(run_cli(["ensemble", "--ckpt", both, "--out", str(packed)], cwd=tmp_path).stdout)
    assert made["out"] == str(packed) and packed.is_file()
    recorded = torch.load(packed, weights_only=True)["ensemble_members"]
    assert [(packed.parent / m["path"]).resolve() for m in recorded] == [first.resolve(), second.resolve()]
    listed = last_json(run_cli(["oneshot", "--ckpt", both, "--runs", str(runs)], cwd=tmp_path).stdout)
    one = last_json(run_cli(["oneshot", "--ckpt", str(packed), "--runs", str(runs)], cwd=tmp_path).stdout)
    assert one["per_run"] == listed["per_run"]
    # a run's model file is a member like its checkpoint (best.model is the first checkpoint): the same
    # ensemble, weight for weight, so it scores as the one just checked
    mixed = tmp_path / "mixed.ckpt"
    members = f"[{first.parent / 'best.model'}, {second}]"
    made = run_cli(["ensemble", "--ckpt", members, "--out", str(mixed)], cwd=tmp_path)
    assert made.returncode == 0, made.stderr[-2000:]
    weights = [torch.load(f, weights_only=True)["state_dict"] for f in (mixed, packed)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[1])
    exported = run_cli(["export", "--ckpt", str(packed), "--out", str(tmp_path / "e.onnx")], cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr[-3000:]
    meta = last_json(exported.stdout)
    assert meta["scoring"] == "weighted_l1" and meta["max_abs_diff"] < 1e-4
    assert meta["dimension"] == 2 * 32  # the tiny run's 32-d embedding, twice

    before = packed.read_bytes()
    again = run_cli(["ensemble", "--ckpt", both, "--out", str(packed)], cwd=tmp_path)
    _one_line_error(again, str(packed), "exists", "--overwrite")
    assert packed.read_bytes() == before
    alone = run_cli(["ensemble", "--ckpt", f"[{first}]", "--out", str(tmp_path / "x.ckpt")], cwd=tmp_path)
    _one_line_error(alone, "at least two")


def test_ensemble_refuses_members_that_read_otherwise_or_hold_a_whitening(tiny_run, tmp_path):
    """A model file member that preprocesses otherwise, or holds a whitening the ensemble would drop, is
    one error naming it, and nothing is written."""
    model = tiny_run["ckpt"].parent / "best.model"
    read = ModelFile.load(model)
    bigger = {**read.preprocess, "size": read.preprocess["size"] + 8}
    dataclasses.replace(read, preprocess=bigger).save(tmp_path / "bigger.model")
    eye = {"kind": "pca", "mean": torch.zeros(read.dim), "projection": torch.eye(read.dim)}
    read.with_whitening(eye).save(tmp_path / "whitened.model")
    for member, needles in (
        ("bigger.model", ("preprocessing", "one recipe")),
        ("whitened.model", ("whitening",)),
    ):
        out = tmp_path / f"{member}.ckpt"
        with pytest.raises(CbirError) as err:
            pack_ensemble([model, tmp_path / member], out)
        assert all(n in str(err.value) for n in (member, *needles)) and "\n" not in str(err.value)
        assert not out.exists()


def _one_line_error(proc, *needles):
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert lines and lines[-1].startswith("cbir-lightning: error:"), proc.stderr[-2000:]
    for needle in needles:
        assert needle in lines[-1], (needle, lines[-1])


def test_unknown_config_key_is_one_line(tmp_path, omniglot_root):
    proc = run_cli(
        [
            "fit",
            "--config",
            CONFIG,
            "--data.init_args.root",
            str(omniglot_root),
            "--data.init_args.imag_size",
            "28",
        ],
        cwd=tmp_path,
    )
    _one_line_error(proc, "imag_size")
    assert proc.returncode == 2


def test_missing_data_root_is_one_line_and_leaves_no_run(tmp_path):
    out = tmp_path / "run"
    args = ["fit", "--config", CONFIG, "--data.init_args.root", str(tmp_path / "missing"), *TINY_ARGS]
    proc = run_cli([*args, "--trainer.default_root_dir", str(out)], cwd=tmp_path)
    _one_line_error(proc, str(tmp_path / "missing"), "images_background_small1")
    assert not out.exists() or not list(out.rglob("*"))  # no W&B run, no config.yaml, no checkpoint
    assert not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.parametrize(
    ("key", "value"), [("eval_batch_size", "-4"), ("epoch_length", "0"), ("num_workers", "-1")]
)
def test_a_count_below_its_minimum_is_one_line_before_anything_is_written(
    tmp_path, omniglot_root, key, value
):
    out = tmp_path / "run"
    args = ["fit", "--config", CONFIG, "--data.init_args.root", str(omniglot_root), *TINY_ARGS]
    args += [f"--data.init_args.{key}", value, "--trainer.default_root_dir", str(out)]
    proc = run_cli(args, tmp_path)
    _one_line_error(proc, f"data.init_args.{key} is {value}; it must be")
    assert not out.exists() or not list(out.rglob("*"))


def as_from_a_terminal() -> None:
    """The child's Ctrl-C as a terminal's foreground command has it: SIGINT neither ignored nor blocked. A
    test worker may have inherited or left either (a process that ignores SIGINT passes that on, as a shell
    does for background jobs, and the CLI then rightly keeps ignoring it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def test_ctrl_c_while_starting_is_one_line(tmp_path, omniglot_root):
    """SIGINT while ``fit`` imports and parses (before training): no traceback, exit status 130."""
    args = ["fit", "--config", CONFIG, "--data.init_args.root", str(omniglot_root), *TINY_ARGS]
    args += ["--trainer.default_root_dir", str(tmp_path / "run")]
    for delay in (0.5, 1.5):
        proc = subprocess.Popen(
            [sys.executable, "-m", "cbir_lightning", *args],
            cwd=tmp_path,
            env={**os.environ, "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=as_from_a_terminal,
        )
        time.sleep(delay)
        assert proc.poll() is None, "fit ended before the signal"
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 130 and "Traceback" not in stderr, (delay, stderr[-3000:])
        assert stderr.strip().splitlines()[-1] == "cbir-lightning: interrupted"


def test_missing_and_truncated_checkpoints_are_one_line(tiny_run, tmp_path):
    _one_line_error(
        run_cli(["oneshot", "--ckpt", str(tmp_path / "nope.ckpt"), "--runs", str(tmp_path)], cwd=tmp_path),
        "nope.ckpt",
        "not found",
    )
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(Path(tiny_run["ckpt"]).read_bytes()[:5000])
    _one_line_error(
        run_cli(["validate", "--config", CONFIG, "--ckpt_path", str(truncated)], cwd=tmp_path),
        "truncated.ckpt",
        "truncated",
    )


def test_outputs_never_replace_what_the_toolkit_did_not_write(tiny_run, omniglot_root, tmp_path):
    """`make-runs --overwrite` replaces only a folder of runs (it deleted its own input zips and any
    folder before); `convert` replaces only a model file (it overwrote the checkpoint it converted);
    `ensemble --overwrite` only an ensemble checkpoint. Each refusal is one line and leaves the files
    (the commands as a user runs them; the other cases through the functions they call)."""
    data = tmp_path / "omniglot"
    shutil.copytree(omniglot_root, data)
    before = {p.name: p.read_bytes() for p in data.iterdir() if p.is_file()}
    make = ["make-runs", "--sources", f"[{data}]", "--num_runs", "1", "--ways", "3", "--overwrite", "true"]
    refused = run_cli([*make, "--out", str(data)], cwd=tmp_path)
    _one_line_error(refused, str(data), "not a folder of one-shot runs")
    assert {p.name: p.read_bytes() for p in data.iterdir() if p.is_file()} == before
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    run = load_oneshot_runs(make_runs(data, tmp_path / "runs", "[Sanskrit]", 2, tmp_path))[0]
    for out in (mine, mine / "notes.txt"):
        with pytest.raises(CbirError, match="not a folder of one-shot runs"):
            write_oneshot_runs(out, [run], overwrite=True)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    assert (mine / "notes.txt").read_text() == "keep"
    write_oneshot_runs(tmp_path / "runs", [run], overwrite=True)  # a runs folder is replaced
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["run01"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left

    ckpt = tmp_path / "model.ckpt"
    shutil.copy(tiny_run["ckpt"], ckpt)
    kept = ckpt.read_bytes()
    converted = run_cli(["convert", "--ckpt", str(ckpt), "--out", str(ckpt)], cwd=tmp_path)
    _one_line_error(converted, str(ckpt), "not a model file")
    assert ckpt.read_bytes() == kept
    model = ModelFile.load(tiny_run["ckpt"].parent / "best.model")
    model.save(tmp_path / "m.model")
    model.save(tmp_path / "m.model")  # a model file is replaced
    with pytest.raises(CbirError, match="not an ensemble checkpoint"):
        pack_ensemble([ckpt, tmp_path / "m.model"], mine / "notes.txt", overwrite=True)
    assert (mine / "notes.txt").read_text() == "keep"


def test_a_checkpoint_of_another_family_is_one_line(tiny_run, tmp_path):
    """Validating the grey Koch checkpoint with a config of colour photos is one line naming both modes
    (a 100-line traceback from its first convolution before)."""
    breeds = sorted((SHARED_DATA / "stanford_dogs" / "Images").iterdir())[:5]
    if not breeds:
        pytest.skip("Stanford Dogs not found in the shared data")
    for breed in breeds:
        (tmp_path / "photos" / breed.name).mkdir(parents=True)
        for photo in sorted(breed.glob("*.jpg"))[:2]:
            shutil.copy(photo, tmp_path / "photos" / breed.name / photo.name)
    args = ["validate", "--config", str(REPO / "configs" / "photos_finetune.yaml"), "--data.root", "photos"]
    proc = run_cli([*args, "--ckpt_path", str(tiny_run["ckpt"]), "--trainer.logger", "false"], cwd=tmp_path)
    _one_line_error(proc, str(tiny_run["ckpt"]), "reads L images", "gives RGB ones")


def test_fit_errors_from_workers_and_from_the_metrics_are_one_line(omniglot_root, tmp_path):
    """A corrupt photo met while the feature cache fills (in a DataLoader worker, whose re-raised error
    carried the worker's traceback) and one-shot episodes over validation batches left out
    (``limit_val_batches``) are one line each (tracebacks before); resuming past ``max_epochs``:
    ``test_resume.py``."""
    for breed in sorted((SHARED_DATA / "stanford_dogs" / "Images").iterdir())[:4]:
        (tmp_path / "photos" / breed.name).mkdir(parents=True)
        for photo in sorted(breed.glob("*.jpg"))[:3]:
            shutil.copy(photo, tmp_path / "photos" / breed.name / photo.name)
    (tmp_path / "photos" / breed.name / "zz_broken.jpg").write_text("not an image")
    photos = ["fit", "--config", str(REPO / "configs" / "photos_finetune.yaml"), "--data.root", "photos"]
    small = ["--data.init_args.classes_per_batch", "3", "--data.init_args.samples_per_class", "2"]
    env = {"CBIR_FEATURE_CACHE": str(tmp_path / "cache")}
    proc = run_cli([*photos, *small, "--trainer.logger", "false"], cwd=tmp_path, env=env)
    _one_line_error(proc, "zz_broken.jpg", "corrupt or unreadable image")
    assert "Original Traceback" not in proc.stderr

    koch = ["fit", "--config", CONFIG, "--data.init_args.root", str(omniglot_root), *TINY_ARGS]
    tiny = [*koch, "--data.init_args.epoch_length", "2", "--trainer.logger", "false"]
    limited = run_cli([*tiny, "--trainer.limit_val_batches", "1"], cwd=tmp_path)  # episodes over images
    _one_line_error(limited, "one-shot episodes need all", "--trainer.limit_val_batches")  # never embedded


@pytest.mark.parametrize("command", [["--help"], ["oneshot", "--help"]])
def test_help(command, tmp_path):
    proc = run_cli(command, cwd=tmp_path)
    assert proc.returncode == 0 and "usage" in proc.stdout.lower()


ALL_COMMANDS = (
    "fit validate test predict index search recommend serve export evaluate oneshot ensemble whiten "
    "make-runs download"
).split()


@pytest.mark.parametrize(("args", "returncode"), [(["--help"], 0), (["-h"], 0), ([], 2)])
def test_help_lists_every_command_with_one_line(args, returncode, tmp_path):
    """`cbir-lightning --help` (or no command) names Lightning's four and every toolkit command."""
    proc = run_cli(args, cwd=tmp_path, timeout=60)
    assert proc.returncode == returncode, proc.stderr[-2000:]
    rows = {line.split()[0]: line for line in proc.stdout.splitlines() if line.startswith("  ")}
    for name in ALL_COMMANDS:
        assert name in rows and len(rows[name].split()) > 3, (name, proc.stdout)


def test_a_mistyped_command_names_the_close_one_and_every_command(tmp_path):
    proc = run_cli(["indx", "--images", "photos"], cwd=tmp_path, timeout=60)
    assert proc.returncode == 2
    _one_line_error(proc, "unknown command 'indx'", "did you mean 'index'?", *ALL_COMMANDS)
    assert "choose from" not in proc.stderr


def test_lightning_subcommand_help_shows_its_line_and_options(tmp_path):
    from cbir_lightning.cli import LIGHTNING_COMMANDS

    proc = run_cli(["fit", "--help"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--trainer.max_epochs" in proc.stdout and "--ckpt_path" in proc.stdout
    assert LIGHTNING_COMMANDS["fit"] in " ".join(proc.stdout.split())


def test_config_interpolation_resolves(tmp_path):
    """${...} in the config follows command-line overrides of the keys it points to."""
    proc = run_cli(
        [
            "fit",
            "--config",
            CONFIG,
            "--data.init_args.image_size",
            "40",
            "--trainer.max_epochs",
            "3",
            "--print_config",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "input_size: 40" in proc.stdout and "T_max: 3" in proc.stdout


def test_unknown_tool_command_flag_is_one_line(tmp_path):
    proc = run_cli(["oneshot", "--ckpt", "x.ckpt", "--runs", "r", "--bogus", "1"], cwd=tmp_path)
    _one_line_error(proc, "--bogus")
    assert proc.returncode == 2


def test_fit_with_a_loss_over_all_training_classes(tmp_path, omniglot_root):
    """The demo config plus cosine class proxies, from the command line: the proxies cover every
    training class (200 characters x 4 rotations x 2 reflections), are saved, and the checkpoint loads
    for `oneshot` without the training data."""
    loss = (
        '{"class_path": "cbir_lightning.losses.ProxySoftmaxLoss", "init_args": {"scale": 16, '
        '"distance": {"class_path": "pytorch_metric_learning.distances.CosineSimilarity"}}}'
    )
    args = ["--data.init_args.root", str(omniglot_root), *TINY_ARGS, "--model.init_args.class_loss", loss]
    proc = run_cli(["fit", "--config", CONFIG, *args], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = Path(last_json(proc.stdout)["checkpoint"])
    ckpt = ckpt if ckpt.is_absolute() else tmp_path / ckpt
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert state["class_loss.proxies"].shape == (200 * 8, 32)
    runs = make_runs(omniglot_root, tmp_path / "all_runs", "[Sanskrit]", 2, tmp_path)
    scored = run_cli(["oneshot", "--ckpt", str(ckpt), "--runs", str(runs)], cwd=tmp_path)
    assert scored.returncode == 0, scored.stderr[-2000:]
    assert 0.0 <= last_json(scored.stdout)["accuracy"] <= 1.0
