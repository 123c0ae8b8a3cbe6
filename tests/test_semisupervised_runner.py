"""The semi-supervised experiment runner and the ``semisupervised`` / ``classify`` CLI,
with tiny budgets; and M2 against the labelled-only baseline on digits."""

from __future__ import annotations

import csv
import re

import numpy as np
import pytest

from ppvae.cli import main
from ppvae.semisupervised import RUN_COLUMNS, TABLE_COLUMNS, t_interval

TINY = [
    "--set",
    "train.epochs=1",
    "--set",
    "model.hidden=[16]",
    "--set",
    "model.latent_dim=2",
    "--set",
    "data.limit=300",
]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert not re.search(r"[.;:!?]\s+[A-Z]", err[0]), err[0]
    return err[0]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, repo):
    """``ppvae semisupervised`` on digits: labels 20 and 50, one seed, one epoch."""
    out = tmp_path_factory.mktemp("ss") / "exp"
    spec = str(repo / "models" / "m2_digits.toml")
    code = main(
        ["semisupervised", spec, "--labels", "20", "50", "--seeds", "1", "--out", str(out), *TINY]
    )
    assert code == 0
    return out, spec


def test_runner_writes_the_table_and_the_runs(experiment, capsys):
    out, _ = experiment
    md = (out / "table.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| labels"))
    for column in (
        "unlabelled pool",
        "M2",
        "labelled-only baseline",
        "Kingma M2",
        "Pyro tutorial",
        "Kingma M1+M2",
        "epochs",
        "wall time",
    ):
        assert column in header
    rows = [line for line in md.splitlines() if re.match(r"\| \d+ \|", line)]
    assert [r.split("|")[1].strip() for r in rows] == ["20", "50"]
    assert "| 280 |" in rows[0] and "| 250 |" in rows[1]  # unlabelled pools of 300 points
    with (out / "table.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert list(table[0]) == TABLE_COLUMNS
    assert [int(r["labels"]) for r in table] == [20, 50]
    for row in table:
        assert 0 <= float(row["m2_accuracy"]) <= 100
        assert 0 <= float(row["baseline_accuracy"]) <= 100
        assert row["seeds"] == "1" and row["m2_ci95"] == ""  # one seed: no interval
        assert row["kingma_m2"] == ""  # published MNIST figures only for MNIST
    with (out / "runs.csv").open() as handle:
        runs = list(csv.DictReader(handle))
    assert list(runs[0]) == RUN_COLUMNS and len(runs) == 2
    assert (out / "L20" / "seed0" / "m2" / "figures" / "classes.png").is_file()
    assert (out / "L50" / "seed0" / "baseline" / "checkpoints" / "best.pt").is_file()


def test_resume_reuses_finished_cells_and_refuses_a_full_folder(experiment, capsys):
    out, spec = experiment
    stamp = (out / "L20" / "seed0" / "result.json").stat().st_mtime_ns
    args = ["semisupervised", spec, "--labels", "20", "--seeds", "1", "--out", str(out), *TINY]
    capsys.readouterr()
    assert main(args) == 2
    assert "--resume" in _error_line(capsys)
    assert main([*args, "--resume"]) == 0
    assert (out / "L20" / "seed0" / "result.json").stat().st_mtime_ns == stamp


def test_classify_a_split_and_an_npz_file(experiment, tmp_path, capsys):
    out, _ = experiment
    run_dir = out / "L50" / "seed0" / "m2"
    capsys.readouterr()
    assert (
        main(["classify", str(run_dir), "--split", "test", "--out", str(tmp_path / "t.csv")]) == 0
    )
    printed = capsys.readouterr().out
    assert re.search(r"accuracy: \d+\.\d\d%", printed)
    with (tmp_path / "t.csv").open() as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["index", "label", "predicted"] + [f"p_{c}" for c in range(10)]
    assert len(rows) == 1 + 359
    assert abs(sum(float(p) for p in rows[1][3:]) - 1) < 1e-4

    path = tmp_path / "new.npz"
    np.savez(path, x=np.random.default_rng(0).integers(0, 2, (7, 8, 8)).astype(np.uint8))
    assert main(["classify", str(run_dir), "--data", str(path)]) == 0
    assert "accuracy" not in capsys.readouterr().out
    with (run_dir / "classify-new.csv").open() as handle:
        rows = list(csv.reader(handle))
    assert rows[0][:2] == ["index", "predicted"] and len(rows) == 8


def test_bad_inputs_exit_2_with_one_error_line(experiment, tmp_path, repo, capsys):
    out, spec = experiment
    run_dir = out / "L50" / "seed0" / "m2"
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((3, 5)))
    cases = [
        (
            ["semisupervised", str(repo / "models" / "vae.toml"), "--labels", "20"],
            "model.kind = 'm2'",
        ),
        (["semisupervised", spec, "--labels", "0", "--out", str(tmp_path / "a")], "positive"),
        (["semisupervised", spec, "--labels", "20", "--seeds", "0"], "--seeds"),
        (
            ["semisupervised", spec, "--labels", "5", "--out", str(tmp_path / "b"), *TINY],
            "fewer than",
        ),
        (
            ["semisupervised", spec, "--labels", "400", "--out", str(tmp_path / "c"), *TINY],
            "more labels",
        ),
        (["semisupervised", spec, "--labels", "20", "--set", "model.sum_y=maybe"], "sum_y"),
        (["classify", str(tmp_path / "nowhere")], "does not exist"),
        (["classify", str(run_dir), "--data", str(bad)], "5 features"),
        (["classify", str(run_dir), "--out", str(tmp_path / "x.txt")], ".csv"),
    ]
    for argv, words in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        assert words in _error_line(capsys), argv


