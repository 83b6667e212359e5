"""Issue 25: the dashboard's "Check a model" page (#/check) in chromium, against the real service
(POST /v1/check) over the session's sample store, with a real model of tests/data/models.

A file set on the page's input (or dropped on its zone) is uploaded with its progress shown; the
report appears: a row per layer of ``db.check`` of the same file, the figure (a PNG of the same
upload), the model's metrics and the nearest models. A file that is no model shows the service's
error in place. Screenshots go to tests/artifacts/ as tests/test_dashboard.py's do.
"""
from __future__ import annotations

import re

import pytest

import cnnfilterdb

from .helpers import REPO, serving
from .test_dashboard import ARTIFACTS, CHROMIUM_ARGS, FIGURE_TIMEOUT_MS, open_tab

MODELS = REPO / "tests" / "data" / "models"
CLS = MODELS / "ch_ppocr_mobile_v2.0_cls_infer.onnx"

# Records whether the page ever showed a progress bar in its status (the check may finish before
# the test looks).
SEE_PROGRESS = """() => { window.__progress = [];
  new MutationObserver(() => { const p = document.querySelector('#c-status progress');
    if (p) window.__progress.push(document.querySelector('#c-status').innerText); })
  .observe(document.body, {subtree: true, childList: true}); }"""


@pytest.fixture(scope="module")
def server(v1_store):
    from cnnfilterdb.service.main import create_app
    from cnnfilterdb.service.settings import Settings

    with serving(create_app(Settings(db=v1_store))) as (base, _):
        yield base


@pytest.fixture(scope="module")
def browser(need):
    chromium = need("chromium")
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def tab(browser, server):
    yield from open_tab(browser, server)


@pytest.fixture(scope="module")
def db(v1_store):
    return cnnfilterdb.open(v1_store)


def wait_report(tab):
    page = tab.page
    page.wait_for_function("() => ['done', 'error'].includes(document.querySelector('main').dataset.state)",
                           timeout=FIGURE_TIMEOUT_MS)
    error = page.query_selector("#c-status .error-box")
    assert error is None, error.inner_text()
    page.wait_for_function("""() => { const i = document.querySelector('#c-figure-img');
        return (i && i.complete && i.naturalWidth > 0) || document.querySelector('#c-figure.is-error'); }""",
                           timeout=FIGURE_TIMEOUT_MS)
    assert page.query_selector("#c-figure.is-error") is None, page.inner_text("#c-figure")


def test_check_page_shows_the_report(tab, db):
    want = db.check(CLS)
    page = tab.page
    tab.goto("#/check")
    assert page.get_attribute('nav a[href="#/check"]', "aria-current") == "page"
    assert page.inner_text("main h1") == "Check a model"
    assert "Choose or drop a model file" in page.inner_text("#c-status")
    page.evaluate(SEE_PROGRESS)
    page.set_input_files("#c-file", str(CLS))
    wait_report(tab)
    assert any("Uploading" in t or "Checking" in t for t in page.evaluate("window.__progress")), "no progress shown"
    # a row per layer of db.check on the same file, in its order, its flags badged
    rows = page.eval_on_selector_all("#c-layers tbody tr", "rs => rs.map(r => [...r.cells].map(c => c.innerText))")
    assert len(rows) == len(want.layers) > 0
    assert [r[1] for r in rows] == list(want.layers["name"])
    assert [r[0] for r in rows] == [str(i) for i in want.layers["layer"]]
    flagged = page.eval_on_selector_all("#c-layers tbody tr", "rs => rs.map(r => r.classList.contains('flagged'))")
    assert flagged == [bool(f) for f in want.layers["flags"]]
    for row, flags in zip(rows, want.layers["flags"]):
        assert row[-1].split() == list(flags)
    kl = [float(re.match(r"[\d.e+-]+", r[-3]).group()) for r in rows]
    assert kl == pytest.approx(list(want.layers["kl_to_population"]), rel=1e-3)
    # the store and version compared with, the model metrics, the nearest models (links to their pages)
    text = page.inner_text("#c-result")
    assert want.store_id in text and want.model["sha256"] in text and CLS.name in text
    assert f"store version {want.store_version}" in page.inner_text("#c-summary")
    assert page.eval_on_selector_all("#c-model-metrics tbody tr", "rs => rs.length") == 8
    near = page.eval_on_selector_all("#c-nearest tbody a", "as => as.map(a => [a.getAttribute('href'), a.innerText])")
    assert near == [[f"#/model/{m}", n] for m, n in zip(want.nearest_models["model_id"], want.nearest_models["model"])]
    # the figure: a PNG of the same upload, shown from a blob, with a text alternative
    img = page.evaluate("""() => { const i = document.querySelector('#c-figure-img');
        return {src: i.src, w: i.naturalWidth, h: i.naturalHeight, alt: i.alt}; }""")
    assert img["src"].startswith("blob:") and img["w"] == 1300 and img["h"] == 560 and len(img["alt"]) > 80
    tab.screenshot("check")
    # the report as a page: downloaded from the same upload
    with page.expect_download() as dl:
        page.click('#c-downloads a[data-format="html"]')
    html = open(dl.value.path(), encoding="utf-8").read()
    assert dl.value.suggested_filename.endswith(".html")
    assert want.store_id in html and html.count('<tr class="layer') == len(want.layers)
    tab.assert_clean()


def test_check_page_population_of_a_task(tab, db):
    page = tab.page
    tab.goto("#/check")
    page.wait_for_selector("#c-task option:nth-child(2)", state="attached")
    task = page.eval_on_selector("#c-task option:nth-child(2)", "o => o.value")
    page.select_option("#c-task", task)
    page.fill("#c-k", "3")
    page.dispatch_event("#c-k", "change")
    assert tab.hash_params() == ("/check", {"task": task, "k": "3"})
    page.set_input_files("#c-file", str(CLS))
    wait_report(tab)
    want = db.check(CLS, where={"task": [task]}, k=3)
    assert page.eval_on_selector_all("#c-nearest tbody tr", "rs => rs.length") == len(want.nearest_models) <= 3
    assert f"{want.population['n_models']} models" in page.inner_text("#c-result")
    assert task in page.inner_text("#c-result")
    tab.assert_clean()


def test_check_page_shows_errors(tab):
    page = tab.page
    tab.goto("#/check")
    page.set_input_files("#c-file", str(MODELS / "README.md"))
    box = page.wait_for_selector("#c-status .error-box", timeout=FIGURE_TIMEOUT_MS)
    text = box.inner_text()
    assert text.startswith("422 invalid_model") and "README.md" in text, text
    assert page.query_selector("#c-layers") is None
    tab.screenshot("check-error")
    # a file dropped on the zone is checked as a chosen one
    page.evaluate("""() => { const dt = new DataTransfer();
        dt.items.add(new File(['not a model at all'], 'notes.txt', {type: 'text/plain'}));
        document.querySelector('#c-drop').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true})); }""")
    page.wait_for_function("() => document.querySelector('#c-status').innerText.includes('notes.txt')",
                           timeout=FIGURE_TIMEOUT_MS)
    assert page.inner_text("#c-file-name").startswith("notes.txt")
    assert "422 invalid_model" in page.inner_text("#c-status .error-box")
    # a selection that is not JSON is said before anything is sent
    page.fill("#c-where", "{task")
    page.click("#c-run")
    assert "not valid JSON" in page.inner_text("#c-status .error-box")
    # the 4xx answers are the page's own messages, not console errors
    tab.assert_clean(allow=re.compile(r"status of 422"))
