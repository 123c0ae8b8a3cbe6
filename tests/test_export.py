"""``ppvae export`` and ``load_run`` of an export (issue 16): the same log p(x) on the same
draws, a safetensors file that any reader opens and that holds no pickle, a model card
with the run's figures, and refusals in one sentence."""

from __future__ import annotations

import json
import os
import struct

import pytest
import torch

import ppvae
from ppvae.cli import main
from ppvae.errors import CheckpointError, SpecChangedError
from ppvae.export import export_run
from ppvae.infer.rng import seeded
from ppvae.spec import parse_spec
from ppvae.weights import WEIGHTS_FILE, weights_bytes

SPEC = {
    "data": {"kind": "digits", "binarize": "dynamic", "limit": 200},
    "model": {"latent_dim": 3, "hidden": [16]},
    "train": {"epochs": 2, "progress": False},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A trained, evaluated run and its export."""
    from ppvae.evaluate import evaluate_run

    root = tmp_path_factory.mktemp("export")
    run, _ = ppvae.train_spec(parse_spec(SPEC), root / "run")
    evaluate_run(ppvae.load_run(run.path), num_samples=30, progress=False)
    out = export_run(run.path, root / "export")
    return run.path, out


def _log_px(run) -> torch.Tensor:
    x = run.data.test.x[:12]
    with seeded(7, run.device):
        return ppvae.log_marginal_likelihood(run.model, run.guide, x, num_samples=40).log_px


def test_export_then_load_run_gives_identical_log_px(trained):
    folder, out = trained
    from_folder, from_export = ppvae.load_run(folder), ppvae.load_run(out, device="cpu")
    assert from_export.spec == from_folder.spec
    assert not from_export.model.training and not from_export.guide.training
    a, b = _log_px(from_folder), _log_px(from_export)
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)  # bit for bit: the same weights, the same draws
    for name in ("model", "guide"):
        mine, theirs = (getattr(r, name).state_dict() for r in (from_folder, from_export))
        assert mine.keys() == theirs.keys()
        assert all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_export_holds_weights_spec_and_card(trained):
    folder, out = trained
    assert sorted(p.name for p in out.iterdir()) == [
        ".ppvae-export",
        "README.md",
        WEIGHTS_FILE,
        "spec.toml",
    ]
    assert (out / "spec.toml").read_text() == (folder / "spec.toml").read_text()
    card = (out / "README.md").read_text()
    summary = json.loads((folder / "evaluation" / "test-K30.json").read_text())
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert "`digits`" in card and "`elbo` objective" in card
    assert f"2 epochs of 2 planned, {records[-1]['step']} steps" in card
    assert f"{sum(r['seconds'] for r in records):.1f} s of training" in card
    row = f"| test | 30 | {summary['n']} | {summary['log_px']:.2f} ± {summary['log_px_sem']:.2f} |"
    assert row in card
    if "active_units" in records[-1]:  # latent diagnostics in the records
        assert f"active units at the last epoch: {records[-1]['active_units']} of 3" in card
    assert 'ppvae.load_run("export"' in card


def test_safetensors_file_opens_with_safetensors_alone_and_holds_no_pickle(trained):
    from safetensors import safe_open
    from safetensors.torch import load_file

    folder, out = trained
    path = out / WEIGHTS_FILE
    run = ppvae.load_run(folder)
    expected = {f"model.{k}" for k in run.model.state_dict()}
    expected |= {f"guide.{k}" for k in run.guide.state_dict()}
    with safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == expected
        metadata = f.metadata()
    assert json.loads(metadata["spec"]) == run.spec.to_dict()
    assert metadata["checkpoint"] == "best"
    tensors = load_file(str(path))
    assert torch.equal(tensors["model." + next(iter(run.model.state_dict()))].cpu(),
                       next(iter(run.model.state_dict().values())).cpu())  # fmt: skip
    # the bytes: an 8-byte little-endian header length, a JSON header, raw buffers that fill
    # the rest exactly; no pickle stream (protocol marker 0x80) and no zip (torch.save)
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n].decode("utf-8"))
    body = len(raw) - 8 - n
    spans = sorted(v["data_offsets"] for k, v in header.items() if k != "__metadata__")
    assert spans[0][0] == 0 and spans[-1][1] == body
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    assert raw[0] != 0x80 and raw[8:9] == b"{"
    assert b"PK\x03\x04" not in raw[: 8 + n] and b"torch._utils" not in raw


def test_weights_that_do_not_fit_the_spec_are_refused(trained, tmp_path):
    import shutil

    _, out = trained
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    # weights of another model (latent_dim 2) under the spec of this one
    from ppvae.run import build

    other = parse_spec({**SPEC, "model": {"latent_dim": 2, "hidden": [16]}})
    _, model, guide = build(other)
    from safetensors import safe_open

    with safe_open(str(out / WEIGHTS_FILE), framework="pt") as f:
        metadata = f.metadata()
    (copy / WEIGHTS_FILE).write_bytes(weights_bytes({"model": model, "guide": guide}, metadata))
    with pytest.raises(CheckpointError, match=r"does not match the (model|guide) of spec.toml"):
        ppvae.load_run(copy)


def test_an_edited_export_spec_is_refused(trained, tmp_path):
    import shutil

    _, out = trained
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    spec = (copy / "spec.toml").read_text().replace("latent_dim = 3", "latent_dim = 2")
    (copy / "spec.toml").write_text(spec)
    with pytest.raises(SpecChangedError, match=r"model.latent_dim \(3 -> 2\)"):
        ppvae.load_run(copy)


def test_a_damaged_weights_file_is_refused_in_one_sentence(trained, tmp_path):
    import shutil

    _, out = trained
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / WEIGHTS_FILE).write_bytes(b"\x80\x04not safetensors")
    with pytest.raises(CheckpointError, match="is not a readable safetensors file"):
        ppvae.load_run(copy)


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_cli_export_refusals(trained, tmp_path, capsys):
    folder, out = trained
    assert "does not exist" in _error(capsys, ["export", str(tmp_path / "none"), "--out", "x"])
    plain = tmp_path / "plain"
    plain.mkdir()
    assert "not a ppvae run folder" in _error(capsys, ["export", str(plain), "--out", "x"])
    assert "is an export already" in _error(capsys, ["export", str(out), "--out", "x"])
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine")
    err = _error(capsys, ["export", str(folder), "--out", str(full)])
    assert "exists and is not empty; pass --force" in err
    err = _error(capsys, ["export", str(folder), "--out", str(full), "--force"])
    assert "not a ppvae export" in err and (full / "notes.txt").read_text() == "mine"
    link = tmp_path / "link"
    os.symlink(plain, link)
    assert "symbolic link" in _error(capsys, ["export", str(folder), "--out", str(link)])
    inside = folder / "shared"
    assert "inside the run folder" in _error(capsys, ["export", str(folder), "--out", str(inside)])


def test_cli_export_replaces_an_earlier_export_with_force(trained, tmp_path, capsys):
    folder, _ = trained
    out = tmp_path / "exp"
    assert main(["export", str(folder), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "model.safetensors" in printed and "load_run" in printed
    assert "exists and is not empty" in _error(capsys, ["export", str(folder), "--out", str(out)])
    assert main(["export", str(folder), "--out", str(out), "--force", "--checkpoint", "last"]) == 0
    capsys.readouterr()
    assert "`last` checkpoint" in (out / "README.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]  # no staging folder left
    assert torch.equal(_log_px(ppvae.load_run(out)), _log_px(ppvae.load_run(folder, which="last")))


def test_a_run_holding_a_link_is_not_exported(tmp_path, capsys):
    run, _ = ppvae.train_spec(
        parse_spec({**SPEC, "train": {"epochs": 1, "progress": False}}), tmp_path / "run"
    )
    os.symlink(run.path / "spec.toml", run.path / "figures" / "spec-link.toml")
    err = _error(capsys, ["export", str(run.path), "--out", str(tmp_path / "out")])
    assert "symbolic link" in err and not (tmp_path / "out").exists()
