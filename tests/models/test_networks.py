"""Network kinds (the ``[network]`` section, :mod:`ppvae.networks`) in every model kind
that takes one: shapes, a finite loss, gradients through the trunk and the decoder, an
exact checkpoint round trip; the image decoder's layout of the likelihood's parameters
(checked in closed form); broadcasting over leading dimensions; one-sentence refusals;
and spec compatibility (a default ``[network]`` leaves run fingerprints as they were).

The command line (a user network trained by import path, exit status 2):
``tests/test_networks_cli.py``.
"""

from __future__ import annotations

import math
import re
import sys
import textwrap
import tomllib
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch
from torch import nn

from ppvae.checkpoint import load_checkpoint, save_checkpoint
from ppvae.context import BuildContext
from ppvae.data import load_data
from ppvae.errors import PpvaeError, SpecError
from ppvae.infer.objectives import build_objective
from ppvae.likelihoods import LIKELIHOODS
from ppvae.models.abilities import Generates
from ppvae.networks import (
    NETWORKS,
    ImageDecoder,
    ImageEncoder,
    UserDecoder,
    UserEncoder,
)
from ppvae.nn import MLP
from ppvae.run import build, model_context
from ppvae.rundir import spec_fingerprint
from ppvae.spec import dump_spec, parse_spec

DATA = {"kind": "digits", "binarize": "static", "limit": 48}
D = 64  # 8 x 8 digits
N = 12  # points per batch
USER_FEATURES = 12  # what the user encoder of NETS_PY returns

#: Small networks per model kind, and the decoder's input size (latent + classes).
SMALL = {
    "vae": ({"latent_dim": 2, "hidden": [16]}, 2),
    "hvae": ({"latent_dims": [3, 2], "hidden": [16], "hidden2": [8]}, 3),
    "cvae": ({"latent_dim": 2, "hidden": [16]}, 12),
    "m2": ({"latent_dim": 2, "hidden": [16], "num_labels": 10}, 12),
    "mixture": ({"num_components": 3, "latent_dim": 2, "hidden": [16]}, 2),
    "classifier": ({"hidden": [16]}, None),  # no decoder
}
ENUMERATING = {"m2", "mixture"}
MODEL_KINDS = list(SMALL)
NETWORK_KINDS = ["mlp", "conv", "resnet", "user_file", "user_import"]

#: A user's networks: a conv encoder to USER_FEATURES features, a decoder to out_shape.
NETS_PY = (Path(__file__).parents[1] / "assets" / "user_nets.py").read_text() + textwrap.dedent(
    """


    class Pattern(nn.Module):
        # out[n, k, h, w] = 1000 k + 10 h + w (plus 0 * the input, for a gradient path)
        def __init__(self, out_shape):
            super().__init__()
            k, h, w = out_shape
            grid = torch.meshgrid(torch.arange(k), torch.arange(h), torch.arange(w), indexing="ij")
            self.register_buffer("pattern", (1000 * grid[0] + 10 * grid[1] + grid[2]).float())
            self.scale = nn.Parameter(torch.zeros(()))

        def forward(self, v):
            return self.pattern.expand(v.shape[0], *self.pattern.shape) + self.scale * v.sum()


    class WrongDecoder(Decoder):
        def forward(self, v):
            return super().forward(v)[..., :-1, :]


    class BrokenEncoder(Encoder):
        def forward(self, x):
            return self.out(x.flatten(1))
    """
)


