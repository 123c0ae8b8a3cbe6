"""Write your own data set for ppvae: an ``.npz`` file with an array ``x`` [N, D].

The one written here is 2,000 points of a 20-D mixture of 4 Gaussians with full
covariances (seeded). With ``--gmm`` it also fits scikit-learn's ``GaussianMixture`` (4
components, full covariance) on the training split that ppvae carves from the file and
prints its log-likelihood per held-out point, the figure to compare ``ppvae evaluate``'s
``log p(x)`` with (the test split, as ``models/vae_npz.toml`` evaluates)::

    python examples/gaussian_mixture.py --out mixture.npz --gmm
"""

from __future__ import annotations

import argparse

import numpy as np


def gaussian_mixture(n: int = 2000, dim: int = 20, components: int = 4, seed: int = 0):
    """``n`` points of a ``dim``-D mixture of ``components`` Gaussians (equal weights,
    means drawn from N(0, 2^2 I), covariances A A^T / dim + 0.5 I with A standard normal)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0.0, 2.0, size=(components, dim))
    factors = rng.normal(size=(components, dim, dim)) / np.sqrt(dim)
    covs = factors @ factors.transpose(0, 2, 1) + 0.5 * np.eye(dim)
    labels = rng.integers(components, size=n)
    noise = rng.standard_normal((n, dim))
    chol = np.linalg.cholesky(covs)
    x = means[labels] + np.einsum("nij,nj->ni", chol[labels], noise)
    return x.astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="mixture.npz")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gmm", action="store_true", help="print GaussianMixture's held-out score")
    args = parser.parse_args()
    np.savez(args.out, x=gaussian_mixture(args.n, seed=args.seed))
    print(f"wrote {args.out}: x of shape ({args.n}, 20)")
    if args.gmm:
        from sklearn.mixture import GaussianMixture

        from ppvae.data import DATASETS, load_data

        data = load_data(DATASETS.get("npz")(path=args.out))  # the splits ppvae trains on
        gmm = GaussianMixture(4, covariance_type="full", n_init=5, random_state=0)
        gmm.fit(data.train.x.numpy())
        score = float(gmm.score(data.test.x.numpy()))
        print(f"GaussianMixture(4, full) log-likelihood per test point: {score:.2f}")


if __name__ == "__main__":
    main()
