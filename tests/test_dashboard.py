"""The dashboard at `/` (service/routers/dashboard.py, service/static/): its static route over
plain HTTP, then every view in a real browser, Debian's chromium driven by playwright, against the
real service (uvicorn on a free localhost port) over the session's sample store.

Each browser test checks that no request leaves the service and (on the pages that should load
cleanly) that the console shows no error; it saves a full-page screenshot to tests/artifacts/.
"""
from __future__ import annotations

import http.client
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from .helpers import serving

REPO = Path(__file__).resolve().parents[1]
STATIC = REPO / "service" / "static"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
PAGE_BUDGET = 300_000  # bytes of HTML + JS + CSS (issue 10)
FIGURE_TIMEOUT_MS = 30_000


# ---- the static route, over plain HTTP ---------------------------------------------------------

def test_assets_are_flat_small_and_local():
    files = sorted(p.name for p in STATIC.iterdir())
    assert not [p for p in STATIC.iterdir() if p.is_dir()], "package-data ships static/* only: keep it flat"
    assert {"index.html", "app.js", "app.css"} <= set(files)
    sizes = {n: (STATIC / n).stat().st_size for n in ("index.html", "app.js", "app.css")}
    assert sum(sizes.values()) < PAGE_BUDGET, sizes
    for name in sizes:
        text = (STATIC / name).read_text()
        # No CDN, no external font or script: nothing addressed to another host.
        assert not re.search(r"https?://|[\"'(=]\s*//[a-z0-9-]", text, re.I), name
        assert "@import" not in text and "innerHTML" not in text and "outerHTML" not in text, name
    html = (STATIC / "index.html").read_text()
    assert re.findall(r'(?:src|href)="(/static/[^"]+)"', html) and all(
        (STATIC / u.removeprefix("/static/")).is_file() for u in re.findall(r'(?:src|href)="(/static/[^"]+)"', html))