@pytest.fixture
def nets(tmp_path, monkeypatch):
    """``tmp_path/nets.py`` holding NETS_PY, importable as ``nets`` (a fresh import)."""
    path = tmp_path / "nets.py"
    path.write_text(NETS_PY)
    monkeypatch.delitem(sys.modules, "nets", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield path
    sys.modules.pop("nets", None)


def _network(kind: str, nets_path) -> dict:
    if kind in ("conv", "resnet"):
        return {"kind": kind, "channels": [4, 8], **({"blocks": 1} if kind == "resnet" else {})}
    if kind == "user_file":
        ref = str(nets_path)
        return {"kind": "user", "encoder": f"{ref}:Encoder", "decoder": f"{ref}:Decoder"}
    if kind == "user_import":
        return {"kind": "user", "encoder": "nets:Encoder", "decoder": "nets:Decoder"}
    return {"kind": kind}


def _spec(model_kind: str, network: dict, **sections):
    raw = {"model": {"kind": model_kind, **SMALL[model_kind][0]}, "data": DATA, **sections}
    if model_kind in ENUMERATING and "objective" not in sections:
        raw["objective"] = {"kind": "enum_elbo"}
    if network.get("kind", "mlp") != "mlp" or len(network) > 1:
        raw["network"] = network
    return parse_spec(raw)


def _build(spec, data, seed: int = 0):
    pyro.set_rng_seed(seed)
    return spec.model.build(model_context(spec, data))


def _batch(spec, data) -> tuple[torch.Tensor, ...]:
    """``N`` training points, half of them labelled where the inputs hold labels."""
    inputs = spec.model.train_inputs(data)
    index = range(len(inputs[0]))
    labelled = [i for i in index if len(inputs) < 2 or int(inputs[1][i]) >= 0][: N // 2]
    rest = [i for i in index if i not in labelled][: N - len(labelled)]
    pick = torch.tensor(sorted(labelled + rest))
    return tuple(t[pick] for t in inputs)


def _loss(spec, model, guide, batch, seed: int = 1) -> torch.Tensor:
    pyro.set_rng_seed(seed)
    return build_objective(spec.objective)(model, guide, *batch)


def _params(*modules: nn.Module):
    seen, out = set(), []
    for i, module in enumerate(modules):
        for name, p in module.named_parameters():
            if id(p) not in seen and p.requires_grad:  # shared modules count once
                seen.add(id(p))
                out.append((f"{i}.{name}", p))
    return out


def _unique(modules, types) -> list[nn.Module]:
    seen, out = set(), []
    for program in modules:
        for m in program.modules():
            if isinstance(m, types) and id(m) not in seen:
                seen.add(id(m))
                out.append(m)
    return out


def _one_sentence(err: BaseException) -> str:
    text = str(err)
    assert isinstance(err, PpvaeError), type(err)
    assert text and "\n" not in text, text
    assert not re.search(r"\.\s+[A-Z]", text), text
    return text


# --------------------------------------------------------------------------------------
# invariants over network kinds x model kinds


#: Every pair, but a user network by import path only in two model kinds (it builds the
#: same modules as by file path).
PAIRS = [
    (n, m) for n in NETWORK_KINDS for m in MODEL_KINDS if n != "user_import" or m in ("vae", "m2")
]


@pytest.mark.parametrize(("network_kind", "model_kind"), PAIRS)
def test_network_in_model_kind_invariants(network_kind, model_kind, nets, tmp_path):
    spec = _spec(model_kind, _network(network_kind, nets))
    data = load_data(spec.data)
    model, guide = _build(spec, data, seed=0)
    batch = _batch(spec, data)
    x = batch[0]
    in_features = SMALL[model_kind][1]

    # the trunk: one, shared by every head that reads the data (none for mlp)
    trunks = _unique((model, guide), (ImageEncoder, UserEncoder))
    decoders = _unique((model, guide), (ImageDecoder, UserDecoder))
    if network_kind == "mlp":
        assert trunks == [] and decoders == []
    else:
        assert len(trunks) == 1, trunks
        expected = 8 * 2 * 2 if network_kind in ("conv", "resnet") else USER_FEATURES
        assert trunks[0].out_features == expected
        assert trunks[0](x).shape == (N, expected)
        assert len(decoders) == (0 if in_features is None else 1)
    # the decoder: latent (and classes) -> the likelihood's parameters of D pixels
    if in_features is not None:
        out = model.decoder(torch.randn(5, in_features))
        assert out.shape == (5, D * model.likelihood.params_per_dim)
        if decoders:
            assert decoders[0] is model.decoder
    if isinstance(model, Generates):
        with torch.no_grad():
            assert model.generate(5).shape == (5, D)

    # a finite loss, and a nonzero gradient at every trainable parameter
    loss = _loss(spec, model, guide, batch)
    assert loss.shape == () and bool(torch.isfinite(loss))
    loss.backward()
    params = _params(model, guide)
    network_params = {id(p) for m in trunks + decoders for p in m.parameters()}
    assert network_params <= {id(p) for _, p in params}  # trainable, so checked below
    for name, p in params:
        assert p.grad is not None, f"no gradient reaches {name}"
        assert bool(torch.isfinite(p.grad).all()), name
        assert float(p.grad.abs().sum()) > 0, f"zero gradient at {name}"

    # the same weights in a pair built with another seed: the same loss
    expected_loss = _loss(spec, model, guide, batch).detach()
    path = tmp_path / "state.pt"
    save_checkpoint({"model": model.state_dict(), "guide": guide.state_dict()}, path)
    model2, guide2 = _build(spec, data, seed=123)
    with torch.no_grad():
        for _, p in _params(model2, guide2):
            p.add_(0.5)
    assert not torch.equal(_loss(spec, model2, guide2, batch).detach(), expected_loss)
    state = load_checkpoint(path)
    model2.load_state_dict(state["model"])
    guide2.load_state_dict(state["guide"])
    again = _loss(spec, model2, guide2, batch).detach()
    assert abs(float(again) - float(expected_loss)) <= 1e-6, (float(again), float(expected_loss))


@pytest.mark.parametrize("side", ["encoder", "decoder"])
def test_a_user_encoder_or_decoder_alone_leaves_the_other_an_mlp(side, nets):
    spec = _spec("vae", {"kind": "user", side: f"nets:{side.title()}"})
    data = load_data(spec.data)
    model, guide = _build(spec, data)
    trunks = _unique((model, guide), (UserEncoder, ImageEncoder))
    decoders = _unique((model, guide), (UserDecoder, ImageDecoder))
    assert len(trunks) == (side == "encoder") and len(decoders) == (side == "decoder")
    if side == "encoder":
        assert isinstance(model.decoder, MLP) and trunks[0].out_features == USER_FEATURES
    else:
        assert model.decoder is decoders[0]
    loss = _loss(spec, model, guide, _batch(spec, data))
    loss.backward()
    for name, p in _params(model, guide):
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name


def test_the_mlp_kind_written_out_builds_the_same_weights_as_none():
    data = load_data(parse_spec({"data": DATA}).data)
    plain = parse_spec({"model": {"kind": "vae", **SMALL["vae"][0]}, "data": DATA})
    written = parse_spec(
        {"model": {"kind": "vae", **SMALL["vae"][0]}, "data": DATA, "network": {"kind": "mlp"}}
    )
    a, b = _build(plain, data), _build(written, data)
    for (na, pa), (nb, pb) in zip(_params(*a), _params(*b), strict=True):
        assert na == nb and torch.equal(pa, pb), na


@pytest.mark.parametrize(
    ("model", "objective"),
    [
        ({"kind": "vae", "latent_dim": 2, "hidden": [16]}, "iwae"),
        ({**SMALL["m2"][0], "kind": "m2", "sum_y": "explicit"}, "elbo"),
        ({**SMALL["m2"][0], "kind": "m2", "sum_y": "explicit"}, "iwae"),
    ],
)
def test_particles_and_explicit_class_sums_pass_through_a_conv_network(model, objective):
    """Leading dimensions the objective or the model add (IWAE's particles, M2's explicit
    sum over classes) reach the trunk and the decoder and back: a finite loss whose
    gradient reaches every parameter, and one trunk shared by model and guide."""
    spec = parse_spec(
        {
            "model": model,
            "data": DATA,
            "network": _network("conv", None),
            "objective": {"kind": objective},
        }
    )
    data = load_data(spec.data)
    model_, guide = _build(spec, data)
    assert len(_unique((model_, guide), (ImageEncoder,))) == 1
    loss = _loss(spec, model_, guide, _batch(spec, data))
    assert loss.shape == () and bool(torch.isfinite(loss))
    loss.backward()
    for name, p in _params(model_, guide):
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name


# --------------------------------------------------------------------------------------
# the image decoder's layout of the likelihood's parameters, in closed form


def _likelihood(kind: str, shape):
    return LIKELIHOODS.get(kind)().build(BuildContext(data_dim=math.prod(shape), latent_dim=2))


def _last_transposed(decoder: ImageDecoder) -> nn.ConvTranspose2d:
    return [m for m in decoder.body.modules() if isinstance(m, nn.ConvTranspose2d)][-1]


SHAPE = (3, 4, 6)  # C, H, W: three channels, not square


@pytest.mark.parametrize("kind", ["conv", "resnet"])
def test_discretized_logistic_reads_channel_p_c_as_parameter_p_of_channel_c(kind):
    """P = 2, parameter-major: flat index ``p * D + c * H * W + h * W + w``."""
    c_, h_, w_ = SHAPE
    lik = _likelihood("discretized_logistic", SHAPE)
    assert lik.params_per_dim == 2 and not getattr(lik, "params_last", False)
    decoder = NETWORKS.get(kind)(channels=(4,)).build_decoder(2, (8,), SHAPE, lik, "relu")
    last = _last_transposed(decoder)
    assert last.out_channels == 2 * c_
    locs = torch.tensor([10.0, 100.0, 200.0]) / 255  # channel c: grey level 10, 100, 200
    log_scales = torch.tensor([-9.0, -8.0, -7.0])
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.cat([locs, log_scales]))  # channel p * C + c
    out = decoder(torch.randn(5, 2))
    assert out.shape == (5, 2 * math.prod(SHAPE))
    pixels = lik(out).base_dist
    expect_loc = locs.repeat_interleave(h_ * w_).expand(5, -1)
    expect_scale = log_scales.repeat_interleave(h_ * w_).expand(5, -1)
    assert torch.allclose(pixels.loc, expect_loc) and torch.allclose(pixels.log_scale, expect_scale)
    # the expected image: grey level 10, 100, 200 in the three channels
    mean = lik.mean(out).reshape(5, *SHAPE)
    for c, level in enumerate((10, 100, 200)):
        assert torch.allclose(mean[:, c], torch.full((5, h_, w_), level / 255), atol=1e-4)


def test_categorical256_reads_channel_p_c_as_level_p_of_channel_c():
    """params_last: flat index ``(c * H * W + h * W + w) * 256 + p``."""
    c_, h_, w_ = SHAPE
    lik = _likelihood("categorical256", SHAPE)
    assert lik.params_per_dim == 256 and lik.params_last
    decoder = NETWORKS.get("conv")(channels=(4, 4)).build_decoder(2, (8,), SHAPE, lik, "relu")
    last = _last_transposed(decoder)
    assert last.out_channels == 256 * c_
    levels = (7, 128, 250)
    bias = torch.zeros(256, c_)  # level p, channel c: output channel p * C + c
    bias += 0.01 * torch.arange(256.0)[:, None]  # distinct logits, ascending in p
    for c, level in enumerate(levels):
        bias[level, c] = 60.0  # all the mass at one level per channel
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(bias.reshape(-1))
    out = decoder(torch.randn(4, 2))
    assert out.shape == (4, 256 * math.prod(SHAPE))
    logits = lik(out).base_dist.logits  # (4, D, 256), normalized
    for c in range(c_):
        expect = torch.log_softmax(bias[:, c], 0)
        got = logits[:, c * h_ * w_ : (c + 1) * h_ * w_]
        assert torch.allclose(got, expect.expand_as(got), atol=1e-5), c
    mean = lik.mean(out).reshape(4, *SHAPE)
    for c, level in enumerate(levels):
        assert torch.allclose(mean[:, c], torch.full((4, h_, w_), level / 255), atol=1e-4)


@pytest.mark.parametrize("lik_kind", ["discretized_logistic", "categorical256", "bernoulli"])
def test_every_output_pixel_lands_where_the_likelihood_reads_it(lik_kind):
    """A body returning ``1000 k + 10 h + w`` at channel ``k``, pixel ``(h, w)``: channel
    ``k = p * C + c`` is parameter ``p`` of pixel ``(c, h, w)``."""
    c_, h_, w_ = SHAPE
    d = math.prod(SHAPE)
    lik = _likelihood(lik_kind, SHAPE)
    p_ = lik.params_per_dim
    decoder = NETWORKS.get("conv")(channels=(4,)).build_decoder(2, (8,), SHAPE, lik, "relu")
    k, h, w = torch.meshgrid(
        torch.arange(p_ * c_), torch.arange(h_), torch.arange(w_), indexing="ij"
    )
    pattern = (1000 * k + 10 * h + w).float()
    decoder.body = _Constant(pattern)
    out = decoder(torch.randn(3, 2))
    assert out.shape == (3, p_ * d)
    params = (
        out[0].reshape(d, p_) if getattr(lik, "params_last", False) else out[0].reshape(p_, d).T
    )
    for p in range(p_):
        for c in range(c_):
            for hh in range(h_):
                for ww in range(w_):
                    value = params[c * h_ * w_ + hh * w_ + ww, p]
                    assert value == 1000 * (p * c_ + c) + 10 * hh + ww


class _Constant(nn.Module):
    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.value = value

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.value.expand(h.shape[0], *self.value.shape)


@pytest.mark.parametrize("lik_kind", ["discretized_logistic", "categorical256"])
def test_a_user_decoder_output_is_laid_out_as_the_likelihood_reads_it(lik_kind, nets):
    c_, h_, w_ = SHAPE
    d = math.prod(SHAPE)
    lik = _likelihood(lik_kind, SHAPE)
    p_ = lik.params_per_dim
    network = NETWORKS.get("user")(decoder=f"{nets}:Pattern")
    decoder = network.build_decoder(2, (8,), SHAPE, lik, "relu")
    assert isinstance(decoder, UserDecoder) and decoder.out_shape == (p_ * c_, h_, w_)
    out = decoder(torch.randn(2, 2))
    params = (
        out[1].reshape(d, p_) if getattr(lik, "params_last", False) else out[1].reshape(p_, d).T
    )
    index = torch.arange(d)
    c, hh, ww = index // (h_ * w_), (index // w_) % h_, index % w_
    for p in range(p_):
        assert torch.equal(params[:, p], (1000 * (p * c_ + c) + 10 * hh + ww).float())


def test_an_rgb_npz_vae_with_a_conv_categorical256_decoder_draws_the_closed_form_image(tmp_path):
    """Through a model kind and a data set: grey levels 7, 128, 250 in the R, G, B
    channels of every drawn 4 x 6 image."""
    path = tmp_path / "rgb.npz"
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.integers(0, 256, size=(40, *SHAPE), dtype=np.uint8))
    spec = parse_spec(
        {
            "data": {"kind": "npz", "path": str(path)},
            "model": {"kind": "vae", "latent_dim": 2, "hidden": [8]},
            "network": {"kind": "conv", "channels": [4]},
            "likelihood": {"kind": "categorical256"},
        }
    )
    data, model, guide = build(spec)
    assert data.event_shape == SHAPE and data.dim == math.prod(SHAPE)
    last = _last_transposed(model.decoder)
    bias = torch.zeros(256, 3)
    for c, level in enumerate((7, 128, 250)):
        bias[level, c] = 60.0
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(bias.reshape(-1))
    images = model.generate(3).reshape(3, *SHAPE)
    for c, level in enumerate((7, 128, 250)):
        assert torch.allclose(images[:, c], torch.full((3, 4, 6), level / 255), atol=1e-4)
    loss = build_objective(spec.objective)(model, guide, data.train.x[:8])
    assert bool(torch.isfinite(loss))


