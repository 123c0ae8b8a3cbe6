"""Checkpoints: atomic writes, safe loads (weights_only), RNG states."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import ppvae.checkpoint as checkpoint_module
from ppvae.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from ppvae.errors import CheckpointError, PpvaeError

CALLS: list[str] = []


def _record(what):
    CALLS.append(what)
    return what


class Payload:
    """Unpickling this would run ``_record``: a checkpoint must not be able to run code."""

    def __reduce__(self):
        return (_record, ("code ran",))


def _one_sentence(err):
    assert isinstance(err, PpvaeError)
    assert "\n" not in str(err), str(err)


def test_round_trip(tmp_path):
    state = {
        "step": 3,
        "w": torch.arange(6.0).reshape(2, 3),
        "nested": {"a": [1, 2.5, "x", None], "t": (True, False)},
        "history": [{"epoch": 1, "train_loss": 0.5}],
    }
    path = tmp_path / "sub" / "last.pt"
    save_checkpoint(state, path)
    loaded = load_checkpoint(path)
    assert loaded["step"] == 3 and loaded["nested"] == state["nested"]
    assert torch.equal(loaded["w"], state["w"])
    assert loaded["history"] == state["history"]
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]


def test_overwrite_replaces_the_file(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"step": 1}, path)
    save_checkpoint({"step": 2}, path)
    assert load_checkpoint(path)["step"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


class Boom(RuntimeError):
    pass


def test_a_failing_save_leaves_the_previous_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    before = path.read_bytes()

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise Boom("disk full")

    monkeypatch.setattr(checkpoint_module.torch, "save", failing_save)
    # a failed write (torch reports a full disk as a RuntimeError) is one sentence naming it
    with pytest.raises(CheckpointError, match="cannot write checkpoint .*last.pt") as err:
        save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    assert "\n" not in str(err.value) and "disk full" in str(err.value)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_an_interrupted_save_leaves_no_temporary(tmp_path, monkeypatch):
    def interrupted(obj, f, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_module.torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"step": 1}, tmp_path / "best.pt")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("keep", [0, 10, 200, -1])
def test_a_truncated_file_is_a_checkpoint_error_naming_it(tmp_path, keep):
    path = tmp_path / "last.pt"
    save_checkpoint({"step": 1, "w": torch.randn(100)}, path)
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep >= 0 else data[: len(data) // 2])
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)
    assert "truncated or corrupted" in str(err.value)
    _one_sentence(err.value)


def test_garbage_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "last.pt"
    path.write_text("not a checkpoint at all\n" * 10)
    with pytest.raises(CheckpointError, match="truncated or corrupted") as err:
        load_checkpoint(path)
    _one_sentence(err.value)


def test_a_missing_file_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist") as err:
        load_checkpoint(tmp_path / "nope.pt")
    assert "nope.pt" in str(err.value)
    _one_sentence(err.value)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path)  # a folder is not a checkpoint


def test_pickled_objects_are_refused_and_never_run(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"step": 1, "payload": Payload()}, path)
    CALLS.clear()
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert CALLS == []
    assert "evil.pt" in str(err.value)
    _one_sentence(err.value)
    # the same file loads (and runs the code) with weights_only=False: the refusal is real
    assert torch.load(path, weights_only=False)["payload"] == "code ran"
    assert CALLS == ["code ran"]


def test_a_non_dict_checkpoint_is_refused(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="does not hold a ppvae training state") as err:
        load_checkpoint(path)
    _one_sentence(err.value)


def _draws():
    return (
        [random.random() for _ in range(3)],
        random.gauss(0, 1),
        np.random.rand(3).tolist(),
        np.random.randn(),
        torch.rand(3).tolist(),
    )


def test_rng_state_round_trip():
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached second Gaussian in Python's generator
    np.random.randn()  # and in NumPy's
    state = rng_state()
    first = _draws()
    _draws()
    set_rng_state(state)
    assert _draws() == first


def test_rng_state_round_trips_through_a_checkpoint(tmp_path):
    torch.manual_seed(11)
    np.random.seed(12)
    random.seed(13)
    save_checkpoint({"rng": rng_state()}, tmp_path / "rng.pt")
    first = _draws()
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    assert _draws() == first


def test_rng_state_holds_only_tensors_and_plain_values():
    state = rng_state()
    assert {"python", "numpy", "torch"} <= set(state)
    assert isinstance(state["torch"], torch.Tensor) and isinstance(state["numpy"], torch.Tensor)
    assert isinstance(state["python"], list) and len(state["python"]) == 625
