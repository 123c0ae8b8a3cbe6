r"""Speed and memory of ppvae's importance-sampled log p(x) against two baselines.

One trained Bernoulli VAE (784-400-50, a plain PyroModule pair), one test set of ``--n``
points and ``--k`` importance samples per point, estimated three ways:

* ``ppvae``: :func:`ppvae.infer.importance.log_marginal_likelihood` (vectorized particle
  plate, chunks of ``--chunk-size`` samples, streaming log-sum-exp, k-hat/ESS/stderr);
* ``torch``: a hand-written vectorized estimator on the same networks in pure PyTorch
  (no Pyro), same batch and chunk sizes, streaming log-sum-exp, no diagnostics;
* ``pyro``: :class:`pyro.infer.Importance` (a Python loop over the K samples, one trace
  per sample, all traces kept). It is very slow, so it runs on ``--pyro-n`` points only
  (one point per run, as its weights are per trace) and its time is scaled per point.

Each estimator runs in its own subprocess so that its peak resident memory
(``resource.getrusage(...).ru_maxrss``; on CUDA also ``torch.cuda.max_memory_allocated``)
is its own; the table shows the peak and the peak above the process's baseline (after
imports, loading the networks and the data, and a warm-up run on one point). Timings
exclude start-up and the warm-up.

Data: ``binarized_mnist`` through :mod:`ppvae.data` (needs ``$PPVAE_DATA_DIR``); with
``--random-data``, or when it cannot be loaded, random binary images of the same shape
(timings are the same; the log-likelihoods are not meaningful then).

Usage::

    python benchmarks/importance.py --quick               # a smoke run, seconds
    python benchmarks/importance.py --n 1000 --k 5000     # the real comparison
    python benchmarks/importance.py --device cuda --state-dict vae.pt

The network is trained for ``--train-steps`` Adam steps of the ELBO (batch 100) unless
``--state-dict`` names a saved ``{"model": ..., "guide": ...}`` (``--save-state-dict``
writes one).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn

X_DIM, HIDDEN, Z_DIM = 784, 400, 50


class Decoder(PyroModule):
    """The model: z ~ N(0, I_50), x | z ~ Bernoulli(logits = MLP(z))."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(Z_DIM, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, X_DIM))

    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(Z_DIM), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.net(z)).to_event(1), obs=x)


class Encoder(PyroModule):
    """The guide: q(z | x) = N(mu(x), diag sigma(x)^2)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(X_DIM, HIDDEN), nn.ReLU())
        self.loc = nn.Linear(HIDDEN, Z_DIM)
        self.scale = nn.Linear(HIDDEN, Z_DIM)

    def params(self, x):
        h = self.body(x)
        return self.loc(h), nn.functional.softplus(self.scale(h)) + 1e-4

    def forward(self, x):
        loc, scale = self.params(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


# --------------------------------------------------------------------------------------
# data and training (parent process)


def load_test_data(n: int, random_data: bool, seed: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(train, test, description) as float32 {0, 1} tensors of shape [*, 784]."""
    if not random_data:
        try:
            from ppvae.data import DATASETS, load_data

            bundle = load_data(DATASETS.get("binarized_mnist")())
            return bundle.train.x, bundle.test.x[:n], "binarized_mnist (static)"
        except Exception as error:  # noqa: BLE001 - any failure falls back, loudly
            print(f"note: binarized_mnist unavailable ({error}); using random binary data")
    g = torch.Generator().manual_seed(seed)
    probs = torch.rand(1, X_DIM, generator=g) * 0.5
    train = torch.bernoulli(probs.expand(2000, X_DIM), generator=g)
    test = torch.bernoulli(probs.expand(n, X_DIM), generator=g)
    return train, test, "random binary"


def train(model, guide, data: torch.Tensor, steps: int, device) -> float:
    """Adam on the ELBO (Pyro's Trace_ELBO as a differentiable loss); returns seconds."""
    elbo = pyro.infer.Trace_ELBO()
    params = [*model.parameters(), *guide.parameters()]
    optim = torch.optim.Adam(params, lr=1e-3)
    start = time.perf_counter()
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        index = torch.randint(0, len(data), (100,), generator=g)
        optim.zero_grad()
        loss = elbo.differentiable_loss(model, guide, data[index].to(device)) / 100
        loss.backward()
        optim.step()
    return time.perf_counter() - start


# --------------------------------------------------------------------------------------
# the three estimators (child processes)