# --------------------------------------------------------------------------------------
# broadcasting over leading dimensions


@pytest.mark.parametrize("network_kind", ["conv", "resnet", "user_file"])
def test_trunk_and_decoder_broadcast_over_leading_dimensions(network_kind, nets):
    raw = _network(network_kind, nets)
    network = NETWORKS.get(raw.pop("kind"))(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
    )
    shape = (1, 8, 8)
    lik = _likelihood("discretized_logistic", shape)
    trunk = network.build_trunk(shape, "relu")
    decoder = network.build_decoder(3, (16,), shape, lik, "relu")
    x = torch.rand(4, 5, D)
    features = trunk(x)
    assert features.shape == (4, 5, trunk.out_features)
    flat = trunk(x.reshape(20, D)).reshape(4, 5, -1)
    assert torch.allclose(features, flat, atol=1e-6)
    assert torch.allclose(trunk(x[None])[0], features, atol=1e-6)  # (1, K, B, D)
    v = torch.randn(2, 3, 4, 3)
    out = decoder(v)
    assert out.shape == (2, 3, 4, 2 * D)
    assert torch.allclose(out, decoder(v.reshape(24, 3)).reshape(2, 3, 4, -1), atol=1e-6)
    # one point alone: the same as in a batch
    assert torch.allclose(decoder(v[1, 2, 3]), out[1, 2, 3], atol=1e-6)
    assert torch.allclose(trunk(x[2, 4]), features[2, 4], atol=1e-6)


