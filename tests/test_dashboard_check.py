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
from cnnfilterdb.check_report import FIGURE_DPI, number_text

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


def app_function(name: str) -> str:
    """A function of service/static/app.js (a module: nothing of it is global) as source to run in
    the page, with the number format it uses."""
    src = (REPO / "service" / "static" / "app.js").read_text()
    m = re.search(rf"^function {name}\(.*?^}}$", src, re.S | re.M) or re.search(rf"^const {name} = .*?;$", src, re.M)
    return "const intFmt = new Intl.NumberFormat('en-US'); const fmtInt = (n) => intFmt.format(n); " + m.group(0)


def check_posts(tab) -> int:
    return sum(u.endswith("/v1/check") for u in tab.requests)


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
    assert img["src"].startswith("blob:") and img["w"] == 13 * FIGURE_DPI and img["h"] == round(5.6 * FIGURE_DPI)
    assert len(img["alt"]) > 80
    # numbers: integers exact with separators, floats as the report writes them (one rule)
    metrics = dict(page.eval_on_selector_all("#c-model-metrics tbody tr",
                                             "rs => rs.map(r => [r.cells[0].innerText, r.cells[1].innerText])"))
    assert metrics["3×3 filters"] == f"{want.model['n_filters']:,}" and metrics["Layers of 3×3 filters"] == str(want.model["n_layers"])
    assert metrics["Sparsity"] == number_text(want.model["sparsity"])
    assert metrics["Divergence from the population"] == number_text(want.model["divergence"])
    xs = [8.401e-05, 0.0001234, 0.78106008, 2.3443615, 11904, 0, 12345.6, -2.887427677, 1e-05, 0.5, 0.01042]
    assert page.evaluate(f"xs => {{ {app_function('checkNumber')}; return xs.map(checkNumber); }}", xs) \
        == [number_text(x) for x in xs]
    assert number_text(8.401e-05) == "8.401e-05"
    # one unit for the times; "1 layer", not "1 layers"
    assert re.fullmatch(r"Checked in [\d,]+ ms \([\d,]+ ms at the service\)\.", page.inner_text("#c-done"))
    plural = app_function("plural")
    assert page.evaluate(f"() => {{ {plural}; return [plural(1, 'layer'), plural(2304, 'filter')]; }}") == ["1 layer", "2,304 filters"]
    tab.screenshot("check")
    # the report as a page: downloaded from the same upload, asked once; the PNG is the figure's
    posts = check_posts(tab)
    assert posts == 2  # the check, its figure
    for _ in range(2):
        with page.expect_download() as dl:
            page.click('#c-downloads a[data-format="html"]')
        html = open(dl.value.path(), encoding="utf-8").read()
        assert dl.value.suggested_filename.endswith(".html")
        assert want.store_id in html and html.count('<tr class="layer') == len(want.layers)
    with page.expect_download() as dl:
        page.click('#c-downloads a[data-format="png"]')
    assert open(dl.value.path(), "rb").read(4) == b"\x89PNG"
    assert check_posts(tab) == posts + 1  # the HTML once; the PNG reused
    # "Check" with nothing changed: no new check, said so; with k changed: checked again
    page.click("#c-run")
    assert "Nothing changed" in page.inner_text("#c-status")
    assert check_posts(tab) == posts + 1 and page.query_selector("#c-layers") is not None
    page.fill("#c-k", "2")
    page.click("#c-run")
    wait_report(tab)
    assert check_posts(tab) == posts + 3 and page.eval_on_selector_all("#c-nearest tbody tr", "rs => rs.length") == 2
    tab.assert_clean()


