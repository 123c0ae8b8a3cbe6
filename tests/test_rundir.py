"""Run folders as a unit of trust (issue 14): markers, locks, links, atomic writes, the
spec fingerprint, resuming with changed optimization settings, damaged checkpoints.

The same findings through the command line, in real processes: ``tests/test_cli_errors.py``.
"""

from __future__ import annotations

import json
import os
import pickle
import tomllib

import pytest
import torch

from ppvae.checkpoint import load_checkpoint, save_checkpoint
from ppvae.errors import CheckpointError, PpvaeError, RunDirError, SpecChangedError, SpecError
from ppvae.run import load_run, train_spec
from ppvae.rundir import (
    RUN_MARKER,
    FolderLock,
    check_no_links,
    is_marked,
    spec_differences,
    spec_fingerprint,
    write_text_atomic,
)
from ppvae.spec import dump_spec, parse_spec


def tiny_spec(**train):
    return parse_spec(
        {
            "data": {"binarize": "dynamic", "limit": 128},
            "model": {"latent_dim": 2, "hidden": [8]},
            "train": {"epochs": 1, "batch_size": 64, "progress": False, "device": "cpu", **train},
        }
    )


def one_sentence(err):
    assert isinstance(err, PpvaeError)
    assert "\n" not in str(err), str(err)
    return str(err)


def files(folder, skip=(".ppvae-lock",)):
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink() and p.name not in skip
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    path = tmp_path_factory.mktemp("rundir") / "run"
    train_spec(tiny_spec(), path)
    return path


@pytest.fixture
def run_copy(trained, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(trained, copy, symlinks=True)
    return copy


# ------------------------------------------------------------------ markers and atomic writes


def test_a_run_folder_is_marked_by_ppvae_only(trained, tmp_path):
    assert is_marked(trained, RUN_MARKER)
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / RUN_MARKER).write_text("anything")  # not ppvae's marker
    assert not is_marked(fake, RUN_MARKER)
    (fake / RUN_MARKER).unlink()
    (fake / RUN_MARKER).symlink_to(trained / RUN_MARKER)  # a link is no marker
    assert not is_marked(fake, RUN_MARKER)


def test_atomic_writes_replace_a_link_instead_of_following_it(tmp_path):
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me")
    link = tmp_path / "report.html"
    link.symlink_to(outside)
    write_text_atomic(link, "new")
    assert outside.read_text() == "keep me"
    assert not link.is_symlink() and link.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious.txt", "report.html"]


# ------------------------------------------------------------------ finding 1 and 2: links


@pytest.mark.parametrize("name", ["spec.toml", "evaluation/test-K5-khat.png", "checkpoints"])
def test_readers_refuse_a_link_inside_the_run_folder(run_copy, tmp_path, name):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOKEN=hunter2")
    target = run_copy / name
    target.parent.mkdir(exist_ok=True)
    if target.is_dir():
        import shutil

        shutil.rmtree(target)
    elif target.exists():
        target.unlink()
    target.symlink_to(secret)
    with pytest.raises(RunDirError, match="holds a symbolic link") as err:
        load_run(run_copy)
    assert name in one_sentence(err.value)
    from ppvae.html_report import write_report

    with pytest.raises(RunDirError, match="holds a symbolic link"):
        write_report(run_copy)
    assert not (run_copy / "report.html").exists()
    with pytest.raises(RunDirError, match="holds a symbolic link"):
        check_no_links(run_copy)


def test_a_checkpoint_link_or_linked_folder_is_refused(tmp_path):
    real = tmp_path / "elsewhere"
    real.mkdir()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoints").symlink_to(real)
    with pytest.raises(CheckpointError, match="symbolic link"):
        save_checkpoint({"step": 1}, tmp_path / "run" / "checkpoints" / "last.pt")
    assert list(real.iterdir()) == []
    save_checkpoint({"step": 1}, real / "a.pt")
    (tmp_path / "b.pt").symlink_to(real / "a.pt")
    with pytest.raises(CheckpointError, match="symbolic link"):
        load_checkpoint(tmp_path / "b.pt")


# ------------------------------------------------------------------ finding 4 and 5: --force


