"""A latent variable model written from scratch as a Pyro program, trained and evaluated
with ppvae.

The model is not a VAE from the zoo: it is sparse coding, a linear dictionary with
heavy-tailed (Laplace) codes and a learned per-feature noise scale,

    z_n ~ Laplace(0, 1)^K                        n = 1..N   (sparse codes)
    x_n ~ Normal(W z_n + b, diag(sigma)^2)       (W, b, sigma learned: PyroParam, nn.Linear)

with an amortized Gaussian guide q(z_n | x_n) (an MLP). Nothing below imports ppvae except
the two calls that train and evaluate it: ppvae works on any pair of Pyro programs that
observe their data in a plate named "data".

Run:  python examples/custom_model.py [--epochs 30]
"""

from __future__ import annotations

import argparse

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.nn import PyroModule, PyroParam
from sklearn.datasets import load_digits
from torch import nn
from torch.distributions import constraints

import ppvae


class SparseCoding(PyroModule):
    """p(z) p(x | z): a linear dictionary with Laplace codes and learned noise scales."""

    def __init__(self, data_dim: int, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.data_dim = data_dim
        self.dictionary = nn.Linear(latent_dim, data_dim)
        self.sigma = PyroParam(torch.full((data_dim,), 0.2), constraint=constraints.positive)

    def forward(self, x: torch.Tensor) -> None:
        sigma = self.sigma
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Laplace(0.0, 1.0).expand([self.latent_dim]).to_event(1))
            pyro.sample("x", dist.Normal(self.dictionary(z), sigma).to_event(1), obs=x)


class SparseCodingGuide(PyroModule):
    """q(z | x): an MLP encoder giving a diagonal Gaussian."""

    def __init__(self, data_dim: int, latent_dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(data_dim, hidden), nn.ReLU(), nn.Linear(hidden, 2 * latent_dim)
        )
        self.latent_dim = latent_dim

    def forward(self, x: torch.Tensor) -> None:
        loc, raw = self.encoder(x).split(self.latent_dim, dim=-1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, F.softplus(raw) + 1e-4).to_event(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--latent-dim", type=int, default=16)
    parser.add_argument("--num-samples", type=int, default=500)
    args = parser.parse_args()

    x = torch.tensor(load_digits().data, dtype=torch.float32) / 16.0
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, test = x[perm[:1500]], x[perm[1500:]]

    model = SparseCoding(x.shape[1], args.latent_dim)
    guide = SparseCodingGuide(x.shape[1], args.latent_dim)
    history = ppvae.fit(
        model,
        guide,
        train,
        objective="elbo",
        epochs=args.epochs,
        batch_size=100,
        lr=3e-3,
        valid_data=test,
        seed=0,
        progress=False,
    )
    print(
        f"valid ELBO per image: epoch 1 {history['valid_elbo'][0]:.2f} -> "
        f"epoch {len(history)} {history['valid_elbo'][-1]:.2f} nats"
    )

    result = ppvae.log_marginal_likelihood(model, guide, test, num_samples=args.num_samples)
    print(
        f"test log p(x) per image: {result.mean:.2f} +- {result.sem:.2f} nats "
        f"(K = {result.num_samples} importance samples)"
    )
    print(
        f"median ESS {result.ess.median():.1f} of {result.num_samples}; "
        f"share of points with k-hat > 0.7: {(result.khat > 0.7).double().mean():.3f}"
    )


if __name__ == "__main__":
    main()
