"""``ppvae compare`` and ``ppvae kinds`` (issue 15, finding 5)."""

from __future__ import annotations

import csv
import dataclasses

import pytest

from ppvae.compare import compare_runs
from ppvae.evaluate import evaluate_run
from ppvae.kinds import describe_kinds
from ppvae.run import load_run, train_spec
from ppvae.spec import SECTIONS, parse_spec

from .test_cli import PNG_MAGIC, assert_user_error, run_cli


def spec_of(latent_dim, epochs):
    return parse_spec(
        {
            "data": {"binarize": "dynamic", "limit": 128},
            "model": {"latent_dim": latent_dim, "hidden": [16]},
            "train": {"epochs": epochs, "batch_size": 64, "progress": False, "device": "cpu"},
        }
    )


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    a, ha = train_spec(spec_of(2, 2), root / "a")
    b, hb = train_spec(spec_of(3, 3), root / "b")
    summary = evaluate_run(load_run(a.path), num_samples=25, batch_size=64)
    return root, (a, ha), (b, hb), summary


def test_compare_tabulates_final_best_and_evaluations(two_runs, tmp_path):
    root, (a, ha), (b, hb), summary = two_runs
    table = compare_runs([a.path, b.path], out=tmp_path / "cmp")
    h = table.header
    assert h[:2] == ["run", "model.latent_dim"]  # the keys in which the runs differ
    assert "train.epochs" in h and "test log p(x) K=25" in h
    rows = {row[0]: dict(zip(h, row, strict=True)) for row in table.rows}
    assert rows["a"]["model.latent_dim"] == "2" and rows["b"]["model.latent_dim"] == "3"
    assert rows["b"]["epochs"] == "3"
    best = max(hb.records, key=lambda r: r["valid_elbo"])
    assert rows["b"]["best valid ELBO"] == f"{best['valid_elbo']:.4f}"
    assert rows["b"]["best epoch"] == str(best["epoch"])
    assert rows["b"]["final valid ELBO"] == f"{hb.records[-1]['valid_elbo']:.4f}"
    assert rows["a"]["test log p(x) K=25"] == f"{summary['log_px']:.4f}"
    assert rows["b"]["test log p(x) K=25"] == "-"  # b was not evaluated
    files = sorted(p.name for p in (tmp_path / "cmp").iterdir())
    assert files == ["curves.png", "table.csv", "table.md"]
    assert (tmp_path / "cmp" / "curves.png").read_bytes()[:8] == PNG_MAGIC
    md = (tmp_path / "cmp" / "table.md").read_text().splitlines()
    assert md[0] == "| " + " | ".join(h) + " |" and len(md) == 4
    with open(tmp_path / "cmp" / "table.csv") as f:
        records = list(csv.DictReader(f))
    assert float(records[0]["test log p(x) K=25"]) == pytest.approx(summary["log_px"])
    assert records[1]["test log p(x) K=25"] == ""


def test_compare_on_the_command_line(two_runs, tmp_path):
    root, (a, _), (b, _), _ = two_runs
    code, out, err = run_cli(["compare", a.path, b.path, "--out", tmp_path / "c"])
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("| run | model.latent_dim |") and lines[2].startswith("| a | 2 |")
    assert lines[-1].startswith("files: ") and str(tmp_path / "c" / "curves.png") in lines[-1]


def test_compare_refuses_what_is_not_a_run(two_runs, tmp_path):
    root, (a, _), _, _ = two_runs
    assert_user_error(*run_cli(["compare", a.path, tmp_path / "nope"]), "does not exist")
    (tmp_path / "empty").mkdir()
    assert_user_error(*run_cli(["compare", tmp_path / "empty"]), "not a ppvae run folder")
    assert_user_error(*run_cli(["compare", a.path, "--out", a.path]), "is a ppvae run folder")


def test_kinds_lists_every_registered_kind_with_its_keys():
    text = describe_kinds()
    for section, (registry, default) in SECTIONS.items():
        header = next(line for line in text.splitlines() if line.startswith(f"[{section}] kinds:"))
        listed = header.split(": ", 1)[1].replace(" (default)", "").split(", ")
        assert listed == registry.names()
        assert f"{default} (default)" in header
        for name in registry.names():
            assert f'  kind = "{name}"' in text
    assert "[train]" in text and "[evaluate]" in text
    prior = describe_kinds("prior")
    assert "num_pseudo_inputs = 500" in prior and "[model]" not in prior
    from ppvae.infer.config import TrainConfig

    train = describe_kinds("train")
    for f in dataclasses.fields(TrainConfig):
        assert f"\n  {f.name} = " in train
    assert "needs: data.path is required" in describe_kinds("data")  # npz needs its path


def test_kinds_on_the_command_line():
    code, out, err = run_cli(["kinds", "objective"])
    assert code == 0 and err == ""
    assert out.startswith("[objective] kinds: ") and 'kind = "iwae"' in out
    assert_user_error(*run_cli(["kinds", "nope"]), "unknown section 'nope'", "allowed: data")
