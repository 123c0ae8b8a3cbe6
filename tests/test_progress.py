"""Progress outside a terminal: one line per epoch (issue 15, finding 3), the closing
summary of ``ppvae train`` and the resume of a finished run."""

from __future__ import annotations

import io
import re

import pyro
import pyro.distributions as dist
import torch

from ppvae.infer.callbacks import ProgressBar
from ppvae.infer.train import fit

from .test_cli import TINY, VAE_SPEC, run_cli, snapshot

LINE = re.compile(
    r"^epoch (\d+)/(\d+) train_loss (-?\d+\.\d{4}) valid_elbo (-?\d+\.\d{4})"
    r"(?: kl_weight \d\.\d{3})? best (\d+) time \d+\.\ds$"
)


def _model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def _guide(x):
    loc = pyro.param("loc", torch.tensor(0.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(loc, 1.0))


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_fit_prints_one_line_per_epoch_when_stdout_is_not_a_terminal(capsys):
    x = torch.randn(40)
    history = fit(_model, _guide, x, epochs=3, batch_size=20, valid_data=x[:10], progress=True)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "training epochs 1-3, 2 steps each"
    epochs = [LINE.match(line) for line in out[1:]]
    assert len(epochs) == 3 and all(epochs), out
    for match, record in zip(epochs, history.records, strict=True):
        assert int(match.group(1)) == record["epoch"] and int(match.group(2)) == 3
        assert float(match.group(3)) == round(record["train_loss"], 4)
        assert float(match.group(4)) == round(record["valid_elbo"], 4)
    best = max(history.records, key=lambda r: r["valid_elbo"])["epoch"]
    assert int(epochs[-1].group(5)) == best


def test_no_lines_on_a_terminal_and_none_without_progress(capsys):
    x = torch.randn(40)
    terminal = _Terminal()
    fit(_model, _guide, x, epochs=2, batch_size=20, callbacks=[ProgressBar(stream=terminal)],
        progress=False)  # fmt: skip
    assert terminal.getvalue() == ""  # a terminal gets tqdm's bar (on stderr), not lines
    fit(_model, _guide, x, epochs=2, batch_size=20, progress=False)
    assert capsys.readouterr().out == ""


def test_lines_forced_into_any_stream():
    x = torch.randn(40)
    buf = _Terminal()
    fit(_model, _guide, x, epochs=2, batch_size=40, callbacks=[ProgressBar(lines=True, stream=buf)],
        progress=False)  # fmt: skip
    lines = buf.getvalue().splitlines()
    assert lines[0] == "training epochs 1-2, 1 steps each"
    # no validation data: no valid_elbo field, the best epoch by the training loss
    assert all(re.match(r"^epoch \d/2 train_loss \S+ best \d time \S+s$", s) for s in lines[1:])


def test_piped_train_prints_epochs_then_a_closing_summary(tmp_path):
    run_dir = tmp_path / "run"
    code, out, err = run_cli(["train", VAE_SPEC, *TINY, "--out", run_dir])
    assert code == 0, err
    lines = out.splitlines()
    epochs = [LINE.match(line) for line in lines if line.startswith("epoch ")]
    assert [int(m.group(1)) for m in epochs if m] == [1, 2]
    assert f"run folder: {run_dir}" in lines
    best = max(epochs, key=lambda m: float(m.group(4)))
    assert f"best epoch: {best.group(1)}  valid ELBO {best.group(4)}  (checkpoints/best.pt)" in out
    figures = [line.removeprefix("figure: ") for line in lines if line.startswith("figure: ")]
    assert str(run_dir / "figures" / "curves.png") in figures
    assert all((tmp_path / f).is_file() for f in figures)
    assert lines[-1] == f"next: ppvae evaluate {run_dir}   ppvae report {run_dir}"

    # a finished run: resuming says how to extend it, and touches nothing
    before = snapshot(run_dir)
    code, out, err = run_cli(["train", "--resume", run_dir])
    assert code == 0, err
    assert "has finished: 2 epochs done, train.epochs = 2" in out
    assert f"ppvae train --resume {run_dir} --set train.epochs=4" in out
    assert snapshot(run_dir) == before
    # extending it trains the new epochs only
    code, out, err = run_cli(["train", "--resume", run_dir, "--set", "train.epochs=3"])
    assert code == 0, err
    assert "resuming after epoch 2: training epochs 3-3" in out
    assert [line.split()[1] for line in out.splitlines() if line.startswith("epoch ")] == ["3/3"]
