"""Semi-supervised classification with M2 (Kingma et al. 2014) through ppvae's Python API.

Two ways to the same model on scikit-learn's 8x8 digits, of which only a few images keep
their label:

1. by hand: pick a class-balanced labelled subset, hide the other labels (-1), build the
   M2 model/guide pair and train it with ``ppvae.fit`` on mixed batches; then compare
   its classifier q(y|x) with the same network trained on the labelled images alone;
2. from a spec: ``models/m2_digits.toml`` through ``ppvae.semisupervised``, which trains
   per label count and seed and writes a table (Markdown and CSV) with 95% intervals.

Run:  python examples/semi_supervised.py [--labels 50] [--epochs 100] [--out runs/ss-example]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import ppvae
from ppvae.data import hide_labels, labelled_part, semi_supervised_split
from ppvae.models.m2 import build_m2
from ppvae.models.observed import Classifier, EmptyGuide
from ppvae.nn import MLP
from ppvae.report import save_image_grid
from ppvae.semisupervised import accuracy, run_semisupervised

ROOT = Path(__file__).resolve().parents[1]


def by_hand(num_labels: int, epochs: int) -> None:
    # 8x8 digits, re-binarized at every training batch (valid and test binarized once)
    data = ppvae.load_data(ppvae.DATASETS.get("digits")(binarize="dynamic"))
    c = data.num_classes
    mask = semi_supervised_split(data.train.y, num_labels, c, seed=0)
    y_mixed = hide_labels(data.train.y, mask)  # -1: unlabelled
    print(f"{int(mask.sum())} labelled and {int((~mask).sum())} unlabelled training images")

    # M2 with the class summed out explicitly (works with any ELBO-type objective);
    # aux_scale weighs log q(y|x) per labelled point: aux_weight * N / N_l (aux_weight 3)
    aux_scale = 3.0 * len(data.train) / num_labels
    torch.manual_seed(0)
    model, guide = build_m2(
        data.dim, c, latent_dim=2, hidden=(128,), activation="relu",
        likelihood="bernoulli", sum_y="explicit", aux_scale=aux_scale,
    )  # fmt: skip
    valid = (data.valid.x, torch.full((len(data.valid),), -1))  # valid ELBO: no labels
    ppvae.fit(
        model, guide, (data.train.x, y_mixed), objective="elbo", epochs=epochs, batch_size=128,
        lr=3e-3, valid_data=valid, seed=0, progress=False, train_transform=data.train_transform,
    )  # fmt: skip
    m2 = accuracy(guide.predict_proba, data.test.x, data.test.y)

    # the same classifier network on the labelled images alone (10 passes per epoch)
    labelled = labelled_part(data.train, mask)
    torch.manual_seed(0)
    net = Classifier(MLP(data.dim, (128,), c, "relu"), c)
    ppvae.fit(
        net, EmptyGuide(), (labelled.x.repeat(10, 1), labelled.y.repeat(10)), epochs=epochs,
        batch_size=min(128, num_labels), lr=3e-3, seed=0, progress=False,
        train_transform=data.train_transform,
    )  # fmt: skip
    base = accuracy(net.predict_proba, data.test.x, data.test.y)
    print(f"test accuracy: M2 {m2:.1f}%, labelled-only classifier {base:.1f}%")

    grid = model.generate_by_class(10)  # one row per class
    out = ROOT / "runs" / "ss-example-classes.png"
    out.parent.mkdir(exist_ok=True)
    save_image_grid(grid, data.image_shape, out, ncols=10)
    print(f"samples, one row per class: {out}")


def from_spec(num_labels: int, epochs: int, out: Path) -> None:
    spec = ppvae.load_spec(
        ROOT / "models" / "m2_digits.toml", [f"train.epochs={epochs}", "train.progress=false"]
    )
    result = run_semisupervised(spec, [num_labels], seeds=2, out_dir=out, force=True)
    print((out / "table.md").read_text())
    print("files:", ", ".join(str(f) for f in result.files))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "ss-example")
    args = parser.parse_args()
    by_hand(args.labels, args.epochs)
    from_spec(args.labels, args.epochs, args.out)


if __name__ == "__main__":
    main()
