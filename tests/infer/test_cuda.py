"""ppvae on a CUDA GPU: closed forms, training, checkpoints across devices, determinism.

Every test here needs a CUDA device and skips cleanly without one (CI never has one);
run them with ``pytest -m cuda`` on a machine with a GPU.
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.nn import PyroModule

from ppvae.checkpoint import load_checkpoint
from ppvae.evaluate import evaluate_run
from ppvae.infer.bounds import IwaeConfig
from ppvae.infer.importance import log_marginal_likelihood
from ppvae.infer.objectives import build_objective
from ppvae.infer.train import fit
from ppvae.run import load_run, train_spec
from ppvae.spec import parse_spec

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

REPO = Path(__file__).resolve().parents[2]


def _ppca_on(p, device: str):
    p = copy.copy(p)
    for name in ("W", "b", "post_cov", "post_tril", "gain"):
        setattr(p, name, getattr(p, name).to(device))
    return p


def _cuda_model(p):
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(p.k, device=x.device), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ p.W.T + p.b, p.sigma).to_event(1), obs=x)

    return model


def test_exact_posterior_gives_the_closed_form_log_px_on_cuda(ppca):
    cpu = ppca
    x = cpu.sample(64)
    gpu = _ppca_on(cpu, "cuda")
    result = log_marginal_likelihood(
        _cuda_model(gpu), gpu.exact_guide, x.cuda(), num_samples=50, device="cuda"
    )
    assert result.log_px.shape == (64,)
    assert torch.allclose(result.log_px.cpu(), cpu.log_px(x), atol=1e-3, rtol=0)
    assert torch.allclose(result.ess.cpu(), torch.full((64,), 50.0, dtype=torch.float64), rtol=1e-3)


def test_iwae_bound_of_the_exact_posterior_is_log_px_on_cuda(ppca):
    cpu = ppca
    x = cpu.sample(32)
    gpu = _ppca_on(cpu, "cuda")
    objective = build_objective(IwaeConfig(num_particles=7))
    loss = objective.loss(_cuda_model(gpu), gpu.exact_guide, x.cuda())
    assert loss.device.type == "cuda"
    # the loss is the negative bound summed over the batch; exact proposal: it is exact
    assert math.isclose(loss.item(), -cpu.log_px(x).sum().item(), rel_tol=1e-4)


class _LinearModel(PyroModule):
    """PPCA with a learnable decoder; its prior is built on the data's device."""

    def __init__(self, d: int, k: int) -> None:
        super().__init__()
        self.k = k
        self.W = torch.nn.Parameter(0.1 * torch.randn(d, k))
        self.b = torch.nn.Parameter(torch.zeros(d))

    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.k), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T + self.b, 0.5).to_event(1), obs=x)


