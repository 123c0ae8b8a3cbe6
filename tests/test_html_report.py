"""``ppvae report``: a self-contained HTML report of a run folder (ppvae/html_report.py).

One tiny VAE run on the built-in digits is trained and evaluated once for the module; the
tests read its report as text, parse it, and render it in a headless Chromium when one is
installed (skipped otherwise).
"""

from __future__ import annotations

import base64
import json
import math
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from ppvae.cli import main
from ppvae.html_report import write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SECTIONS = ["Run", "Spec (resolved)", "Training curves", "Decoder means and reconstructions"]
SECTIONS += ["Latent space", "Latent diagnostics", "Evaluation"]


class _Page(HTMLParser):
    """Headings, images and every URL-valued attribute of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.headings: list[str] = []
        self.images: list[dict[str, str]] = []
        self.urls: list[str] = []
        self.tags: set[str] = set()
        self._heading: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs)
        for name in ("src", "href", "srcset", "poster", "data", "action"):
            if attrs.get(name):
                self.urls.append(attrs[name])
        if tag in ("h1", "h2"):
            self._heading = []

    def handle_data(self, data):
        if self._heading is not None:
            self._heading.append(data)

    def handle_endtag(self, tag):
        if tag in ("h1", "h2") and self._heading is not None:
            self.headings.append("".join(self._heading).strip())
            self._heading = None


def _parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    return page


def _fmt(x, spec=".4f") -> str:
    return "n/a" if x is None else format(x, spec)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A 2-epoch VAE on 200 digits, evaluated on test (K=20: no k-hat) and valid (K=30)."""
    out = tmp_path_factory.mktemp("report") / "run"
    args = ["train", "models/vae.toml", "--out", str(out), "--no-progress"]
    args += ["--set", "train.epochs=2", "--set", "data.limit=200", "--set", "model.hidden=[32]"]
    repo = Path(__file__).resolve().parents[1]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(repo)
        assert main(args) == 0
    # --json: the plain-text summary cannot print the k-hat values that K < 21 leaves None
    assert main(["evaluate", str(out), "--num-samples", "20", "--no-progress", "--json"]) == 0
    valid = ["evaluate", str(out), "-k", "30", "--split", "valid", "--no-progress", "--json"]
    assert main(valid) == 0
    assert main(["report", str(out)]) == 0
    return out


def test_report_is_self_contained(run_dir):
    report = run_dir / "report.html"
    assert report.is_file()
    text = report.read_text(encoding="utf-8")
    page = _parse(text)
    assert not any(u.startswith(("http://", "https://", "//")) for u in page.urls), page.urls
    assert {"script", "link", "iframe", "object"}.isdisjoint(page.tags)
    assert "@import" not in text and "url(" not in text
    # curves, decoder means, reconstructions, latent space, KL per dimension, traversals,
    # interpolations, 1 k-hat plot
    assert len(page.images) == 8
    for img in page.images:
        src = img["src"]
        assert src.startswith("data:image/png;base64,"), src[:40]
        data = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert data.startswith(PNG_MAGIC)
        assert img.get("alt")
    assert report.stat().st_size < 2_000_000


