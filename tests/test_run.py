"""Run folders: train a spec into a folder, refuse to overwrite, load the run back."""

from __future__ import annotations

import json
import tomllib

import pytest
import torch

from ppvae.checkpoint import load_checkpoint
from ppvae.errors import CheckpointError, DataError, PpvaeError, RunDirError
from ppvae.run import default_run_dir, load_run, model_inputs, train_spec
from ppvae.rundir import spec_fingerprint
from ppvae.spec import dump_spec, parse_spec

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny_spec(**train):
    return parse_spec(
        {
            "data": {"binarize": "dynamic", "limit": 128},
            "model": {"latent_dim": 2, "hidden": [16]},
            "train": {"epochs": 2, "batch_size": 64, "progress": False, "device": "cpu", **train},
        }
    )


def snapshot(folder):
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def one_sentence(err):
    assert isinstance(err, PpvaeError)
    assert "\n" not in str(err), str(err)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    spec = tiny_spec()
    path = tmp_path_factory.mktemp("runs") / "run"
    run, history = train_spec(spec, path)
    return spec, run, history


def test_train_spec_writes_a_run_folder(trained):
    spec, run, history = trained
    path = run.path
    assert sorted(p.name for p in path.iterdir()) == [
        ".ppvae-lock",
        ".ppvae-run",
        "checkpoints",
        "figures",
        "metrics.jsonl",
        "spec.toml",
    ]
    assert (path / "spec.toml").read_text() == dump_spec(spec)
    assert parse_spec(tomllib.loads((path / "spec.toml").read_text())) == spec
    lines = (path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == history.records
    assert len(history) == 2 and history["step"] == [2, 4]
    assert sorted(p.name for p in (path / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    for name in ("curves.png", "decoder-means.png", "reconstructions.png"):
        data = (path / "figures" / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 1000, name
    last = load_checkpoint(path / "checkpoints" / "last.pt")
    # the stored digest covers what a resumed run may not change (ppvae.rundir)
    assert last["spec"] == spec.to_dict()
    assert last["spec_digest"] == spec_fingerprint(spec.to_dict())
    assert last["epoch"] == 2


def test_the_run_holds_the_best_weights(trained):
    _spec, run, history = trained
    best = load_checkpoint(run.path / "checkpoints" / "best.pt")
    assert best["epoch"] == 1 + max(range(len(history)), key=lambda i: history["valid_elbo"][i])
    for k, v in run.model.state_dict().items():
        assert torch.equal(v, best["model"][k]), k


def test_load_run_rebuilds_the_trained_model(trained):
    spec, run, _history = trained
    loaded = load_run(run.path)
    assert loaded.spec == spec
    assert not loaded.model.training and not loaded.guide.training
    for k, v in run.model.state_dict().items():
        assert torch.equal(v, loaded.model.state_dict()[k]), k
    last = load_run(run.path, which="last")
    state = load_checkpoint(run.path / "checkpoints" / "last.pt")
    for k, v in last.guide.state_dict().items():
        assert torch.equal(v, state["guide"][k]), k
    assert loaded.device == torch.device("cpu")
    (x,) = model_inputs(spec, loaded.data.test)
    assert x.shape == (len(loaded.data.test), 64)


def test_the_same_spec_builds_the_same_run(trained, tmp_path):
    spec, _run, history = trained
    _run2, again = train_spec(spec, tmp_path / "again")
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h.records]  # noqa: E731
    assert strip(again) == strip(history)


def test_an_existing_non_empty_folder_is_refused_and_left_alone(trained, tmp_path):
    _spec, run, _history = trained
    before = snapshot(run.path)
    with pytest.raises(RunDirError, match="exists and is not empty; pass --force") as err:
        train_spec(tiny_spec(), run.path)
    one_sentence(err.value)
    assert snapshot(run.path) == before
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("precious")
    with pytest.raises(RunDirError):
        train_spec(tiny_spec(), other)
    assert (other / "notes.txt").read_text() == "precious"


def test_force_replaces_only_a_ppvae_run_folder(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    with pytest.raises(RunDirError, match="not a ppvae run folder") as err:
        train_spec(tiny_spec(epochs=1), mine, force=True)
    one_sentence(err.value)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]

    run_dir = tmp_path / "run"
    run_dir.mkdir()  # an existing empty folder is used as it is
    train_spec(tiny_spec(epochs=1), run_dir)
    (run_dir / "stale.txt").write_text("old")
    _run, history = train_spec(tiny_spec(epochs=2), run_dir, force=True)
    assert not (run_dir / "stale.txt").exists()
    assert len(history) == 2
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2


def test_a_file_is_not_a_run_folder(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(RunDirError, match="is a file"):
        train_spec(tiny_spec(), path)
    assert path.read_text() == "x"


def test_bad_data_fails_before_the_folder_is_touched(tmp_path):
    spec = parse_spec({"data": {"binarize": "none", "limit": 64}, "train": {"progress": False}})
    with pytest.raises(DataError, match="binarize") as err:
        train_spec(spec, tmp_path / "run")
    one_sentence(err.value)
    assert not (tmp_path / "run").exists()


def test_default_run_dir_numbering(tmp_path):
    root = tmp_path / "runs"
    assert default_run_dir("models/vae.toml", root) == root / "vae"
    (root / "vae").mkdir(parents=True)
    assert default_run_dir("models/vae.toml", root) == root / "vae"  # empty: reused
    (root / "vae" / "spec.toml").write_text("")
    assert default_run_dir("x/vae.toml", root) == root / "vae-2"
    (root / "vae-2").mkdir()
    (root / "vae-2" / "a").write_text("")
    assert default_run_dir("vae.toml", root) == root / "vae-3"
    assert default_run_dir("other.toml", root) == root / "other"


def test_load_run_refusals(trained, tmp_path):
    with pytest.raises(RunDirError, match="does not exist") as err:
        load_run(tmp_path / "nope")
    one_sentence(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirError, match="not a ppvae run folder") as err:
        load_run(tmp_path / "empty")
    one_sentence(err.value)


def test_load_run_refuses_a_checkpoint_of_another_model(trained, tmp_path):
    _spec, run, _history = trained
    copy = tmp_path / "copy"
    (copy / "checkpoints").mkdir(parents=True)
    (copy / "checkpoints" / "best.pt").write_bytes(
        (run.path / "checkpoints" / "best.pt").read_bytes()
    )
    other = parse_spec(
        {"data": {"binarize": "dynamic"}, "model": {"latent_dim": 3, "hidden": [16]}}
    )
    (copy / "spec.toml").write_text(dump_spec(other))
    # an edited spec.toml is refused before the weights are tried (contract 7)
    with pytest.raises(CheckpointError, match="differs from the spec its checkpoint") as err:
        load_run(copy)
    one_sentence(err.value)
    assert "model.latent_dim (2 -> 3)" in str(err.value)
    (copy / "checkpoints" / "best.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_run(copy)


def test_resume_continues_and_refuses_another_spec(tmp_path):
    run_dir = tmp_path / "run"
    train_spec(tiny_spec(epochs=1), run_dir)
    _run, history = train_spec(tiny_spec(epochs=2), run_dir, resume=True)
    assert history["epoch"] == [1, 2]
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2
    # optimization settings may change on resume (issue 14, finding 16); the model may not
    with pytest.raises(CheckpointError, match="differs from the one its checkpoint") as err:
        train_spec(tiny_spec(epochs=3, seed=5), run_dir, resume=True)
    one_sentence(err.value)
    assert "train.seed (0 -> 5)" in str(err.value)
