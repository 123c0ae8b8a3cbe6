"""Issue 14 through the command line, in real processes: each numbered finding ends in one
``error:`` line and exit status 2 (or works), with nothing lost.

The disk-full and read-only cases mount a small tmpfs and run only as root (skipped
otherwise). Python-API-level tests of the same contracts: ``tests/test_rundir.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import uuid
from pathlib import Path

import pytest
import torch

from ppvae.checkpoint import load_checkpoint, save_checkpoint
from ppvae.rundir import FolderLock
from ppvae.spec import dump_spec, parse_spec

REPO = Path(__file__).resolve().parents[1]
VAE = str(REPO / "models" / "vae.toml")
M2 = str(REPO / "models" / "m2_digits.toml")
TINY = ["--set", "train.epochs=1", "--set", "data.limit=200", "--set", "model.hidden=[8]"]
PPVAE = [sys.executable, "-c", "import sys; from ppvae.cli import main; sys.exit(main())"]


def ppvae(*args, cwd=None, timeout=120):
    """``ppvae args`` in a new process (the working folder is not put on sys.path)."""
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [*PPVAE, *map(str, args)],
        cwd=cwd or REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_error(result, *fragments):
    """Exit status 2 and exactly one line on stderr, ``error: ...`` holding ``fragments``."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert result.stdout == ""
    return lines[0]


def files(folder, skip=(".ppvae-lock",)):
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(Path(folder).rglob("*"))
        if p.is_file() and not p.is_symlink() and p.name not in skip
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("cli-errors") / "run"
    result = ppvae("train", VAE, *TINY, "--out", run, "--no-progress")
    assert result.returncode == 0, result.stderr
    return run


@pytest.fixture
def run_copy(trained, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained, copy, symlinks=True)
    return copy


# --------------------------------------------------------------------------- 1, 2: links


