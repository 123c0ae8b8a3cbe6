"""Small models with closed forms for the importance-sampling and bound tests.

* :class:`PPCA`: probabilistic PCA, z ~ N(0, I_k), x | z ~ N(W z + b, sigma^2 I_d), with
  the exact marginal log N(x; b, W W^T + sigma^2 I) and the exact Gaussian posterior.
* :class:`TwoSites`: two scalar latents z1, z2 ~ N(0, 1), x ~ N(a z1 + c z2, sigma^2),
  with the exact posterior written as q(z1 | x) q(z2 | z1, x).
* :class:`GlobalMean`: a global mean mu ~ N(0, s0^2) outside the data plate,
  z_i ~ N(mu, 1), x_i ~ N(z_i, sigma^2); per-point marginal N(0, s0^2 + 1 + sigma^2).
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.nn import PyroModule


class PPCA:
    def __init__(self, d: int = 3, k: int = 2, sigma: float = 0.5, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.d, self.k, self.sigma = d, k, sigma
        self.W = torch.randn(d, k, generator=g)
        self.b = torch.randn(d, generator=g)
        precision = torch.eye(k) + self.W.T @ self.W / sigma**2
        self.post_cov = torch.linalg.inv(precision)
        self.post_tril = torch.linalg.cholesky(self.post_cov)
        self.gain = self.W @ self.post_cov / sigma**2  # (d, k): mu = (x - b) @ gain

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(self.k), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T + self.b, self.sigma).to_event(1), obs=x)

    def post_loc(self, x):
        return (x - self.b) @ self.gain

    def exact_guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(self.post_loc(x), scale_tril=self.post_tril))

    def scaled_guide(self, factor: float):
        """The posterior with its scale multiplied by ``factor``."""

        def guide(x):
            with pyro.plate("data", x.shape[0]):
                pyro.sample(
                    "z",
                    dist.MultivariateNormal(self.post_loc(x), scale_tril=factor * self.post_tril),
                )

        return guide

    def prior_guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros(self.k), 1.0).to_event(1))

    def log_px(self, x):
        cov = self.W @ self.W.T + self.sigma**2 * torch.eye(self.d)
        return dist.MultivariateNormal(self.b, covariance_matrix=cov).log_prob(x).double()

    def sample(self, n: int, seed: int = 1):
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.k, generator=g)
        return z @ self.W.T + self.b + self.sigma * torch.randn(n, self.d, generator=g)


class PPCAModules:
    """PPCA as a PyroModule pair whose guide starts at the exact posterior and whose
    decoder and encoder parameters are learnable."""

    def __init__(self, ppca: PPCA) -> None:
        self.ppca = ppca
        p = ppca

        class Model(PyroModule):
            def __init__(self):
                super().__init__()
                self.W = torch.nn.Parameter(p.W.clone())
                self.b = torch.nn.Parameter(p.b.clone())

            def forward(self, x):
                with pyro.plate("data", x.shape[0]):
                    z = pyro.sample("z", dist.Normal(torch.zeros(p.k), 1.0).to_event(1))
                    loc = z @ self.W.T + self.b
                    pyro.sample("x", dist.Normal(loc, p.sigma).to_event(1), obs=x)

        class Guide(PyroModule):
            def __init__(self):
                super().__init__()
                self.gain = torch.nn.Parameter(p.gain.clone())
                self.shift = torch.nn.Parameter(p.b.clone())
                self.tril = torch.nn.Parameter(p.post_tril.clone())

            def forward(self, x):
                with pyro.plate("data", x.shape[0]):
                    loc = (x - self.shift) @ self.gain
                    pyro.sample("z", dist.MultivariateNormal(loc, scale_tril=self.tril))

        self.model = Model()
        self.guide = Guide()


class TwoSites:
    def __init__(self, a: float = 1.5, c: float = -0.7, sigma: float = 0.6) -> None:
        self.a, self.c, self.sigma = a, c, sigma
        v = torch.tensor([a, c])
        cov = torch.linalg.inv(torch.eye(2) + torch.outer(v, v) / sigma**2)
        self.cov = cov
        self.gain = cov @ v / sigma**2  # posterior mean = gain * x

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(0.0, 1.0))
            z2 = pyro.sample("z2", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(self.a * z1 + self.c * z2, self.sigma), obs=x)

    def exact_guide(self, x):
        s11, s12, s22 = self.cov[0, 0], self.cov[0, 1], self.cov[1, 1]
        m1, m2 = self.gain[0] * x, self.gain[1] * x
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(m1, s11.sqrt()))
            loc2 = m2 + s12 / s11 * (z1 - m1)
            pyro.sample("z2", dist.Normal(loc2, (s22 - s12**2 / s11).sqrt()))

    def log_px(self, x):
        var = self.a**2 + self.c**2 + self.sigma**2
        return dist.Normal(0.0, math.sqrt(var)).log_prob(x).double()


class GlobalMean:
    def __init__(self, s0: float = 0.8, sigma: float = 0.5) -> None:
        self.s0, self.sigma = s0, sigma

    def model(self, x):
        mu = pyro.sample("mu", dist.Normal(0.0, self.s0))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(mu, 1.0))
            pyro.sample("x", dist.Normal(z, self.sigma), obs=x)

    def guide(self, x):
        """Prior for mu, the exact conditional posterior for z given mu and x."""
        mu = pyro.sample("mu", dist.Normal(0.0, self.s0))
        precision = 1.0 + 1.0 / self.sigma**2
        with pyro.plate("data", x.shape[0]):
            loc = (mu + x / self.sigma**2) / precision
            pyro.sample("z", dist.Normal(loc, precision**-0.5))

    def log_px(self, x):
        return dist.Normal(0.0, math.sqrt(self.s0**2 + 1 + self.sigma**2)).log_prob(x).double()


@pytest.fixture
def ppca():
    pyro.clear_param_store()
    torch.manual_seed(0)
    return PPCA()


@pytest.fixture
def ppca_modules(ppca):
    return PPCAModules(ppca)


@pytest.fixture
def two_sites():
    torch.manual_seed(0)
    return TwoSites()


@pytest.fixture
def global_mean():
    torch.manual_seed(0)
    return GlobalMean()
