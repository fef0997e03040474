"""``report.html``: one self-contained page with the pictures, checked as PNGs and in a real headless
Chromium (Debian's ``chromium``, installed by .ci/run): the page loads without console errors, every
picture decodes at its stated size, and a screenshot shows non-blank pictures where the page puts them."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import in_ci
from drives import make_drive
from PIL import Image

from empcompress.manifest import verify_bag
from empcompress.pipeline import compress_drive

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_IMG = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" width="(\d+)" height="(\d+)"')
_PROBE = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images).map((img) => {
    const r = img.getBoundingClientRect();
    return {complete: img.complete, w: img.naturalWidth, h: img.naturalHeight,
            x: r.left + window.scrollX, y: r.top + window.scrollY, rw: r.width, rh: r.height};
  });
  const pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify({images, height: document.documentElement.scrollHeight});
  document.body.appendChild(pre);
});
</script>"""


def chromium() -> str:
    """The headless browser; skip when it is not installed (a failure under CI, which installs it)."""
    found = shutil.which("chromium")
    if found is None:
        message = "chromium is not installed (Debian: apt-get install chromium)"
        if in_ci():
            pytest.fail(f"{message}, but CI is set and must run the browser test")
        pytest.skip(message)
    return found


def run_chromium(browser: str, profile: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    command = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        "--enable-logging=stderr",
        "--v=0",
        *arguments,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def bag(tmp_path_factory: pytest.TempPathFactory, client: Any) -> Path:
    root = tmp_path_factory.mktemp("report")
    source = make_drive(root / "drive", gain_sets=True, n_extra_movies=2)
    summary = compress_drive(source, root / "bag", client=client)
    assert summary.sealed
    return root / "bag"


def _pictures(page: str) -> list[tuple[Image.Image, int, int]]:
    return [
        (Image.open(io.BytesIO(base64.b64decode(data))), int(width), int(height))
        for data, width, height in _IMG.findall(page)
    ]


def test_page_is_self_contained_with_every_picture(bag: Path) -> None:
    page = (bag / "report.html").read_text(encoding="utf-8")
    assert not re.search(r'(src|href)="(?!data:|#|report)', page), "the page must load nothing from elsewhere"
    for anchor in ("ratio", "throughput", "counts", "gain-1", "gain-2"):
        assert f'id="{anchor}"' in page
    pictures = _pictures(page)
    assert len(pictures) == 5  # 3 plots, 2 gain references (estimated, and the depositor's)
    for image, width, height in pictures:
        assert image.format == "PNG" and image.size == (width, height)
        pixels = np.asarray(image.convert("L"), dtype=np.float64)
        assert pixels.std() > 10, "a blank picture"
    markdown = (bag / "report.md").read_text(encoding="utf-8")
    assert "[Gain reference data/Gain set/gain-reference.mrc](report.html#gain-" in markdown
    assert verify_bag(bag).ok  # report.html is a tag file of the sealed bag


def test_page_in_headless_chromium(bag: Path, tmp_path: Path) -> None:
    browser = chromium()
    page = (bag / "report.html").read_text(encoding="utf-8")
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    loaded = run_chromium(
        browser, tmp_path / "profile-1", "--window-size=1200,900", "--dump-dom", probe.as_uri()
    )
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    console = [line for line in loaded.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console
    found = re.search(r'<pre id="probe">(.*?)</pre>', loaded.stdout, re.DOTALL)
    assert found, loaded.stdout[-2000:]
    state = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    expected = [(width, height) for _, width, height in _pictures(page)]
    assert [(image["w"], image["h"]) for image in state["images"]] == expected
    assert all(image["complete"] for image in state["images"])
    # the page itself (no probe), as a person sees it: every picture non-blank where the layout put it
    shot = tmp_path / "report.png"
    height = int(state["height"])
    shown = run_chromium(
        browser,
        tmp_path / "profile-2",
        f"--window-size=1200,{height}",
        f"--screenshot={shot}",
        (bag / "report.html").as_uri(),
    )
    assert shown.returncode == 0 and shot.is_file(), shown.stderr[-2000:]
    screenshot = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert screenshot.shape == (height, 1200)
    for image in state["images"]:
        x, y, width, height = (round(image[key]) for key in ("x", "y", "rw", "rh"))
        region = screenshot[y : y + height, x : x + width]
        assert region.shape == (image["h"], image["w"])
        assert region.std() > 10 and (region < 128).mean() > 0.005, f"picture at {x},{y} looks blank"