def test_enumerated_classes_broadcast_through_m2s_conv_decoder():
    """M2's enumerated ``y`` adds a leading dimension before the decoder: the conv decoder
    gives per class what it gives for that class alone."""
    spec = _spec("m2", _network("conv", None))
    data = load_data(spec.data)
    model, _guide = _build(spec, data)
    z = torch.randn(6, 2)
    eye = torch.eye(10)
    both = torch.cat([z.expand(10, 6, 2), eye[:, None, :].expand(10, 6, 10)], -1)
    out = model.decoder(both)
    assert out.shape == (10, 6, D)
    for c in (0, 7):
        alone = model.decoder(torch.cat([z, eye[c].expand(6, 10)], -1))
        assert torch.allclose(out[c], alone, atol=1e-6)


# --------------------------------------------------------------------------------------
# refusals, one sentence each


def _refused(raw, *fragments, build_it=True) -> str:
    with pytest.raises(PpvaeError) as err:
        spec = parse_spec(raw)
        if build_it:
            build(spec)
    text = _one_sentence(err.value)
    for fragment in fragments:
        assert fragment in text, (fragment, text)
    return text


def _vector_npz(tmp_path):
    path = tmp_path / "vectors.npz"
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.normal(size=(40, 6)).astype(np.float32))
    return path