def test_1_report_refuses_a_spec_linked_to_a_secret(run_copy, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOKEN=hunter2")
    (run_copy / "spec.toml").unlink()
    (run_copy / "spec.toml").symlink_to(secret)
    assert_error(ppvae("report", run_copy), "holds a symbolic link 'spec.toml'")
    assert not (run_copy / "report.html").exists()


def test_1_report_refuses_an_evaluation_png_linked_anywhere(run_copy, tmp_path):
    (tmp_path / "key").write_bytes(b"\x89PNG private key")
    (run_copy / "evaluation").mkdir()
    (run_copy / "evaluation" / "test-K5.json").write_text(json.dumps({"khat_max": 0.1}))
    (run_copy / "evaluation" / "test-K5-khat.png").symlink_to(tmp_path / "key")
    assert_error(ppvae("report", run_copy), "symbolic link", "test-K5-khat.png")


def test_2_writes_never_follow_a_link_out_of_the_run(run_copy, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    (run_copy / "report.html").symlink_to(victim)
    assert_error(ppvae("report", run_copy), "symbolic link 'report.html'")
    (run_copy / "report.html").unlink()
    (run_copy / "evaluation").mkdir()
    (run_copy / "evaluation" / "test-K5.json").symlink_to(victim)
    assert_error(ppvae("evaluate", run_copy, "-k", "5"), "symbolic link")
    assert victim.read_text() == "keep"


# --------------------------------------------------------------------------- 3: --import


def test_3_import_never_puts_the_working_folder_first(run_copy, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "sklearn.py").write_text("open('SHADOWED', 'w').write('x')\nraise SystemExit(9)\n")
    (work / "myplugin.py").write_text("open('PLUGIN', 'w').write('x')\n")
    result = ppvae("--import", "myplugin", "evaluate", run_copy, "-k", "2", "--json", cwd=work)
    assert result.returncode == 0, result.stderr
    assert (work / "PLUGIN").exists()  # a module in the working folder is still found
    assert not (work / "SHADOWED").exists()  # but it never shadows an installed package


# --------------------------------------------------------------------------- 4, 5: --force


def test_4_force_refuses_a_folder_that_ppvae_did_not_make(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "spec.toml").write_text(dump_spec(parse_spec({})))
    (project / "results.csv").write_text("precious")
    before = files(project)
    assert_error(
        ppvae("train", VAE, *TINY, "--out", project, "--force", "--no-progress"),
        "not a ppvae run folder",
        ".ppvae-run",
    )
    assert files(project) == before
    (project / "table.md").write_text("| a table |")
    before = files(project)
    assert_error(
        ppvae("semisupervised", M2, "--labels", "50", "--out", project, "--force"),
        "not a ppvae experiment folder",
    )
    assert files(project) == before


def test_5_force_keeps_the_old_run_until_the_new_one_has_a_checkpoint(run_copy):
    before = files(run_copy)
    result = ppvae(
        "train", VAE, *TINY, "--set", "train.lr=1e30", "--out", run_copy, "--force",
        "--no-progress",
    )  # fmt: skip
    assert_error(result, "became NaN")
    assert files(run_copy) == before
    assert sorted(p.name for p in run_copy.parent.iterdir()) == ["run"]


# --------------------------------------------------------------------------- 6: locks


def test_6_a_second_writer_is_refused_naming_the_holder(run_copy):
    before = files(run_copy)
    with FolderLock(run_copy):
        line = assert_error(
            ppvae("train", "--resume", run_copy, "--set", "train.epochs=2", "--no-progress"),
            "is being written by another ppvae process",
        )
        assert f"(pid {os.getpid()})" in line
    assert files(run_copy) == before


def test_6_two_trainings_into_one_folder_do_not_interleave(tmp_path):
    out = tmp_path / "runs" / "vae"
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": str(REPO)}
    args = [*PPVAE, "train", VAE, *TINY, "--set", "train.epochs=3", "--out", str(out)]
    procs = [
        subprocess.Popen([*args, "--no-progress"], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]  # fmt: skip
    results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    assert sorted(r[0] for r in results) == [0, 2], results
    loser = next(r for r in results if r[0] == 2)
    assert loser[2].count("\n") == 1 and loser[2].startswith("error: "), loser
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


# --------------------------------------------------------------------------- 7: edited spec


def test_7_readers_refuse_an_edited_spec(run_copy, tmp_path):
    raw = tomllib.loads((run_copy / "spec.toml").read_text())
    raw["likelihood"] = {"kind": "gaussian"}
    raw["data"]["split_seed"] = 3
    (run_copy / "spec.toml").write_text(dump_spec(parse_spec(raw)))
    for argv in (
        ["evaluate", run_copy, "-k", "5"],
        ["sample", run_copy, "-n", "4", "--out", tmp_path / "s.npy"],
        ["report", run_copy],
    ):
        assert_error(ppvae(*argv), "differs from the spec its checkpoint", "data.split_seed")
    assert not (run_copy / "evaluation").exists()
    assert not (tmp_path / "s.npy").exists()


# --------------------------------------------------------------------------- 8: disk, read-only


@pytest.fixture
def tmpfs(tmp_path):
    """A 3 MB tmpfs (root only)."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
                          capture_output=True)  # fmt: skip
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _fill(folder, leave: int = 0):
    """Fill the file system of ``folder``, then free ``leave`` bytes."""
    with contextlib.suppress(OSError), open(folder / "filler", "wb") as f:
        while True:
            f.write(b"\0" * 4096)
            f.flush()
    size = (folder / "filler").stat().st_size
    os.truncate(folder / "filler", max(0, size - leave))


def test_8_a_full_disk_is_one_sentence_and_the_checkpoint_is_kept(trained, tmpfs):
    run = tmpfs / "run"
    shutil.copytree(trained, run)
    last = (run / "checkpoints" / "last.pt").read_bytes()
    # room for spec.toml and a metrics line, not for a checkpoint
    _fill(tmpfs, leave=16 * 1024)
    result = ppvae("train", "--resume", run, "--set", "train.epochs=2", "--no-progress")
    line = assert_error(result, "cannot write checkpoint", "no space left on device")
    assert "Traceback" not in result.stderr, line
    assert (run / "checkpoints" / "last.pt").read_bytes() == last
    assert not list((run / "checkpoints").glob(".*tmp*"))
    _fill(tmpfs)
    assert_error(ppvae("evaluate", run, "-k", "5"), "no space left on device")
    assert_error(ppvae("train", "--resume", run, "--no-progress"), "no space left on device")
    (tmpfs / "filler").unlink()


def test_8_a_read_only_run_is_one_sentence_for_every_command(trained, tmpfs, tmp_path):
    run = tmpfs / "run"
    shutil.copytree(trained, run)
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    for argv, fragment in [
        (["evaluate", run, "-k", "5"], "read-only file system"),
        (["report", run], "read-only file system"),
        (["sample", run, "-n", "4"], "read-only file system"),
        (["train", "--resume", run, "--set", "train.epochs=2", "--no-progress"], "read-only"),
        (["train", VAE, *TINY, "--out", tmpfs / "new", "--no-progress"], "read-only"),
    ]:
        assert_error(ppvae(*argv), fragment)


# --------------------------------------------------------------------------- 9: seeds


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--seed", "99999999999999999999"], "seed must be"),
        (["--set", "train.seed=4294967296"], "train.seed must be"),
        (["--set", "train.seed=-1"], "train.seed must be"),
        (["--set", "data.binarize_seed=-5"], "data.binarize_seed must be a non-negative"),
    ],
    ids=["huge-option", "2**32", "negative", "binarize-seed"],
)
def test_9_seeds_the_generators_reject_are_refused(tmp_path, argv, fragment):
    assert_error(ppvae("train", VAE, *TINY, *argv, "--out", tmp_path / "r"), fragment)
    assert not (tmp_path / "r").exists()


def test_9_sample_seed_is_checked(trained, tmp_path):
    assert_error(
        ppvae("sample", trained, "--seed", "-1", "--out", tmp_path / "s.npy"), "--seed must be"
    )


# --------------------------------------------------------------------------- 10: sizes


def test_10_sizes_that_exhaust_memory_are_refused(trained, tmp_path):
    start = time.perf_counter()
    assert_error(ppvae("sample", trained, "-n", "100000000000", "--out", tmp_path / "s.npy"),
                 "would need", "draw fewer")  # fmt: skip
    assert_error(ppvae("sample", trained, "-n", "100000"), "too many for a .png grid")
    assert_error(
        ppvae("train", VAE, *TINY, "--set", "model.latent_dim=1000000000000", "--out",
              tmp_path / "big"),
        "parameters: training them needs about", "make them smaller", "model.latent_dim",
    )  # fmt: skip
    # refused before anything is allocated (counted on the meta device)
    assert_error(
        ppvae("train", VAE, *TINY, "--set", "guide.kind=planar", "--set",
              "guide.num_steps=1000000", "--out", tmp_path / "big"),
        "guide.num_steps must be at most 1,000",
    )  # fmt: skip
    assert time.perf_counter() - start < 60
    assert not (tmp_path / "big").exists()


# --------------------------------------------------------------------------- 11: output paths


def test_11_output_paths(trained, run_copy, tmp_path):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir.png").mkdir()
    assert_error(ppvae("sample", trained, "--out", tmp_path / "adir.png"), "is a folder")
    assert_error(ppvae("sample", trained, "--out", tmp_path / "afile" / "s.png"), "lies under")
    assert_error(ppvae("report", trained, "--out", tmp_path / "afile" / "r.html"), "lies under")
    assert_error(ppvae("train", VAE, *TINY, "--out", tmp_path / "afile" / "run"), "lies under")
    link = tmp_path / "link"
    link.symlink_to(run_copy)
    before = files(run_copy)
    assert_error(ppvae("train", VAE, *TINY, "--out", link, "--force"), "is a symbolic link")
    assert files(run_copy) == before


# --------------------------------------------------------------------------- 12: TeX names


def test_12_a_run_named_like_tex_evaluates(trained, tmp_path):
    run = tmp_path / "cost$\\foo$"
    shutil.copytree(trained, run)
    result = ppvae("evaluate", run, "-k", "25", "--json")
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in (run / "evaluation").iterdir())
    assert names == ["test-K25-khat.png", "test-K25.json", "test-K25.npz"]


# --------------------------------------------------------------------------- 13: damaged state


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        (lambda c: c.pop("history"), "has no 'history' entry"),
        (lambda c: c["model"].__setitem__(next(iter(c["model"])), torch.zeros(2, 2)), "shape"),
        (lambda c: c.__setitem__("epoch", "abc"), "should be an integer"),
    ],
    ids=["no-history", "wrong-shape", "epoch-abc"],
)
def test_13_resume_refuses_damaged_contents(run_copy, damage, fragment):
    last = run_copy / "checkpoints" / "last.pt"
    state = load_checkpoint(last)
    damage(state)
    save_checkpoint(state, last)
    before = files(run_copy)
    result = ppvae("train", "--resume", run_copy, "--set", "train.epochs=2", "--no-progress")
    assert_error(result, str(last), fragment)
    assert files(run_copy) == before


# --------------------------------------------------------------------------- 14: odd inputs


def test_14_report_with_odd_numbers(run_copy):
    (run_copy / "evaluation").mkdir()
    (run_copy / "evaluation" / "test-K5.json").write_text(
        '{"split": "test", "n": 5, "num_samples": 5, "log_px": ' + "9" * 400 + ', "elbo": "abc"}'
    )
    with (run_copy / "metrics.jsonl").open("a") as f:
        f.write('{"epoch": 2, "train_loss": "abc", "seconds": 1}\n')
    result = ppvae("report", run_copy)
    assert result.returncode == 0, result.stderr
    page = (run_copy / "report.html").read_text()
    assert "out of range" in page and "1 unreadable line(s) left out" in page


def test_14_a_raw_pickle_checkpoint_prints_one_line(run_copy):
    (run_copy / "checkpoints" / "best.pt").write_bytes(pickle.dumps({"model": {}}, protocol=4))
    result = ppvae("evaluate", run_copy, "-k", "5")
    assert_error(result, "is a plain Python pickle")


def test_14_ctrl_c_while_starting_is_one_line(trained):
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [*PPVAE, "evaluate", str(trained), "-k", "20000", "--batch-size", "2", "--no-progress"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(2.5)  # past the imports of the entry point: in the command's start-up
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the command finished before the interrupt")
    assert proc.returncode == 130, err
    assert err.strip() == "interrupted"


# --------------------------------------------------------------------------- 16: resume


def test_16_resume_with_a_new_clip_norm_after_a_nan_stop(run_copy):
    result = ppvae(
        "train", "--resume", run_copy, "--set", "train.epochs=2", "--set", "train.clip_norm=1.0",
        "--set", "train.lr=0.0005", "--no-progress",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    records = [json.loads(x) for x in (run_copy / "metrics.jsonl").read_text().splitlines()]
    assert records[1]["changed"]["train.clip_norm"] == {"from": 0.0, "to": 1.0}
    assert tomllib.loads((run_copy / "spec.toml").read_text())["train"]["clip_norm"] == 1.0
    assert_error(
        ppvae("train", "--resume", run_copy, "--set", "model.latent_dim=3", "--no-progress"),
        "model.latent_dim",
        "a resumed run may change only",
    )


# --------------------------------------------------------------------------- 17: pickles


def test_17_a_checkpoint_that_is_not_weights_only_says_so(run_copy):
    class Payload:  # pickled by reference: loading it would import and call things
        pass

    torch.save({"model": {}, "payload": uuid.UUID(int=1)}, run_copy / "checkpoints" / "best.pt")
    del Payload
    line = assert_error(ppvae("evaluate", run_copy, "-k", "5"), "holds a Python object")
    assert "uuid.UUID" in line and "truncated" not in line and line.endswith("refuses it")