def test_force_replaces_only_a_marked_folder(tmp_path):
    mine = tmp_path / "project"
    mine.mkdir()
    (mine / "spec.toml").write_text(dump_spec(tiny_spec()))  # any spec.toml is not enough
    (mine / "notes.md").write_text("precious")
    before = files(mine)
    with pytest.raises(RunDirError, match="not a ppvae run folder") as err:
        train_spec(tiny_spec(), mine, force=True)
    assert ".ppvae-run" in one_sentence(err.value)
    assert files(mine) == before


def test_force_keeps_the_old_run_when_the_new_one_fails_before_a_checkpoint(run_copy):
    before = files(run_copy)
    with pytest.raises(PpvaeError, match="NaN|infinite"):
        train_spec(tiny_spec(lr=1e30), run_copy, force=True)
    assert files(run_copy) == before
    assert [p.name for p in run_copy.parent.iterdir()] == ["run"]  # no staging folder left


def test_force_swaps_in_the_new_run(run_copy):
    (run_copy / "old-note.txt").write_text("from the old run")
    _run, history = train_spec(tiny_spec(epochs=2), run_copy, force=True)
    assert len(history) == 2
    assert not (run_copy / "old-note.txt").exists()
    assert is_marked(run_copy, RUN_MARKER)
    assert load_checkpoint(run_copy / "checkpoints" / "last.pt")["epoch"] == 2
    assert [p.name for p in run_copy.parent.iterdir()] == ["run"]


# ------------------------------------------------------------------ finding 6: locks


def test_a_locked_run_folder_refuses_a_second_writer(run_copy):
    before = files(run_copy)
    with FolderLock(run_copy):
        with pytest.raises(RunDirError, match="being written by another ppvae process") as err:
            train_spec(tiny_spec(epochs=2), run_copy, resume=True)
        assert f"pid {os.getpid()}" in one_sentence(err.value)
        with pytest.raises(RunDirError, match="being written by another ppvae process"):
            train_spec(tiny_spec(), run_copy, force=True)
    assert files(run_copy) == before
    train_spec(tiny_spec(epochs=2), run_copy, resume=True)  # released: it goes on


# ------------------------------------------------------------------ finding 7: edited specs


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        ({"likelihood": {"kind": "gaussian"}}, "likelihood.kind"),
        ({"data": {"split_seed": 7}}, "data.split_seed"),
        ({"model": {"latent_dim": 3}}, "model.latent_dim"),
    ],
)
def test_every_reader_refuses_an_edited_spec(run_copy, edit, key):
    raw = tomllib.loads((run_copy / "spec.toml").read_text())
    for section, values in edit.items():
        raw[section].update(values)
        if "kind" in values:  # keep only the keys the new kind takes
            raw[section] = dict(values)
    (run_copy / "spec.toml").write_text(dump_spec(parse_spec(raw)))
    with pytest.raises(SpecChangedError, match="differs from the spec its checkpoint") as err:
        load_run(run_copy)
    assert key in one_sentence(err.value)
    from ppvae.html_report import write_report

    with pytest.raises(SpecChangedError):
        write_report(run_copy)


def test_readers_accept_changed_evaluation_and_optimization_settings(run_copy):
    raw = tomllib.loads((run_copy / "spec.toml").read_text())
    raw["evaluate"]["num_samples"] = 7
    raw["train"]["lr"] = 0.5
    (run_copy / "spec.toml").write_text(dump_spec(parse_spec(raw)))
    run = load_run(run_copy)
    assert run.spec.evaluate.num_samples == 7


def test_the_fingerprint_leaves_out_only_resumable_settings():
    a, b = tiny_spec().to_dict(), tiny_spec(lr=0.5, clip_norm=1.0, epochs=9).to_dict()
    assert spec_fingerprint(a) == spec_fingerprint(b)
    assert spec_differences(a, b, frozen=True) == {}
    c = tiny_spec(seed=3).to_dict()
    assert spec_fingerprint(a) != spec_fingerprint(c)
    assert spec_differences(a, c, frozen=True) == {"train.seed": (0, 3)}


# ------------------------------------------------------------------ finding 9: seeds


