r"""Network kinds (the ``[network]`` section): how a data point becomes features for the
encoders, and how a latent vector becomes the likelihood's parameters.

Every model kind builds its networks from two pieces that the network kind supplies:

* the **encoder trunk**, data ``(..., D)`` -> features ``(..., F)``, on which the model's
  own heads sit (``model.hidden`` then the latent's parameters, a classifier's logits, a
  flow guide's context). The ``mlp`` kind has none: the MLP of ``model.hidden`` reads the
  data itself, as ppvae always did.
* the **decoder**, ``(..., in_features)`` -> likelihood parameters ``(..., D *
  params_per_dim)``: ``model.hidden`` (reversed), then for images a stack of transposed
  convolutions back to ``C x H x W``.

Kinds: ``mlp``; ``conv`` (strided convolutions halving the image at each of the
``channels`` widths, and transposed convolutions mirroring them); ``resnet`` (the same
with ``blocks`` residual blocks at every width); ``user`` (your own ``nn.Module``\ s by
import path, ``encoder = "mypkg.nets:Encoder"``, with their keyword arguments from the
spec). Image kinds need data with an image event shape ``(C, H, W)`` (digits, mnist,
binarized_mnist, images, npz arrays of shape ``(N, C, H, W)``).

Data stay flat in the Pyro programs (``x`` is ``(..., D)``, ``D = C * H * W``, and each
likelihood scores the whole event); the networks see images: the trunk reshapes
``(..., D)`` to ``(N, C, H, W)`` and the decoder's image body returns ``(N, P * C, H, W)``
(``P = params_per_dim``, parameter-major channels) before they are laid out as the
likelihood reads them. Leading dimensions (particles, enumerated classes) are folded into
``N`` and restored, so every network broadcasts like an MLP.

Example:
    >>> import torch
    >>> from ppvae.likelihoods import LIKELIHOODS
    >>> from ppvae.context import BuildContext
    >>> lik = LIKELIHOODS.get("bernoulli")().build(BuildContext(data_dim=64, latent_dim=2))
    >>> net = NETWORKS.get("conv")(channels=(8, 16))
    >>> trunk = net.build_trunk((1, 8, 8), "relu")
    >>> trunk(torch.zeros(5, 3, 64)).shape, trunk.out_features
    (torch.Size([5, 3, 64]), 64)
    >>> decoder = net.build_decoder(2, (32,), (1, 8, 8), lik, "relu")
    >>> decoder(torch.zeros(7, 2)).shape
    torch.Size([7, 64])
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ppvae.errors import SpecError
from ppvae.nn import MLP, make_activation
from ppvae.registry import Registry

__all__ = [
    "NETWORKS",
    "NetworkConfig",
    "MLPNetwork",
    "ConvNetwork",
    "ResNetNetwork",
    "UserNetwork",
    "ImageEncoder",
    "ImageDecoder",
    "ResidualBlock",
    "load_object",
]


class NetworkConfig(abc.ABC):
    """Options of one network kind (the ``[network]`` section)."""

    kind: str
    #: Whether the kind needs data with an image event shape ``(C, H, W)`` (or ``(H, W)``,
    #: read as one channel).
    needs_image: ClassVar[bool] = False

    def check_shape(self, shape: Sequence[int], what: str) -> None:
        """Refuse data of event shape ``shape`` (``what`` names them in the message)."""
        if self.needs_image and len(shape) not in (2, 3):
            raise SpecError(
                f"network.kind = {self.kind!r} needs images (an event shape C x H x W or H x W) "
                f'but {what} have event shape {tuple(shape)}; use network.kind = "mlp" or data '
                "with an image shape (digits, mnist, binarized_mnist, images, npz (N, C, H, W))"
            )

    def resolve_paths(self) -> NetworkConfig:
        """These options with the files they name made absolute (relative to the working
        directory), so that a run's ``spec.toml`` can be read from anywhere. Default:
        unchanged."""
        return self

    def load_code(self) -> None:  # noqa: B027 - an optional hook
        """Import the code the networks are made of, if not ppvae's own (the ``user``
        kind): done before any build, so that module-level tensors of that code are made
        on the default device, never under the meta device of a size check."""

    @abc.abstractmethod
    def build_trunk(self, shape: Sequence[int], activation: str) -> nn.Module | None:
        """The encoder trunk for data points of event shape ``shape``: a module mapping
        ``(..., prod(shape))`` to ``(..., out_features)`` with an ``out_features``
        attribute; None: the heads read the flat data."""

    @abc.abstractmethod
    def build_decoder(
        self,
        in_features: int,
        hidden: Sequence[int],
        shape: Sequence[int],
        likelihood: nn.Module,
        activation: str,
    ) -> nn.Module:
        """The decoder from ``(..., in_features)`` through the MLP sizes ``hidden`` to the
        parameters of ``likelihood`` for data of event shape ``shape``."""


#: Registry of network kinds: ``[network] kind = "..."``.
NETWORKS: Registry[NetworkConfig] = Registry("network")


def _numel(shape: Sequence[int]) -> int:
    return math.prod(int(s) for s in shape)


def _one_channel(shape: Sequence[int]) -> tuple[int, ...]:
    """An image event shape ``(H, W)`` as ``(1, H, W)``; any other shape as it is."""
    shape = tuple(int(s) for s in shape)
    return (1, *shape) if len(shape) == 2 else shape


def _params_out(likelihood: nn.Module) -> tuple[int, bool]:
    """The likelihood's parameters per feature, and whether they come last in its layout
    (``(D, P)``, ``params_last``) rather than first (``(P, D)``)."""
    return int(likelihood.params_per_dim), bool(getattr(likelihood, "params_last", False))


def _to_params(out: torch.Tensor, lead: torch.Size, shape, params: int, last: bool):
    """``(N, P * C, *spatial)`` channel-major outputs -> ``(*lead, D * P)`` as the
    likelihood reads them."""
    n = out.shape[0]
    if last and params > 1:
        out = out.reshape(n, params, -1).transpose(1, 2)
    return out.reshape(*lead, params * _numel(shape))


@NETWORKS.register("mlp")
@dataclass(frozen=True)
class MLPNetwork(NetworkConfig):
    """Multilayer perceptrons on the flattened data (``model.hidden``, ``model.activation``)."""

    def build_trunk(self, shape: Sequence[int], activation: str) -> None:
        return None

    def build_decoder(self, in_features, hidden, shape, likelihood, activation) -> nn.Module:
        params, _last = _params_out(likelihood)
        return MLP(in_features, tuple(hidden), _numel(shape) * params, activation)


class ResidualBlock(nn.Module):
    r"""A pre-activation residual block, :math:`h + W_2 \sigma(W_1 \sigma(h))` with
    3 x 3 convolutions that keep the width and the size."""

    def __init__(self, channels: int, activation: str) -> None:
        super().__init__()
        self.body = nn.Sequential(
            make_activation(activation),
            nn.Conv2d(channels, channels, 3, padding=1),
            make_activation(activation),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return h + self.body(h)


def _sizes(spatial: Sequence[int], levels: int, kernel: int, key: str) -> list[tuple[int, ...]]:
    """Spatial sizes at every level of strided (2) convolutions with padding
    ``(kernel - 1) // 2``, the input's first; a size below 1 is a :class:`SpecError`."""
    pad = (kernel - 1) // 2
    sizes = [tuple(int(s) for s in spatial)]
    for _ in range(levels):
        nxt = tuple((s + 2 * pad - kernel) // 2 + 1 for s in sizes[-1])
        if min(nxt) < 1:
            raise SpecError(
                f"{key} has {levels} widths, too many for {' x '.join(map(str, spatial))} images "
                f"with kernel_size {kernel}: each halves the image and it would vanish at "
                f"width {len(sizes)}; use fewer widths"
            )
        sizes.append(nxt)
    return sizes


class ImageEncoder(nn.Module):
    """Strided convolutions (each halving the image; ``blocks`` residual blocks after
    each) from flat images ``(..., C*H*W)`` to flat features ``(..., out_features)``."""

    def __init__(
        self,
        shape: Sequence[int],
        channels: Sequence[int],
        kernel_size: int,
        blocks: int,
        activation: str,
        key: str = "network.channels",
    ) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        sizes = _sizes(self.shape[1:], len(channels), kernel_size, key)
        layers: list[nn.Module] = []
        c_in = self.shape[0]
        for c in channels:
            layers += [nn.Conv2d(c_in, c, kernel_size, 2, (kernel_size - 1) // 2)]
            layers += [make_activation(activation)]
            layers += [ResidualBlock(c, activation) for _ in range(blocks)]
            if blocks:
                layers.append(make_activation(activation))
            c_in = c
        self.body = nn.Sequential(*layers)
        self.out_features = c_in * _numel(sizes[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        lead = x.shape[:-1]
        h = self.body(x.reshape(-1, *self.shape))
        return h.reshape(*lead, self.out_features)


class ImageDecoder(nn.Module):
    """The mirror of :class:`ImageEncoder`: an MLP to the smallest image, then transposed
    convolutions (each doubling it back to the encoder's size at that level; ``blocks``
    residual blocks before each) to ``P * C`` channels at full size, laid out as the
    likelihood reads its parameters."""

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        shape: Sequence[int],
        channels: Sequence[int],
        kernel_size: int,
        blocks: int,
        likelihood: nn.Module,
        activation: str,
        key: str = "network.channels",
    ) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        self.params, self.params_last = _params_out(likelihood)
        sizes = _sizes(self.shape[1:], len(channels), kernel_size, key)
        self.seed_shape = (int(channels[-1]), *sizes[-1])
        self.mlp = nn.Sequential(
            MLP(in_features, tuple(hidden), _numel(self.seed_shape), activation),
            make_activation(activation),
        )
        pad = (kernel_size - 1) // 2
        outs = [*reversed(channels[:-1]), self.shape[0] * self.params]
        layers: list[nn.Module] = []
        c_in = int(channels[-1])
        for i, c_out in enumerate(outs):
            here, target = sizes[-1 - i], sizes[-2 - i]
            extra = tuple(
                t - ((s - 1) * 2 - 2 * pad + kernel_size) for t, s in zip(target, here, strict=True)
            )
            if min(extra) < 0 or max(extra) > 1:  # cannot happen with padding (k - 1) // 2
                raise SpecError(f"network.kernel_size = {kernel_size} cannot mirror the encoder")
            layers += [ResidualBlock(c_in, activation) for _ in range(blocks)]
            if blocks:
                layers.append(make_activation(activation))
            layers.append(
                nn.ConvTranspose2d(c_in, c_out, kernel_size, 2, pad, output_padding=extra)
            )
            if i < len(outs) - 1:
                layers.append(make_activation(activation))
            c_in = c_out
        self.body = nn.Sequential(*layers)

    def forward(self, v: torch.Tensor) -> torch.Tensor:  # noqa: D102
        lead = v.shape[:-1]
        h = self.mlp(v).reshape(-1, *self.seed_shape)
        return _to_params(self.body(h), lead, self.shape, self.params, self.params_last)


def _check_image_options(channels: Sequence[int], kernel_size: int) -> None:
    if not channels:
        raise SpecError("network.channels must list at least one width")
    if any(int(c) < 1 for c in channels):
        raise SpecError(f"network.channels widths must be at least 1, got {list(channels)}")
    if not 2 <= kernel_size <= 15:
        raise SpecError(f"network.kernel_size must be between 2 and 15, got {kernel_size}")


@NETWORKS.register("conv")
@dataclass(frozen=True)
class ConvNetwork(NetworkConfig):
    """A strided convolutional encoder and a transposed-convolution decoder.

    Attributes:
        channels: widths of the convolutions, one per level; each level halves the image
            (the decoder mirrors them, widest level last).
        kernel_size: kernel size of every (transposed) convolution (stride 2, padding
            ``(kernel_size - 1) // 2``).
    """

    needs_image: ClassVar[bool] = True

    channels: tuple[int, ...] = (32, 64)
    kernel_size: int = 4

    def __post_init__(self) -> None:
        _check_image_options(self.channels, self.kernel_size)

    def _blocks(self) -> int:
        return int(getattr(self, "blocks", 0))

    def _image(self, shape: Sequence[int]) -> tuple[int, ...]:
        self.check_shape(shape, "the data")
        return _one_channel(shape)

    def build_trunk(self, shape, activation) -> ImageEncoder:
        shape = self._image(shape)
        return ImageEncoder(shape, self.channels, self.kernel_size, self._blocks(), activation)

    def build_decoder(self, in_features, hidden, shape, likelihood, activation) -> ImageDecoder:
        shape = self._image(shape)
        return ImageDecoder(
            in_features,
            hidden,
            shape,
            self.channels,
            self.kernel_size,
            self._blocks(),
            likelihood,
            activation,
        )


@NETWORKS.register("resnet")
@dataclass(frozen=True)
class ResNetNetwork(ConvNetwork):
    """The ``conv`` networks with residual blocks (two 3 x 3 convolutions and a skip) at
    every width, in the encoder after each downsampling and in the decoder before each
    upsampling.

    Attributes:
        channels: widths, one per level (each halves the image).
        kernel_size: kernel size of the down- and upsampling convolutions.
        blocks: residual blocks per level.
    """

    blocks: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.blocks < 1:
            raise SpecError(f"network.blocks must be at least 1, got {self.blocks}")


def load_object(ref: str, where: str) -> Any:
    """The object ``ref`` names: ``"package.module:Name"`` (imported; tried once more
    with the working directory on ``sys.path``) or ``"path/to/file.py:Name"`` (a file,
    relative to the working directory). Failures are one :class:`SpecError` sentence
    naming ``where``."""
    module_name, sep, attr = ref.rpartition(":")
    if not sep or not module_name or not attr:
        raise SpecError(
            f"{where} = {ref!r} must name a class as 'package.module:Class' or "
            "'path/to/file.py:Class'"
        )
    try:
        if module_name.endswith(".py"):
            module = _load_file(Path(module_name), where, ref)
        else:
            module = _import(module_name)
    except SpecError:
        raise
    except ModuleNotFoundError as err:
        raise SpecError(
            f"{where} = {ref!r}: module {err.name!r} cannot be found (neither installed nor in "
            f"the working directory {os.getcwd()})"
        ) from None
    except Exception as err:  # the user's module itself fails
        raise SpecError(
            f"{where} = {ref!r}: importing it failed ({type(err).__name__}: {err})"
        ) from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SpecError(f"{where} = {ref!r}: {module_name!r} has no {attr!r}")
        obj = getattr(obj, part)
    return obj


def _in_working_dir(module_name: str) -> Path | None:
    """The file of ``module_name`` in the working directory (a module or a package), if any."""
    base = Path.cwd().joinpath(*module_name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate.resolve()
    return None


def _import(module_name: str):
    loaded = sys.modules.get(module_name)
    here = _in_working_dir(module_name)
    if loaded is not None and here is not None:
        file = getattr(loaded, "__file__", None)
        if file is None or Path(file).resolve() != here:
            # Python imports one module of a name per process: the other file would be
            # used silently
            raise SpecError(
                f"module {module_name!r} was already imported from {file} in this process, but "
                f"the working directory holds another, {here}; name the file instead "
                f"('{here}:Class') or rename one of them"
            )
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        top = module_name.split(".")[0]
        if err.name not in (top, module_name) or os.getcwd() in sys.path or "" in sys.path:
            raise
        here = os.getcwd()
        sys.path.insert(0, here)  # `ppvae train` does not put the working dir there
        try:
            return importlib.import_module(module_name)
        finally:
            if here in sys.path:
                sys.path.remove(here)


def _load_file(path: Path, where: str, ref: str):
    path = path.expanduser().resolve()
    if not path.is_file():
        raise SpecError(f"{where} = {ref!r}: the file {str(path)!r} does not exist")
    name = "ppvae_user_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    folder = str(path.parent)
    sys.path.insert(0, folder)  # the file may import modules beside it
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    return module


def _construct(cls: Any, where: str, ref: str, args: dict[str, Any], given: dict[str, Any]):
    """``cls(**args, **given')`` where ``given'`` are the keyword arguments of ``given``
    that the constructor names; the result must be an ``nn.Module``."""
    if not callable(cls):
        raise SpecError(f"{where} = {ref!r} is not a class or function")
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        params = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in given.items() if k in params or takes_any}
    clash = sorted(set(args) & set(kwargs))
    if clash:
        raise SpecError(
            f"{where}_args sets {clash[0]!r}, which ppvae passes itself (from the data and "
            "the model); remove it"
        )
    try:
        net = cls(**args, **kwargs)
    except Exception as err:
        raise SpecError(
            f"{where} = {ref!r} could not be built with {sorted({**args, **kwargs})} "
            f"({type(err).__name__}: {err})"
        ) from None
    if not isinstance(net, nn.Module):
        raise SpecError(f"{where} = {ref!r} gave a {type(net).__name__}, not a torch.nn.Module")
    return net


def _dry_run(net: nn.Module, x: torch.Tensor, where: str, ref: str) -> torch.Tensor:
    """``net(x)`` without gradients in eval mode (its train/eval flags restored)."""
    modes = [(m, m.training) for m in net.modules()]
    net.eval()
    try:
        with torch.no_grad():
            out = net(x)
    except Exception as err:
        raise SpecError(
            f"{where} = {ref!r} fails on a batch of shape {tuple(x.shape)} "
            f"({type(err).__name__}: {err})"
        ) from None
    finally:
        for m, mode in modes:
            m.training = mode
    _check_dtype(out, x, where, ref)
    return out


def _check_dtype(out: Any, x: torch.Tensor, where: str, ref: str) -> None:
    """A tensor of floats at least as precise as the input's: a network that returns
    bfloat16 or float16 for float32 inputs would make every log-density that coarse."""
    if not isinstance(out, torch.Tensor):
        raise SpecError(f"{where} = {ref!r} returned a {type(out).__name__}, not a tensor")
    if not out.is_floating_point() or torch.finfo(out.dtype).eps > torch.finfo(x.dtype).eps:
        raise SpecError(
            f"{where} = {ref!r} returned {out.dtype} for {x.dtype} inputs; return at least "
            f"{x.dtype} (log-densities would be computed at the lower precision)"
        )


class UserEncoder(nn.Module):
    """A user's encoder network as a trunk: flat ``(..., D)`` in, reshaped to ``(N,
    *shape)`` for the network, whose ``(N, F)`` features come back as ``(..., F)``."""

    def __init__(self, net: nn.Module, shape: Sequence[int], out_features: int, ref: str) -> None:
        super().__init__()
        self.net = net
        self.shape = tuple(int(s) for s in shape)
        self.out_features = out_features
        self.ref = ref

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        lead = x.shape[:-1]
        h = self.net(x.reshape(-1, *self.shape))
        _check_dtype(h, x, "network.encoder", self.ref)
        if h.shape != (math.prod(lead), self.out_features):
            raise SpecError(
                f"network.encoder = {self.ref!r} returned shape {tuple(h.shape)} for a batch of "
                f"{math.prod(lead)}; it must return (batch, {self.out_features})"
            )
        return h.reshape(*lead, self.out_features)


class UserDecoder(nn.Module):
    """A user's decoder network: ``(..., in_features)`` in, ``(N, *out_shape)`` from the
    network (``out_shape = (P * C, H, W)`` for images, ``(P * D,)`` for vectors), laid out
    as the likelihood reads its parameters."""

    def __init__(self, net: nn.Module, shape, out_shape, likelihood: nn.Module, ref: str):
        super().__init__()
        self.net = net
        self.shape = tuple(int(s) for s in shape)
        self.out_shape = tuple(out_shape)
        self.params, self.params_last = _params_out(likelihood)
        self.ref = ref

    def forward(self, v: torch.Tensor) -> torch.Tensor:  # noqa: D102
        lead = v.shape[:-1]
        out = self.net(v.reshape(-1, v.shape[-1]))
        _check_dtype(out, v, "network.decoder", self.ref)
        if out.shape != (math.prod(lead), *self.out_shape):
            raise SpecError(
                f"network.decoder = {self.ref!r} returned shape {tuple(out.shape)} for a batch "
                f"of {math.prod(lead)}; it must return (batch, "
                f"{', '.join(map(str, self.out_shape))})"
            )
        return _to_params(out, lead, self.shape, self.params, self.params_last)


@NETWORKS.register("user")
@dataclass(frozen=True)
class UserNetwork(NetworkConfig):
    """Your own networks, by import path, with keyword arguments from the spec.

    The encoder is built as ``Encoder(**encoder_args)``, with ``event_shape`` (the shape of
    one data point, e.g. ``(1, 28, 28)``; grey ``(H, W)`` images are given as ``(1, H, W)``)
    added when its constructor names it (or takes ``**kwargs``); it takes
    ``(N, *event_shape)`` and returns features ``(N, F)``. The decoder is built as
    ``Decoder(**decoder_args)`` with ``in_features`` (the latent size, plus the classes
    for cvae and m2), ``out_shape`` (``(P * C, H, W)``, ``P`` the likelihood's parameters
    per pixel, parameter-major; ``(P * D,)`` for vectors) and ``event_shape`` added where
    named; it takes ``(N, in_features)`` and returns ``(N, *out_shape)``. Either may be
    left empty for ppvae's MLP. Both are tried on a small batch when the model is built.

    Attributes:
        encoder: ``"package.module:Class"`` or ``"path/to/file.py:Class"``; empty: MLP.
        decoder: the same for the decoder; empty: MLP.
        encoder_args: keyword arguments of the encoder (a table).
        decoder_args: keyword arguments of the decoder (a table).
    """

    encoder: str = ""
    decoder: str = ""
    encoder_args: dict[str, Any] = field(default_factory=dict)
    decoder_args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.encoder and not self.decoder:
            raise SpecError(
                'network.kind = "user" needs network.encoder or network.decoder (or both), e.g. '
                'encoder = "mypkg.nets:Encoder"'
            )
        for key in ("encoder", "decoder"):
            ref = getattr(self, key)
            if ref and ":" not in ref:
                raise SpecError(
                    f"network.{key} = {ref!r} must name a class as 'package.module:Class' or "
                    "'path/to/file.py:Class'"
                )

    def resolve_paths(self) -> UserNetwork:
        refs = {}
        for key in ("encoder", "decoder"):
            module, sep, attr = getattr(self, key).rpartition(":")
            if sep and module.endswith(".py"):
                refs[key] = f"{os.path.abspath(os.path.expanduser(module))}:{attr}"
        return dataclasses.replace(self, **refs) if refs else self

    def load_code(self) -> None:
        for key in ("encoder", "decoder"):
            if getattr(self, key):
                load_object(getattr(self, key), f"network.{key}")

    def build_trunk(self, shape, activation) -> UserEncoder | None:
        if not self.encoder:
            return None
        shape = _one_channel(shape)
        where = "network.encoder"
        cls = load_object(self.encoder, where)
        net = _construct(cls, where, self.encoder, self.encoder_args, {"event_shape": tuple(shape)})
        out = _dry_run(net, torch.zeros(2, *shape), where, self.encoder)
        if out.dim() != 2 or out.shape[0] != 2:
            raise SpecError(
                f"{where} = {self.encoder!r} returned shape {tuple(out.shape)} for a batch of 2 "
                f"points of shape {tuple(shape)}; it must return features (batch, F)"
            )
        return UserEncoder(net, shape, int(out.shape[1]), self.encoder)

    def build_decoder(self, in_features, hidden, shape, likelihood, activation) -> nn.Module:
        if not self.decoder:
            return MLPNetwork().build_decoder(in_features, hidden, shape, likelihood, activation)
        where = "network.decoder"
        shape = _one_channel(shape)
        params, _last = _params_out(likelihood)
        out_shape = (params * int(shape[0]), *shape[1:])
        given = {"in_features": in_features, "out_shape": out_shape, "event_shape": tuple(shape)}
        cls = load_object(self.decoder, where)
        net = _construct(cls, where, self.decoder, self.decoder_args, given)
        out = _dry_run(net, torch.zeros(2, in_features), where, self.decoder)
        if tuple(out.shape) != (2, *out_shape):
            raise SpecError(
                f"{where} = {self.decoder!r} returned shape {tuple(out.shape)} for a batch of 2 "
                f"inputs of {in_features} features; it must return (batch, "
                f"{', '.join(map(str, out_shape))})"
            )
        return UserDecoder(net, shape, out_shape, likelihood, self.decoder)
