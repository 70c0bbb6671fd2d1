"""The stakeholder reports as a reader sees them: report.html rendered by headless Chromium.

The page is laid out by the browser at 1280x800 (one laptop screen) and measured from itself: a
copy of report.html gets a few lines of script that write the verdict block's box into the DOM,
which ``--dump-dom`` returns; a screenshot of the same screen must show the verdict's colour.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from r2migrate import inventory, plan, run
from r2migrate.notebooks.helpers import run_notebook
from r2migrate.s3.bucket import Bucket
from r2migrate.store.ledger import State
from tests.test_notebooks import nb_settings  # noqa: F401  (the fixture, shared)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREEN = (1280, 800)
PNG = b"\x89PNG\r\n\x1a\n"
GREEN, RED = (0x2F, 0x85, 0x5A), (0xC5, 0x30, 0x30)  # report.figures PROVEN_GREEN, FAILED_RED
MEASURE = """<script>
function holding(text) {  // the element whose own text holds ``text``
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    if (node.textContent.includes(text)) return node.parentElement;
  }
}
const box = (document.getElementById(WANTED) || holding(WANTED)).getBoundingClientRect();
document.body.setAttribute("data-measured", JSON.stringify(
  {top: box.top, bottom: box.bottom, screen: window.innerHeight, width: window.innerWidth}));
</script></body>"""

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (CI: `apt-get install -y chromium`)"
)


def _chromium(tmp_path: Path, *args: str) -> str:
    assert CHROMIUM is not None
    flags = [
        "--headless",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--hide-scrollbars",
        f"--window-size={SCREEN[0]},{SCREEN[1]}",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ]
    if os.geteuid() == 0:
        flags.append("--no-sandbox")  # Chromium refuses to run as root inside its sandbox
    done = subprocess.run(
        [CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _box_of(html_path: Path, wanted: str, tmp_path: Path) -> tuple[dict, str]:
    """The box of the element with id ``wanted``, else of the one whose text holds it, as
    Chromium lays the page out; and the DOM."""
    measured = tmp_path / f"measured-{html_path.parent.name}.html"
    page = html_path.read_text(encoding="utf-8")
    script = MEASURE.replace("WANTED", json.dumps(wanted))
    measured.write_text(page.replace("</body>", script, 1), encoding="utf-8")
    dom = _chromium(tmp_path, "--dump-dom", measured.as_uri())
    box = json.loads(re.search(r'data-measured="([^"]+)"', dom)[1].replace("&quot;", '"'))
    # --dump-dom's window keeps room for browser chrome (its viewport is shorter than the
    # screenshot's): what fits the smaller one fits 1280x800 too.
    assert box["width"] == SCREEN[0] and box["screen"] <= SCREEN[1], box
    return box, dom


def _first_screen(html_path: Path, tmp_path: Path) -> tuple[dict, str, list]:
    """The verdict block's box and word as Chromium lays it out, and its pixels on a screenshot
    of the first screen."""
    box, dom = _box_of(html_path, "verdict", tmp_path)
    verdict = re.search(r'data-verdict="([^"]+)"', dom)[1]
    shot = tmp_path / f"{html_path.parent.name}.png"
    _chromium(tmp_path, f"--screenshot={shot}", html_path.as_uri())
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == SCREEN
        block = image.convert("RGB").crop((0, int(box["top"]), SCREEN[0], int(box["bottom"])))
        pixels = block.getcolors(maxcolors=SCREEN[0] * SCREEN[1])
    return box, verdict, pixels


def _near(pixels: list[tuple[int, tuple[int, int, int]]], colour: tuple[int, int, int]) -> int:
    """How many pixels of the screen have about this colour."""
    return sum(n for n, p in pixels if all(abs(a - b) <= 8 for a, b in zip(p, colour, strict=True)))


def test_verification_report_leads_with_the_verdict(nb_settings, sample, tmp_path):  # noqa: F811
    with State.open(nb_settings.database_url) as state:
        inventory(nb_settings, state)
        plan(nb_settings, state)
        assert run(nb_settings, state).failed == 0
    runs = tmp_path / "runs"
    passing = run_notebook("04", {"deep_sample": "0"}, runs_dir=runs)
    bucket = Bucket(nb_settings)
    victim = next(key for key, _ in bucket.iter_objects())
    bucket.client.delete_object(Bucket=bucket.name, Key=victim)
    failing = run_notebook("04", {"deep_sample": "0"}, runs_dir=runs)
    assert passing.results["ok"] is True and failing.results["ok"] is False

    for report, word, colour, other in (
        (passing, "PASS", GREEN, RED),
        (failing, "ATTENTION", RED, GREEN),
    ):
        box, verdict, pixels = _first_screen(report.html_path, tmp_path)
        assert verdict == word
        assert 0 <= box["top"] < box["bottom"] <= box["screen"], box
        assert _near(pixels, colour) > 2_000, word  # the verdict's colour is seen there...
        assert _near(pixels, other) == 0, word  # ...and not the other verdict's
        html = report.html_path.read_text(encoding="utf-8")
        # settings are an appendix after the answer; the interactive section is left out
        assert html.index('id="verdict"') < html.index("Settings used")
        assert "Explore one batch" not in html
        assert "not_checked" not in html.split("Settings used")[0]
    failed_html = failing.html_path.read_text(encoding="utf-8")
    assert "1 missing from the bucket" in failed_html
    assert "119 of 120 files are proven identical; 1 needs attention." in failed_html


def test_inventory_report_leads_with_what_can_be_migrated(nb_settings, sample, tmp_path):  # noqa: F811
    report = run_notebook("01", runs_dir=tmp_path / "runs")
    box, dom = _box_of(report.html_path, "can be migrated", tmp_path)
    assert 0 <= box["top"] < box["bottom"] <= box["screen"], box
    assert f"{sample.referenced_files} files" in dom
    pngs = [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', dom)]
    assert len(pngs) >= 3 and all(p.startswith(PNG) and len(p) > 2_000 for p in pngs)
    shot = tmp_path / "inventory.png"
    _chromium(tmp_path, f"--screenshot={shot}", report.html_path.as_uri())
    from PIL import Image

    with Image.open(shot) as image:
        colours = image.convert("RGB").getcolors(maxcolors=SCREEN[0] * SCREEN[1])
    assert colours is not None and len(colours) > 50  # text, tables and bars: not a blank page
