"""Tracking (issue 16): ``train.logger = "tensorboard"`` writes the per-step loss, every
number of the epoch records (latent diagnostics included) and the run's figures into
TensorBoard event files, beside ``metrics.jsonl``, which is always written."""

from __future__ import annotations

import json
import sys

import pytest

import ppvae
from ppvae.errors import SpecError
from ppvae.infer.config import TrainConfig
from ppvae.spec import parse_spec

SPEC = {
    "data": {"kind": "digits", "binarize": "dynamic", "limit": 200},
    "model": {"latent_dim": 2, "hidden": [16]},
    "train": {"epochs": 2, "progress": False, "logger": "tensorboard"},
}


def _events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def _numbers(value, tag):
    """The tags of the numbers in a record: dictionaries by key, lists by index."""
    if isinstance(value, dict):
        return {t for k, v in value.items() for t in _numbers(v, f"{tag}/{k}")}
    if isinstance(value, list):
        return {t for i, v in enumerate(value) for t in _numbers(v, f"{tag}/{i}")}
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return {tag} if number else set()


def test_tensorboard_event_files_hold_the_expected_tags(tmp_path):
    pytest.importorskip("tensorboard")
    run, history = ppvae.train_spec(parse_spec(SPEC), tmp_path / "run")
    records = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2  # JSONL is written as well
    acc = _events(run.path / "tensorboard")
    scalars, images = set(acc.Tags()["scalars"]), set(acc.Tags()["images"])
    # the per-step loss, one value per step
    steps = [e.step for e in acc.Scalars("step/loss")]
    assert steps == list(range(1, records[-1]["step"] + 1))
    assert {"step/loss", "step/grad_norm"} <= scalars
    # every number of the epoch records, nested ones (latent diagnostics) included
    expected = {tag for record in records for tag in _numbers(record, "epoch")}
    assert expected - {"epoch/epoch", "epoch/step"} == {t for t in scalars if t[:6] == "epoch/"}
    assert {"epoch/train_loss", "epoch/valid_elbo", "epoch/kl_weight"} <= scalars
    if "latent" in records[-1]:
        assert {"epoch/latent/kl", "epoch/latent/kl_per_dim/1"} <= scalars
    valid = acc.Scalars("epoch/valid_elbo")
    assert [e.step for e in valid] == [1, 2]
    assert [e.value for e in valid] == pytest.approx([r["valid_elbo"] for r in records])
    if "latent" in records[-1]:
        kl = [e.value for e in acc.Scalars("epoch/latent/kl_per_dim/1")]
        assert kl == pytest.approx([r["latent"]["kl_per_dim"][1] for r in records])
    # the run's figures, samples and reconstructions among them
    assert {f"figures/{p.stem}" for p in (run.path / "figures").glob("*.png")} == images
    assert "figures/reconstructions" in images and "figures/decoder-means" in images
    image = acc.Images("figures/reconstructions")[0]
    assert image.step == 2 and image.width > 0 and image.height > 0
    # the folder is a run folder like any other: it loads, and no link was made
    assert ppvae.load_run(run.path).spec.train.logger == "tensorboard"


def test_the_default_logger_writes_no_event_files(tmp_path):
    spec = {**SPEC, "train": {"epochs": 1, "progress": False}}
    run, _ = ppvae.train_spec(parse_spec(spec), tmp_path / "run")
    assert run.spec.train.logger == "jsonl"
    assert not (run.path / "tensorboard").exists() and (run.path / "metrics.jsonl").is_file()


def test_resume_may_switch_the_logger_on(tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    ppvae.train_spec(parse_spec({**SPEC, "train": {"epochs": 1, "progress": False}}), out)
    more = {**SPEC, "train": {**SPEC["train"], "epochs": 2}}
    run, history = ppvae.train_spec(parse_spec(more), out, resume=True)
    assert len(history.records) == 2
    assert [e.step for e in _events(out / "tensorboard").Scalars("epoch/train_loss")] == [2]


def test_tensorboard_missing_is_one_sentence_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard fails
    with pytest.raises(SpecError, match=r"pip install 'ppvae\[tensorboard\]'"):
        ppvae.train_spec(parse_spec(SPEC), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before the folder was made


def test_the_logger_setting_is_checked():
    assert TrainConfig().logger == "jsonl"
    with pytest.raises(SpecError, match="train.logger must be one of jsonl, tensorboard"):
        TrainConfig(logger="wandb")
