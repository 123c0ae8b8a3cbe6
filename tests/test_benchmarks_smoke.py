"""Smoke tests of the benchmark scripts at their ``--quick`` size.

They check that the scripts run end to end and write the JSON the README documents, with
finite numbers. Speed targets are never asserted here: timings depend on the machine.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.data]


def _run(repo: Path, data_dir: Path, out: Path, script: str, *args: str):
    # one thread: no timing is asserted, and idle threads spinning on a busy CI machine
    # would only burn its cores
    env = {**os.environ, "PPVAE_DATA_DIR": str(data_dir), "MPLBACKEND": "Agg"}
    env["OMP_NUM_THREADS"] = "1"
    argv = [sys.executable, str(repo / "benchmarks" / script), "--quick", "--out", str(out)]
    proc = subprocess.run(
        [*argv, *args], capture_output=True, text=True, env=env, cwd=repo, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def _positive(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_run_quick_writes_the_speed_table(repo, data_dir, tmp_path):
    _run(repo, data_dir, tmp_path, "run.py", "--device", "cpu")
    report = json.loads((tmp_path / "run-cpu.json").read_text())
    table = (tmp_path / "run-cpu.md").read_text()
    assert table.count("| ELBO (1 sample) |") == 4
    assert table.count("| IWAE k=50 |") == 3
    assert table.count("| conv ELBO (1 sample) |") == 3
    # the rows of issue 12, the target shown on the user pair's rows
    for row in (
        "| ELBO (1 sample) | ppvae fit, user PyroModule pair |",
        "| ELBO (1 sample) | ppvae fit, zoo VAE |",
        "| ELBO (1 sample) | hand-written torch |",
        "| ELBO (1 sample) | pyro SVI |",
        "| IWAE k=50 | ppvae fit, user PyroModule pair |",
        "| IWAE k=50 | ppvae fit, zoo VAE |",
        "| IWAE k=50 | hand-written torch |",
        "| conv ELBO (1 sample) | ppvae fit, user PyroModule pair |",
        "| conv ELBO (1 sample) | ppvae fit, zoo VAE |",
        "| conv ELBO (1 sample) | hand-written torch |",
        "| ppvae log_marginal_likelihood, user PyroModule pair |",
        "| ppvae log_marginal_likelihood, zoo VAE |",
        "| hand-written torch (vectorized) |",
    ):
        assert table.count(row) == 1, row
    for title, target in (
        ("ELBO (1 sample)", "1.10"),
        ("IWAE k=50", "1.15"),
        ("conv ELBO (1 sample)", "1.15"),
    ):
        prefix = f"| {title} | ppvae fit, user PyroModule pair |"
        line = next(ln for ln in table.splitlines() if ln.startswith(prefix))
        assert f"| <= {target} |" in line
    for key in (
        "machine",
        "config",
        "targets",
        "targets_check",
        "matmul_peak",
        "training",
        "evaluation",
        "memory",
    ):
        assert key in report
    assert report["targets"] == {"elbo": 1.10, "iwae50": 1.15, "evaluation": 1.10, "conv": 1.15}
    for key in ("date", "cpu", "cpu_count", "torch", "pyro"):
        assert report["machine"][key]
    assert _positive(report["matmul_peak"]["gflops"])

    expected = {
        "elbo": {"ppvae_user", "ppvae_zoo", "torch", "pyro_svi"},
        "iwae50": {"ppvae_user", "ppvae_zoo", "torch"},
        # issue 17: the conv_vae_bmnist network, user pair and zoo VAE against hand-written
        "conv": {"ppvae_user", "ppvae_zoo", "torch"},
    }
    ppvae_rows = {"ppvae_user", "ppvae_zoo"}
    for workload, names in expected.items():
        t = report["training"][workload]
        assert set(t["variants"]) == names
        for v in t["variants"].values():
            for key in ("median_seconds", "seconds_per_epoch", "ms_per_step", "gflops"):
                assert _positive(v[key]), (workload, key, v[key])
            assert all(_positive(loss) for loss in v["loss"])
        for name in ppvae_rows:
            assert _positive(t["variants"][name]["median_call_seconds"])
        assert set(t["ratios"]) == {f"{n}/torch" for n in names - {"torch"}} | {
            f"{n}_call/torch" for n in ppvae_rows
        }
        assert all(_positive(r) for r in t["ratios"].values())
        # same weights, batch, seed and objective: every variant's first step has the
        # same loss (the script stops otherwise), and the repeats' losses agree
        assert set(t["first_step"]["losses"]) == names
        assert t["first_step"]["max_rel_diff"] <= report["config"]["first_step_rtol"]
        assert t["loss_max_rel_diff"] < 1e-3
        check = report["targets_check"][workload]
        assert check["target"] == report["targets"][workload]
        assert isinstance(check["met"], bool) and isinstance(check["zoo_met"], bool)
    conv = report["training"]["conv"]
    assert conv["steps_per_repeat"] == report["config"]["conv_steps"] == 2
    assert conv["steps_per_epoch"] == 391 and _positive(conv["flops_per_point"])
    assert "conv_vae_bmnist" in conv["network"]

    ev = report["evaluation"]
    assert set(ev["variants"]) == {"ppvae_user", "ppvae_zoo", "torch"}
    assert set(ev["ratios"]) == {"ppvae_user/torch", "ppvae_zoo/torch"}
    assert all(_positive(r) for r in ev["ratios"].values())
    log_px = [v["mean_log_px"] for v in ev["variants"].values()]
    assert all(math.isfinite(x) and x < 0 for x in log_px)
    assert max(log_px) - min(log_px) < 2.0  # the same networks and data, K = 100
    assert report["targets_check"]["evaluation"]["target"] == 1.10

    assert set(report["memory"]) == {
        "elbo/ppvae_user",
        "elbo/ppvae_zoo",
        "elbo/torch",
        "conv/ppvae_user",
        "evaluation/ppvae_user",
    }
    for record in report["memory"].values():
        assert _positive(record["rss_peak_mb"])
        assert record["rss_above_baseline_mb"] >= 0


def test_bmnist_quick_writes_the_table_and_resumes(repo, data_dir, tmp_path):
    args = ("--models", "vae_bmnist", "--device", "cpu")
    _run(repo, data_dir, tmp_path, "bmnist.py", *args)
    report = json.loads((tmp_path / "bmnist.json").read_text())
    assert "| vae_bmnist |" in (tmp_path / "bmnist.md").read_text()
    assert [r["model"] for r in report["models"]] == ["vae_bmnist"]
    r = report["models"][0]
    for key in ("nll", "nll_sem", "train_seconds", "eval_seconds", "ess_median"):
        assert _positive(r[key]), (key, r[key])
    assert math.isfinite(r["elbo"]) and r["nll"] <= -r["elbo"] + 1e-6  # log-mean-exp >= mean
    assert 0.0 <= r["khat_frac_above_0_7"] <= 1.0
    assert (r["num_samples"], r["test_points"], r["epochs"], r["best_epoch"]) == (50, 500, 1, 1)
    assert r["published_nll"] == 88.56 and r["target_nll"] == 88.6
    run_dir = tmp_path / "runs" / "vae_bmnist"
    assert (run_dir / "checkpoints" / "best.pt").is_file()
    assert (run_dir / "evaluation" / "test-K50.json").is_file()
    assert (tmp_path / "vae_bmnist.json").is_file()

    # a second run skips the finished model instead of training it again
    proc = _run(repo, data_dir, tmp_path, "bmnist.py", *args)
    assert "done already" in proc.stdout
    assert json.loads((tmp_path / "bmnist.json").read_text())["models"][0]["nll"] == r["nll"]
