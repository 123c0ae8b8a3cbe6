"""Every spec in models/ parses, and trains with a tiny budget.

Specs whose data set lives in $PPVAE_DATA_DIR (an empty ``data.path`` of a kind that reads
files) need the ``data_dir`` fixture: skipped without it, run in CI.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from ppvae.run import resolve_paths
from ppvae.spec import dump_spec, load_spec, parse_spec

SPECS = sorted((Path(__file__).resolve().parents[1] / "models").glob("*.toml"))
TINY = [
    "train.epochs=1",
    "data.limit=64",
    "train.batch_size=32",
    "train.progress=false",
    "train.device=cpu",
]


def test_there_are_shipped_specs():
    assert any(p.name == "vae.toml" for p in SPECS)


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_spec_parses_and_round_trips(path):
    spec = load_spec(path)
    assert spec.train.epochs >= 1
    assert parse_spec(spec.to_dict()) == spec
    assert load_spec(path, ["train.epochs=1"]).train.epochs == 1
    # the text of the file is what it says: every key in the file is in the resolved spec
    import tomllib

    raw = tomllib.loads(path.read_text())
    resolved = spec.to_dict()
    for section, table in raw.items():
        for key, value in table.items():
            got = resolved[section][key]
            assert got == value or (
                isinstance(value, int | float) and got == pytest.approx(value)
            ), (
                section,
                key,
            )


def _needs_data_dir(spec) -> bool:
    return hasattr(spec.data, "path") and spec.data.path == "" and spec.data.kind != "npz"


def _small_model(spec) -> list[str]:
    """Overrides that shrink every hidden-size list of the model (``hidden``, ``hidden2``...)
    and the labelled set of semi-supervised models (64 training points cannot hold 50
    balanced labels)."""
    latent = [getattr(spec.model, "latent_dim", 0), *getattr(spec.model, "latent_dims", ())]
    size = max(16, *latent)  # autoregressive flows need hidden layers at least latent_dim wide
    out = []
    for f in dataclasses.fields(spec.model):
        value = getattr(spec.model, f.name)
        if f.name.startswith("hidden") and isinstance(value, tuple) and value:
            out.append(f"model.{f.name}=[{size}]")
        if f.name == "num_labels" and isinstance(value, int) and value > 10:
            out.append("model.num_labels=10")
    return out


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_spec_trains_with_a_tiny_budget(path, tmp_path, request):
    spec = load_spec(path)
    if _needs_data_dir(spec):
        request.getfixturevalue("data_dir")  # skips without $PPVAE_DATA_DIR
    from ppvae.run import load_run, train_spec

    extra = []
    if getattr(spec.model, "m1_run", ""):  # M1+M2: first the M1 spec named by the run folder
        m1_path = path.parent / f"{Path(spec.model.m1_run).name}.toml"
        m1 = load_spec(m1_path)
        train_spec(load_spec(m1_path, [*TINY, *_small_model(m1)]), tmp_path / "m1")
        extra.append(f"model.m1_run={json.dumps(str(tmp_path / 'm1'))}")
    if spec.data.kind == "npz" and not Path(spec.data.path).exists():  # your own data
        import numpy as np

        np.savez(tmp_path / "own.npz", x=np.random.default_rng(0).normal(size=(100, 6)))
        extra.append(f"data.path={json.dumps(str(tmp_path / 'own.npz'))}")
    spec = load_spec(path, [*TINY, *_small_model(spec), *extra])
    run, history = train_spec(spec, tmp_path / "run")
    assert len(history) == 1
    record = history.records[0]
    assert math.isfinite(record["train_loss"])
    if record.get("valid_elbo") is not None:
        assert math.isfinite(record["valid_elbo"])
    # the run records its spec with the data location resolved (an absolute data.path)
    assert (run.path / "spec.toml").read_text() == dump_spec(resolve_paths(spec))
    lines = (run.path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["epoch"] == 1
    assert (run.path / "checkpoints" / "last.pt").is_file()
    assert (run.path / "figures" / "curves.png").read_bytes()[:4] == b"\x89PNG"
    loaded = load_run(run.path)
    assert loaded.spec == resolve_paths(spec)
    if hasattr(loaded.model, "generate"):
        import inspect

        params = inspect.signature(loaded.model.generate).parameters
        kwargs = (
            {"condition": 0}
            if "condition" in params and params["condition"].default is inspect.Parameter.empty
            else {}
        )
        samples = loaded.model.generate(3, **kwargs)
        assert samples.shape == (3, loaded.data.dim)
