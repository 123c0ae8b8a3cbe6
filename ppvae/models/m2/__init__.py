r"""Semi-supervised learning with the M2 model of Kingma, Rezende, Mohamed & Welling (2014,
*Semi-Supervised Learning with Deep Generative Models*, NeurIPS), as a pair of Pyro
programs.

Model: :math:`y_n \sim \mathrm{Cat}(1/C)`, :math:`z_n \sim p(z)` (the ``[prior]``),
:math:`x_n | y_n, z_n \sim p(x | f_\theta(z_n, y_n))` (the ``[likelihood]``; the decoder
is an MLP on :math:`[z, \mathrm{onehot}(y)]`). Guide: a classifier
:math:`q_\phi(y | x)` (an MLP) and :math:`q_\phi(z | x, y)` (an encoder on
:math:`[x, \mathrm{onehot}(y)]`, ppvae's diagonal Gaussian or any ``[guide]`` kind).

One objective covers a minibatch that mixes both kinds of points; a label of ``-1``
(:data:`ppvae.data.UNLABELLED`) marks an unlabelled point. Per point the bound is

.. math::

    \mathcal L(x, y) &= E_{q(z|x,y)}[\log p(x|y,z) + \log p(y) + \log p(z)
        - \log q(z|x,y)] + \alpha' \log q(y|x)            &\text{(labelled)}\\
    \mathcal U(x) &= \sum_y q(y|x)\,\mathcal L_0(x, y) + \mathcal H[q(y|x)]
        &\text{(unlabelled)}

(:math:`\mathcal L_0` is :math:`\mathcal L` without the classification term). The sum
over :math:`y` is exact, by one of two routes (``sum_y``):

* ``"enumerate"``: the guide samples a site ``"y"`` marked for parallel enumeration, and
  ``TraceEnum_ELBO`` (objective ``enum_elbo``) sums it out. A labelled point's guide
  distribution is a point mass on its label, so its sum has one non-zero term and is
  :math:`\mathcal L(x, y)`: the label is observed through the guide.
* ``"explicit"``: the guide draws one :math:`z_c \sim q(z|x,c)` per class (site ``"z"``
  with event shape ``(C, latent_dim)``) and every site's log-density is the
  :math:`q(y|x)`-weighted sum over classes (:class:`ClassWeighted`), plus
  :math:`\log q(y|x)` weighted in the guide (the entropy). With a one-hot weight for
  labelled points this is the same bound, written without a discrete site, so the
  plain ``elbo``, ``meanfield_elbo``, ``iwae`` and ``renyi`` objectives all apply.
  Under ``iwae`` the log weight of particle :math:`k` is
  :math:`\sum_c q(c|x)[\log p(x, c, z_{kc}) - \log q(c|x) - \log q(z_{kc}|x, c)]`, which by
  Jensen's inequality is at most the log of the unbiased weight
  :math:`\sum_c p(x, c, z_{kc}) / q(z_{kc}|x, c)`; so
  :math:`\log \frac1K \sum_k e^{\log w_k}` is still a lower bound on :math:`\log p(x)`
  that does not decrease in :math:`K`, and :math:`q(y|x)` keeps learning from unlabelled
  points. (``ppvae evaluate`` on such a run therefore reports this bound, not an unbiased
  estimate of :math:`\log p(x)`; with ``sum_y = "enumerate"`` it samples :math:`y` and is
  unbiased.)

The classification term :math:`\alpha' \log q(y|x)` is a ``pyro.factor`` named ``"aux"``
in the model, inside the data plate, zero on unlabelled points. Kingma et al. add
:math:`\alpha\, E_{\tilde p_l}[-\log q(y|x)]` to the bound summed over the data set with
:math:`\alpha = 0.1 N`. ppvae's loss is the bound *per data point* (the sum divided by
:math:`N`), so the same objective gives each labelled point the weight
:math:`\alpha' = \texttt{aux\_weight} \cdot N / N_l` with ``aux_weight`` :math:`=
\alpha / N` (default 0.1, the paper's choice), :math:`N` the training examples and
:math:`N_l` the labelled ones.

``[model] m1_run = "runs/vae"`` stacks M2 on a trained VAE (Kingma et al.'s M1+M2): the
VAE's encoder means :math:`E_{q(z_1|x)}[z_1]` are M2's data (use a ``gaussian``
likelihood); the frozen VAE travels inside the model and guide, so both still take raw
images, and samples and reconstructions are decoded back to images by the VAE.

Example:
    >>> import torch
    >>> from ppvae.infer.objectives import build_objective
    >>> model, guide = build_m2(data_dim=6, num_classes=3, latent_dim=2, hidden=(8,),
    ...                         sum_y="explicit", aux_scale=1.0)
    >>> x, y = torch.rand(4, 6).round(), torch.tensor([0, -1, 2, -1])
    >>> loss = build_objective("elbo")(model, guide, x, y)
    >>> loss.shape, bool(torch.isfinite(loss))
    (torch.Size([]), True)
    >>> guide.predict_proba(x).shape, model.generate_by_class(2).shape
    (torch.Size([4, 3]), torch.Size([6, 6]))
"""

from ppvae.guides import ConditionalEncoder
from ppvae.models.m2.config import M2Config
from ppvae.models.m2.features import M1Features
from ppvae.models.m2.programs import M2, SUM_Y, M2Guide, build_m2
from ppvae.models.m2.weighting import ClassWeighted

__all__ = [
    "M2",
    "M2Guide",
    "M2Config",
    "ClassWeighted",
    "ConditionalEncoder",
    "M1Features",
    "build_m2",
    "SUM_Y",
]