def run_ppvae(model, guide, x, args) -> torch.Tensor:
    from ppvae.infer.importance import log_marginal_likelihood

    result = log_marginal_likelihood(
        model,
        guide,
        x,
        num_samples=args.k,
        batch_size=args.batch_size,
        chunk_size=args.chunk_size,
        device=args.device,
    )
    return result.log_px


@torch.no_grad()
def run_torch(model, guide, x, args) -> torch.Tensor:
    """Vectorized importance sampling in plain PyTorch on the same networks."""
    out = []
    normal = torch.distributions.Normal
    for start in range(0, len(x), args.batch_size):
        xb = x[start : start + args.batch_size].to(args.device)
        loc, scale = guide.params(xb)
        run_max = torch.full((len(xb),), -math.inf, dtype=torch.float64, device=xb.device)
        run_sum = torch.zeros(len(xb), dtype=torch.float64, device=xb.device)
        for c0 in range(0, args.k, args.chunk_size):
            c = min(args.chunk_size, args.k - c0)
            z = loc + scale * torch.randn(c, *loc.shape, device=xb.device)
            log_q = normal(loc, scale).log_prob(z).sum(-1)
            log_pz = normal(0.0, 1.0).log_prob(z).sum(-1)
            logits = model.net(z)
            log_px_z = -nn.functional.binary_cross_entropy_with_logits(
                logits, xb.expand_as(logits), reduction="none"
            ).sum(-1)
            log_w = (log_px_z + log_pz - log_q).double()
            new_max = torch.maximum(run_max, log_w.max(0).values)
            run_sum = run_sum * torch.exp(run_max - new_max) + torch.exp(log_w - new_max).sum(0)
            run_max = new_max
        out.append((run_max + torch.log(run_sum) - math.log(args.k)).cpu())
    return torch.cat(out)


@torch.no_grad()
def run_pyro(model, guide, x, args) -> torch.Tensor:
    """pyro.infer.Importance, one data point at a time (its weights are per trace)."""
    out = []
    for i in range(min(args.pyro_n, len(x))):
        xi = x[i : i + 1].to(args.device)
        posterior = pyro.infer.Importance(model, guide, num_samples=args.k).run(xi)
        out.append(posterior.get_log_normalizer().reshape(1).cpu().double())
    return torch.cat(out)


ESTIMATORS = {"ppvae": run_ppvae, "torch": run_torch, "pyro": run_pyro}


def _max_rss_mb() -> float:
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def child(args) -> None:
    """Run one estimator and print one JSON line with its timing and memory."""
    torch.manual_seed(args.seed)
    if args.no_validation:
        pyro.enable_validation(False)
    saved = torch.load(args.state_file, map_location=args.device)
    model, guide = Decoder().to(args.device), Encoder().to(args.device)
    model.load_state_dict(saved["model"])
    guide.load_state_dict(saved["guide"])
    model.eval()
    guide.eval()
    x = saved["x"]
    if args.phase == "pyro":
        x = x[: args.pyro_n]
    # warm-up on one point (first-call costs, lazy imports such as arviz for k-hat)
    warm = argparse.Namespace(**{**vars(args), "k": min(args.k, 30), "pyro_n": 1})
    warm.chunk_size = min(warm.chunk_size, warm.k)
    ESTIMATORS[args.phase](model, guide, x[:1], warm)
    baseline = _max_rss_mb()
    cuda = torch.device(args.device).type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    log_px = ESTIMATORS[args.phase](model, guide, x, args)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    record = {
        "phase": args.phase,
        "points": len(log_px),
        "seconds": seconds,
        "rss_peak_mb": _max_rss_mb(),
        "rss_baseline_mb": baseline,
        "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "log_px": log_px.tolist(),
    }
    print("RESULT " + json.dumps(record))