VAE_SMALL = {"kind": "vae", "latent_dim": 2, "hidden": [8]}


def test_conv_on_vector_data_is_one_sentence(tmp_path):
    raw = {
        "data": {"kind": "npz", "path": str(_vector_npz(tmp_path))},
        "model": VAE_SMALL,
        "likelihood": {"kind": "gaussian"},
    }
    for kind in ("conv", "resnet"):
        text = _refused({**raw, "network": {"kind": kind}}, f"network.kind = {kind!r}", "(6,)")
        assert "needs images" in text and 'network.kind = "mlp"' in text


def test_grey_images_without_a_channel_axis_are_one_channel(tmp_path):
    """An npz array (N, H, W) has event shape (H, W): the image networks read it as
    1 x H x W, and the decoder gives the likelihood H * W values per parameter."""
    path = tmp_path / "grey.npz"
    np.savez(path, x=np.random.default_rng(0).normal(size=(40, 6, 5)).astype(np.float32))
    for kind in ("conv", "resnet"):
        spec = parse_spec(
            {
                "data": {"kind": "npz", "path": str(path)},
                "model": VAE_SMALL,
                "network": {"kind": kind, "channels": [4]},
                "likelihood": {"kind": "gaussian"},
            }
        )
        data, model, guide = build(spec)
        assert data.event_shape == (6, 5)
        assert guide.posterior.trunk.shape == (1, 6, 5)
        assert guide.posterior.trunk.out_features == 4 * 3 * 2  # 6 x 5 -> 3 x 2
        assert model.generate(4).shape == (4, 30)
        loss = build_objective(spec.objective)(model, guide, data.train.x[:8])
        assert bool(torch.isfinite(loss))


