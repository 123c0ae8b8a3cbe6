"""The runnable examples and README's Python snippet run and print sensible numbers."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def _run(repo, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, *args], cwd=repo, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_custom_model_trains_and_log_px_exceeds_its_elbo(repo):
    text = _run(repo, "examples/custom_model.py", "--epochs", "4", "--num-samples", "200")
    first, last = map(float, re.search(r"epoch 1 (\S+) -> epoch \d+ (\S+) nats", text).groups())
    assert last > first  # the validation ELBO improves
    log_px = float(re.search(r"test log p\(x\) per image: (\S+)", text).group(1))
    assert log_px > last - 1.0  # log p(x) >= ELBO up to Monte Carlo noise (test vs valid)
    ess = float(re.search(r"median ESS (\S+) of 200", text).group(1))
    assert 1.0 <= ess <= 200.0


def test_add_a_prior_registers_and_trains(repo, tmp_path):
    text = _run(repo, "examples/add_a_prior.py", "--epochs", "2", "--out", str(tmp_path / "run"))
    assert "LaplacePrior(scale=0.7)" in text
    spec = (tmp_path / "run" / "spec.toml").read_text()
    assert 'kind = "laplace"' in spec and "scale = 0.7" in spec


def test_compare_objectives_prints_one_row_per_objective(repo):
    text = _run(
        repo,
        "examples/compare_objectives.py",
        "--epochs",
        "1",
        "--num-samples",
        "20",
        "--limit",
        "100",
    )
    rows = [
        line.split()
        for line in text.splitlines()
        if re.match(r"^(elbo|meanfield|iwae|renyi)", line)
    ]
    assert len(rows) == 5
    for row in rows:
        elbo, log_px = float(row[-3]), float(row[-2])
        assert log_px > elbo - 0.05  # K = 20 importance samples tighten every bound


def test_readme_python_snippet_runs(repo):
    readme = (repo / "README.md").read_text()
    section = readme[readme.index("## Your own model") : readme.index("## Your own data")]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 2  # the program with fit and the evaluator, then init / step
    code = "\n".join(blocks)
    code = code.replace("epochs=20", "epochs=2").replace("range(5)", "range(2)")
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-2000:]
    pattern = r"log p\(x\) = (\S+) \+- (\S+) nats, median ESS (\S+), share of k-hat > 0.7: (\S+)"
    mean, sem, ess, bad = map(float, re.search(pattern, out.stdout).groups())
    assert -64 * 0.7 < mean < 0 and sem > 0 and 1 <= ess <= 1000 and 0 <= bad <= 1
    # the user loop: two epochs of ceil(N / 128) steps, a finite loss per data point
    steps, loss = re.search(r"^(\d+) (\S+)$", out.stdout, re.M).groups()
    assert int(steps) % 2 == 0 and int(steps) >= 2 and 0 < float(loss) < 64 * 0.7


def test_readme_user_network_snippet_trains(repo, tmp_path):
    """README's "Images as images": its nets.py and its [network] table train the conv
    digits spec with the user's networks, from the folder holding nets.py."""
    import tomllib

    readme = (repo / "README.md").read_text()
    section = readme[readme.index("## Images as images") : readme.index("## Specs and the")]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    (table,) = re.findall(r"```toml\n(.*?)```", section, re.S)
    (tmp_path / "nets.py").write_text(code)
    network = tomllib.loads(table)["network"]
    spec = tomllib.loads((repo / "models" / "conv_vae_digits.toml").read_text())
    spec["network"] = network
    spec["data"]["limit"] = 200
    spec["train"].update(epochs=2, progress=False)
    import tomli_w

    (tmp_path / "spec.toml").write_text(tomli_w.dumps(spec))
    out = subprocess.run(
        [sys.executable, "-m", "ppvae", "train", "spec.toml", "--out", "run"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    import os

    from ppvae.run import load_run

    here = os.getcwd()
    os.chdir(tmp_path)  # the spec names nets:Encoder, found in the working directory
    try:
        run = load_run(tmp_path / "run")
    finally:
        os.chdir(here)
    assert type(run.guide.posterior.trunk.net).__name__ == "Encoder"
    assert type(run.model.decoder.net).__name__ == "Decoder"
    assert run.model.generate(3).shape == (3, 64)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2


def test_readme_share_and_track_snippet_runs(repo, tmp_path):
    readme = (repo / "README.md").read_text()
    section = readme[readme.index("## Share and track") : readme.index("## Data\n")]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1
    code = blocks[0].replace('"epochs": 10', '"epochs": 2')
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-2000:]
    a, b = map(
        float,
        re.search(r"log p\(x\) (\S+) from the run, (\S+) from the export", out.stdout).groups(),
    )
    assert a == b and -64 * 0.7 < a < 0
    assert "identical: True" in out.stdout
    assert (tmp_path / "exports" / "shared-vae" / "model.safetensors").is_file()
    assert any((tmp_path / "runs" / "shared-vae" / "tensorboard").iterdir())