# --------------------------------------------------------------------------------------
# parent


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="test points (default 1000)")
    parser.add_argument("--k", type=int, default=5000, help="importance samples (default 5000)")
    parser.add_argument("--batch-size", type=int, default=100, help="points per trace")
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        help="samples per vectorized trace (default: 2**15 // batch-size)",
    )
    parser.add_argument("--pyro-n", type=int, default=2, help="points for pyro.infer.Importance")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--train-steps", type=int, default=500)
    parser.add_argument("--state-dict", type=Path, default=None, help="load trained networks")
    parser.add_argument("--save-state-dict", type=Path, default=None)
    parser.add_argument("--random-data", action="store_true", help="random binary images")
    parser.add_argument("--no-validation", action="store_true", help="pyro validation off")
    parser.add_argument("--phases", default="ppvae,torch,pyro", help="comma-separated")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes for a smoke run (n=20, k=100, ...)"
    )
    parser.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--state-file", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.k, args.train_steps, args.pyro_n = 20, 100, 20, 1
        args.batch_size = min(args.batch_size, 10)
    args.batch_size = min(args.batch_size, args.n)
    if args.chunk_size is None:
        args.chunk_size = max(1, 2**15 // args.batch_size)
    args.chunk_size = min(args.chunk_size, args.k)
    return args


def _child_argv(args, phase: str, state_file: str) -> list[str]:
    argv = [
        sys.executable,
        os.path.abspath(__file__),
        "--phase",
        phase,
        "--state-file",
        state_file,
        "--k",
        str(args.k),
        "--n",
        str(args.n),
        "--batch-size",
        str(args.batch_size),
        "--chunk-size",
        str(args.chunk_size),
        "--pyro-n",
        str(args.pyro_n),
        "--device",
        args.device,
        "--seed",
        str(args.seed),
    ]
    return argv + (["--no-validation"] if args.no_validation else [])


def main(argv=None) -> None:
    args = parse(argv)
    if args.phase:
        child(args)
        return
    torch.manual_seed(args.seed)
    train_x, test_x, what = load_test_data(args.n, args.random_data, args.seed)
    model, guide = Decoder().to(args.device), Encoder().to(args.device)
    if args.state_dict:
        saved = torch.load(args.state_dict, map_location=args.device)
        model.load_state_dict(saved["model"])
        guide.load_state_dict(saved["guide"])
        trained = f"loaded from {args.state_dict}"
    else:
        seconds = train(model, guide, train_x, args.train_steps, args.device)
        trained = f"{args.train_steps} Adam steps of the ELBO ({seconds:.1f} s)"
    state = {"model": model.state_dict(), "guide": guide.state_dict()}
    if args.save_state_dict:
        torch.save(state, args.save_state_dict)
    print(f"data: {what}, {len(test_x)} test points; network 784-400-50, {trained}")
    print(
        f"K = {args.k}, batch {args.batch_size}, chunk {args.chunk_size}, device {args.device}, "
        f"pyro validation {'off' if args.no_validation else 'on'}; "
        f"pyro.infer.Importance on {min(args.pyro_n, len(test_x))} point(s), time scaled"
    )
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        state_file = os.path.join(tmp, "state.pt")
        torch.save({**state, "x": test_x.cpu()}, state_file)
        for phase in args.phases.split(","):
            proc = subprocess.run(
                _child_argv(args, phase, state_file), capture_output=True, text=True
            )
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                print(f"{phase}: failed\n{proc.stderr[-2000:]}")
                continue
            results[phase] = json.loads(lines[-1][len("RESULT ") :])
    if not results:
        return
    n = len(test_x)
    per_point = {p: r["seconds"] / r["points"] for p, r in results.items()}
    ref = "torch" if "torch" in results else next(iter(results))
    print()
    header = (
        f"{'estimator':<10}{'points':>8}{'seconds':>10}{'s/point':>10}{f'est. s for {n}':>14}"
        f"{'x ' + ref:>9}{'RSS peak MB':>13}{'RSS +MB':>9}{'CUDA MB':>9}{'mean log p(x)':>15}"
    )
    print(header)
    print("-" * len(header))
    for phase, r in results.items():
        cuda = f"{r['cuda_peak_mb']:.0f}" if r["cuda_peak_mb"] is not None else "-"
        mean = sum(r["log_px"]) / len(r["log_px"])
        print(
            f"{phase:<10}{r['points']:>8}{r['seconds']:>10.2f}{per_point[phase]:>10.4f}"
            f"{per_point[phase] * n:>14.1f}{per_point[phase] / per_point[ref]:>9.2f}"
            f"{r['rss_peak_mb']:>13.0f}{r['rss_peak_mb'] - r['rss_baseline_mb']:>9.0f}"
            f"{cuda:>9}{mean:>15.3f}"
        )
    if "pyro" in results and "ppvae" in results:
        m = results["pyro"]["points"]
        ours = results["ppvae"]["log_px"][:m]
        print(
            f"\non the first {m} point(s): ppvae {[round(v, 3) for v in ours]}, "
            f"pyro.infer.Importance {[round(v, 3) for v in results['pyro']['log_px']]}"
        )
    if "pyro" in results:
        print(
            "pyro.infer.Importance ran on fewer points; its 'est. s' column scales its time "
            "per point to all points."
        )


if __name__ == "__main__":
    main()
