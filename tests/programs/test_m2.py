"""Semi-supervised M2 (Kingma et al. 2014) written as Pyro's examples/vae/ss_vae_M2.py
writes it: an nn.Module with ``model``/``guide`` methods (the guide enumerated with
``@config_enumerate``), an auxiliary classification loss under ``poutine.scale``, and
unlabelled and labelled batches alternating. ppvae takes them as two Streams with their
own programs and objectives and must match Pyro's two alternating SVIs."""

from __future__ import annotations

import copy

import pyro
import pyro.distributions as dist
import torch
from programs_helpers import StepLosses
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO, config_enumerate
from torch import nn

import ppvae
from ppvae.infer.batches import Stream, interleave

D, C, Z, H, B = 10, 3, 2, 12, 16


def cat_broadcast(a, b):
    """Concatenate on the last dim after broadcasting the others (enumerated y has an
    extra dim on the left), as Pyro's example's MLP does with ``broadcast_inputs``."""
    shape = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    return torch.cat([a.expand(shape + a.shape[-1:]), b.expand(shape + b.shape[-1:])], -1)


class SSVAE(nn.Module):
    def __init__(self, aux_loss_multiplier: float = 5.0) -> None:
        super().__init__()
        self.aux_loss_multiplier = aux_loss_multiplier
        self.encoder_y = nn.Sequential(nn.Linear(D, H), nn.Softplus(), nn.Linear(H, C))
        self.encoder_z = nn.Sequential(nn.Linear(D + C, H), nn.Softplus(), nn.Linear(H, 2 * Z))
        self.decoder = nn.Sequential(nn.Linear(Z + C, H), nn.Softplus(), nn.Linear(H, D))

    def model(self, xs, ys=None):
        pyro.module("ss_vae", self)
        batch_size = xs.size(0)
        with pyro.plate("data", batch_size):
            prior_loc = xs.new_zeros([batch_size, Z])
            prior_scale = xs.new_ones([batch_size, Z])
            zs = pyro.sample("z", dist.Normal(prior_loc, prior_scale).to_event(1))
            alpha_prior = xs.new_ones([batch_size, C]) / C
            ys = pyro.sample("y", dist.OneHotCategorical(alpha_prior), obs=ys)
            logits = self.decoder(cat_broadcast(zs, ys))
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=xs)

    @config_enumerate
    def guide(self, xs, ys=None):
        with pyro.plate("data", xs.size(0)):
            if ys is None:
                alpha = torch.softmax(self.encoder_y(xs), -1)
                ys = pyro.sample("y", dist.OneHotCategorical(alpha))
            hidden = self.encoder_z(cat_broadcast(xs, ys))
            loc, raw = hidden.split(Z, -1)
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))

    def model_classify(self, xs, ys=None):
        pyro.module("ss_vae", self)
        with pyro.plate("data", xs.size(0)):
            if ys is not None:
                alpha = torch.softmax(self.encoder_y(xs), -1)
                with poutine.scale(scale=self.aux_loss_multiplier):
                    pyro.sample("y_aux", dist.OneHotCategorical(alpha), obs=ys)

    def guide_classify(self, xs, ys=None):
        pass