@pytest.mark.parametrize("seed", [-1, 2**32, 99999999999999999999])
def test_train_refuses_a_seed_the_generators_reject(tmp_path, seed):
    # refused by the spec (TrainConfig) or, at the latest, before the folder is touched
    with pytest.raises(SpecError, match=r"train.seed must be .*4294967295") as err:
        train_spec(tiny_spec(seed=seed), tmp_path / "run")
    one_sentence(err.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("key", ["split_seed", "binarize_seed"])
def test_data_seeds_must_be_non_negative(key):
    with pytest.raises(SpecError, match=f"data.{key} must be a non-negative integer"):
        parse_spec({"data": {key: -5}})


# ------------------------------------------------------------------ finding 13: damaged states


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda c: c.pop("history"), "has no 'history' entry"),
        (lambda c: c.__setitem__("epoch", "abc"), "'epoch' entry should be an integer"),
        (lambda c: c["model"].__setitem__(next(iter(c["model"])), torch.zeros(3, 3, 3)), "shape"),
        (lambda c: c["guide"].pop(next(iter(c["guide"]))), "other names"),
        (lambda c: c.__setitem__("optimizer", {"state": 1}), "optimizer state is incomplete"),
    ],
    ids=["no-history", "epoch-abc", "wrong-shape", "missing-weight", "optimizer"],
)
def test_resume_refuses_a_damaged_training_state(run_copy, damage, message):
    last = run_copy / "checkpoints" / "last.pt"
    state = load_checkpoint(last)
    damage(state)
    save_checkpoint(state, last)  # valid checksums, damaged contents
    before = files(run_copy)
    with pytest.raises(CheckpointError, match=message) as err:
        train_spec(tiny_spec(epochs=2), run_copy, resume=True)
    one_sentence(err.value)
    assert files(run_copy) == before


# ------------------------------------------------------------------ finding 16: resume settings


def test_resume_with_changed_optimization_settings_is_recorded(run_copy):
    _run, history = train_spec(tiny_spec(epochs=2, clip_norm=1.0, lr=5e-4), run_copy, resume=True)
    assert history["epoch"] == [1, 2]
    lines = [json.loads(line) for line in (run_copy / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("epoch") for r in lines] == [1, None, 2]
    note = lines[1]
    assert note["after_epoch"] == 1
    assert note["changed"] == {
        "train.clip_norm": {"from": 0.0, "to": 1.0},
        "train.lr": {"from": 0.001, "to": 0.0005},
    }
    spec = tomllib.loads((run_copy / "spec.toml").read_text())
    assert spec["train"]["clip_norm"] == 1.0 and spec["train"]["lr"] == 5e-4
    # a second resume keeps the record; the report lists it
    train_spec(tiny_spec(epochs=3, clip_norm=1.0, lr=5e-4), run_copy, resume=True)
    lines = [json.loads(line) for line in (run_copy / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("epoch") for r in lines] == [1, None, 2, 3]
    from ppvae.html_report import write_report

    page = write_report(run_copy).read_text()
    assert "resumed after epoch 1" in page and "train.lr 0.001 -&gt; 0.0005" in page
    # the model may not change
    with pytest.raises(SpecChangedError, match="model.latent_dim") as err:
        train_spec(
            parse_spec(
                {**tiny_spec(epochs=4).to_dict(), "model": {"latent_dim": 3, "hidden": [8]}}
            ),
            run_copy,
            resume=True,
        )
    assert "a resumed run may change only train.epochs" in one_sentence(err.value)


def test_a_resumed_run_trains_with_the_new_learning_rate(run_copy):
    train_spec(tiny_spec(epochs=2, lr=5e-4), run_copy, resume=True)
    groups = load_checkpoint(run_copy / "checkpoints" / "last.pt")["optimizer"]["param_groups"]
    assert all(g["lr"] == 5e-4 for g in groups)


# ------------------------------------------------------------------ finding 17: pickles


def test_a_checkpoint_holding_python_objects_says_what_it_is(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "x": pickle.loads(pickle.dumps(ValueError("x")))}, path)
    with pytest.raises(CheckpointError, match=r"holds a Python object \(.*ValueError\)"):
        load_checkpoint(path)
    path.write_bytes(pickle.dumps({"a": ValueError("x")}))
    with pytest.raises(CheckpointError, match="is a plain Python pickle") as err:
        load_checkpoint(path)
    assert "truncated" not in one_sentence(err.value)
    path.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_checkpoint(path)
