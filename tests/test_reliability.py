"""Reliability, end to end: kill -9 and resume, damaged checkpoints, numerical faults, and
the catalogue of bad inputs at the command line.

Each user error must exit with status 2, print exactly one ``error: ...`` line on stderr
and leave every file on disk as it was (no half-made run folder, nothing deleted).

Subprocess tests run ``python -m ppvae`` with ``OMP_NUM_THREADS=1``; the catalogue calls
:func:`ppvae.cli.main` in-process (same code path, without paying a Python + torch start
per case), and one damaged-checkpoint case checks the real process's exit status.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.nn import PyroModule

from ppvae.checkpoint import load_checkpoint
from ppvae.cli import main
from ppvae.errors import TrainingError
from ppvae.infer.callbacks import Callback
from ppvae.infer.train import fit
from ppvae.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
VAE = str(REPO / "models" / "vae.toml")
_DIST_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


# ----------------------------------------------------------------------------- helpers
def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DIST_VARS}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def _ppvae(*args: str) -> list[str]:
    return [sys.executable, "-m", "ppvae", *args]


def _run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        _ppvae(*args), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout
    )


def _main(*argv: str) -> tuple[int, str, str]:
    """``ppvae ARGV`` in-process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(list(argv))
        except SystemExit as exit_:  # argparse's usage errors
            rc = exit_.code
    return rc, out.getvalue(), err.getvalue()


def _error_line(err: str) -> str:
    """The single ``error:`` line of stderr (asserting there is exactly one)."""
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, f"expected one error line, got {err!r}"
    return lines[0]


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (hidden ones included) -> SHA-256 of its bytes."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _records(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.endswith("}")]  # skip a torn line


