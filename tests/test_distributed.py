"""Data-parallel training: ``torchrun --standalone --nproc_per_node=2 -m ppvae train`` on
CPU (gloo) against a single process with the same spec and global batch size.

The two-process run draws the same shuffles and initial weights as the single process but
other latent samples (rank r uses seed + 7919 r), so it matches the single process only
statistically: its final validation ELBO must lie within the spread that changing the seed
causes. Measured (digits, limit 256, hidden [32], latent 8, global batch 64, 3 epochs =
12 steps, CPU): final validation ELBO of single-process runs with seeds 0..4: -44.463,
-43.727, -44.234, -44.053, -44.363 (seeds 0-2: spread max - min = 0.736 nats; the seed
moves the initial weights, which 12 steps do not wash out; 6 epochs at lr 1e-2 still
leave 0.45 over 5 seeds). Two processes, seed 0: -44.470, 0.007 from the single process with seed 0.
Tolerance: max(3 x spread, 0.05) = 2.2 nats, with the spread re-measured in the test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from ppvae.checkpoint import load_checkpoint
from ppvae.distributed import DistInfo
from ppvae.infer.batches import shuffled
from ppvae.run import train_spec
from ppvae.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
_DIST_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
EPOCHS = 3
OVERRIDES = [
    f"train.epochs={EPOCHS}",
    "train.batch_size=64",  # the global batch: 32 points on each of the two processes
    "data.limit=256",
    "model.hidden=[32]",
    "train.device=cpu",
    "train.progress=false",
]


def _gloo_missing() -> str | None:
    if not dist.is_available():
        return "torch.distributed is not available in this build of PyTorch"
    if not dist.is_gloo_available():
        return "the gloo backend of torch.distributed is not available"
    return None


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _files(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())


# ------------------------------------------------------------------ batch splitting
@pytest.mark.parametrize(("n", "batch_size", "world"), [(23, 8, 2), (17, 8, 2), (30, 7, 3)])
def test_rank_parts_make_up_the_single_process_batch(n, batch_size, world):
    x = torch.arange(n * 2.0).reshape(n, 2)
    y = torch.arange(n)

    def batches(dinfo):
        generator = torch.Generator().manual_seed(3)
        return list(shuffled((x, y), batch_size, generator, torch.device("cpu"), dinfo))

    single = batches(None)
    parts = [batches(DistInfo(rank=r, world_size=world, local_rank=r)) for r in range(world)]
    # a last global batch smaller than the number of processes is dropped (17 = 8 + 8 + 1)
    kept = [(b, size) for b, size in single if size >= world]
    assert all(len(p) == len(kept) for p in parts)
    for i, ((bx, by), size) in enumerate(kept):
        assert all(p[i][1] == size for p in parts)  # every rank knows the global size
        union_x = torch.cat([p[i][0][0] for p in parts])
        union_y = torch.cat([p[i][0][1] for p in parts])
        assert torch.equal(union_x, bx) and torch.equal(union_y, by)
        sizes = [p[i][0][0].shape[0] for p in parts]
        assert max(sizes) - min(sizes) <= 1  # balanced parts
    # every point of the kept batches is seen exactly once over the ranks
    seen = torch.cat([b[1] for p in parts for b, _ in p])
    assert sorted(seen.tolist()) == sorted(torch.cat([b[1] for b, _ in kept]).tolist())


# ------------------------------------------------------------------------ torchrun
@pytest.mark.slow
def test_torchrun_two_processes_matches_single_process(tmp_path):
    reason = _gloo_missing()
    if reason is not None:
        pytest.skip(reason)
    env = {k: v for k, v in os.environ.items() if k not in _DIST_VARS}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    ddp_dir = tmp_path / "ddp"
    torchrun = [sys.executable, "-m", "torch.distributed.run"]  # the `torchrun` command
    sets = [arg for o in OVERRIDES for arg in ("--set", o)]
    proc = subprocess.Popen(
        [*torchrun, "--standalone", "--nproc_per_node=2", "-m", "ppvae", "train",
         str(REPO / "models" / "vae.toml"), "--out", str(ddp_dir), *sets],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip

    # meanwhile: the single-process runs (in this process), seeds 0, 1, 2
    final = {}
    for seed in (0, 1, 2):
        spec = load_spec(REPO / "models" / "vae.toml", [*OVERRIDES, f"train.seed={seed}"])
        _run, history = train_spec(spec, tmp_path / f"single{seed}")
        final[seed] = history["valid_elbo"][-1]
    spread = max(final.values()) - min(final.values())
    tolerance = max(3 * spread, 0.05)

    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err[-3000:]
    single = tmp_path / "single0"

    # rank 0 alone writes: the same files as one process, one metrics line per epoch
    assert _files(ddp_dir) == _files(single)
    assert out.count("run folder:") == 1  # one summary, from rank 0
    records = _records(ddp_dir)
    assert [r["epoch"] for r in records] == list(range(1, EPOCHS + 1))
    assert [r["step"] for r in records] == [r["step"] for r in _records(single)]
    last = load_checkpoint(ddp_dir / "checkpoints" / "last.pt")
    assert last["epoch"] == EPOCHS and last["history"] == records

    ddp_elbo = records[-1]["valid_elbo"]
    print(
        f"single-process final valid ELBO by seed {final}; spread {spread:.4f}; "
        f"two processes {ddp_elbo:.4f}; |diff| {abs(ddp_elbo - final[0]):.4f} <= {tolerance:.4f}"
    )
    assert abs(ddp_elbo - final[0]) <= tolerance
    assert ddp_elbo > records[0]["valid_elbo"]  # and it did learn
    # and the training loss is reduced over both processes (the mean over every point)
    assert abs(records[-1]["train_loss"] - _records(single)[-1]["train_loss"]) <= 2 * tolerance
