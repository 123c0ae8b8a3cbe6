"""Compare finished runs (``ppvae compare RUN RUN ...``): their training curves overlaid in
one PNG, and one table (Markdown and CSV) of their final and best figures and of the
evaluations found in their folders.

Each run is read as every reader reads it (a ppvae run folder holding no link, its
``spec.toml`` the spec of its last checkpoint), from its files only: ``metrics.jsonl``
and ``evaluation/*.json`` (written by ``ppvae evaluate``); no model is built and no data
are loaded. The table's first columns are the spec keys in which the runs differ.

Writes into ``out`` (default ``runs/compare``): ``curves.png``, ``table.md``,
``table.csv``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ppvae.errors import RunDirError
from ppvae.report import compare_curves_png
from ppvae.run import read_run_spec
from ppvae.rundir import (
    EXPERIMENT_MARKER,
    RUN_MARKER,
    check_output_path,
    is_marked,
    write_bytes_atomic,
    write_text_atomic,
    writing,
)

__all__ = ["compare_runs", "Comparison", "RunFigures", "read_run_figures"]

#: spec keys never shown as a difference (they do not change what a run is)
_QUIET_KEYS = ("train.progress",)


@dataclass
class RunFigures:
    """What a run folder records: its name in the table, spec, epoch records and
    evaluation summaries (one dict per ``evaluation/*.json``)."""

    name: str
    path: Path
    spec: dict[str, dict[str, Any]]
    records: list[dict[str, Any]]
    evaluations: list[dict[str, Any]]

    @property
    def best(self) -> dict[str, Any] | None:
        """The record of the best validation ELBO (None without validation)."""
        scored = [r for r in self.records if _finite(r.get("valid_elbo"))]
        return max(scored, key=lambda r: r["valid_elbo"]) if scored else None


@dataclass
class Comparison:
    """The table (header and rows of formatted cells, and of raw values) and the files
    written."""

    header: list[str]
    rows: list[list[str]]
    raw_rows: list[list[Any]]
    files: list[Path]

    def markdown(self) -> str:
        lines = [
            "| " + " | ".join(self.header) + " |",
            "| " + " | ".join("---" for _ in self.header) + " |",
        ]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(self.header)
        writer.writerows(["" if v is None else v for v in row] for row in self.raw_rows)
        return buf.getvalue()


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _read_json_lines(path: Path) -> list[dict[str, Any]]:
    records = []
    with writing(path, "read"):
        text = path.read_text(errors="replace")
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("epoch"), int):
            records.append(record)
    # a resumed run may hold an epoch twice (a record written before a kill): keep the last
    by_epoch = {r["epoch"]: r for r in records}
    return [by_epoch[e] for e in sorted(by_epoch)]


def read_run_figures(run_dir: str | Path, name: str | None = None) -> RunFigures:
    """The spec, epoch records and evaluations of the run in ``run_dir``."""
    path = Path(run_dir)
    if path.is_dir() and is_marked(path, EXPERIMENT_MARKER):
        raise RunDirError(
            f"{str(path)!r} is a semi-supervised experiment folder, not a run folder; "
            "compare the runs inside it (e.g. its L100/seed0/m2)"
        )
    spec = read_run_spec(path)
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        raise RunDirError(f"run folder {str(path)!r} has no metrics.jsonl; it holds no epochs")
    records = _read_json_lines(metrics)
    evaluations = []
    folder = path / "evaluation"
    if folder.is_dir():
        for file in sorted(folder.glob("*.json")):
            try:
                summary = json.loads(file.read_text(errors="replace"))
            except (OSError, ValueError):
                continue
            if isinstance(summary, dict) and _finite(summary.get("log_px")):
                evaluations.append(summary)
    return RunFigures(name or path.name, path, spec.to_dict(), records, evaluations)


def _names(run_dirs: Sequence[str | Path]) -> list[str]:
    """Folder names, or the paths as given where two names are the same."""
    names = [Path(p).name or str(p) for p in run_dirs]
    return [str(p) if names.count(n) > 1 else n for p, n in zip(run_dirs, names, strict=True)]


def _flat(spec: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {f"{s}.{k}": v for s, table in spec.items() for k, v in table.items()}


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-3 and value != 0 else f"{value:g}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_cell(v) for v in value) + "]"
    return str(value)


def _fmt(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if _finite(value) else "-"


def compare_runs(run_dirs: Sequence[str | Path], out: str | Path = "runs/compare") -> Comparison:
    """Compare the runs in ``run_dirs``: write ``curves.png``, ``table.md`` and
    ``table.csv`` into ``out`` and return the table."""
    if not run_dirs:
        raise RunDirError("compare needs at least one run folder")
    out = Path(out)
    if out.is_symlink():
        raise RunDirError(f"--out {str(out)!r} is a symbolic link; give a folder")
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {str(out)!r} is a file; give a folder")
    if is_marked(out, RUN_MARKER) or is_marked(out, EXPERIMENT_MARKER):
        raise RunDirError(
            f"--out {str(out)!r} is a ppvae run folder; write the comparison elsewhere"
        )
    check_output_path(out / "table.md")
    runs = [read_run_figures(p, n) for p, n in zip(run_dirs, _names(run_dirs), strict=True)]

    flats = [_flat(r.spec) for r in runs]
    keys = [k for k in flats[0] if k not in _QUIET_KEYS]
    keys += [k for f in flats[1:] for k in f if k not in keys and k not in _QUIET_KEYS]
    differing = [k for k in keys if len({json.dumps(f.get(k)) for f in flats}) > 1]

    eval_keys: list[tuple[str, int]] = []
    for r in runs:
        for e in r.evaluations:
            key = (str(e.get("split")), int(e.get("num_samples", 0)))
            if key not in eval_keys:
                eval_keys.append(key)

    header = ["run", *differing, "epochs", "final train loss", "final valid ELBO"]
    header += ["best valid ELBO", "best epoch", "train minutes"]
    for split, k in eval_keys:
        header += [f"{split} log p(x) K={k}", "s.e.", f"{split} ELBO K={k}"]
        header += [f"{split} share k-hat > 0.7"]
    rows, raw_rows = [], []
    for r, flat in zip(runs, flats, strict=True):
        last = r.records[-1] if r.records else {}
        best = r.best
        seconds = [x.get("seconds") for x in r.records]
        minutes = sum(s for s in seconds if _finite(s)) / 60 if r.records else None
        raw = [r.name, *[flat.get(k) for k in differing], last.get("epoch")]
        raw += [last.get("train_loss"), last.get("valid_elbo")]
        raw += [best and best["valid_elbo"], best and best["epoch"], minutes]
        row = [r.name, *[_cell(flat.get(k)) for k in differing], _cell(last.get("epoch"))]
        row += [_fmt(last.get("train_loss")), _fmt(last.get("valid_elbo"))]
        row += [_fmt(best and best["valid_elbo"]), _cell(best and best["epoch"])]
        row += [_fmt(minutes, 2)]
        for split, k in eval_keys:
            found = [
                e
                for e in r.evaluations
                if str(e.get("split")) == split and int(e.get("num_samples", 0)) == k
            ]
            e = found[-1] if found else {}
            row += [_fmt(e.get("log_px")), _fmt(e.get("log_px_sem"))]
            row += [_fmt(e.get("elbo")), _fmt(e.get("khat_frac_bad"), 3)]
            raw += [e.get("log_px"), e.get("log_px_sem"), e.get("elbo"), e.get("khat_frac_bad")]
        rows.append(row)
        raw_rows.append(raw)

    table = Comparison(header, rows, raw_rows, [])
    with writing(out, "create the comparison folder"):
        out.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out / "curves.png", compare_curves_png([(r.name, r.records) for r in runs]))
    write_text_atomic(out / "table.md", table.markdown())
    write_text_atomic(out / "table.csv", table.csv())
    table.files = [out / "curves.png", out / "table.md", out / "table.csv"]
    return table
