"""The command line, in process (``ppvae.cli.main``) and once as ``python -m ppvae``."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from ppvae.cli import main

REPO = Path(__file__).resolve().parents[1]
VAE_SPEC = str(REPO / "models" / "vae.toml")
TINY = ["--set", "train.epochs=2", "--set", "data.limit=200", "--set", "model.hidden=[32]"]
TINIER = ["--set", "train.epochs=1", "--set", "data.limit=64", "--set", "model.hidden=[8]"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_cli(argv):
    """Exit status, stdout and stderr of ``ppvae argv`` run in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def assert_user_error(code, out, err, *fragments):
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert out == ""
    return lines[0]


def snapshot(folder):
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def assert_png(path):
    data = Path(path).read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert len(data) > 1000, path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run trained by ``ppvae train models/vae.toml`` with a tiny budget."""
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    result = run_cli(["train", VAE_SPEC, *TINY, "--out", run_dir, "--no-progress"])
    return run_dir, result


# --------------------------------------------------------------------------------------
# train


def test_train_writes_the_run_folder(trained):
    run_dir, (code, out, err) = trained
    assert code == 0, err
    assert f"run folder: {run_dir}" in out
    assert "epochs: 2" in out and "valid ELBO" in out
    spec = tomllib.loads((run_dir / "spec.toml").read_text())
    assert spec["train"]["epochs"] == 2
    assert spec["data"]["limit"] == 200
    assert spec["model"]["hidden"] == [32]
    assert spec["model"]["latent_dim"] == 8  # from models/vae.toml
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} == {"best.pt", "last.pt"}
    for name in ("curves.png", "decoder-means.png", "reconstructions.png"):
        assert_png(run_dir / "figures" / name)


def test_an_existing_out_folder_is_refused_and_unchanged(trained):
    run_dir, _ = trained
    before = snapshot(run_dir)
    result = run_cli(["train", VAE_SPEC, *TINIER, "--out", run_dir, "--no-progress"])
    assert_user_error(*result, str(run_dir), "--force")
    assert snapshot(run_dir) == before


def test_force_replaces_only_a_ppvae_run_folder(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    before = snapshot(mine)
    result = run_cli(["train", VAE_SPEC, *TINIER, "--out", mine, "--force", "--no-progress"])
    assert_user_error(*result, "not a ppvae run folder")
    assert snapshot(mine) == before

    run_dir = tmp_path / "run"
    assert run_cli(["train", VAE_SPEC, *TINIER, "--out", run_dir, "--no-progress"])[0] == 0
    (run_dir / "stale.txt").write_text("old")
    code, _out, err = run_cli(
        ["train", VAE_SPEC, *TINIER, "--out", run_dir, "--force", "--no-progress"]
    )
    assert code == 0, err
    assert not (run_dir / "stale.txt").exists()
    assert (run_dir / "checkpoints" / "last.pt").is_file()


def test_default_run_folders_are_numbered(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for expected in ("runs/vae", "runs/vae-2"):
        code, out, err = run_cli(["train", VAE_SPEC, *TINIER, "--no-progress", "--seed", "3"])
        assert code == 0, err
        assert f"run folder: {expected}" in out
        spec = tomllib.loads((tmp_path / expected / "spec.toml").read_text())
        assert spec["train"]["seed"] == 3
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["vae", "vae-2"]


# --------------------------------------------------------------------------------------
# evaluate and sample


def test_evaluate_prints_a_json_summary(trained):
    run_dir, _ = trained
    code, out, err = run_cli(
        ["evaluate", run_dir, "--json", "--num-samples", "20", "--no-progress"]
    )
    assert code == 0, err
    summary = json.loads(out)
    for key in (
        "split",
        "n",
        "num_samples",
        "elbo",
        "log_px",
        "log_px_sem",
        "ess_median",
        "khat_max",
        "khat_frac_bad",
    ):
        assert key in summary, key
    assert summary["split"] == "test" and summary["num_samples"] == 20
    assert summary["n"] == 359  # the digits test split
    assert summary["log_px"] >= summary["elbo"]  # log-mean-exp >= mean of the same log weights
    assert summary["log_px"] < 0 and summary["log_px_sem"] > 0
    assert 1.0 <= summary["ess_median"] <= 20.0
    if summary["khat_max"] is not None:
        assert 0.0 <= summary["khat_frac_bad"] <= 1.0
    assert (run_dir / "evaluation" / "test-K20.json").is_file()
    code, out, err = run_cli(
        ["evaluate", run_dir, "--json", "-k", "2", "--split", "valid", "--no-progress"]
    )
    assert code == 0, err
    assert json.loads(out)["n"] == 144 and json.loads(out)["split"] == "valid"


@pytest.mark.parametrize("suffix", [".npy", ".png", ".pt"])
def test_sample_writes_the_requested_file(trained, tmp_path, suffix):
    run_dir, _ = trained
    out_file = tmp_path / f"x{suffix}"
    code, out, err = run_cli(["sample", run_dir, "-n", "16", "--out", out_file])
    assert code == 0, err
    assert f"16 samples written to {out_file}" in out
    if suffix == ".npy":
        samples = np.load(out_file)
        assert samples.shape == (16, 64)
        assert ((samples >= 0) & (samples <= 1)).all()
    elif suffix == ".pt":
        samples = torch.load(out_file, weights_only=True)
        assert samples.shape == (16, 64)
    else:
        assert_png(out_file)


def test_sample_is_seeded(trained, tmp_path):
    run_dir, _ = trained
    a, b, c = (tmp_path / f"{name}.npy" for name in "abc")
    for path, seed in ((a, 1), (b, 1), (c, 2)):
        assert run_cli(["sample", run_dir, "-n", "4", "--out", path, "--seed", seed])[0] == 0
    assert np.array_equal(np.load(a), np.load(b))
    assert not np.array_equal(np.load(a), np.load(c))


def test_sample_default_output(trained):
    run_dir, _ = trained
    code, _out, err = run_cli(["sample", run_dir, "-n", "5"])
    assert code == 0, err
    assert_png(run_dir / "figures" / "samples-5.png")


# --------------------------------------------------------------------------------------
# bad inputs: exit 2 and one error line


def test_missing_run_folder(tmp_path):
    for command in ("evaluate", "sample"):
        assert_user_error(*run_cli([command, tmp_path / "nope"]), "does not exist")


def test_a_folder_without_spec_is_not_a_run(tmp_path):
    assert_user_error(*run_cli(["sample", tmp_path]), "not a ppvae run folder")


def test_missing_spec_file(tmp_path):
    assert_user_error(
        *run_cli(["train", tmp_path / "nope.toml", "--out", tmp_path / "r"]),
        "nope.toml",
        "does not exist",
    )
    assert not (tmp_path / "r").exists()


def test_bad_toml(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nlatent_dim = ")
    assert_user_error(
        *run_cli(["train", bad, "--out", tmp_path / "r"]), "bad.toml", "not valid TOML"
    )
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--set", "trian.epochs=3"], ["unknown section 'trian'", "allowed: data"]),
        (["--set", "train.epoch=3"], ["unknown key 'epoch'", "epochs"]),
        (["--set", "prior.kind=nope"], ["unknown prior kind 'nope'", "standard_normal"]),
        (["--set", "train.epochs"], ["section.key=value"]),
        (["--set", "train.epochs=x"], ["train.epochs must be an integer"]),
        (["--set", "train.epochs=1.5"], ["train.epochs must be an integer"]),
        (["--set", "train.epochs=0"], ["train.epochs must be at least 1"]),
        (["--device", "gpu"], ["train.device must be auto, cpu, cuda or cuda:N"]),
    ],
)
def test_bad_overrides(tmp_path, args, fragments):
    assert_user_error(*run_cli(["train", VAE_SPEC, *args, "--out", tmp_path / "r"]), *fragments)
    assert not (tmp_path / "r").exists()


def test_unknown_section_key_and_kind_in_a_file(tmp_path):
    for text, fragment in (
        ("[trian]\nepochs = 1\n", "unknown section"),
        ("[train]\nepoch = 1\n", "unknown key 'epoch'"),
        ('[guide]\nkind = "nope"\n', "unknown guide kind 'nope'"),
    ):
        path = tmp_path / "s.toml"
        path.write_text(text)
        assert_user_error(*run_cli(["train", path, "--out", tmp_path / "r"]), fragment)


def test_unknown_command_is_an_argparse_error():
    code, out, err = run_cli(["frobnicate"])
    assert code == 2 and out == ""
    assert sum("error:" in line for line in err.splitlines()) == 1
    assert "invalid choice" in err


def test_no_command_is_an_argparse_error():
    code, _out, err = run_cli([])
    assert code == 2 and "error:" in err


def test_sample_refuses_zero_samples_and_unknown_suffixes(trained, tmp_path):
    run_dir, _ = trained
    assert_user_error(*run_cli(["sample", run_dir, "-n", "0"]), "-n must be at least 1")
    assert_user_error(*run_cli(["sample", run_dir, "-n", "-3"]), "-n must be at least 1")
    assert_user_error(
        *run_cli(["sample", run_dir, "--out", tmp_path / "x.txt"]), ".png, .npy or .pt"
    )
    assert not (tmp_path / "x.txt").exists()


class _Reached(Exception):
    pass


@pytest.mark.parametrize("option", ["--num-samples", "--batch-size"])
def test_evaluate_refuses_zero_samples_or_batch_size(trained, monkeypatch, option):
    import ppvae.evaluate

    def reached(*args, **kwargs):
        raise _Reached

    monkeypatch.setattr(ppvae.evaluate, "log_marginal_likelihood", reached)
    run_dir, _ = trained
    result = run_cli(["evaluate", run_dir, option, "0", "--no-progress"])
    assert_user_error(*result, "at least 1")


@pytest.mark.slow
def test_python_dash_m_ppvae_reports_errors_with_exit_status_2(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-m", "ppvae", "sample", str(tmp_path / "nope"), "-n", "4"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert (
        len(lines) == 1
        and lines[0].startswith("error: run folder")
        and "does not exist" in lines[0]
    )
