"""A deep Markov model written as Pyro's examples/dmm.py writes it: ``pyro.markov`` over
time steps, variable-length sequences masked by length, the guide's RNN run over a
PackedSequence of the reversed sequences, and a KL annealing factor passed as a keyword
argument under ``poutine.scale``. Batches are ``((args), {"annealing_factor": a})``."""

from __future__ import annotations

import copy

import pyro
import pyro.distributions as dist
import pytest
import torch
from programs_helpers import StepLosses, agree, looped_log_px, svi_losses
from pyro import poutine
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import ppvae
from ppvae.infer.batches import Stream

D, Z, H, T, N, B = 4, 2, 8, 6, 12, 4


def reverse_sequences(x, lengths):
    out = torch.zeros_like(x)
    for i, length in enumerate(lengths.tolist()):
        out[i, :length] = x[i, :length].flip(0)
    return out


class DMM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trans = nn.Sequential(nn.Linear(Z, H), nn.Softplus(), nn.Linear(H, 2 * Z))
        self.emitter = nn.Sequential(nn.Linear(Z, H), nn.Softplus(), nn.Linear(H, D))
        self.rnn = nn.GRU(D, H, batch_first=True)
        self.z_to_h = nn.Linear(Z, H)
        self.h_to_z = nn.Linear(H, 2 * Z)
        self.z_0 = nn.Parameter(torch.zeros(Z))
        self.z_q_0 = nn.Parameter(torch.zeros(Z))
        self.h_0 = nn.Parameter(torch.zeros(1, 1, H))

    def model(self, x, x_reversed, mask, lengths, annealing_factor=1.0):
        pyro.module("dmm", self)
        z_prev = self.z_0.expand(x.size(0), Z)
        with pyro.plate("data", x.size(0)):
            for t in pyro.markov(range(1, x.size(1) + 1)):
                loc, raw = self.trans(z_prev).split(Z, -1)
                with poutine.scale(scale=annealing_factor):
                    z_t = pyro.sample(
                        f"z_{t}",
                        dist.Normal(loc, F.softplus(raw) + 1e-3)
                        .mask(mask[:, t - 1 : t])
                        .to_event(1),
                    )
                probs = torch.sigmoid(self.emitter(z_t))
                pyro.sample(
                    f"obs_x_{t}",
                    dist.Bernoulli(probs).mask(mask[:, t - 1 : t]).to_event(1),
                    obs=x[:, t - 1, :],
                )
                z_prev = z_t

    def guide(self, x, x_reversed, mask, lengths, annealing_factor=1.0):
        pyro.module("dmm", self)
        h_0 = self.h_0.expand(1, x.size(0), H).contiguous()
        rnn_out, _ = self.rnn(x_reversed, h_0)
        if isinstance(rnn_out, PackedSequence):  # dmm.py packs; padded input works too
            rnn_out, _ = pad_packed_sequence(rnn_out, batch_first=True, total_length=x.size(1))
        rnn_out = reverse_sequences(rnn_out, lengths)
        z_prev = self.z_q_0.expand(x.size(0), Z)
        with pyro.plate("data", x.size(0)):
            for t in pyro.markov(range(1, x.size(1) + 1)):
                hidden = 0.5 * (torch.tanh(self.z_to_h(z_prev)) + rnn_out[:, t - 1, :])
                loc, raw = self.h_to_z(hidden).split(Z, -1)
                with poutine.scale(scale=annealing_factor):
                    z_t = pyro.sample(
                        f"z_{t}",
                        dist.Normal(loc, F.softplus(raw) + 1e-3)
                        .mask(mask[:, t - 1 : t])
                        .to_event(1),
                    )
                z_prev = z_t


def sequences(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, T + 1, (n,), generator=g)
    mask = torch.arange(T)[None, :] < lengths[:, None]
    x = (torch.rand(n, T, D, generator=g) < 0.3).float() * mask[..., None]
    return x, lengths, mask.float()


def arguments(x, lengths, mask, packed):
    reversed_x = reverse_sequences(x, lengths)
    if packed:
        reversed_x = pack_padded_sequence(
            reversed_x, lengths, batch_first=True, enforce_sorted=False
        )
    return (x, reversed_x, mask, lengths)


PACKING = pytest.mark.parametrize(
    "packed",
    [True, False],
    ids=["packed", "padded"],
)


@PACKING
def test_fit_agrees_with_svi_on_batches_with_keyword_arguments(packed):
    torch.manual_seed(0)
    dmm = DMM()
    twin = copy.deepcopy(dmm)
    x, lengths, mask = sequences(N)
    batches = [
        (
            arguments(x[i : i + B], lengths[i : i + B], mask[i : i + B], packed),
            {"annealing_factor": a},
        )
        for i, a in zip(range(0, N, B), (0.2, 0.6, 1.0), strict=True)
    ]
    rec = StepLosses()
    ppvae.fit(dmm.model, dmm.guide, Stream(batches, num_data=N), epochs=2, lr=0.01, seed=2,
              progress=False, callbacks=[rec])  # fmt: skip
    reference = svi_losses(twin.model, twin.guide, batches, epochs=2, seed=2, lr=0.01)
    assert len(rec.losses) == 6 and rec.points == [B] * 6
    torch.testing.assert_close(
        torch.tensor(rec.batch_sums()), torch.tensor(reference), rtol=2e-4, atol=1e-3
    )
    # the annealing factor reached the programs: without it the first loss is another one
    pyro.set_rng_seed(2)
    unannealed = pyro.infer.Trace_ELBO().loss(twin.model, twin.guide, *batches[0][0])
    assert abs(unannealed - reference[0]) > 0.05
    for a, b in zip(dmm.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "padded"])
def test_evaluator_agrees_with_one_at_a_time_sampler(packed):
    torch.manual_seed(0)
    dmm = DMM()
    x, lengths, mask = sequences(N)
    ppvae.fit(dmm.model, dmm.guide, Stream([arguments(x, lengths, mask, False)], num_data=N),
              epochs=5, lr=0.02, progress=False)  # fmt: skip
    args = arguments(x[:5], lengths[:5], mask[:5], packed)
    result = ppvae.log_marginal_likelihood(dmm.model, dmm.guide, args, num_samples=300)
    assert dmm.training  # the mode is given back
    dmm.eval()
    pyro.set_rng_seed(1)
    log_px, stderr = looped_log_px(dmm.model, dmm.guide, args, 200)
    ok, worst = agree(result.log_px, log_px, result.stderr, stderr)
    assert ok, (result.log_px, log_px, worst)
    # a masked step contributes nothing: log p(x) is a log-probability of the observed
    # steps only, above the prior's worst case of D * length * log(1e-3)
    assert bool((result.log_px < 0).all())