class _LinearGuide(PyroModule):
    def __init__(self, d: int, k: int) -> None:
        super().__init__()
        self.enc = torch.nn.Linear(d, 2 * k)

    def forward(self, x):
        loc, log_scale = self.enc(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


def test_fit_on_cuda_keeps_parameters_there_and_lowers_the_loss(ppca):
    x = ppca.sample(512)
    model, guide = _LinearModel(ppca.d, ppca.k), _LinearGuide(ppca.d, ppca.k)
    history = fit(model, guide, x, epochs=60, batch_size=64, lr=2e-2, device="cuda", progress=False)
    params = [*model.parameters(), *guide.parameters()]
    assert all(q.device.type == "cuda" for q in params)
    losses = history["train_loss"]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 10.0
    # the learned marginal approaches the true one: mean log p(x) under the fitted decoder
    fitted = copy.copy(ppca)
    fitted.W, fitted.b = model.W.detach().cpu(), model.b.detach().cpu()
    assert fitted.log_px(x).mean() > ppca.log_px(x).mean() - 0.15


def _spec(device: str, **train):
    return parse_spec(
        {
            "data": {"binarize": "dynamic", "limit": 256},
            "model": {"latent_dim": 4, "hidden": [32]},
            "train": {
                "epochs": 3,
                "batch_size": 64,
                "progress": False,
                "device": device,
                **train,
            },
        }
    )


def test_a_cuda_run_loads_and_evaluates_on_cpu_and_cuda(tmp_path):
    run, history = train_spec(_spec("cuda"), tmp_path / "run")
    assert len(history.records) == 3
    assert all(math.isfinite(r["valid_elbo"]) for r in history.records)
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert all(t.device.type == "cpu" for t in state["model"].values())  # portable

    on_cpu = load_run(tmp_path / "run", device="cpu")
    on_gpu = load_run(tmp_path / "run", device="cuda")
    for (name, a), (_, b) in zip(
        on_cpu.model.state_dict().items(), on_gpu.model.state_dict().items(), strict=True
    ):
        assert a.device.type == "cpu" and b.device.type == "cuda"
        assert torch.equal(a, b.cpu()), name

    torch.manual_seed(0)
    a = evaluate_run(on_cpu, split="test", num_samples=200)
    b = evaluate_run(on_gpu, split="test", num_samples=200)
    # the same weights, independent draws: the means agree within a few standard errors
    tol = 4 * math.hypot(a["log_px_sem"], b["log_px_sem"]) + 0.05
    assert abs(a["nll"] - b["nll"]) < tol, (a["nll"], b["nll"], tol)


def test_cpu_and_cuda_training_reach_the_same_elbo(tmp_path):
    """Different random streams, same model and budget: the validation ELBOs after three
    epochs agree to within a nat (the seed spread on CPU is a fraction of that)."""
    _, cpu = train_spec(_spec("cpu"), tmp_path / "cpu")
    _, gpu = train_spec(_spec("cuda"), tmp_path / "gpu")
    a, b = cpu.records[-1]["valid_elbo"], gpu.records[-1]["valid_elbo"]
    assert abs(a - b) < 1.0, (a, b)


def _cli_train(out: Path, *extra: str) -> list[dict]:
    env = {**os.environ, "MPLBACKEND": "Agg"}
    argv = [
        sys.executable, "-m", "ppvae", "train", str(REPO / "models" / "vae.toml"),
        "--no-progress", "--device", "cuda", "--deterministic", "--out", str(out),
        "--set", "train.epochs=2", "--set", "data.limit=256", "--set", "model.hidden=[32]",
        *extra,
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def test_deterministic_cuda_runs_are_bit_identical_across_processes(tmp_path):
    a = _cli_train(tmp_path / "a")
    b = _cli_train(tmp_path / "b")
    assert len(a) == 2 and a == b
    wa = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")["model"]
    wb = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_validation_and_seeded_blocks_leave_the_gpu_random_stream_alone(ppca):
    """``mean_elbo`` seeds its draws; the training stream on the GPU must go on as it was
    (were it re-seeded, every epoch would repeat the previous one's noise)."""
    from ppvae.infer.rng import seeded
    from ppvae.infer.train import mean_elbo

    model, guide = _LinearModel(ppca.d, ppca.k).cuda(), _LinearGuide(ppca.d, ppca.k).cuda()
    x = ppca.sample(100).cuda()
    torch.cuda.manual_seed(123)
    before = torch.cuda.get_rng_state()
    a = mean_elbo(model, guide, x, batch_size=32)
    assert torch.equal(torch.cuda.get_rng_state(), before)
    assert mean_elbo(model, guide, x, batch_size=32) == a  # seeded: the same draws
    with seeded(5, "cuda"):
        first = torch.randn(3, device="cuda")
    assert torch.equal(torch.cuda.get_rng_state(), before)
    with seeded(5, "cuda"):
        assert torch.equal(torch.randn(3, device="cuda"), first)


@pytest.mark.parametrize(
    ("spec_file", "extra"),
    [
        ("conv_vae_digits.toml", []),
        ("conv_vae_digits.toml", ["network.kind=resnet"]),
        (
            "m2_digits.toml",
            ["network.kind=conv", "network.channels=[8, 16]", "model.num_labels=50"],
        ),
    ],
)
def test_image_networks_train_on_cuda_and_evaluate_alike_on_cpu(tmp_path, spec_file, extra):
    """Conv and residual networks (a VAE, and M2 with its ten classes enumerated through
    the transposed convolutions) train on the GPU; the run loads on either device with the
    same weights, and their log p(x) estimates agree within their standard errors."""
    from ppvae.spec import load_spec

    overrides = ["train.epochs=2", "data.limit=300", "train.device=cuda", "train.progress=false"]
    spec = load_spec(REPO / "models" / spec_file, [*overrides, *extra])
    _, history = train_spec(spec, tmp_path / "run")
    assert all(math.isfinite(r["valid_elbo"]) for r in history.records)
    on_cpu = load_run(tmp_path / "run", device="cpu")
    on_gpu = load_run(tmp_path / "run", device="cuda")
    for (name, a), (_, b) in zip(
        on_cpu.model.state_dict().items(), on_gpu.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b.cpu()), name
    torch.manual_seed(0)
    a = evaluate_run(on_cpu, split="test", num_samples=100)
    b = evaluate_run(on_gpu, split="test", num_samples=100)
    tol = 4 * math.hypot(a["log_px_sem"], b["log_px_sem"]) + 0.05
    assert abs(a["nll"] - b["nll"]) < tol, (a["nll"], b["nll"], tol)