def test_too_many_widths_for_8x8_digits():
    text = _refused(
        {"data": DATA, "model": VAE_SMALL, "network": {"kind": "conv", "channels": [4, 4, 4, 4]}},
        "network.channels",
        "8 x 8",
    )
    assert "fewer widths" in text
    # three widths still fit (8 -> 4 -> 2 -> 1)
    build(
        parse_spec(
            {"data": DATA, "model": VAE_SMALL, "network": {"kind": "conv", "channels": [4, 4, 4]}}
        )
    )


@pytest.mark.parametrize(
    ("network", "fragments"),
    [
        ({"encoder": "NETS:Nope"}, ["network.encoder", "has no 'Nope'"]),
        (
            {"encoder": "nets_nowhere_xyz:Encoder"},
            ["network.encoder", "'nets_nowhere_xyz'", "cannot be found"],
        ),
        ({"encoder": "/no/such/dir/nets.py:Encoder"}, ["network.encoder", "does not exist"]),
        (
            {"decoder": "NETS:WrongDecoder"},
            ["network.decoder", "returned shape (2, 1, 7, 8)", "(batch, 1, 8, 8)"],
        ),
        (
            {"encoder": "NETS:BrokenEncoder"},
            ["network.encoder", "fails on a batch of shape (2, 1, 8, 8)"],
        ),
        (
            {"encoder": "NETS:Encoder", "encoder_args": {"event_shape": [1, 8, 8]}},
            ["network.encoder_args sets 'event_shape'", "remove it"],
        ),
        (
            {"decoder": "NETS:Decoder", "decoder_args": {"out_shape": [1, 8, 8]}},
            ["network.decoder_args sets 'out_shape'"],
        ),
        (
            {"encoder": "NETS:Encoder", "encoder_args": {"depth": 3}},
            ["could not be built", "depth"],
        ),
        ({"encoder": "nets"}, ["must name a class"]),
        ({}, ["needs network.encoder or network.decoder"]),
    ],
)
def test_user_network_refusals(network, fragments, nets):
    network = {
        k: v.replace("NETS", str(nets)) if isinstance(v, str) else v for k, v in network.items()
    }
    _refused({"data": DATA, "model": VAE_SMALL, "network": {"kind": "user", **network}}, *fragments)


def test_network_on_density_is_refused():
    text = _refused(
        {"data": DATA, "model": {"kind": "density"}, "network": {"kind": "conv"}},
        "model.kind = 'density' does not use the [network] section",
        build_it=False,
    )
    assert "network.kind = 'conv'" in text
    parse_spec({"data": DATA, "model": {"kind": "density"}, "network": {"kind": "mlp"}})


def test_a_plain_mixture_refuses_a_conv_network():
    raw = {
        "data": DATA,
        "model": {"kind": "mixture", "num_components": 3, "latent_dim": 0},
        "objective": {"kind": "enum_elbo"},
    }
    text = _refused({**raw, "network": {"kind": "conv"}}, "model.latent_dim = 0", build_it=False)
    assert "network.kind = 'conv'" in text
    parse_spec(raw)  # without [network]: a plain mixture


def test_build_m2_on_vector_data_refuses_a_conv_network():
    from ppvae.models.m2 import build_m2

    with pytest.raises(SpecError) as err:
        build_m2(6, 10, 2, (8,), network="conv", event_shape=None)
    assert "needs images" in _one_sentence(err.value)


# --------------------------------------------------------------------------------------
# spec compatibility


