"""``fit``'s fast path (tensors kept on the device, foreach Adam, Pyro's validation off in
the hot loop with the checks done once on the first batch, the trace-free ELBO of
:mod:`ppvae.infer.direct`) follows the loss curve of the unoptimized paths: the idiomatic
Pyro loop ``SVI(model, guide, pyro.optim.Adam, Trace_ELBO())`` with Pyro's defaults, and
``fit(..., fast_path=False)``, over the same batches with the same draws."""

from __future__ import annotations

import pyro
import pytest
import torch

from ppvae.infer.callbacks import Callback
from ppvae.infer.train import fit
from ppvae.models.vae import build_vae


class _Steps(Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_step_end(self, state, info) -> None:
        self.losses.append(info["loss"])


@pytest.mark.parametrize("seed", [0, 1])
def test_fit_follows_the_idiomatic_svi_loss_curve(seed):
    torch.manual_seed(100 + seed)
    n, batch, epochs, lr = 256, 64, 3, 1e-2
    x = (torch.rand(n, 20) < 0.4).float()
    model, guide = build_vae(data_dim=20, latent_dim=3, hidden=(16,))
    start = [{k: v.clone() for k, v in m.state_dict().items()} for m in (model, guide)]

    steps = _Steps()
    fit(model, guide, x, epochs=epochs, batch_size=batch, lr=lr, seed=seed, progress=False,
        device="cpu", callbacks=[steps])  # fmt: skip
    fast = torch.tensor(steps.losses)

    model.load_state_dict(start[0])
    guide.load_state_dict(start[1])
    pyro.clear_param_store()
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": lr}), pyro.infer.Trace_ELBO())
    shuffle = torch.Generator().manual_seed(seed)  # fit's shuffle stream, one draw an epoch
    pyro.set_rng_seed(seed)  # fit's noise stream
    slow = []
    with pyro.validation_enabled(True):
        for _ in range(epochs):
            for idx in torch.randperm(n, generator=shuffle).split(batch):
                slow.append(svi.step(x[idx]) / len(idx))  # SVI: the batch's summed loss
    pyro.clear_param_store()
    slow = torch.tensor(slow)

    assert fast.shape == slow.shape == (epochs * n // batch,)
    assert fast[0] == pytest.approx(slow[0].item(), rel=1e-6)  # same weights, same draws
    # Adam's foreach and per-tensor kernels round differently; the curves stay together
    assert torch.allclose(fast, slow, rtol=2e-3, atol=0)
    assert fast[-4:].mean() < fast[:4].mean()  # and they are learning curves


class _Seen(Callback):
    def on_train_start(self, state) -> None:
        self.direct = state.direct


@pytest.mark.parametrize(
    ("components", "warmup"),
    [
        ({}, 0),
        ({}, 3),  # KL warm-up: the latent terms weighted
        ({"prior": "vamp", "guide": "iaf"}, 2),
        ({"prior": "flow", "guide": "full_normal", "likelihood": "continuous_bernoulli"}, 0),
        ({"prior": "mixture", "guide": "planar", "likelihood": "gaussian"}, 0),
    ],
)
def test_the_direct_path_equals_pyros_trace_elbo_step_by_step(components, warmup):
    torch.manual_seed(7)
    x = (torch.rand(96, 12) < 0.5).float()
    curves, seen = [], []
    for fast in (True, False):
        torch.manual_seed(11)  # the same initial weights
        model, guide = build_vae(data_dim=12, latent_dim=3, hidden=(8,), **components)
        steps, taken = _Steps(), _Seen()
        fit(model, guide, x, epochs=4, batch_size=32, lr=5e-3, seed=3, progress=False,
            device="cpu", kl_warmup_epochs=warmup, callbacks=[steps, taken], fast_path=fast)  # fmt: skip
        curves.append(torch.tensor(steps.losses))
        seen.append(taken.direct is not None)
    assert seen == [True, False]
    fast, traced = curves
    assert fast.shape == traced.shape == (12,)
    assert torch.allclose(fast, traced, rtol=1e-4, atol=1e-5), (fast - traced).abs().max()


@pytest.mark.parametrize("objective", ["meanfield_elbo", "iwae", "renyi", "subclass"])
def test_other_objectives_and_subclasses_are_traced(objective):
    from ppvae.infer.direct import direct_elbo
    from ppvae.infer.objectives import build_objective
    from ppvae.models.vae import VAE

    model, guide = build_vae(data_dim=4, latent_dim=2, hidden=(4,))
    if objective == "subclass":

        class MyVAE(VAE):
            pass

        model.__class__ = MyVAE
        objective = "elbo"
    assert direct_elbo(model, guide, build_objective(objective)) is None
    assert direct_elbo(lambda x: None, guide, build_objective("elbo")) is None
