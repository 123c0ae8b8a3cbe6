"""Network kinds through the command line, in real processes: a user network named by
import path (``encoder = "nets:Encoder"``, a ``nets.py`` in the working folder) trains
and evaluates; refusals end in one ``error:`` line and exit status 2; ``ppvae kinds
network`` lists the kinds.

The processes run ``python -P -m ppvae``: ``-P`` keeps the working folder off
``sys.path`` as the installed ``ppvae`` script does, so ``nets`` is found by ppvae's own
retry in the working folder, not by Python's ``-m``. API-level tests of the same kinds:
``tests/models/test_networks.py``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PPVAE = [sys.executable, "-P", "-m", "ppvae"]

NETS_PY = (REPO / "tests" / "assets" / "user_nets.py").read_text()

SPEC_TOML = textwrap.dedent(
    """
    [data]
    kind = "digits"
    binarize = "static"
    limit = 64

    [model]
    kind = "vae"
    latent_dim = 2
    hidden = [16]

    [network]
    kind = "user"
    encoder = "nets:Encoder"
    decoder = "nets:Decoder"
    encoder_args = { width = 3 }

    [train]
    epochs = 1
    """
)


def ppvae(*args, cwd, timeout=180):
    """``ppvae args`` in a new process in ``cwd`` (which is not on its sys.path)."""
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [*PPVAE, *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_error(result, *fragments) -> str:
    """Exit status 2 and exactly one line on stderr, ``error: ...`` holding ``fragments``."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert result.stdout == ""
    return lines[0]


def test_the_working_folder_is_not_on_the_path_of_the_processes(tmp_path):
    probe = "import os, sys; print(os.getcwd() in sys.path or '' in sys.path)"
    result = subprocess.run(
        [sys.executable, "-P", "-c", probe], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.stdout.strip() == "False", result


def test_a_user_network_by_import_path_trains_and_evaluates(tmp_path):
    (tmp_path / "nets.py").write_text(NETS_PY)
    (tmp_path / "spec.toml").write_text(SPEC_TOML)
    result = ppvae("train", "spec.toml", "--out", "run", "--no-progress", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run = tmp_path / "run"
    assert (run / "checkpoints" / "best.pt").is_file()
    saved = tomllib.loads((run / "spec.toml").read_text())
    assert saved["network"]["kind"] == "user"
    assert saved["network"]["encoder"] == "nets:Encoder"
    assert saved["network"]["encoder_args"] == {"width": 3}
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1]

    args = ("evaluate", "run", "--json", "-k", "2", "--split", "valid", "--no-progress")
    result = ppvae(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["split"] == "valid" and summary["num_samples"] == 2
    assert np.isfinite(summary["elbo"]) and summary["log_px"] >= summary["elbo"]

    # elsewhere, the run's networks cannot be imported: one sentence that says why
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = ppvae("evaluate", run, "--json", "-k", "2", "--no-progress", cwd=elsewhere)
    line = assert_error(result, "'nets' cannot be found", str(elsewhere))
    assert re.search(r"network\.(en|de)coder = 'nets:(En|De)coder'", line), line


def test_user_network_module_not_found_exits_2(tmp_path):
    (tmp_path / "spec.toml").write_text(SPEC_TOML)  # no nets.py beside it
    result = ppvae("train", "spec.toml", "--out", "run", "--no-progress", cwd=tmp_path)
    line = assert_error(result, "module 'nets' cannot be found", str(tmp_path))
    assert re.search(r"network\.(en|de)coder = 'nets:(En|De)coder'", line), line
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_conv_on_vector_data_exits_2(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "vectors.npz", x=rng.normal(size=(40, 6)).astype(np.float32))
    (tmp_path / "spec.toml").write_text(
        textwrap.dedent(
            """
            [data]
            kind = "npz"
            path = "vectors.npz"

            [model]
            kind = "vae"
            latent_dim = 2
            hidden = [8]

            [network]
            kind = "conv"
            channels = [4, 8]

            [likelihood]
            kind = "gaussian"
            """
        )
    )
    result = ppvae("train", "spec.toml", "--out", "run", "--no-progress", cwd=tmp_path)
    assert_error(result, "network.kind = 'conv' needs images", "(6,)", 'network.kind = "mlp"')


def test_kinds_network_lists_the_four_kinds(tmp_path):
    result = ppvae("kinds", "network", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert first.startswith("[network] kinds:")
    listed = {k.strip().removesuffix(" (default)") for k in first.split(":", 1)[1].split(",")}
    assert listed == {"mlp", "conv", "resnet", "user"}
    assert "mlp (default)" in first
    for key in ("channels = [32, 64]", "kernel_size = 4", "blocks = 1", "encoder_args = {}"):
        assert key in result.stdout, key
