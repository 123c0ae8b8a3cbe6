"""A finished run, loaded back (issue 15, finding 4): encode, decode, sample and
reconstruct without extra arguments; data paths written out in spec.toml, and runs
recorded before that still read."""

from __future__ import annotations

import struct
import tomllib

import numpy as np
import pytest
import torch

from ppvae.errors import DataError, SpecError
from ppvae.run import load_run, resolve_paths, train_spec
from ppvae.rundir import spec_fingerprint
from ppvae.spec import parse_spec

from .test_spec import one_sentence


def spec_of(model=None, data=None, **train):
    return parse_spec(
        {
            "data": {"binarize": "dynamic", "limit": 128, **(data or {})},
            "model": model or {"latent_dim": 2, "hidden": [16]},
            "train": {"epochs": 1, "batch_size": 64, "progress": False, "device": "cpu", **train},
        }
    )


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    run, _ = train_spec(spec_of(), tmp_path_factory.mktemp("load") / "vae")
    return load_run(run.path)


def test_encode_decode_sample_reconstruct_of_a_loaded_vae(vae_run):
    run = vae_run
    x = run.data.test.x[:7]
    z = run.encode(x)
    assert z.shape == (7, 2)
    assert torch.equal(z, run.guide.posterior(x).mean)
    recon = run.reconstruct(x)
    assert recon.shape == (7, 64) and torch.equal(recon, run.model.reconstruct(x, run.guide))
    assert torch.equal(run.decode(z), recon)
    assert ((recon >= 0) & (recon <= 1)).all()  # Bernoulli means
    # images and numpy arrays are taken as they come
    assert torch.equal(run.reconstruct(x.reshape(7, 8, 8).numpy()), recon)
    assert not recon.requires_grad
    a, b = run.sample(5, seed=3), run.sample(5, seed=3)
    assert a.shape == (5, 64) and torch.equal(a, b)
    assert run.posterior(x).batch_shape == (7,)


def test_bad_inputs_are_one_sentence(vae_run):
    with pytest.raises(DataError, match=r"shape \(3, 10\).*64 values") as err:
        vae_run.encode(torch.zeros(3, 10))
    one_sentence(err.value)
    with pytest.raises(DataError, match="does not fit the decoder") as err:
        vae_run.decode(torch.zeros(3, 5))
    one_sentence(err.value)
    with pytest.raises(SpecError, match="positive integer"):
        vae_run.sample(0)
    with pytest.raises(SpecError, match="conditional model"):
        vae_run.sample(2, condition=1)


def test_a_conditional_model_asks_for_its_labels(tmp_path):
    run, _ = train_spec(spec_of({"kind": "cvae", "latent_dim": 2, "hidden": [16]}), tmp_path / "c")
    run = load_run(run.path)
    x, y = run.data.test.x[:4], run.data.test.y[:4]
    with pytest.raises(
        SpecError, match=r"reconstructs x given 1 more input.*run.reconstruct\(x, y\)"
    ):
        run.reconstruct(x)
    assert torch.equal(run.reconstruct(x, y), run.model.reconstruct(x, run.guide, y))
    assert run.encode(x, y).shape == (4, 2)
    with pytest.raises(SpecError, match="class label") as err:
        run.decode(torch.zeros(4, 2))
    one_sentence(err.value)
    assert run.sample(3, condition=2, seed=0).shape == (3, 64)


def test_a_model_without_the_ability_is_refused_in_one_sentence(tmp_path):
    spec = spec_of({"kind": "density"}, data={"binarize": "static"})
    run, _ = train_spec(spec, tmp_path / "d")
    run = load_run(run.path)
    x = run.data.test.x[:3]
    assert run.sample(4, seed=0).shape == (4, 64)
    for call, what in (
        (lambda: run.encode(x), "cannot encode"),
        (lambda: run.decode(torch.zeros(3, 2)), "cannot decode"),
        (lambda: run.reconstruct(x), "cannot reconstruct"),
    ):
        with pytest.raises(SpecError, match=what) as err:
            call()
        assert "model kind 'density'" in one_sentence(err.value)


# ------------------------------------------------------------------ resolved data paths


def _write_idx(folder, n_train=120, n_test=60):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 0x803, n, 28, 28) + images.tobytes()
        )
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(
            struct.pack(">II", 0x801, n) + labels.tobytes()
        )


def _mnist_spec(path="", **train):
    return spec_of(data={"kind": "mnist", "path": path, "limit": 0}, **train)


def test_spec_toml_records_the_data_folder_that_the_environment_named(tmp_path, monkeypatch):
    _write_idx(tmp_path / "data" / "mnist")
    monkeypatch.setenv("PPVAE_DATA_DIR", str(tmp_path / "data"))
    run, _ = train_spec(_mnist_spec(), tmp_path / "run")
    recorded = tomllib.loads((run.path / "spec.toml").read_text())["data"]["path"]
    assert recorded == str((tmp_path / "data" / "mnist").absolute())
    monkeypatch.delenv("PPVAE_DATA_DIR")
    assert load_run(run.path).spec.data.path == recorded  # no variable needed any more


def test_relative_paths_become_absolute_and_resolving_is_idempotent(tmp_path, monkeypatch):
    _write_idx(tmp_path / "here" / "mnist")
    monkeypatch.chdir(tmp_path)
    spec = resolve_paths(_mnist_spec("here/mnist"))
    assert spec.data.path == str(tmp_path / "here" / "mnist")
    assert resolve_paths(spec) == spec
    monkeypatch.delenv("PPVAE_DATA_DIR", raising=False)
    assert resolve_paths(_mnist_spec()).data.path == ""  # nothing to resolve: left to fail


def test_a_run_recorded_with_an_empty_path_is_the_same_run(tmp_path, monkeypatch):
    """A run of an earlier ppvae recorded data.path = "" (the $PPVAE_DATA_DIR default):
    resuming it writes the path out, and every checkpoint still matches spec.toml."""
    import ppvae.run

    _write_idx(tmp_path / "data" / "mnist")
    monkeypatch.setenv("PPVAE_DATA_DIR", str(tmp_path / "data"))
    with monkeypatch.context() as m:
        m.setattr(ppvae.run, "resolve_paths", lambda spec: spec)  # as ppvae did before
        run, _ = train_spec(_mnist_spec(epochs=1), tmp_path / "old")
    assert 'path = ""' in (run.path / "spec.toml").read_text()
    assert load_run(run.path).spec.data.path == ""
    run, history = train_spec(_mnist_spec(epochs=2), run.path, resume=True)
    assert len(history.records) == 2
    assert run.spec.data.path == str(tmp_path / "data" / "mnist")
    monkeypatch.delenv("PPVAE_DATA_DIR")
    for which in ("best", "last"):
        assert load_run(run.path, which=which).spec.data.path == run.spec.data.path


def test_the_fingerprint_leaves_out_where_the_data_lie():
    a = _mnist_spec("/data/mnist").to_dict()
    b = _mnist_spec("/elsewhere/mnist").to_dict()
    assert spec_fingerprint(a) == spec_fingerprint(b)
    assert spec_fingerprint(a, locations=True) != spec_fingerprint(b, locations=True)
    c = spec_of(data={"kind": "mnist", "path": "/data/mnist", "split_seed": 1}).to_dict()
    assert spec_fingerprint(a) != spec_fingerprint(c)  # what the data are still counts
