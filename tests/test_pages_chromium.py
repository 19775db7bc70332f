"""Every page a study writes reads offline in a real browser: headless Chromium (the distribution's package; the
tests skip without it) loads the index and the notebook reports from ``file://``, and a page fails on any request
to the network, an output area of zero height (a widget that needs JavaScript from the network) or a broken image.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nbformat
import numpy as np
import pytest
import yaml
from chromium_pages import Browser, find_chromium
from PIL import Image

from histlib import report, runs, study

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(find_chromium() is None, reason="chromium is not installed (apt-get install chromium)")


def problems(result: dict) -> list[str]:
    out = [f"network request {u}" for u in result["requests"]]
    out += [f"output area of zero height: {z}" for z in result["zero"]]
    out += [f"image not loaded: {b}" for b in result["broken"]]
    if not result["title"] or result["title"] == "Notebook":
        out.append(f"no real title ({result['title']!r})")
    return out


@pytest.fixture(scope="module")
def browser():
    with Browser() as b:
        yield b


def _report(tmp_path: Path, cells: list) -> Path:
    nb = nbformat.v4.new_notebook(cells=cells)
    ipynb = tmp_path / "page.ipynb"
    nbformat.write(nb, str(ipynb))
    return study.export_html(ipynb, tmp_path / "page.html", "toy · 01 page")


def test_the_checks_catch_a_network_request_an_empty_output_and_a_broken_image(tmp_path, browser):
    # what the checks exist for: a widget output (nothing to draw without its JavaScript), a script from the network
    # and an image that is not there
    widget = nbformat.v4.new_output("display_data", data={
        "application/vnd.jupyter.widget-view+json": {"model_id": "x", "version_major": 2, "version_minor": 0},
        "text/plain": ""})
    cell = nbformat.v4.new_code_cell("bar", outputs=[widget])
    page = _report(tmp_path, [cell])
    text = page.read_text().replace("</body>", "<script src='http://127.0.0.1:9/x.js'></script>"
                                              "<img src='missing.png'></body>")
    page.write_text(text)
    found = problems(browser.render(page))
    assert any(p.startswith("network request http://127.0.0.1:9/x.js") for p in found), found
    assert any(p.startswith("output area of zero height") for p in found), found
    assert any(p.startswith("image not loaded") for p in found), found


def test_an_exported_report_and_an_index_page_read_offline(tmp_path, browser):
    out = nbformat.v4.new_output("stream", name="stdout", text="prepare: done (24/24 img, 1s)\n")
    table = nbformat.v4.new_output("execute_result", data={"text/html": "<table><tr><td>1</td></tr></table>",
                                                           "text/plain": "1"}, execution_count=1)
    page = _report(tmp_path, [nbformat.v4.new_code_cell("x", outputs=[out]),
                              nbformat.v4.new_code_cell("y", outputs=[table], execution_count=1)])
    result = browser.render(page)
    assert result["areas"] >= 2 and not problems(result), problems(result)
    root = tmp_path / "results" / "toy"
    images = root / "lung" / "finetune" / "pretrained" / "images"
    images.mkdir(parents=True)
    for name in ("reals.png", "grid-latest.png"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(images / name)
    runs.write_json(root / "study.json", {"study": "toy", "profile": "demo", "steps": []})
    assert not problems(browser.render(report.build_index(root)))


def _demo_results(tmp_path_factory) -> Path:
    """``results/demo`` when ``make demo`` has finished there (HISTLIB_DEMO_RESULTS names another), else a short demo
    study run now."""
    given = os.environ.get("HISTLIB_DEMO_RESULTS")
    existing = Path(given) if given else ROOT / "results" / "demo"
    info = existing / "study.json"
    if info.is_file() and all(r.get("status", "").startswith(("finished", "skipped"))
                              for r in runs.read_json(info).get("steps", [])):
        return existing
    doc = yaml.safe_load((ROOT / "studies" / "demo.yaml").read_text())
    doc["name"] = "demo_pages"
    doc["base_gan"]["KIMG"] = 0.5
    doc["finetune"].update(KIMG=0.25)
    doc["generate"]["IMAGES_PER_CLASS"] = 4
    doc["classify"].update(EPOCHS=1)
    tmp = tmp_path_factory.mktemp("demo_pages")
    (tmp / "demo_pages.yaml").write_text(yaml.safe_dump(doc))
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        study.run_study(tmp / "demo_pages.yaml", results_root=tmp / "results")
    finally:
        os.chdir(cwd)
    return tmp / "results" / "demo_pages"


@pytest.mark.slow
def test_the_demo_index_and_every_report_read_offline_in_chromium(tmp_path_factory, browser):
    root = _demo_results(tmp_path_factory)
    pages = [root / "index.html", *sorted((root / "notebooks").glob("*.html"))]
    assert len(pages) > 5
    found = {}
    for page in pages:
        result = browser.render(page)
        if problems(result):
            found[page.name] = problems(result)
        if page.name != "index.html":
            assert result["areas"] > 0, f"{page.name}: no output area at all"
    assert not found, found
    if root.name == "demo_pages":
        shutil.rmtree(root.parent, ignore_errors=True)