def test_t_interval():
    mean, half = t_interval([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5
    assert half == pytest.approx(3.182446 * np.std([1, 2, 3, 4], ddof=1) / 2, rel=1e-5)
    assert np.isnan(t_interval([5.0])[1])


def test_specs_parse(repo):
    from ppvae.spec import load_spec

    for name in ("m2_digits", "m2_mnist"):
        spec = load_spec(repo / "models" / f"{name}.toml")
        assert spec.model.kind == "m2"


@pytest.mark.data
def test_mnist_spec_smoke(data_dir, repo, tmp_path):
    from ppvae.run import train_spec
    from ppvae.spec import load_spec

    spec = load_spec(
        repo / "models" / "m2_mnist.toml",
        ["train.epochs=1", "data.limit=256", "model.hidden=[32]", "train.progress=false"],
    )
    run, history = train_spec(spec, tmp_path / "run")
    assert np.isfinite(history["train_loss"][-1])
    assert run.guide.predict_proba(run.data.test.x[:4]).shape == (4, 10)


@pytest.mark.slow
def test_m2_beats_the_labelled_only_baseline_on_digits(repo, tmp_path):
    """50 labels on digits (1,244 unlabelled): models/m2_digits.toml with the explicit sum,
    lr 3e-3, batch 128, 100 epochs (about 15 s on one core). Measured test accuracies,
    seeds 0 / 1 / 2: M2 79.67 / 81.06 / 78.83 %, the labelled-only baseline 72.42 / 73.26 /
    72.70 % (margins 7.2, 7.8, 6.1 points); seed 0 runs here with a 5-point margin."""
    from ppvae.semisupervised import run_cell
    from ppvae.spec import load_spec

    spec = load_spec(
        repo / "models" / "m2_digits.toml",
        [
            "model.sum_y=explicit",
            "objective.kind=elbo",
            "train.lr=3e-3",
            "train.batch_size=128",
            "train.epochs=100",
            "train.progress=false",
        ],
    )
    cell = run_cell(spec, 50, 0, tmp_path / "cell")
    assert cell.unlabelled_pool == 1244
    assert cell.m2_accuracy >= cell.baseline_accuracy + 5.0, cell


def test_the_baseline_classifier_is_m2s_classifier_network(repo):
    """A conv M2 is compared with a conv classifier (the [network] trunk, then
    model.hidden); an MLP M2 with the MLP of before, weight for weight."""
    import torch

    from ppvae.networks import ImageEncoder
    from ppvae.nn import MLP
    from ppvae.semisupervised import _baseline_classifier
    from ppvae.spec import load_spec

    path = repo / "models" / "m2_digits.toml"
    conv = load_spec(path, ["network.kind=conv", "network.channels=[4, 8]", "data.limit=200"])
    data = conv.data.load()
    net = _baseline_classifier(conv, data).net
    assert isinstance(net.trunk, ImageEncoder) and net.trunk.shape == (1, 8, 8)
    assert net.head[0].in_features == 8 * 2 * 2 and net.head[-1].out_features == 10

    mlp = load_spec(path, ["data.limit=200"])
    torch.manual_seed(3)
    got = _baseline_classifier(mlp, data).net.state_dict()
    torch.manual_seed(3)
    want = MLP(64, mlp.model.hidden, 10, mlp.model.activation).state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