def test_a_default_network_leaves_the_fingerprint_of_runs_made_before_it():
    spec = parse_spec({"data": DATA, "model": VAE_SMALL})
    values = spec.to_dict()
    assert values["network"] == {"kind": "mlp"}
    old = {k: v for k, v in values.items() if k != "network"}
    assert spec_fingerprint(values) == spec_fingerprint(old)
    assert spec_fingerprint(values, locations=True) == spec_fingerprint(old, locations=True)
    conv = parse_spec({"data": DATA, "model": VAE_SMALL, "network": {"kind": "conv"}})
    assert spec_fingerprint(conv.to_dict()) != spec_fingerprint(values)
    assert conv.digest() != spec.digest()


def test_network_sections_round_trip_through_toml():
    for network in (
        {"kind": "conv", "channels": [4, 8], "kernel_size": 3},
        {"kind": "resnet", "channels": [4], "blocks": 2},
        {
            "kind": "user",
            "encoder": "nets:Encoder",
            "decoder": "pkg/nets.py:Decoder",
            "encoder_args": {"width": 6, "sizes": [2, 3], "name": "x", "nested": {"a": 1.5}},
            "decoder_args": {"width": 2},
        },
    ):
        spec = parse_spec({"data": DATA, "model": VAE_SMALL, "network": network})
        text = dump_spec(spec)
        loaded = tomllib.loads(text)
        assert {k: loaded["network"][k] for k in network} == network
        again = parse_spec(loaded)
        assert again == spec and again.network == spec.network
        assert spec_fingerprint(again.to_dict()) == spec_fingerprint(spec.to_dict())


# --------------------------------------------------------------------------------------
# user modules with module-level tensors (imported before the meta-device size check)


GLOBALS_PY = textwrap.dedent(
    """
    import torch
    from torch import nn

    CENTRE = torch.full((1,), 0.5)  # a module-level constant, made at import


    class Encoder(nn.Module):
        def __init__(self, event_shape, features=12):
            super().__init__()
            self.out = nn.Linear(event_shape[0] * event_shape[1] * event_shape[2], features)

        def forward(self, x):
            return self.out(x.flatten(1) - CENTRE)
    """
)


def test_a_user_module_with_module_level_tensors_builds(tmp_path):
    path = tmp_path / "globals_nets.py"  # a new file: imported for the first time here
    path.write_text(GLOBALS_PY)
    spec = _spec("vae", {"kind": "user", "encoder": f"{path}:Encoder"})
    data, model, guide = build(spec)
    loss = _loss(spec, model, guide, _batch(spec, data))
    assert bool(torch.isfinite(loss))


# --------------------------------------------------------------------------------------
# user networks: what a review found


def _write(folder, name: str, code: str):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(code))
    return path


def test_a_constructor_taking_kwargs_gets_what_ppvae_passes(tmp_path):
    path = _write(
        tmp_path,
        "kw_nets.py",
        """
        from torch import nn

        class Encoder(nn.Module):
            def __init__(self, **kw):
                super().__init__()
                c, h, w = kw["event_shape"]
                self.width = kw.get("width", 3)
                self.net = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, self.width))

            def forward(self, x):
                return self.net(x)
        """,
    )
    spec = _spec(
        "vae", {"kind": "user", "encoder": f"{path}:Encoder", "encoder_args": {"width": 5}}
    )
    data, model, guide = build(spec)
    assert guide.posterior.trunk.out_features == 5
    assert bool(torch.isfinite(_loss(spec, model, guide, _batch(spec, data))))


def test_a_decoder_of_lower_precision_is_refused(tmp_path):
    path = _write(
        tmp_path,
        "half_nets.py",
        """
        import torch
        from torch import nn

        class Decoder(nn.Module):
            def __init__(self, in_features, out_shape):
                super().__init__()
                self.shape = out_shape
                self.lin = nn.Linear(in_features, 64)

            def forward(self, v):
                return self.lin(v).view(-1, *self.shape).to(torch.bfloat16)
        """,
    )
    text = _refused(
        {"model": SMALL["vae"][0] | {"kind": "vae"}, "data": DATA,
         "network": {"kind": "user", "decoder": f"{path}:Decoder"}},
        "torch.bfloat16 for torch.float32 inputs",
    )  # fmt: skip
    assert "lower precision" in text


@pytest.mark.parametrize(
    ("value", "fragment"),
    [(float("nan"), "must be a finite number"), (float("inf"), "must be a finite number")],
)
def test_encoder_args_must_be_storable_values(value, fragment):
    import datetime

    network = {"kind": "user", "encoder": "x:Y", "encoder_args": {"a": [1, {"note": value}]}}
    text = _refused({"network": network}, fragment, "network.encoder_args.a.note", build_it=False)
    assert "nan" in text or "inf" in text
    network["encoder_args"] = {"when": datetime.date(2020, 1, 1)}
    _refused({"network": network}, "network.encoder_args.when", "date", build_it=False)