def _without_seconds(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def _tmp_files(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*.tmp"))


def _copy_tree(src: Path, dst: Path) -> None:
    for p in src.rglob("*"):
        if p.is_file():
            (dst / p.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            (dst / p.relative_to(src)).write_bytes(p.read_bytes())


def _assert_same_weights(a: dict, b: dict) -> None:
    for part in ("model", "guide"):
        assert a[part].keys() == b[part].keys()
        for name, tensor in a[part].items():
            assert torch.equal(tensor, b[part][name]), f"{part}.{name} differs"


# --------------------------------------------------------------- kill -9, then resume
@pytest.mark.slow
def test_kill_9_mid_epoch_then_resume_is_bit_identical(tmp_path):
    """SIGKILL in the middle of an epoch, resume, and land on the uninterrupted run's
    weights bit for bit, with the same metrics records.

    Observed: the kill lands between two checkpoint writes, so ``checkpoints/`` holds
    ``last.pt`` (the previous epoch, loadable) and ``best.pt`` and no ``.last.pt.*.tmp``;
    a kill during ``save_checkpoint`` itself would leave one ``.last.pt.*.tmp`` beside an
    intact ``last.pt`` (the rename is atomic); it is never read.
    """
    epochs = 3
    # about 450 steps of 2 points an epoch (1 s on a fast CPU): killed half-way through, far
    # from its end even on a loaded machine (with 80 steps, 0.26 s, the kill could land
    # between epoch 2's metrics line and its checkpoint)
    args = [
        "train", VAE, "--no-progress",
        "--set", f"train.epochs={epochs}", "--set", "train.batch_size=2",
        "--set", "data.limit=1280", "--set", "model.hidden=[32]",
    ]  # fmt: skip
    ref_dir, run_dir = tmp_path / "reference", tmp_path / "killed"
    reference = subprocess.Popen(
        _ppvae(*args, "--out", str(ref_dir)),
        cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    victim = subprocess.Popen(
        _ppvae(*args, "--out", str(run_dir)),
        cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    last = run_dir / "checkpoints" / "last.pt"
    try:
        deadline = time.monotonic() + 240
        while True:  # wait for epoch 1's checkpoint (written just after its metrics line)
            assert victim.poll() is None, f"training ended before the kill: {victim.stderr.read()}"
            assert time.monotonic() < deadline, "no checkpoint after 240 s"
            records = _records(run_dir)
            if records and last.is_file():
                saved = load_checkpoint(last)  # atomic rename: never a partial file
                if saved["epoch"] == len(records) >= 1:
                    break
            time.sleep(0.02)
        # the next epoch has just begun: kill it half-way through
        time.sleep(records[-1]["seconds"] / 2)
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(timeout=60) == -signal.SIGKILL
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
    killed_epoch = saved["epoch"]
    print(f"killed {records[-1]['seconds'] / 2:.2f} s into epoch {killed_epoch + 1} of {epochs}")

    # killed mid-epoch, before finishing: no further epoch was logged or saved
    after_kill = load_checkpoint(last)  # the previous good checkpoint loads
    assert after_kill["epoch"] == killed_epoch < epochs
    assert len(_records(run_dir)) == killed_epoch
    assert load_checkpoint(run_dir / "checkpoints" / "best.pt")["epoch"] <= killed_epoch
    assert _tmp_files(run_dir) == []  # killed between checkpoint writes: nothing left over
    assert not (run_dir / "figures").exists()

    # alongside the real resume: a copy whose last.pt is cut in half must be refused by a
    # real process (exit 2, one error line naming the file), touching nothing
    damaged = tmp_path / "damaged"
    _copy_tree(run_dir, damaged)
    _damage(damaged / "checkpoints" / "last.pt", "truncated")
    before = _snapshot(damaged)
    refused = subprocess.Popen(
        _ppvae("train", "--resume", str(damaged), "--no-progress"),
        cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    resumed = _run_cli("train", "--resume", str(run_dir), "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    out, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err
    out, err = refused.communicate(timeout=300)
    assert refused.returncode == 2 and out == ""
    assert err.count("\n") == 1, err
    assert err.startswith(f"error: checkpoint {str(damaged / 'checkpoints' / 'last.pt')!r} ")
    assert _snapshot(damaged) == before
    assert load_checkpoint(damaged / "checkpoints" / "best.pt")["epoch"] <= killed_epoch

    final, expected = load_checkpoint(last), load_checkpoint(ref_dir / "checkpoints" / "last.pt")
    assert final["epoch"] == expected["epoch"] == epochs
    assert final["step"] == expected["step"]
    _assert_same_weights(final, expected)
    assert _without_seconds(final["history"]) == _without_seconds(expected["history"])
    assert _without_seconds(_records(run_dir)) == _without_seconds(_records(ref_dir))
    assert len(_records(run_dir)) == epochs
    _assert_same_weights(
        load_checkpoint(run_dir / "checkpoints" / "best.pt"),
        load_checkpoint(ref_dir / "checkpoints" / "best.pt"),
    )
    assert _tmp_files(run_dir) == []
    assert (run_dir / "spec.toml").read_text() == (ref_dir / "spec.toml").read_text()


# ------------------------------------------------------------- damaged checkpoints
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A tiny finished run folder (2 epochs), trained in-process."""
    run = tmp_path_factory.mktemp("trained") / "run"
    rc, _out, err = _main(
        "train", VAE, "--out", str(run), "--no-progress",
        "--set", "train.epochs=2", "--set", "data.limit=64", "--set", "train.batch_size=32",
        "--set", "model.hidden=[16]", "--set", "model.latent_dim=2",
    )  # fmt: skip
    assert rc == 0, err
    return run


def _damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "empty":
        data = bytearray()
    elif how == "flipped_pickle":  # inside data.pkl, the first entry of the archive
        for i in range(100, 116):
            data[i] ^= 0xFF
    elif how == "flipped_tensor":  # inside a weight tensor: only the entry's CRC-32 tells
        start = len(data) // 2
        for i in range(start, start + 16):
            data[i] ^= 0xFF
    else:  # pragma: no cover
        raise ValueError(how)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncated", "empty", "flipped_pickle", "flipped_tensor"])
def test_resume_refuses_a_damaged_last_checkpoint(trained_run, tmp_path, how):
    run = tmp_path / "run"
    _copy_tree(trained_run, run)
    last = run / "checkpoints" / "last.pt"
    _damage(last, how)
    before = _snapshot(tmp_path)

    rc, out, err = _main("train", "--resume", str(run), "--no-progress", "--set", "train.epochs=3")
    print(f"[{how}] {err.strip()}")
    assert rc == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert str(last) in err and "corrupted" in err
    assert _snapshot(tmp_path) == before  # nothing rewritten, nothing removed
    assert load_checkpoint(run / "checkpoints" / "best.pt")["epoch"] == 2


# ---------------------------------------------------------------- numerical faults
class _Poison(Callback):
    """Make the model emit a non-finite value at the chosen (global, 0-based) steps."""

    def __init__(self, model: _PoisonableVAE, steps: set[int]) -> None:
        self.model, self.steps = model, steps

    def on_step_start(self, state) -> None:
        self.model.poison = state.step in self.steps


class _PoisonableVAE(PyroModule):
    """A tiny Gaussian VAE whose loss turns NaN, or whose gradient turns NaN or infinite
    under a finite loss, while ``self.poison`` is set. (An infinite log density comes out
    of Pyro's ELBO surrogate as a NaN loss, not an infinite one.)"""

    def __init__(self, fault: str) -> None:
        super().__init__()
        self.fault, self.poison = fault, False
        self.decoder = torch.nn.Linear(2, 4)
        self.zero = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
            loc = self.decoder(z)
            if self.poison:
                if self.fault == "loss_nan":
                    loc = loc * math.nan
                elif self.fault == "grad_nan":  # d sqrt(u)/du = inf at u = 0, times 0
                    loc = loc + 0.0 * torch.sqrt(self.zero)
                else:  # a log density term sqrt(u) = 0: finite loss, gradient -inf
                    pyro.factor("kink", torch.sqrt(self.zero).expand(x.shape[:1]))
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)


class _Guide(PyroModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(4, 4)

    def forward(self, x):
        loc, raw = self.net(x).split(2, -1)
        with pyro.plate("data", x.shape[0]):
            scale = torch.nn.functional.softplus(raw) + 1e-3
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


_X = torch.randn(40, 4, generator=torch.Generator().manual_seed(0))
_FAULT_STEP = 6  # 0-based global step: epoch 2 (4 steps an epoch), its 3rd step


@pytest.mark.parametrize(
    ("fault", "what"),
    [
        ("loss_nan", "the loss became NaN"),
        ("grad_nan", "the gradient became NaN"),
        ("grad_inf", "the gradient became infinite"),
    ],
)
def test_non_finite_value_stops_naming_epoch_and_step(tmp_path, fault, what):
    model = _PoisonableVAE(fault)
    with pytest.raises(TrainingError) as info:
        fit(
            model, _Guide(), _X, valid_data=_X[:8], epochs=3, batch_size=10, lr=1e-2,
            progress=False, out_dir=tmp_path, callbacks=[_Poison(model, {_FAULT_STEP})],
        )  # fmt: skip
    message = str(info.value)
    assert what in message and "at epoch 2, step 7" in message, message
    assert "\n" not in message
    # the last good checkpoint (end of epoch 1) is intact, and nothing of epoch 2 was kept
    last = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert (last["epoch"], last["step"]) == (1, 4)
    assert all(torch.isfinite(t).all() for t in last["model"].values())
    assert [r["epoch"] for r in _records(tmp_path)] == [1]
    assert _tmp_files(tmp_path) == []


@pytest.fixture(scope="module")
def outlier_npz(tmp_path_factory) -> Path:
    """Gaussian data with one finite but huge training point (1e20): its squared error
    overflows float32, so the step whose batch holds it has a non-finite loss."""
    x = np.random.default_rng(0).normal(size=(100, 4)).astype(np.float32)
    x[0] = 1e20  # row 0 lands in the training split with the default split_seed
    path = tmp_path_factory.mktemp("outlier") / "outlier.npz"
    np.savez(path, x=x)
    spec = load_spec(VAE, _outlier_args(path, path.parent / "unused")[6::2])
    assert spec.data.load().train.x.max() > 1e19, "the outlier must be a training point"
    return path


def _outlier_args(path: Path, out: Path) -> list[str]:
    return [
        "train", VAE, "--out", str(out), "--no-progress",
        "--set", 'data.kind="npz"', "--set", f'data.path="{path}"',
        "--set", 'data.binarize="none"', "--set", 'likelihood.kind="gaussian"',
        "--set", "likelihood.scale=0.1",  # a fixed scale: the data's std would absorb 1e20
        "--set", "train.epochs=2", "--set", "train.batch_size=10", "--set", "model.hidden=[8]",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("batch_size", "message"),
    [
        # 4 steps an epoch: step 1 throws the weights to ~1e30, step 2's loss is NaN
        (16, "error: the loss became NaN at epoch 1, step 2; "),
        # 1 step an epoch: every loss was finite, the validation ELBO of epoch 1 is not
        (64, "error: the validation ELBO became NaN after epoch 1 (step 1): training diverged"),
    ],
    ids=["loss", "valid_elbo"],
)
def test_cli_huge_learning_rate_stops_with_one_error_line(tmp_path, batch_size, message):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc, out, err = _main(
            "train", VAE, "--out", str(tmp_path / "run"), "--no-progress",
            "--set", "train.lr=1e30", "--set", f"train.batch_size={batch_size}",
            "--set", "train.epochs=2", "--set", "data.limit=64", "--set", "model.hidden=[8]",
        )  # fmt: skip
    print(err.strip())
    assert rc == 2 and out == ""
    assert err.startswith(message) and err.count("\n") == 1, err
    # Pyro's own "Encountered NaN" warnings would print lines before the error
    assert not [w for w in caught if "Encountered" in str(w.message)]
    # no checkpoint of the diverged weights
    # (the marker and lock files are ppvae's own, issue 14)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        ".ppvae-lock",
        ".ppvae-run",
        "spec.toml",
    ]


def test_cli_non_finite_loss_exits_2_naming_epoch_and_step(outlier_npz, tmp_path):
    rc, out, err = _main(*_outlier_args(outlier_npz, tmp_path / "run"))
    print(err.strip())
    assert rc == 2
    line = _error_line(err)
    assert line.startswith("error: the loss became ") and "at epoch 1, step " in line
    assert 'train.on_nan = "skip"' in line
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()  # no epoch finished


def test_cli_on_nan_skip_records_skipped_steps(outlier_npz, tmp_path):
    args = _outlier_args(outlier_npz, tmp_path / "run")
    rc, out, err = _main(*args, "--set", 'train.on_nan="skip"')
    assert rc == 0, err
    records = _records(tmp_path / "run")
    assert [r["skipped_steps"] for r in records] == [1, 1]  # the outlier's batch, each epoch
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["valid_elbo"]) for r in records)
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["epoch"] == 2


# ------------------------------------------------------------- bad-input catalogue
def _write_npz_cases(folder: Path) -> None:
    rng = np.random.default_rng(0)
    good = (rng.random((60, 4)) > 0.5).astype(np.float32)
    labels = np.zeros(60, np.int64)
    nan, inf = good.copy(), good.copy()
    nan[3, 1], inf[3, 1] = np.nan, np.inf
    out_of_range, negative = labels.copy(), labels.copy()
    out_of_range[5], negative[5] = 7, -1
    arrays = {
        "nan": {"x": nan},
        "inf": {"x": inf},
        "labels_3d": {"x": good, "y": np.zeros((60, 2, 2), np.int64)},
        "empty": {"x": np.zeros((0, 4), np.float32)},
        "strings": {"x": np.array([["a", "b"]] * 60)},
        "grey": {"x": rng.random((60, 4)).astype(np.float32)},
        "wide": {"x": 3 * rng.normal(size=(60, 4)).astype(np.float32)},
        "labels_out_of_range": {"x": good, "y": out_of_range},
        "labels_negative": {"x": good, "y": negative},
        "length_mismatch": {"x": good, "y": labels[:50]},
    }
    for name, arrs in arrays.items():
        np.savez(folder / f"{name}.npz", **arrs)
    (folder / "not_a_zip.npz").write_text("these are not arrays\n")


def _npz(folder: Path, name: str, binarize: bool = False) -> list[str]:
    """Overrides that read ``name.npz`` (kept as it is, or binarized as in vae.toml)."""
    args = ["--set", 'data.kind="npz"', "--set", f'data.path="{folder / name}.npz"']
    return args if binarize else [*args, "--set", 'data.binarize="none"']


# (case id, argv after "train SPEC --out OUT" or a full argv marked "!", what the message names)
_CATALOGUE = [
    # data
    ("data: NaN in x", ["@npz", "nan"], ["NaN or infinite", "nan.npz"]),
    ("data: inf in x", ["@npz", "inf"], ["NaN or infinite", "inf.npz"]),
    ("data: 3-D labels", ["@npz", "labels_3d"], ["shape (60, 2, 2)", "1-D"]),
    ("data: empty x", ["@npz", "empty"], ["empty", "at least one"]),
    ("data: string array", ["@npz", "strings"], ["dtype", "numeric"]),
    ("data: grey values, bernoulli", ["@npz", "grey"], ["binarize", "continuous_bernoulli"]),
    ("data: values outside [0, 1], binarize", ["@npz-raw", "wide"], ["binarize", "[0, 1]"]),
    (
        "data: label 7 with num_classes=2",
        ["@npz", "labels_out_of_range", "--set", "data.num_classes=2"],
        ["0 to 7", "0 .. 1"],
    ),
    ("data: label -1", ["@npz", "labels_negative"], ["-1", "non-negative"]),
    ("data: x/y length mismatch", ["@npz", "length_mismatch"], ["50 labels for 60"]),
    ("data: not a zip", ["@npz", "not_a_zip"], ["not an .npz archive"]),
    ("data: missing npz", ["@npz", "missing"], ["does not exist"]),
    # spec
    ("spec: unknown section", ["--set", "foo.bar=1"], ["unknown section 'foo'", "allowed: data"]),
    ("spec: unknown key", ["--set", "train.epoch=3"], ["unknown key 'epoch'", "epochs"]),
    ("spec: unknown kind", ["--set", "prior.kind=nope"], ["unknown prior kind", "standard_normal"]),
    ("spec: wrong type (string)", ["--set", 'train.epochs="many"'], ["must be an integer"]),
    ("spec: wrong type (float)", ["--set", "train.batch_size=1.5"], ["must be an integer"]),
    ("spec: zero batch size", ["--set", "train.batch_size=0"], ["at least 1"]),
    ("spec: negative latent_dim", ["--set", "model.latent_dim=-1"], ["at least 1"]),
    ("spec: zero hidden size", ["--set", "model.hidden=[0]"], ["at least 1"]),
    ("spec: negative lr", ["--set", "train.lr=-1"], ["positive"]),
    (
        # iwae weights the latent terms of its importance weights with the reparameterized
        # estimator; dreg cannot (it re-weights the guide's score terms)
        "spec: kl warm-up with iwae's dreg estimator",
        [
            "--set",
            "train.kl_warmup_epochs=5",
            "--set",
            "objective.kind=iwae",
            "--set",
            "objective.estimator=dreg",
        ],
        ["kl_warmup_epochs", "iwae"],
    ),
    ("spec: malformed override", ["--set", "train=1"], ["section.key"]),
    ("spec: missing spec file", ["!", "train", "@tmp/none.toml"], ["does not exist"]),
    ("spec: invalid TOML", ["!", "train", "@tmp/bad.toml"], ["not valid TOML"]),
    ("spec: unknown section in file", ["!", "train", "@tmp/extra.toml"], ["unknown section"]),
    # CLI
    ("cli: evaluate, no run folder", ["!", "evaluate", "@tmp/missing"], ["does not exist"]),
    ("cli: sample, no run folder", ["!", "sample", "@tmp/missing"], ["does not exist"]),
    ("cli: resume, no run folder", ["!", "train", "--resume", "@tmp/missing"], ["no spec.toml"]),
    (
        "cli: existing run folder, no --force",
        ["!", "train", "@vae", "--out", "@tmp/existing_run"],
        ["--force"],
    ),
    (
        "cli: --force on a non-run folder",
        ["!", "train", "@vae", "--out", "@tmp/not_a_run", "--force"],
        ["not a ppvae run folder"],
    ),
    (
        "cli: --force, bad data (old run kept)",
        ["!", "train", "@vae", "--out", "@tmp/existing_run", "--force", "@npz", "nan"],
        ["NaN or infinite"],
    ),
    (
        # a changed train.lr is allowed since issue 14 (finding 16); the model is not
        "cli: resume with a changed spec",
        ["!", "train", "--resume", "@tmp/existing_run", "--set", "likelihood.kind='gaussian'"],
        ["differs from the one its checkpoint", "likelihood.kind"],
    ),
    (
        "cli: resume with SPEC",
        ["!", "train", "@vae", "--resume", "@tmp/existing_run"],
        ["takes no SPEC"],
    ),
    ("cli: train without SPEC", ["!", "train"], ["needs a SPEC"]),
    ("cli: unknown command", ["!", "frobnicate"], ["invalid choice"]),
    ("cli: unknown option", ["!", "train", "@vae", "--bogus"], ["unrecognized arguments"]),
]


@pytest.fixture(scope="module")
def catalogue_dir(tmp_path_factory, trained_run) -> Path:
    folder = tmp_path_factory.mktemp("catalogue")
    _write_npz_cases(folder)
    (folder / "bad.toml").write_text("[train\nepochs = 3\n")
    (folder / "extra.toml").write_text("[trian]\nepochs = 3\n")
    (folder / "not_a_run").mkdir()
    (folder / "not_a_run" / "notes.txt").write_text("keep me\n")
    _copy_tree(trained_run, folder / "existing_run")
    return folder


def _argv(folder: Path, spec: list[str]) -> list[str]:
    if spec[0] == "!":
        spec, argv = spec[1:], []
    else:
        argv = ["train", "@vae", "--out", "@tmp/new_run", "--no-progress"]
        argv += ["--set", "train.epochs=1", "--set", "model.hidden=[8]"]
    out, i = [], 0
    spec = argv + spec
    while i < len(spec):
        item = spec[i]
        if item in ("@npz", "@npz-raw"):
            out += _npz(folder, spec[i + 1], binarize=item == "@npz-raw")
            i += 2
            continue
        item = item.replace("@vae", VAE).replace("@tmp", str(folder))
        out.append(item)
        i += 1
    return out


@pytest.mark.parametrize(("case", "spec", "names"), _CATALOGUE, ids=[c[0] for c in _CATALOGUE])
def test_bad_input_catalogue(catalogue_dir, case, spec, names):
    before = _snapshot(catalogue_dir)
    rc, out, err = _main(*_argv(catalogue_dir, spec))
    print(f"{case} | {err.strip().splitlines()[-1]}")
    assert rc == 2, (out, err)
    line = _error_line(err)
    if case.startswith("cli: unknown"):  # argparse: a usage line, then "ppvae: error: ..."
        assert line.startswith("ppvae: error: ")
    else:
        assert err.startswith("error: ") and err.count("\n") == 1, err
    for word in names:
        assert word in line, line
    assert out == ""
    assert _snapshot(catalogue_dir) == before  # nothing written, nothing lost
    assert not (catalogue_dir / "new_run").exists()