def test_check_page_fits_a_narrow_window(tab, db):
    """At 800 px the layer table fits its panel (depth, orthogonality and "unusual at" hidden; the
    report keeps them): the flags in view without a sideways scroll; names break only after a
    separator, never leaving a quote alone."""
    want = db.check(CLS)
    page = tab.page
    page.set_viewport_size({"width": 800, "height": 900})
    tab.goto("#/check")
    page.set_input_files("#c-file", str(CLS))
    wait_report(tab)
    size = page.evaluate("() => { const w = document.querySelector('#c-layers'); return [w.scrollWidth, w.clientWidth]; }")
    assert size[0] <= size[1] + 1, size
    assert page.is_hidden("#c-layers-scroll")
    heads = page.eval_on_selector_all("#c-layers thead th",
                                      "ts => ts.filter(t => t.offsetParent).map(t => t.innerText.replace(/\\s+/g, ' '))")
    assert heads[-1] == "Flags" and "Unusual at" not in heads and "Orthogonality" not in heads
    box = page.eval_on_selector("#c-layers", "w => w.getBoundingClientRect().right")
    flags = page.eval_on_selector("#c-layers thead th:last-child", "t => t.getBoundingClientRect().right")
    assert flags <= box + 1
    lines = page.eval_on_selector_all("#c-layers td.c-name", "ts => ts.map(t => t.innerText.split('\\n'))")
    assert ["".join(x) for x in lines] == list(want.layers["name"])
    assert not [x for x in lines if any(part.strip() in ("'", '"') for part in x)]
    tab.screenshot("check-800")
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
    want = db.check(CLS, where={"task": task}, k=3)
    assert page.eval_on_selector_all("#c-nearest tbody tr", "rs => rs.length") == len(want.nearest_models) <= 3
    # one task is sent as a value, {"task": "GAN"}, as the CLI's --task: the figure says "task = GAN"
    import json

    assert json.loads(page.get_attribute("#c-summary", "data-where")) == {"task": task}
    n = want.population["n_models"]
    assert f"{n} model{'' if n == 1 else 's'} (" in page.inner_text("#c-summary")
    assert page.inner_text("#c-population") == f"models where Task is {task}"
    tab.assert_clean()


def test_check_page_combines_the_task_and_the_where(tab, db):
    """A task chosen and a where typed are one selection (the task added to the where), shown as the
    population the service used; a where that names task while a task is chosen is an error in
    place, the previous result cleared."""
    import json

    page = tab.page
    tab.goto("#/check")
    page.wait_for_selector("#c-task option:nth-child(2)", state="attached")
    pairs = db.sql("SELECT task, visual_category, count(*) AS n FROM models GROUP BY 1, 2 ORDER BY n DESC, 1, 2")
    task, category = pairs.iloc[0]["task"], pairs.iloc[0]["visual_category"]
    page.select_option("#c-task", task)
    page.fill("#c-where", json.dumps({"visual_category": [category]}))
    page.set_input_files("#c-file", str(CLS))
    wait_report(tab)
    want = db.check(CLS, where={"visual_category": [category], "task": task})
    assert json.loads(page.get_attribute("#c-summary", "data-where")) == want.population["where"]
    assert want.population["where"] == {"visual_category": [category], "task": task}
    words = {"task": f"Task is {task}", "visual_category": f"Visual category is {category}"}
    assert page.inner_text("#c-population") == "models where " + " and ".join(words[k] for k in want.population["where"])
    n = want.population["n_models"]
    assert f"compared with {n} model{'' if n == 1 else 's'} (" in page.inner_text("#c-summary")
    # the address keeps what was used
    assert tab.hash_params() == ("/check", {"task": task, "where": json.dumps({"visual_category": [category]})})
    # the where names task too: said in place, nothing sent, the old result gone
    posts = check_posts(tab)
    page.fill("#c-where", json.dumps({"task": [task]}))
    page.click("#c-run")
    text = page.inner_text("#c-status .error-box")
    assert "names task" in text and task in text and "invalid_where" not in text
    assert page.inner_text("#c-result") == "" and check_posts(tab) == posts
    tab.screenshot("check-task-and-where")
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
    # a selection that is not JSON is said before anything is sent, as plainly as the service's
    # errors and like them clearing the previous result (here: a good one)
    page.set_input_files("#c-file", str(CLS))
    wait_report(tab)
    posts = check_posts(tab)
    page.fill("#c-where", "{task")
    page.click("#c-run")
    text = page.inner_text("#c-status .error-box")
    assert text.startswith("The selection (where) is not valid JSON") and "invalid_where" not in text
    assert page.inner_text("#c-result") == "" and check_posts(tab) == posts
    # the 4xx answers are the page's own messages, not console errors
    tab.assert_clean(allow=re.compile(r"status of 422"))