@pytest.mark.parametrize("path, content_type", [
    ("/", "text/html; charset=utf-8"),
    ("/static/index.html", "text/html; charset=utf-8"),
    ("/static/app.js", "text/javascript; charset=utf-8"),
    ("/static/app.css", "text/css; charset=utf-8"),
    ("/static/favicon.svg", "image/svg+xml"),
])
def test_static_content_types_and_revalidation(v1_client, path, content_type):
    r = v1_client.get(path)
    assert r.status_code == 200
    assert r.headers["content-type"] == content_type
    assert r.headers["cache-control"] == "no-cache" and r.headers["x-content-type-options"] == "nosniff"
    name = "index.html" if path == "/" else path.removeprefix("/static/")
    assert r.content == (STATIC / name).read_bytes()
    etag = r.headers["etag"]
    assert re.fullmatch(r'"[0-9a-f]{32}"', etag)
    again = v1_client.get(path, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
    assert v1_client.get(path, headers={"If-None-Match": '"other"'}).status_code == 200
    head = v1_client.head(path)
    assert head.status_code == 200 and head.content == b"" and int(head.headers["content-length"]) == len(r.content)


def test_index_forbids_other_origins(v1_client):
    csp = v1_client.get("/").headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "img-src 'self'" in csp


def test_unknown_static_file_is_a_json_404(v1_client):
    for path in ["/static/nope.js", "/static/app.JS", "/static/", "/static/index.html/x"]:
        r = v1_client.get(path)
        assert r.status_code == 404, path
        assert r.headers["content-type"] == "application/json"
        assert r.json()["error"]["code"] == "not_found"


def raw_get(base: str, raw_path: str) -> tuple[int, str, bytes]:
    """A request with its path sent exactly as written (httpx and browsers remove dot segments)."""
    u = urlsplit(base)
    con = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    try:
        con.putrequest("GET", raw_path, skip_accept_encoding=True)
        con.endheaders()
        r = con.getresponse()
        return r.status, r.getheader("content-type", ""), r.read()
    finally:
        con.close()


TRAVERSALS = ["/static/../main.py", "/static/%2e%2e/main.py", "/static/%2E%2E/main.py", "/static/..%2fmain.py",
              "/static/..%2Fmain.py", "/static/%2e%2e%2fmain.py", "/static/..%2f..%2fservice%2fmain.py",
              "/static/..%5cmain.py", "/static/..", "/static/%2e%2e", "/static/.", "/static//etc/passwd",
              "/static/%2fetc%2fpasswd", "/static/%2Fetc%2Fpasswd", "/static//work/main/service/main.py",
              "/static/app.js%00", "/static/app.js%00.png", "/static/./app.js/../../main.py",
              "/static/" + "%2e%2e%2f" * 8 + "etc%2fpasswd"]


def test_no_path_traversal(server):
    secret = (REPO / "service" / "main.py").read_bytes()[:40]
    for raw in TRAVERSALS:
        status, ctype, body = raw_get(server, raw)
        assert status == 404, (raw, status, body[:200])
        assert ctype == "application/json" and json.loads(body)["error"]["code"] == "not_found", raw
        assert secret not in body and b"root:" not in body, raw
    assert raw_get(server, "/static/app.js")[0] == 200  # the same client does reach a real asset


# ---- the live service and the browser ----------------------------------------------------------

@pytest.fixture(scope="module")
def server(v1_store):
    """The real service (uvicorn, lifespan included) on a free localhost port; its base URL."""
    from cnnfilterdb.service.main import create_app
    from cnnfilterdb.service.settings import Settings

    with serving(create_app(Settings(db=v1_store))) as (base, _):
        yield base


@pytest.fixture(scope="module")
def browser(need):
    chromium = need("chromium")  # Debian's chromium on PATH: skipped without it (failed where CI is set)
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield b
        b.close()


@dataclass
class Tab:
    page: object
    base: str
    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def goto(self, hash_or_path: str):
        url = self.base + ("/" + hash_or_path if hash_or_path.startswith("#") else hash_or_path)
        self.page.goto(url)
        self.page.wait_for_selector("main h1")

    def hash_params(self) -> tuple[str, dict]:
        h = self.page.evaluate("location.hash")[1:]
        path, _, qs = h.partition("?")
        return path, {k: v[0] for k, v in parse_qs(qs).items()}

    def outside_requests(self) -> list[str]:
        return [u for u in self.requests if not u.startswith((self.base + "/", "blob:" + self.base + "/"))]

    def assert_clean(self, allow: re.Pattern | None = None):
        assert self.outside_requests() == [], "requests left the service"
        errors = [e for e in self.console_errors if not (allow and allow.search(e))]
        assert errors == [], errors

    def screenshot(self, name: str):
        # Every image decoded and painted first (a full-page capture does not wait for those
        # outside the viewport).
        self.page.evaluate("() => Promise.all([...document.images].map(i => i.decode().catch(() => null)))")
        self.page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        self.page.screenshot(path=str(ARTIFACTS / f"dashboard-{name}.png"), full_page=True)


def open_tab(browser, base: str):
    """A new browser tab on the service at ``base``, recording console errors and requests."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = ctx.new_page()
    page.set_default_timeout(FIGURE_TIMEOUT_MS)
    t = Tab(page, base)
    page.on("console", lambda m: t.console_errors.append(f"console: {m.text} ({m.location.get('url')})")
            if m.type == "error" else None)
    page.on("pageerror", lambda e: t.console_errors.append(f"pageerror: {e}"))
    page.on("request", lambda r: t.requests.append(r.url))
    yield t
    ctx.close()
    assert t.outside_requests() == [], "requests left the service"


@pytest.fixture
def tab(browser, server):
    yield from open_tab(browser, server)


def wait_figure(tab: Tab, figure: str) -> str:
    """Waits until the figure's image (an <img> of /v1/plots/{figure}.png) has loaded and decoded;
    returns its src."""
    sel = f'img[src^="/v1/plots/{figure}.png"]'
    tab.page.wait_for_function(
        """sel => { const i = document.querySelector(sel);
                    const f = i && i.closest('figure');
                    if (f && f.classList.contains('is-error')) return true;
                    return i && i.complete && i.naturalWidth > 0 && !f.classList.contains('is-loading'); }""",
        arg=sel, timeout=FIGURE_TIMEOUT_MS)
    state = tab.page.evaluate("""sel => { const i = document.querySelector(sel), f = i.closest('figure');
        return {w: i.naturalWidth, h: i.naturalHeight, alt: i.alt, src: i.getAttribute('src'),
                error: f.classList.contains('is-error') ? f.innerText : null}; }""", sel)
    assert state["error"] is None, f"{figure}: {state['error']}"
    assert state["w"] > 0 and state["h"] > 0, state
    assert len(state["alt"]) > 20, f"{figure} needs a meaningful alt text: {state['alt']!r}"
    return state["src"]


def api_get(base: str, path: str):
    import httpx

    r = httpx.get(base + path, timeout=30)
    r.raise_for_status()
    return r.json()


# ---- the views ---------------------------------------------------------------------------------

def assert_sample_banner(tab: Tab, stats: dict):
    """The fixture store is the synthetic sample: every view says so under the header."""
    assert stats["sample_models"] == stats["models"] > 0
    banner = tab.page.wait_for_selector("#sample-banner:not([hidden])")
    text = banner.inner_text()
    assert "synthetic sample store" in text and f"{stats['models']} models" in text and "cnnfilterdb demo" in text
    assert "not real data" in text
    box = banner.bounding_box()
    header = tab.page.locator(".site-header").bounding_box()
    assert box["height"] > 20 and abs(box["y"] - (header["y"] + header["height"])) < 2, "right under the header"


def download_links(tab: Tab, figure: str) -> list[dict]:
    return tab.page.eval_on_selector_all(
        f'figure:has(img[src^="/v1/plots/{figure}.png"]) .fig-downloads a',
        "as => as.map(a => ({href: a.getAttribute('href'), download: a.getAttribute('download')}))")


def test_home(tab):
    tab.goto("/")
    src = wait_figure(tab, "kl_combined")
    # Drawn for its panel (legible text), downloaded at the paper's size.
    assert src == "/v1/plots/kl_combined.png?width=16&height=5.4"
    name = "kl_combined-task-visual_category-depth_bin"
    assert download_links(tab, "kl_combined") == [
        {"href": f"/v1/plots/kl_combined.{ext}", "download": f"{name}.{ext}"} for ext in ("png", "svg", "pdf")]
    stats = api_get(tab.base, "/v1/stats")
    assert_sample_banner(tab, stats)
    page = tab.page
    page.wait_for_selector('[data-stat="filters"]')
    assert page.inner_text('[data-stat="models"] .card-value') == f"{stats['models']:,}"
    assert page.inner_text('[data-stat="layers"] .card-value') == f"{stats['layers']:,}"
    assert page.inner_text('[data-stat="filters"] .card-value') == f"{stats['filters']:,}"
    assert page.inner_text('[data-stat="shards"] .card-value') == f"{stats['shards']:,}"
    assert page.inner_text('[data-stat="version"] .card-value') == f"{stats['store_version']:,}"
    assert f"v{stats['basis']['version']}" in page.inner_text('[data-stat="basis"]')
    # Every image has a text alternative; the page names itself and marks the current view.
    assert page.evaluate("[...document.images].every(i => i.alt && i.alt.length > 20)")
    assert page.title().endswith("CNN Filter DB")
    assert page.get_attribute('nav a[href="#/"]', "aria-current") == "page"
    tab.screenshot("home")
    tab.assert_clean()


def test_explorer_grouping_selection_and_sharing(tab):
    page = tab.page
    tab.goto("#/explore?group_by=task")
    first = wait_figure(tab, "divergence")
    assert parse_qs(urlsplit(first).query)["group_by"] == ["task"]
    page.wait_for_selector("#drift-table")
    assert page.inner_text("#drift-table").count("\n") >= 10
    page.wait_for_selector('#x-group option[value="visual_category"]', state="attached")

    # Another grouping: a new heatmap URL, and it loads.
    page.select_option("#x-group", "visual_category")
    page.wait_for_selector('img[src^="/v1/plots/divergence.png"][src*="group_by=visual_category"]', state="attached")
    second = wait_figure(tab, "divergence")
    assert second != first and parse_qs(urlsplit(second).query)["group_by"] == ["visual_category"]
    assert tab.hash_params() == ("/explore", {"group_by": "visual_category", "metric": "kl_sym", "bins": "70",
                                              "basis": "global"})
    fields = {f["name"]: f for f in api_get(tab.base, "/v1/fields")["fields"]}
    n_cats = len(fields["visual_category"]["values"])
    page.wait_for_function("n => document.querySelector('#drift-table')?.innerText.includes('Groups\\t' + n)",
                           arg=n_cats)

    # A selection from the pickers: task in {GAN, Segmentation} -> chips, where in the URL and the figures.
    page.select_option("#x-pick-field", "task")
    page.check('.value-list input[data-value="\\"GAN\\""]')
    page.check('.value-list input[data-value="\\"Segmentation\\""]')
    page.click("#x-apply")
    page.wait_for_function("() => document.querySelectorAll('.chips .chip').length === 2")
    path, params = tab.hash_params()
    assert json.loads(params["where"]) == {"task": ["GAN", "Segmentation"]}
    heat = wait_figure(tab, "divergence")
    q = parse_qs(urlsplit(heat).query)
    assert json.loads(q["where"][0]) == {"task": ["GAN", "Segmentation"]} and q["group_by"] == ["visual_category"]
    assert q["metric"] == ["kl_sym"] and q["bins"] == ["70"] and q["basis"] == ["global"]
    assert q["width"] == ["8"] and q["height"] == ["8"]  # the panel's size; the downloads the paper's
    links = download_links(tab, "divergence")
    assert [a["download"] for a in links] == [f"divergence-visual_category-kl_sym-task_GAN_Segmentation.{e}"
                                              for e in ("png", "svg", "pdf")]
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", a["download"]) for a in links)
    down = parse_qs(urlsplit(links[0]["href"]).query)
    assert "width" not in down and "height" not in down and down["where"] == q["where"]
    ridge = wait_figure(tab, "ridge")
    assert parse_qs(urlsplit(ridge).query)["group_by"] == ["visual_category"]
    eig = wait_figure(tab, "eigenimages")
    assert json.loads(parse_qs(urlsplit(eig).query)["where"][0]) == {"task": ["GAN", "Segmentation"]}
    wait_figure(tab, "density2d")
    # The drift statistics are the endpoint's for the same request.
    import httpx
    want = httpx.post(tab.base + "/v1/divergence", json={"group_by": "visual_category", "where":
                      {"task": ["GAN", "Segmentation"]}}, timeout=30).json()
    page.wait_for_function("n => document.querySelector('#drift-table')?.innerText.includes('Groups\\t' + n)",
                           arg=len(want["labels"]))
    assert f"{want['drift']['max']:.4g}" in page.inner_text("#drift-table")
    tab.screenshot("explore")
    tab.assert_clean()

    # The URL is the state: opened afresh it shows the same selection and figures.
    page.reload()
    page.wait_for_function("() => document.querySelectorAll('.chips .chip').length === 2")
    assert wait_figure(tab, "divergence") == heat
    assert page.input_value("#x-group") == "visual_category"

    # Removing a chip narrows the where; the browser's Back restores it.
    page.click('.chip-x[aria-label="Remove Task: GAN"]')
    page.wait_for_function("() => document.querySelectorAll('.chips .chip').length === 1")
    assert json.loads(tab.hash_params()[1]["where"]) == {"task": ["Segmentation"]}
    page.go_back()
    page.wait_for_function("() => document.querySelectorAll('.chips .chip').length === 2")


def test_explorer_with_one_group(tab):
    """A selection that leaves one group: a 1x1 heatmap, the drift panel says why there is no
    drift, the other figures draw."""
    page = tab.page
    tab.goto('#/explore?group_by=task&where={"task":["GAN"]}')
    heat = wait_figure(tab, "divergence")
    assert json.loads(parse_qs(urlsplit(heat).query)["where"][0]) == {"task": ["GAN"]}
    note = page.wait_for_selector("#x-one-group")
    assert "one group" in note.inner_text() and "GAN" in note.inner_text()
    page.wait_for_function("() => document.querySelector('#drift-table')?.innerText.includes('Groups\\t1')")
    for figure in ("ridge", "eigenimages", "density2d", "explained_variance"):
        wait_figure(tab, figure)
    tab.screenshot("explore-one-group")
    tab.assert_clean()


def test_explorer_shows_api_errors_in_place(tab):
    page = tab.page
    tab.goto("#/explore?group_by=task&bins=0")
    box = page.wait_for_selector(".drift .error-box")
    assert "422" in box.inner_text() and "bins" in box.inner_text()
    fig_error = page.wait_for_selector('figure:has(img[src^="/v1/plots/divergence.png"]) .error-box')
    assert "bins" in fig_error.inner_text()
    tab.screenshot("explore-error")
    tab.goto('#/explore?group_by=task&where={"no_such_field":[1]}')
    box = page.wait_for_selector(".drift .error-box")
    assert "400" in box.inner_text() and "no_such_field" in box.inner_text()
    assert tab.outside_requests() == []


def test_sql_console(tab):
    page = tab.page
    tab.goto("#/sql")
    page.wait_for_selector("#sql-limits dl")
    assert "5 s per query" in page.inner_text("#sql-limits")
    page.fill("#sql-q", "SELECT task, count(*) FROM models GROUP BY task")
    page.press("#sql-q", "Control+Enter")
    page.wait_for_selector("#sql-table")
    tasks = {v["value"]: v["models"] for v in next(f for f in api_get(tab.base, "/v1/fields")["fields"]
                                                    if f["name"] == "task")["values"]}
    header = page.eval_on_selector_all("#sql-table thead th", "ths => ths.map(t => t.innerText)")
    assert header == ["task", "count_star()"]
    rows = page.eval_on_selector_all("#sql-table tbody tr", "trs => trs.map(tr => [...tr.cells].map(c => c.innerText))")
    assert {r[0]: int(r[1]) for r in rows} == tasks
    assert f"{len(tasks)} rows" in page.inner_text("#sql-summary") and "1,000 rows" in page.inner_text("#sql-summary")
    assert tab.hash_params() == ("/sql", {"q": "SELECT task, count(*) FROM models GROUP BY task"})
    tab.screenshot("sql")
    assert_sample_banner(tab, api_get(tab.base, "/v1/stats"))
    tab.assert_clean()

    # Arrays: compact JSON of numbers at 6 significant digits, left-aligned, the exact value in the
    # title; plain floats likewise; integers as they are.
    page.fill("#sql-q", "SELECT as_3x3(w) AS k, w[1] AS x, layer_id, 1.0/3 AS third FROM filters ORDER BY filter_id LIMIT 3")
    page.click("#sql-run")
    page.wait_for_function("() => document.querySelector('#sql-table th')?.innerText === 'k'")
    want = tab.page.request.post(tab.base + "/v1/sql", data={"sql": page.input_value("#sql-q")}).json()["rows"]
    cells = page.eval_on_selector_all("#sql-table tbody tr", """trs => trs.map(tr => [...tr.cells].map(c =>
        ({text: c.innerText, title: c.getAttribute('title'), align: getComputedStyle(c).textAlign})))""")
    heads = page.eval_on_selector_all("#sql-table th", "ths => ths.map(t => getComputedStyle(t).textAlign)")
    assert heads == ["left", "right", "right", "right"]
    for row, got in zip(want, cells):
        k, x, layer_id, third = got
        shown = json.loads(k["text"])
        assert re.fullmatch(r"\[\[[^ ]+\]\]", k["text"]) and len(shown) == 3 and all(len(r) == 3 for r in shown)
        assert all(len(re.sub(r"[-.]|e.*", "", repr(v)).lstrip("0")) <= 6 for r in shown for v in r), k["text"]
        assert shown == [[float(f"{v:.6g}") for v in r] for r in row[0]]
        assert json.loads(k["title"]) == row[0] and k["align"] == "left"
        assert x["text"] == f"{row[1]:.6g}" and float(x["title"]) == row[1] and x["align"] == "right"
        assert layer_id["text"] == str(row[2]) and layer_id["title"] is None
        assert third["text"] == "0.333333" and third["title"] == "0.3333333333333333"
    tab.screenshot("sql-arrays")

    # A long, wide result scrolls in its box under a header that stays in view.
    page.set_viewport_size({"width": 900, "height": 700})
    page.fill("#sql-q", "SELECT *, as_3x3(w) AS kernel FROM filters LIMIT 200")
    page.click("#sql-run")
    page.wait_for_function("() => document.querySelectorAll('#sql-table tbody tr').length === 200")
    page.eval_on_selector("#sql-wrap", "w => { w.scrollTop = 2000; w.scrollLeft = 300; }")
    geo = page.eval_on_selector("#sql-wrap", """w => ({wrap: w.getBoundingClientRect().top,
        th: w.querySelector('thead th').getBoundingClientRect().top, scrollTop: w.scrollTop, scrollLeft: w.scrollLeft,
        wide: w.scrollWidth > w.clientWidth})""")
    assert geo["scrollTop"] > 0 and geo["wide"] and geo["scrollLeft"] > 0
    assert abs(geo["th"] - geo["wrap"]) <= 2, geo
    tab.screenshot("sql-wide")
    page.set_viewport_size({"width": 1280, "height": 900})

    # A 400 (syntax error) and a 403 (not read-only): the message in place, the page still usable.
    page.fill("#sql-q", "SELEC 1")
    page.click("#sql-run")
    box = page.wait_for_selector("#sql-result .error-box")
    assert "400" in box.inner_text() and "syntax error" in box.inner_text()
    tab.screenshot("sql-error")
    page.fill("#sql-q", "DROP TABLE models")
    page.click("#sql-run")
    page.wait_for_function("() => document.querySelector('#sql-result .error-box')?.innerText.includes('read-only')")
    assert "403" in page.inner_text("#sql-result .error-box")
    tab.assert_clean(allow=re.compile(r"Failed to load resource: the server responded with a status of 40[03]"))

    # A shared link runs its query.
    page.goto(tab.base + "/#/sql?q=" + "SELECT%2042%20AS%20answer")
    page.wait_for_function("() => document.querySelector('#sql-table')?.innerText.includes('42')")


def test_layer_page(tab):
    page = tab.page
    degenerate = {d["layer_id"] for d in api_get(tab.base, "/v1/quality/degenerate")["layers"]}
    layers = api_get(tab.base, "/v1/models/0/layers")["items"]
    layer = max((x for x in layers if x["layer_id"] not in degenerate), key=lambda x: x["n_filters"])
    layer_id = layer["layer_id"]
    tab.goto(f"#/layer/{layer_id}")
    src = wait_figure(tab, "layer_filters")
    assert src == f"/v1/plots/layer_filters.png?layer_id={layer_id}"
    assert [a["download"] for a in download_links(tab, "layer_filters")] == [
        f"layer_filters-layer-{layer_id}.{e}" for e in ("png", "svg", "pdf")]
    # A click saves the figure under that name (the service's Content-Disposition names it after
    # the figure alone, so the page saves it through a blob).
    for ext, magic in (("png", b"\x89PNG"), ("svg", b"<?xml"), ("pdf", b"%PDF")):
        with page.expect_download() as dl:
            page.click(f'.fig-downloads a[download$=".{ext}"]')
        assert dl.value.suggested_filename == f"layer_filters-layer-{layer_id}.{ext}"
        assert Path(dl.value.path()).read_bytes()[:len(magic)] == magic, ext
    # A layer is reached from several views: no nav entry is marked current.
    assert page.eval_on_selector_all("nav a[aria-current]", "as => as.length") == 0
    page.wait_for_selector("#layer-lede")
    lede = page.inner_text("#layer-lede")
    assert lede.startswith(f"Layer {layer_id}: the convolution at depth {layer['conv_depth']} (relative depth ")
    assert f"of model {layer['model']}" in lede
    metrics = page.inner_text("#layer-metrics")
    assert "Sparsity" in metrics and "Variance entropy (normalized)" in metrics
    assert f"{layer['sparsity']:.4g}" in metrics
    href = page.get_attribute("#npy-link", "href")
    assert href == f"/v1/layers/{layer_id}/filters?format=npy"
    r = page.request.get(tab.base + href)
    assert r.status == 200 and r.headers["content-type"] == "application/x-npy" and r.body()[:6] == b"\x93NUMPY"
    assert page.get_attribute(f'a[href="#/model/{layer["model_id"]}"]', "href")
    tab.screenshot("layer")
    tab.assert_clean()

    tab.goto("#/layer/99999999")
    box = page.wait_for_selector(".error-box")
    assert "404" in box.inner_text() and "no layer 99999999" in box.inner_text()


def test_degenerate_table_sorts(tab):
    page = tab.page
    tab.goto("#/degenerate")
    page.wait_for_selector("#d-count")
    wait_figure(tab, "quality")
    total = api_get(tab.base, "/v1/quality/degenerate")["total"]
    assert total >= 2
    col = "table.data tbody tr td:nth-child(6)"  # sparsity

    def sparsities():
        return [float(x) for x in page.eval_on_selector_all(col, "tds => tds.map(t => t.innerText.replace(/,/g, ''))")]

    assert len(sparsities()) == total
    th = 'th:has(button.sort[data-key="sparsity"])'
    assert page.get_attribute(th, "aria-sort") == "none"
    page.click('button.sort[data-key="sparsity"]')
    page.wait_for_function(f"() => document.querySelector('{th}').getAttribute('aria-sort') === 'ascending'")
    assert sparsities() == sorted(sparsities())
    # Enter on the (still focused) header sorts the other way.
    assert page.evaluate("document.activeElement.dataset.key") == "sparsity"
    page.keyboard.press("Enter")
    page.wait_for_function(f"() => document.querySelector('{th}').getAttribute('aria-sort') === 'descending'")
    assert sparsities() == sorted(sparsities(), reverse=True)
    assert tab.hash_params()[1]["sort"] == "sparsity" and tab.hash_params()[1]["dir"] == "desc"
    # Float noise (e.g. 7e-17) shows as 0, the exact value in the title; at most 4 significant digits.
    entropy = page.eval_on_selector_all("table.data tbody tr td:nth-child(7)",
                                        "tds => tds.map(t => ({text: t.innerText, title: t.querySelector('[title]')?.title}))")
    layers = {d["layer_id"]: d for d in api_get(tab.base, "/v1/quality/degenerate")["layers"]}
    for cell, row in zip(entropy, sorted(layers.values(), key=lambda d: (-d["sparsity"], d["layer_id"]))):
        v = row["variance_entropy_norm"]
        assert cell["text"] == ("0" if abs(v) < 5e-5 else f"{float(f'{v:.4g}')}".removesuffix(".0")), (cell, v)
        assert "e-" not in cell["text"]
    assert any(abs(d["variance_entropy_norm"]) < 5e-5 and d["variance_entropy_norm"] != 0 for d in layers.values())
    assert any(c["title"] and "e-" in c["title"] for c in entropy)
    # Labels on one line (no "<" alone on a line).
    for sel in ('label[for="d-entropy_norm_lt"]', 'label[for="d-entropy_norm_gt"]', 'label[for="d-sparsity_gt"]'):
        assert page.evaluate(f"(() => {{ const l = document.querySelector('{sel}'); return l.getClientRects().length === 1 && "
                             f"l.getBoundingClientRect().height < 1.6 * parseFloat(getComputedStyle(l).lineHeight || 20); }})()"), sel
    # Colour by: only the fields the figure can colour (at most 20 values).
    fields = {f["name"]: f["n_distinct"] for f in api_get(tab.base, "/v1/fields")["fields"]}
    page.wait_for_selector('#d-color option[value="task"]', state="attached")
    options = page.eval_on_selector_all("#d-color option", "os => os.map(o => o.value)")
    assert options == [n for n, k in fields.items() if k <= 20] and "layer_id" not in options and fields["layer_id"] > 20
    tab.screenshot("degenerate")
    tab.assert_clean()

    # The figure's lines follow the form's thresholds.
    page.fill("#d-sparsity_gt", "0.3")
    page.fill("#d-entropy_norm_lt", "0.7")
    page.fill("#d-entropy_norm_gt", "0.95")
    page.click('form.controls button[type="submit"]')
    page.wait_for_selector('img[src^="/v1/plots/quality.png"][src*="sparsity_gt=0.3"]', state="attached")
    q = parse_qs(urlsplit(wait_figure(tab, "quality")).query)
    assert q["sparsity_gt"] == ["0.3"] and q["entropy_norm_lt"] == ["0.7"] and q["entropy_norm_gt"] == ["0.95"]
    assert download_links(tab, "quality")[0]["download"] == \
        "quality-task-sparsity_gt_0.3-entropy_norm_lt_0.7-entropy_norm_gt_0.95.png"
    page.wait_for_function("() => location.hash.includes('sparsity_gt=0.3')")
    page.select_option("#d-color", "visual_category")
    q = parse_qs(urlsplit(page.wait_for_selector('img[src*="color_by=visual_category"]', state="attached")
                          .get_attribute("src")).query)
    assert q["sparsity_gt"] == ["0.3"] and q["color_by"] == ["visual_category"]
    wait_figure(tab, "quality")
    page.wait_for_selector("table.data tbody tr")
    # Each row links to its layer page.
    first = page.eval_on_selector("table.data tbody tr td a", "a => a.getAttribute('href')")
    page.click("table.data tbody tr td a")
    page.wait_for_selector("#layer-metrics")
    assert page.evaluate("location.hash") == first


def test_models_search_and_model_page(tab):
    page = tab.page
    models = api_get(tab.base, "/v1/models?limit=1000")["items"]
    text = ["model", "name", "task", "task_raw", "visual_category", "training_dataset", "pretraining_dataset",
            "producer", "paper"]
    tab.goto("#/models")
    page.wait_for_selector("table.data tbody tr")
    assert page.locator("table.data tbody tr").count() == len(models)
    page.fill("#m-q", "VGG")
    want = [m for m in models if any("vgg" in str(m[k] or "").lower() for k in text)]
    assert 0 < len(want) < len(models)
    page.wait_for_function(f"() => document.querySelectorAll('table.data tbody tr').length === {len(want)}")
    page.wait_for_function("() => location.hash.includes('q=VGG')")
    tab.screenshot("models")

    target = want[0]
    page.click(f'a[href="#/model/{target["model_id"]}"]')
    page.wait_for_selector("#model-layers table tbody tr")
    page.wait_for_selector("#model-similar ol li")
    assert page.inner_text("main h1") == target["model"]
    assert page.locator("#model-layers table tbody tr").count() == target["n_layers"]
    similar = api_get(tab.base, f"/v1/models/{target['model_id']}/similar?k=5")["similar"]
    links = page.eval_on_selector_all("#model-similar ol li a", "as => as.map(a => a.getAttribute('href'))")
    assert links == [f"#/model/{s['model_id']}" for s in similar] and len(links) == 5
    tab.screenshot("model")
    tab.assert_clean()
    # A similar model's link opens its page; Back returns to the search, still filtered.
    page.click("#model-similar ol li a")
    page.wait_for_function(f"() => document.querySelector('main h1').innerText === {json.dumps(similar[0]['model'])}")
    page.go_back()
    page.go_back()
    page.wait_for_function(f"() => document.querySelectorAll('table.data tbody tr').length === {len(want)}")
    assert page.input_value("#m-q") == "VGG"


def test_models_search_ignores_case_spaces_dashes_and_underscores(tab):
    """"unet" finds U-Net and "resnet 18" ResNet-18 (a plain substring found neither)."""
    page = tab.page
    models = api_get(tab.base, "/v1/models?limit=1000")["items"]
    text = ["model", "name", "task", "task_raw", "visual_category", "training_dataset", "pretraining_dataset",
            "producer", "paper"]

    def fold(s: str) -> str:
        return re.sub(r"[-_\s]", "", s.lower())

    tab.goto("#/models")
    page.wait_for_selector("table.data tbody tr")
    for typed in ["unet", "U Net", "resnet 18", "RESNET_18"]:
        want = [m for m in models if any(fold(typed) in fold(str(m[k] or "")) for k in text)]
        assert want and not [m for m in want if any(typed.lower() in str(m[k] or "").lower() for k in text)]
        page.fill("#m-q", typed)
        page.wait_for_function(f"() => document.querySelectorAll('table.data tbody tr').length === {len(want)}")
        shown = page.eval_on_selector_all("table.data tbody tr td:first-child a", "as => as.map(a => a.getAttribute('href'))")
        assert shown == [f"#/model/{m['model_id']}" for m in want], typed
        assert page.inner_text("#m-count").startswith(f"{len(want)} of {len(models)} models matching")
    tab.assert_clean()


def test_keyboard_navigation(tab):
    page = tab.page
    tab.goto("/")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "skip-link"
    box = page.locator("#skip-link").bounding_box()
    assert box and box["y"] >= 0, "the skip link shows when focused"
    # Tab on to the nav's links; Enter follows one.
    for _ in range(12):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent") == "Models":
            break
    assert page.evaluate("document.activeElement.closest('nav') !== null && document.activeElement.tagName") == "A"
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("none", ""), "focus is visible"
    page.keyboard.press("Enter")
    page.wait_for_function("() => location.hash === '#/models'")
    page.wait_for_selector("table.data tbody tr")
    assert page.evaluate("document.activeElement.tagName") == "H1"
    assert page.get_attribute('nav a[href="#/models"]', "aria-current") == "page"
    # The skip link moves focus to the content and keeps the view's URL.
    page.focus("#skip-link")
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main" and page.evaluate("location.hash") == "#/models"
    # Form controls are labelled.
    tab.goto("#/explore")
    page.wait_for_selector('#x-group option[value="depth_bin"]', state="attached")
    unlabelled = page.evaluate("""[...document.querySelectorAll('main input, main select, main textarea')]
        .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')).map(e => e.outerHTML)""")
    assert unlabelled == []
    tab.assert_clean()


def test_unknown_view(tab):
    tab.goto("#/no/such/view")
    assert tab.page.inner_text("main h1") == "Page not found"
    tab.assert_clean()


@pytest.mark.parametrize("page_path, ready", [
    ("/docs", ".opblock"),                 # Swagger UI: one block per operation
    ("/redoc", "[data-section-id]"),       # ReDoc: one section per operation
])
def test_api_docs_render_offline(tab, page_path, ready):
    """/docs and /redoc render every operation from assets of the service: no request leaves it."""
    tab.page.goto(tab.base + page_path)
    tab.page.wait_for_selector(ready)
    n_operations = sum(len(methods) for methods in httpx.get(tab.base + "/openapi.json").json()["paths"].values())
    if page_path == "/docs":
        tab.page.wait_for_function(f"document.querySelectorAll('.opblock').length >= {n_operations}")
        assert "/v1/divergence" in tab.page.inner_text("body")
    else:
        tab.page.wait_for_function("document.body.innerText.includes('/v1/divergence')")
    tab.page.screenshot(path=str(ARTIFACTS / f"docs{page_path.replace('/', '-')}.png"))
    tab.assert_clean()


# ---- model properties (issue 23) -------------------------------------------------------------------

@pytest.fixture(scope="module")
def property_server(tmp_path_factory, sample_v1):
    """The service over a store whose models have properties (tests/test_properties_http.py):
    robust (boolean, nulls), clean_accuracy (double), backbone (text), order (integer, nulls),
    select (text: quotes and SQL), from (boolean), late (text, at the last version)."""
    from cnnfilterdb.service.main import create_app
    from cnnfilterdb.service.settings import Settings

    from .test_properties_http import build_property_store

    db = tmp_path_factory.mktemp("props-dashboard") / "db"
    build_property_store(db, sample_v1)
    with serving(create_app(Settings(db=db))) as (base, _):
        yield base


@pytest.fixture
def prop_tab(browser, property_server):
    yield from open_tab(browser, property_server)


def test_explorer_offers_the_properties(prop_tab):
    """Boolean and text properties group and select by value, numbers by a range ({"gte", "lte"});
    the model page lists a model's properties; the quality figure colours by the groupable ones."""
    tab, page = prop_tab, prop_tab.page
    fields = {f["name"]: f for f in api_get(tab.base, "/v1/fields")["fields"]}
    groupable = [n for n, f in fields.items() if f["property"] and f["groupable"]]
    numbers = [n for n, f in fields.items() if f["property"] and not f["groupable"]]
    assert sorted(groupable) == ["backbone", "from", "late", "robust", "select"]
    assert sorted(numbers) == ["clean_accuracy", "order"]
    tab.goto('#/explore?group_by=robust&where={"clean_accuracy":{"gte":70}}')
    heat = parse_qs(urlsplit(wait_figure(tab, "divergence")).query)
    assert heat["group_by"] == ["robust"] and json.loads(heat["where"][0]) == {"clean_accuracy": {"gte": 70}}
    page.wait_for_selector('#x-group optgroup[label="Model properties"] option[value="robust"]', state="attached")
    # group_by: every built-in field, then the boolean and text properties under their heading
    options = page.eval_on_selector_all("#x-group optgroup option", "os => os.map(o => o.value)")
    assert options == groupable
    assert page.input_value("#x-group") == "robust"
    picks = page.eval_on_selector_all("#x-pick-field optgroup option", "os => os.map(o => o.value)")
    assert picks == [n for n, f in fields.items() if f["property"]]
    page.wait_for_selector("#drift-table")
    rows = page.eval_on_selector_all("#drift-table ~ div tbody tr td:first-child", "tds => tds.map(t => t.innerText)")
    assert rows == ["False", "True", "(none)"]  # as the figures label booleans

    # A number: a range, the store's min and max as placeholders
    page.select_option("#x-pick-field", "clean_accuracy")
    page.wait_for_selector("#x-range-min", state="visible")
    assert not page.is_visible(".value-list") and not page.is_visible("#x-value-filter")
    assert page.input_value("#x-range-min") == "70" and page.input_value("#x-range-max") == ""
    ca = fields["clean_accuracy"]
    assert page.get_attribute("#x-range-min", "placeholder") == str(ca["min"]).removesuffix(".0")
    assert page.get_attribute("#x-range-max", "placeholder") == str(ca["max"]).removesuffix(".0")
    page.fill("#x-range-max", "90")
    page.click("#x-apply")
    page.wait_for_function("() => location.hash.includes('lte')")
    assert json.loads(tab.hash_params()[1]["where"]) == {"clean_accuracy": {"gte": 70, "lte": 90}}
    assert page.inner_text(".chips .chip span") == "Clean accuracy ≥ 70 and ≤ 90"
    # at least above at most: refused in place, the URL unchanged
    page.fill("#x-range-min", "95")
    page.click("#x-apply")
    assert page.evaluate("document.querySelector('#x-range-max').validity.customError")
    assert json.loads(tab.hash_params()[1]["where"]) == {"clean_accuracy": {"gte": 70, "lte": 90}}
    # an integer property: whole steps
    page.select_option("#x-pick-field", "order")
    assert page.get_attribute("#x-range-min", "step") == "1"
    page.fill("#x-range-min", "20")
    page.click("#x-apply")
    page.wait_for_function("() => document.querySelectorAll('.chips .chip').length === 2")

    # A boolean: its values with their counts, True/False/(none)
    page.select_option("#x-pick-field", "robust")
    page.wait_for_selector(".value-list", state="visible")
    assert not page.is_visible("#x-range-min")
    labels = page.eval_on_selector_all(".value-list label", "ls => ls.map(l => l.firstChild.textContent)")
    assert labels == ["False", "True", "(none)"]
    page.check('.value-list input[data-value="false"]')
    page.click("#x-apply")
    page.wait_for_function("() => document.querySelectorAll('.chips .chip').length === 3")
    where = {"clean_accuracy": {"gte": 70, "lte": 90}, "order": {"gte": 20}, "robust": [False]}
    assert json.loads(tab.hash_params()[1]["where"]) == where
    page.select_option("#x-group", "select")  # a property named like an SQL keyword
    page.wait_for_selector('img[src^="/v1/plots/divergence.png"][src*="group_by=select"]', state="attached")
    q = parse_qs(urlsplit(wait_figure(tab, "divergence")).query)
    assert q["group_by"] == ["select"] and json.loads(q["where"][0]) == where
    wait_figure(tab, "ridge")
    want = httpx.post(tab.base + "/v1/divergence", json={"group_by": "select", "where": where}, timeout=30).json()
    page.wait_for_function("n => document.querySelector('#drift-table')?.innerText.includes('Groups\t' + n)",
                           arg=len(want["labels"]))
    assert "Select" in page.inner_text("#x-where-note") and "Robust is False" in page.inner_text("#x-where-note")
    tab.screenshot("explore-properties")
    tab.assert_clean()

    # The model page: its properties, null as a dash, stored SQL as plain text
    model = api_get(tab.base, "/v1/models/1")
    tab.goto("#/model/1")
    page.wait_for_selector("#model-properties dl")
    pairs = page.eval_on_selector_all("#model-properties dt", "ds => ds.map(d => [d.innerText, d.nextElementSibling.innerText])")
    assert [k for k, _ in pairs] == [n.replace("_", " ").capitalize() for n in model["properties"]]
    shown = dict(zip(model["properties"], (v for _, v in pairs)))
    assert shown["robust"] == "False" and shown["select"] == model["properties"]["select"]
    assert shown["late"] == "yes" and shown["clean_accuracy"] == f"{model['properties']['clean_accuracy']:g}"
    tab.screenshot("model-properties")

    # The quality figure colours by the groupable fields of at most 20 values
    tab.goto("#/degenerate?color_by=backbone")
    page.wait_for_selector('#d-color option[value="backbone"]', state="attached")
    colours = page.eval_on_selector_all("#d-color option", "os => os.map(o => o.value)")
    assert {"robust", "backbone", "select", "from", "late"} <= set(colours) and not set(numbers) & set(colours)
    q = parse_qs(urlsplit(wait_figure(tab, "quality")).query)
    assert q["color_by"] == ["backbone"]
    tab.assert_clean()


# ---- the studies (issue 24) -------------------------------------------------------------------------

STUDY_FIGURES = ("cohort_divergence", "cohort_metric", "correlation")


@pytest.fixture(scope="module")
def study_server(tmp_path_factory, sample_v1):
    """The service over a store whose models carry the robustness study's properties: robust
    (boolean, every model labelled: two cohorts), clean_accuracy and robust_accuracy (doubles),
    backbone (text: three groups of four models, each a correlation of its own)."""
    from cnnfilterdb.ingest.labels import label_models
    from cnnfilterdb.service.main import create_app
    from cnnfilterdb.service.settings import Settings

    from .helpers import cli_main, open_catalog

    db = tmp_path_factory.mktemp("studies-dashboard") / "db"
    assert cli_main(["ingest", str(sample_v1), "--db", str(db)]) == 0
    con = open_catalog(db)
    try:
        models = [m for (m,) in con.execute("SELECT model FROM models ORDER BY model_id").fetchall()]
    finally:
        con.close()
    rows = [(m, {"robust": i % 2 == 0, "clean_accuracy": 70.0 + 1.7 * i,
                 "robust_accuracy": (40.0 if i % 2 == 0 else 5.0) + (7 * i) % 11,
                 "backbone": ["ResNet", "ViT", "WideResNet"][i % 3]}) for i, m in enumerate(models)]
    assert label_models(db, rows, types={"robust": "boolean", "clean_accuracy": "double",
                                         "robust_accuracy": "double", "backbone": "text"})["version"] == 2
    with serving(create_app(Settings(db=db))) as (base, _):
        yield base


@pytest.fixture
def study_tab(browser, study_server):
    yield from open_tab(browser, study_server)


def study_hash(tab: Tab) -> tuple[str, dict]:
    """The view's path and parameters, an empty one (series=) kept."""
    path, _, qs = tab.page.evaluate("location.hash")[1:].partition("?")
    return path, {k: v[0] for k, v in parse_qs(qs, keep_blank_values=True).items()}


def assert_correlation_table(tab: Tab, request: dict):
    """The page's correlation table shows POST /v1/correlation's groups for ``request``: each
    number to 4 significant digits, its exact value in the cell's title."""
    want = httpx.post(tab.base + "/v1/correlation", json=request, timeout=60).json()
    rows = tab.page.eval_on_selector_all("#s-corr tbody tr", """trs => trs.map(tr => [...tr.cells].map(c =>
        ({text: c.innerText, title: c.querySelector('span[title]')?.title ?? null})))""")
    assert len(rows) == len(want["groups"]) > 0
    for row, g in zip(rows, want["groups"]):
        group, n, *numbers = row
        assert group["text"] == {True: "True", False: "False", None: "(none)"}.get(g["group"], str(g["group"]))
        assert n["text"] == str(g["n"])
        for cell, key in zip(numbers, ("statistic", "p_value", "ci_low", "ci_high")):
            if g[key] is None:
                assert cell["text"] == "—", (g, key)
            else:
                assert float(cell["title"]) == g[key], (g, key, cell)  # the exact number
                assert float(cell["text"]) == pytest.approx(g[key], rel=1e-3, abs=1e-12), (g, key, cell)
    return want


def test_studies_figures_table_and_state(study_tab):
    """The Studies page: the three figures of the follow-up studies load for the store's cohort
    field (robust) and series (training_dataset), the correlation table is POST /v1/correlation's,
    a picker changes the URL and the figures, and the URL opened afresh restores the view."""
    tab, page = study_tab, study_tab.page
    tab.goto("#/studies")
    assert page.get_attribute('nav a[href="#/studies"]', "aria-current") == "page"
    srcs = {f: parse_qs(urlsplit(wait_figure(tab, f)).query) for f in STUDY_FIGURES}
    assert srcs["cohort_divergence"]["group_by"] == ["robust"] and srcs["cohort_divergence"]["within"] == ["depth_decile"]
    assert srcs["cohort_divergence"]["series"] == ["training_dataset"]
    assert srcs["cohort_metric"]["metric"] == ["variance_entropy"] and srcs["cohort_metric"]["group_by"] == ["robust"]
    cor = srcs["correlation"]
    assert (cor["x"], cor["y"], cor["group_by"], cor["method"], cor["layers"]) == (
        ["variance_entropy"], ["robust_accuracy"], ["training_dataset"], ["spearman"], ["all"])
    # Drawn for the panel; the links offer the figures at their own size, named after the view.
    assert all(q["dpi"] == ["150"] and q["width"] for q in srcs.values())
    links = download_links(tab, "cohort_divergence")
    assert [a["download"] for a in links] == [f"cohort_divergence-robust-training_dataset.{e}" for e in ("png", "svg", "pdf")]
    assert links[0]["href"] == "/v1/plots/cohort_divergence.png?group_by=robust&within=depth_decile&series=training_dataset"
    assert [a["href"].split("?")[0] for a in download_links(tab, "correlation")] == [
        f"/v1/plots/correlation.{e}" for e in ("png", "svg", "pdf")]
    for link in links:  # each format of the figure itself
        r = httpx.get(tab.base + link["href"], timeout=60)
        assert r.status_code == 200 and r.headers["content-type"].split(";")[0] in (
            "image/png", "image/svg+xml", "application/pdf"), link
    # The pickers: the cohorts (a field of two values first), the number and boolean properties
    assert page.input_value("#s-cohort") == "robust"
    assert "Robust: False / True" in page.inner_text("#s-cohort")
    assert page.eval_on_selector_all("#s-y option", "os => os.map(o => o.value)") == [
        "robust", "clean_accuracy", "robust_accuracy"]
    page.wait_for_selector("#s-corr tbody tr")
    assert_correlation_table(tab, {"x": "variance_entropy", "y": "robust_accuracy", "group_by": "training_dataset",
                                   "method": "spearman", "layers": "all"})
    tab.screenshot("studies")
    tab.assert_clean()

    # A picker: the URL holds the whole state, the figures and the table follow it.
    page.select_option("#s-metric", "sparsity")
    page.wait_for_function("() => location.hash.includes('metric=sparsity')")
    assert study_hash(tab) == ("/studies", {"group_by": "robust", "series": "training_dataset", "metric": "sparsity",
                                            "y": "robust_accuracy", "method": "spearman", "layers": "all"})
    page.wait_for_selector('img[src^="/v1/plots/cohort_metric.png"][src*="metric=sparsity"]', state="attached")
    page.wait_for_selector('img[src^="/v1/plots/correlation.png"][src*="x=sparsity"]', state="attached")
    page.select_option("#s-method", "kendall")
    page.select_option("#s-y", "clean_accuracy")
    page.select_option("#s-series", "")  # none: one group of all the models
    page.wait_for_function("() => location.hash.includes('series=&') || location.hash.endsWith('series=')")
    state = {"group_by": "robust", "series": "", "metric": "sparsity", "y": "clean_accuracy", "method": "kendall",
             "layers": "all"}
    assert study_hash(tab) == ("/studies", state)
    page.wait_for_selector('img[src^="/v1/plots/correlation.png"][src*="method=kendall"]', state="attached")
    changed = {f: wait_figure(tab, f) for f in STUDY_FIGURES}
    assert "series" not in parse_qs(urlsplit(changed["cohort_divergence"]).query)
    cor = parse_qs(urlsplit(changed["correlation"]).query)
    assert (cor["x"], cor["y"], cor["method"]) == (["sparsity"], ["clean_accuracy"], ["kendall"]) and "group_by" not in cor
    page.wait_for_function("() => document.querySelector('#s-corr-note')?.innerText.startsWith('Kendall')")
    request = {"x": "sparsity", "y": "clean_accuracy", "group_by": None, "method": "kendall", "layers": "all"}
    assert len(assert_correlation_table(tab, request)["groups"]) == 1

    # Opened afresh, the URL shows the same view; Back returns to the one before.
    page.reload()
    page.wait_for_selector("#s-corr tbody tr")
    assert {f: wait_figure(tab, f) for f in STUDY_FIGURES} == changed
    assert {k: page.input_value(f"#s-{k}") for k in ("metric", "y", "method", "series", "layers")} == {
        "metric": "sparsity", "y": "clean_accuracy", "method": "kendall", "series": "", "layers": "all"}
    assert page.input_value("#s-cohort") == "robust"
    assert_correlation_table(tab, request)
    page.go_back()
    page.wait_for_function("() => document.querySelector('#s-series').value === 'training_dataset'")
    assert study_hash(tab)[1]["series"] == "training_dataset"

    # A series of a few groups of four models: a statistic and an interval each.
    page.select_option("#s-series", "backbone")
    page.select_option("#s-metric", "variance_entropy")
    page.wait_for_function("""() => { const t = document.querySelector('#s-corr-note')?.innerText || '';
                                      return t.includes('of variance entropy') && t.includes('per backbone'); }""")
    want = assert_correlation_table(tab, {"x": "variance_entropy", "y": "clean_accuracy", "group_by": "backbone",
                                          "method": "kendall", "layers": "all"})
    assert [g["group"] for g in want["groups"]] == ["ResNet", "ViT", "WideResNet"]
    assert all(g["statistic"] is not None and g["ci_low"] is not None for g in want["groups"])
    for f in STUDY_FIGURES:
        assert parse_qs(urlsplit(wait_figure(tab, f)).query)["series" if f != "correlation" else "group_by"] == ["backbone"]
    tab.assert_clean()


def test_studies_show_a_figures_error_in_place(prop_tab):
    """A cohort field of three groups (robust with unlabelled models: False, True, (none)): the
    divergence, which compares two, says why in place of its image; the box plots draw. Without
    group_by in the URL, the cohorts are the first property of exactly two values."""
    tab, page = prop_tab, prop_tab.page
    tab.goto("#/studies")
    page.wait_for_selector('#s-cohort option[value="from"]', state="attached")
    assert page.input_value("#s-cohort") == "from"  # robust, backbone, select and late give three groups
    wait_figure(tab, "cohort_divergence")
    tab.goto("#/studies?group_by=robust&series=backbone")
    box = page.wait_for_selector('figure:has(img[src^="/v1/plots/cohort_divergence.png"]) .error-box')
    assert "400" in box.inner_text() and "two cohorts" in box.inner_text() and "robust" in box.inner_text()
    assert not page.is_visible('img[src^="/v1/plots/cohort_divergence.png"]')
    q = parse_qs(urlsplit(wait_figure(tab, "cohort_metric")).query)
    assert q["group_by"] == ["robust"] and q["series"] == ["backbone"]
    page.wait_for_selector("#s-corr tbody tr")
    tab.screenshot("studies-error")
    tab.assert_clean(allow=re.compile(r"Failed to load resource: the server responded with a status of 400"))


def test_studies_without_properties_explains_how_to_add_them(tab):
    """A store whose models have no properties: how to add them instead of figures."""
    page = tab.page
    tab.goto("#/studies")
    note = page.wait_for_selector("#s-no-properties")
    text = note.inner_text()
    assert "no properties" in text and "cnnfilterdb label --manifest meta.csv --key Name" in text and "docs/cli.md" in text
    assert page.eval_on_selector_all('img[src*="/v1/plots/"]', "is => is.length") == 0
    assert page.query_selector("#s-cohort") is None
    tab.screenshot("studies-no-properties")
    tab.assert_clean()