def test_report_contents(run_dir):
    text = (run_dir / "report.html").read_text(encoding="utf-8")
    page = _parse(text)
    assert page.headings[0] == f"ppvae run report: {run_dir.name}"
    assert page.headings[1:] == SECTIONS
    # the spec's values
    for value in ("<code>[model]</code>", "<code>latent_dim</code>", "<code>8</code>"):
        assert value in text
    assert "<code>[32]</code>" in text and "<code>digits</code>" in text
    assert "<code>kl_warmup_epochs</code>" in text  # resolved: defaults included
    # run facts from metrics.jsonl
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    best = max(records, key=lambda r: r["valid_elbo"])
    assert "2 of 2" in text
    assert f"{best['epoch']} (valid ELBO {best['valid_elbo']:.4f}" in text
    assert f"{sum(r['seconds'] for r in records):.1f} s" in text
    assert "torch 2." in text and "pyro-ppl" in text
    # every evaluation, as the table shows it
    for name in ("test-K20.json", "valid-K30.json"):
        s = json.loads((run_dir / "evaluation" / name).read_text())
        cells = [
            f"<td>{s['split']}</td><td>{s['n']}</td><td>{s['num_samples']}</td>",
            f"<td>{_fmt(s['log_px'])} ± {_fmt(s['log_px_sem'])}</td>",
            f"<td>{_fmt(s['elbo'])}</td><td>{_fmt(s['gap'])}</td>",
            f"<td>{s['ess_median']:.1f} / {s['ess_min']:.1f}</td>",
            f"<td>{_fmt(s['khat_max'], '.3f')}</td><td>{_fmt(s['khat_frac_bad'], '.3f')}</td>",
            f"<td>{s['elbo_split']['reconstruction']:.3f}</td><td>{s['elbo_split']['kl']:.3f}</td>",
            f"<td>{s['mutual_information']['value']:.3f} / "
            f"{s['mutual_information']['upper_bound']:.2f}</td>",
            f"<td>{s['latent']['active_units']}</td>",
        ]
        assert "".join(cells) in text, name
    test = json.loads((run_dir / "evaluation" / "test-K20.json").read_text())
    assert test["khat_max"] is None  # K = 20 < 21: no k-hat, a note instead of a plot
    assert "test-K20: no k-hat values" in text
    valid = json.loads((run_dir / "evaluation" / "valid-K30.json").read_text())
    assert math.isfinite(valid["khat_max"])
    assert any(img["alt"] == "k-hat plot valid-K30" for img in page.images)
    # figures: curves, decoder means, reconstructions, and the latent space coloured by label
    alts = {img["alt"] for img in page.images}
    assert {
        "training curves",
        "decoder means of prior draws",
        "test data and reconstructions",
    } <= alts
    assert "the expected images, not samples of x" in text
    # latent diagnostics: KL per dimension with the active units, traversals, interpolations
    assert {"KL per latent dimension", "latent traversals"} <= alts
    assert "interpolations between test points" in alts
    last = records[-1]["latent"]
    assert records[-1]["active_units"] == last["active_units"]
    assert len(last["kl_per_dim"]) == 8 and last["kl_method"] == "closed_form"
    assert "in closed form (diagonal Gaussian guide and prior)" in text
    assert "units are active (activity &gt; 0.01" in text
    assert "latent space" in alts
    assert "PCA of the 8-D latent (SVD), coloured by label" in text
    assert "of 359 test points" in text  # every test point (fewer than 1000)
    assert 'class="note"' in text  # only the k-hat note
    assert text.count('class="note"') == 1


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip(
        "no chromium or chromium-browser on PATH: the report is not rendered in a browser "
        "(apt-get install chromium to run this test)"
    )


def test_report_renders_in_headless_browser(run_dir, tmp_path):
    browser = _chromium()
    report = (run_dir / "report.html").resolve()
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    shot = tmp_path / "shot.png"
    done = subprocess.run(
        [browser, *flags, f"--screenshot={shot}", "--window-size=1200,3000", report.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.is_file(), done.stderr[-2000:]
    from matplotlib.image import imread

    pixels = imread(shot)[..., :3]
    assert pixels.shape[:2] == (3000, 1200)
    colours = np.unique((pixels * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 50  # text, tables, plots and image grids; a blank page has 1
    assert (pixels < 0.5).mean() > 0.005  # dark ink somewhere
    dom = subprocess.run(
        [browser, *flags, "--dump-dom", report.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = _parse(dom.stdout)
    assert page.headings[1:] == SECTIONS
    srcs = [img["src"] for img in page.images]
    assert len(srcs) == 8 and all(s.startswith("data:image/png;base64,") for s in srcs)


def test_sections_without_inputs_show_notes(run_dir, tmp_path):
    """A folder with only spec.toml: no checkpoint, metrics or evaluation; each section
    says so in one line, and --out puts the report elsewhere."""
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(run_dir / "spec.toml", bare / "spec.toml")
    out = tmp_path / "elsewhere" / "r.html"
    assert main(["report", str(bare), "--out", str(out)]) == 0
    assert out.is_file() and not (bare / "report.html").exists()
    text = out.read_text(encoding="utf-8")
    assert "no metrics.jsonl: no training curves" in text
    assert "model not loaded: checkpoint" in text
    assert "no evaluation yet" in text
    assert "<code>[32]</code>" in text
    assert "<img" not in text
    # a Run object works as well (its weights as they are)
    from ppvae.run import load_run

    path = write_report(load_run(run_dir), out=tmp_path / "from-run.html")
    assert "latent space" in path.read_text(encoding="utf-8")


@pytest.mark.parametrize("kind", ["missing", "no-spec", "out-is-folder"])
def test_report_errors(run_dir, tmp_path, capsys, kind):
    if kind == "missing":
        args = ["report", str(tmp_path / "nope")]
    elif kind == "no-spec":
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "metrics.jsonl").write_text("")
        args = ["report", str(tmp_path / "empty")]
    else:
        args = ["report", str(run_dir), "--out", str(tmp_path)]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
