"""Helpers shared by the benchmark scripts: data folder, machine facts, output files.

Nothing here imports Pyro or ppvae, so that a measuring child process that needs neither
does not pay for (or count the memory of) importing them.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import platform
import resource
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DATA_ENV = "PPVAE_DATA_DIR"


def fail(message: str) -> None:
    """Print ``error: message`` and exit with status 2 (a usage error, as the CLI does)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def require_data_dir(name: str = "binarized_mnist") -> Path:
    """``$PPVAE_DATA_DIR/<name>``; exits with status 2 and one clear sentence otherwise."""
    value = os.environ.get(DATA_ENV)
    if not value:
        fail(
            f"{DATA_ENV} is not set; point it at the folder that holds {name}/ "
            f"(e.g. export {DATA_ENV}=../shared/data)"
        )
    path = Path(value) / name
    if not path.is_dir():
        fail(f"{path} does not exist; {DATA_ENV} must name a folder that holds {name}/")
    return path


def resolve_device(device: str) -> torch.device | None:
    """The device to measure on, or None (after a message) when CUDA is asked for but absent."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print(f"skipped: --device {device} was asked for but CUDA is not available here")
        return None
    return dev


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def max_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict[str, Any]:
    """The facts a timing is meaningless without: hardware, versions, threads, date."""
    import pyro

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "device": str(device),
    }
    try:
        import ppvae

        info["ppvae"] = ppvae.__version__
    except ImportError:
        pass
    with contextlib.suppress(OSError):
        info["load_average"] = list(os.getloadavg())
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def machine_lines(info: dict[str, Any]) -> list[str]:
    """The machine facts as Markdown bullet lines."""
    lines = [
        f"- date: {info['date']}",
        f"- CPU: {info['cpu']} ({info['cpus_usable']} usable of {info['cpu_count']} logical "
        f"cores, torch threads {info['torch_threads']}, load average at start "
        f"{', '.join(f'{x:.1f}' for x in info.get('load_average', []))})",
        f"- versions: torch {info['torch']}, pyro {info['pyro']}, ppvae {info.get('ppvae', '?')}, "
        f"Python {info['python']}",
        f"- device: {info['device']}"
        + (f" ({info['gpu']}, CUDA {info['cuda']})" if "gpu" in info else ""),
    ]
    return lines


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return "-" if not math.isfinite(v) else f"{v:.3g}" if abs(v) < 1 else f"{v:.2f}"
        return str(v)

    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(out)


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON atomically (non-finite floats become null)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(_finite(data), indent=2) + "\n")
    os.replace(tmp, path)


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