def test_a_wrong_shape_on_a_later_batch_is_a_ppvae_error(tmp_path):
    from ppvae.networks import UserEncoder

    class Squeezing(nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :3].squeeze()

    encoder = UserEncoder(Squeezing(), (1, 8, 8), 3, "nets.py:Squeezing")
    assert encoder(torch.zeros(2, 64)).shape == (2, 3)
    with pytest.raises(SpecError) as err:
        encoder(torch.zeros(1, 64))
    assert "returned shape (3,) for a batch of 1" in _one_sentence(err.value)


def test_a_relative_file_is_made_absolute_and_its_folder_does_not_count(tmp_path, monkeypatch):
    from ppvae.run import resolve_paths
    from ppvae.rundir import spec_fingerprint

    _write(tmp_path / "sub", "nets.py", NETS_PY)
    monkeypatch.chdir(tmp_path)
    spec = _spec("vae", {"kind": "user", "encoder": "sub/nets.py:Encoder"})
    resolved = resolve_paths(spec)
    assert resolved.network.encoder == f"{tmp_path / 'sub' / 'nets.py'}:Encoder"
    moved = _spec("vae", {"kind": "user", "encoder": "/elsewhere/nets.py:Encoder"})
    other = _spec("vae", {"kind": "user", "encoder": "/elsewhere/nets.py:Decoder"})
    fingerprint = spec_fingerprint(resolved.to_dict())
    assert spec_fingerprint(moved.to_dict()) == fingerprint
    assert spec_fingerprint(other.to_dict()) != fingerprint
    build(resolved)  # from another working directory too
    monkeypatch.chdir("/")
    build(resolved)


def test_a_file_may_import_modules_beside_it(tmp_path):
    _write(tmp_path / "pkgless", "blocks_of_nets.py", "WIDTH = 7\n")
    path = _write(
        tmp_path / "pkgless",
        "sibling_nets.py",
        """
        from torch import nn
        from blocks_of_nets import WIDTH

        class Encoder(nn.Module):
            def __init__(self, event_shape):
                super().__init__()
                self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, WIDTH))

            def forward(self, x):
                return self.net(x)
        """,
    )
    data, model, guide = build(_spec("vae", {"kind": "user", "encoder": f"{path}:Encoder"}))
    assert guide.posterior.trunk.out_features == 7
    assert str(path.parent) not in sys.path


def test_one_module_name_from_two_working_directories_is_refused(tmp_path, monkeypatch):
    """Python imports one module of a name per process: a second folder's nets_twice.py
    would silently be built from the first one's classes."""
    for folder in ("a", "b"):
        _write(tmp_path / folder, "nets_twice.py", NETS_PY)
    spec = _spec("vae", {"kind": "user", "encoder": "nets_twice:Encoder"})
    monkeypatch.chdir(tmp_path / "a")
    try:
        build(spec)
        monkeypatch.chdir(tmp_path / "b")
        with pytest.raises(SpecError) as err:
            build(spec)
        text = _one_sentence(err.value)
        assert "nets_twice" in text and str(tmp_path / "b" / "nets_twice.py") in text
    finally:
        sys.modules.pop("nets_twice", None)


def test_user_networks_read_grey_h_w_images_as_one_channel(tmp_path):
    path = tmp_path / "grey_hw.npz"
    np.savez(path, x=np.random.default_rng(0).normal(size=(40, 8, 8)).astype(np.float32))
    nets = _write(tmp_path, "hw_nets.py", NETS_PY)
    spec = parse_spec(
        {
            "data": {"kind": "npz", "path": str(path)},
            "model": VAE_SMALL,
            "network": {"kind": "user", "encoder": f"{nets}:Encoder", "decoder": f"{nets}:Decoder"},
            "likelihood": {"kind": "gaussian"},
        }
    )
    data, model, guide = build(spec)
    assert data.event_shape == (8, 8) and guide.posterior.trunk.shape == (1, 8, 8)
    assert model.decoder.out_shape == (1, 8, 8)
    assert bool(torch.isfinite(build_objective(spec.objective)(model, guide, data.train.x[:8])))


def test_flat_npz_points_with_an_image_shape_are_images(tmp_path):
    path = tmp_path / "flat.npz"
    np.savez(path, x=np.random.default_rng(0).normal(size=(40, 64)).astype(np.float32))
    spec = parse_spec(
        {
            "data": {"kind": "npz", "path": str(path), "image_shape": [8, 8]},
            "model": VAE_SMALL,
            "network": {"kind": "conv", "channels": [4]},
            "likelihood": {"kind": "gaussian"},
        }
    )
    data, model, guide = build(spec)
    assert data.event_shape == (1, 8, 8) and model.generate(2).shape == (2, 64)