def data(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(C, D, generator=g)
    labels = torch.randint(0, C, (n,), generator=g)
    xs = (torch.rand(n, D, generator=g) < prototypes[labels]).float()
    return xs, nn.functional.one_hot(labels, C).float()


def fit_three_streams(m2, x_unlab, labelled, rec):
    return ppvae.fit(
        m2.model,
        m2.guide,
        [
            Stream(x_unlab),
            Stream(labelled, objective=Trace_ELBO()),
            Stream(labelled, model=m2.model_classify, guide=m2.guide_classify, objective="elbo"),
        ],
        objective=TraceEnum_ELBO(max_plate_nesting=1),
        epochs=2, batch_size=B, lr=0.01, seed=4, shuffle=False, progress=False, callbacks=[rec],
    )  # fmt: skip


def pyro_reference(twin, x_unlab, labelled, step_fns):
    """The example's list of losses over the same batches, in ppvae's interleaved order."""
    order = [i for i, _ in interleave([iter(range(n)) for n in (3, 2, 2)], [3, 2, 2])]
    assert sorted(order) == [0, 0, 0, 1, 1, 2, 2] and order[-2:] != [2, 2]  # spread evenly
    x_lab, y_lab = labelled
    reference = []
    for _ in range(2):
        batches = [
            iter([(b,) for b in x_unlab.split(B)]),
            iter(list(zip(x_lab.split(B), y_lab.split(B), strict=True))),
            iter(list(zip(x_lab.split(B), y_lab.split(B), strict=True))),
        ]
        for stream in order:
            reference.append(step_fns[stream](*next(batches[stream])))
    return reference


def check_agreement(m2, twin, history, rec, reference):
    torch.testing.assert_close(
        torch.tensor(rec.batch_sums()), torch.tensor(reference), rtol=2e-4, atol=1e-3
    )
    assert rec.points == [16] * 14
    # the epoch's loss: per point over the streams' 48 + 32 + 32 points
    assert abs(history["train_loss"][0] - sum(reference[:7]) / 112) < 1e-3 * abs(
        history["train_loss"][0]
    )
    # trained parameters survive, equal to the reference's, the classifier's included
    for (name, a), b in zip(m2.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4, msg=name)
    assert not torch.allclose(m2.encoder_y[0].weight, SSVAE().encoder_y[0].weight)


def test_three_streams_agree_with_pyros_objectives_stepped_by_torch_adam():
    """Pyro's own ELBOs (loss_and_grads) on the same batches, one torch Adam over all
    parameters. Every parameter of the programs takes a step each time (with a zero
    gradient where the step's loss does not depend on it), as in Pyro's SVI and ppvae's
    step; here every program registers the whole module with pyro.module."""
    torch.manual_seed(0)
    m2 = SSVAE()
    twin = copy.deepcopy(m2)
    x_unlab, _ = data(48, 1)
    labelled = data(32, 2)
    rec = StepLosses()
    history = fit_three_streams(m2, x_unlab, labelled, rec)
    pyro.clear_param_store()
    pyro.set_rng_seed(4)
    adam = torch.optim.Adam(twin.parameters(), lr=0.01)
    elbos = [
        (twin.model, twin.guide, TraceEnum_ELBO(max_plate_nesting=1)),
        (twin.model, twin.guide, Trace_ELBO()),
        (twin.model_classify, twin.guide_classify, Trace_ELBO()),
    ]

    def stepper(model, guide, elbo):
        def one(*args):
            adam.zero_grad(set_to_none=False)
            loss = elbo.loss_and_grads(model, guide, *args)
            adam.step()
            return loss

        return one

    reference = pyro_reference(twin, x_unlab, labelled, [stepper(*e) for e in elbos])
    check_agreement(m2, twin, history, rec, reference)


def test_three_streams_agree_with_pyros_alternating_svis():
    torch.manual_seed(0)
    m2 = SSVAE()
    twin = copy.deepcopy(m2)
    x_unlab, _ = data(48, 1)
    labelled = data(32, 2)
    rec = StepLosses()
    history = fit_three_streams(m2, x_unlab, labelled, rec)
    pyro.clear_param_store()
    pyro.set_rng_seed(4)
    adam = pyro.optim.Adam({"lr": 0.01})  # one optimizer for all SVIs, as in the example
    svis = [
        SVI(twin.model, twin.guide, adam, TraceEnum_ELBO(max_plate_nesting=1)),
        SVI(twin.model, twin.guide, adam, Trace_ELBO()),
        SVI(twin.model_classify, twin.guide_classify, adam, Trace_ELBO()),
    ]
    reference = pyro_reference(twin, x_unlab, labelled, [svi.step for svi in svis])
    check_agreement(m2, twin, history, rec, reference)
