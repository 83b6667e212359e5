// CNN Filter DB dashboard: views over the service's JSON API and figures, routed by the URL's hash
// (#/explore?group_by=task&...), so every view's state can be shared as a link. No dependencies.
// Text from the API is only ever inserted as text (textContent / text nodes), never as HTML.

const main = document.getElementById('main');
const APP = 'CNN Filter DB';

// ---- DOM --------------------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'value') el.value = v;
    else if (k === 'checked' || k === 'selected' || k === 'disabled' || k === 'hidden') el[k] = Boolean(v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  add(el, children);
  return el;
}

function add(el, ...children) {
  for (const c of [children].flat(Infinity)) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : String(c));  // a string is appended as a text node
  }
  return el;
}

function fill(el, ...children) {
  el.replaceChildren();
  return add(el, children);
}

// ---- formatting -------------------------------------------------------------------------------

const intFmt = new Intl.NumberFormat('en-US');
const fmtInt = (n) => (n == null ? '—' : intFmt.format(n));

function fmtNum(x, digits = 4) {
  if (x == null) return '—';
  if (typeof x !== 'number') return String(x);
  if (Number.isInteger(x) && Math.abs(x) < 1e15) return intFmt.format(x);
  const a = Math.abs(x);
  if (a !== 0 && (a < 1e-3 || a >= 1e6)) return x.toExponential(digits - 1);
  return String(Number(x.toPrecision(digits)));
}

function fmtBytes(n) {
  if (n == null) return '—';
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

// A field's value as the figures label it: null as (none), booleans as True and False.
const fmtValue = (v) => (v === null ? '(none)' : v === true ? 'True' : v === false ? 'False' : String(v));

// A quality metric: at most 4 significant digits, |x| < 5e-5 as 0 (float noise such as 1.892e-15),
// the exact value in the title.
function fmtMetric(x) {
  if (x == null) return h('span', { class: 'null', title: 'no value' }, '—');
  if (typeof x !== 'number') return String(x);
  const text = Math.abs(x) < 5e-5 ? '0' : String(Number(x.toPrecision(4)));
  return text === String(x) ? text : h('span', { title: String(x) }, text);
}

// SQL results: floats at up to 6 significant digits, integers as they are, arrays and structs as
// compact JSON of such numbers; the exact value in the cell's title.
const short6 = (x) => (typeof x === 'number' && Number.isFinite(x) && !Number.isInteger(x) ? Number(x.toPrecision(6)) : x);

function cellText(v) {
  if (v === null || v === undefined) return h('span', { class: 'null', title: 'no value' }, '—');
  if (typeof v === 'number') return fmtNum(v);
  return typeof v === 'object' ? JSON.stringify(v) : String(v);
}

function sqlCell(v, num) {  // a <td> of a SQL result; NULL for null
  if (v === null || v === undefined) return h('td', { class: num ? 'num' : null }, h('span', { class: 'null' }, 'NULL'));
  const full = typeof v === 'object' ? JSON.stringify(v) : String(v);
  const text = typeof v === 'object' ? JSON.stringify(v, (k, x) => short6(x)) : String(short6(v));
  return h('td', { class: typeof v === 'number' ? 'num' : 'val', title: text !== full ? full : null }, text);
}

// A file name from a view's parameters: letters, digits, '.', '_' and '-' only.
const fileName = (...parts) => parts.filter((x) => x != null && x !== '').map((x) => String(x))
  .join('-').replace(/[^A-Za-z0-9._-]+/g, '_').replace(/_+/g, '_').slice(0, 120) || 'figure';

// ---- the API ----------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// retryBusy: a 429 analysis_busy (every analysis turn taken) is asked again after its Retry-After.
async function api(path, { method = 'GET', body, signal, retryBusy = true } = {}) {
  const init = { method, signal, headers: { Accept: 'application/json' } };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers['Content-Type'] = 'application/json';
  }
  let r;
  for (let attempt = 0; ; attempt += 1) {
    try {
      r = await fetch(path, init);
    } catch (e) {
      if (e.name === 'AbortError') throw e;
      throw new ApiError(0, 'network_error', `the service did not answer (${e.message})`);
    }
    if (!(retryBusy && r.status === 429 && attempt < 20)) break;
    const text = await r.clone().text();
    if (!text.includes('analysis_busy')) break;
    await sleep(1000 * (Number(r.headers.get('Retry-After')) || 1));
    if (signal?.aborted) throw new DOMException('aborted', 'AbortError');
  }
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!r.ok) {
    const err = data && data.error;
    throw new ApiError(r.status, err?.code || 'http_error', err?.message || `${r.status} ${r.statusText}`);
  }
  return data;
}

const cached = new Map();
function once(path) {  // metadata read once per page load
  if (!cached.has(path)) cached.set(path, api(path).catch((e) => { cached.delete(path); throw e; }));
  return cached.get(path);
}

function errorBox(e) {
  const status = e.status ? `${e.status} ` : '';
  return h('div', { class: 'error-box', role: 'alert' },
    h('strong', null, `${status}${e.code || 'error'}`), ': ', e.message || String(e));
}

const isAbort = (e) => e && e.name === 'AbortError';

// Runs an async loader into `el`: a loading note, then its content or the error in place.
async function load(el, signal, loader) {
  fill(el, h('p', { class: 'loading' }, 'Loading…'));
  try {
    const content = await loader();
    if (!signal?.aborted) fill(el, content);
  } catch (e) {
    if (!isAbort(e) && !signal?.aborted) fill(el, errorBox(e));
  }
}

// ---- figures ----------------------------------------------------------------------------------

function plotUrl(figure, query = {}, ext = 'png') {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(query)) if (v != null && v !== '') p.set(k, v);
  const qs = p.toString();
  return `/v1/plots/${figure}.${ext}${qs ? `?${qs}` : ''}`;
}

// At most FIGURE_LOADS figure requests of this page at once: the service computes two analyses at
// a time and queues a few more, so a view of six figures asks in turn instead of all at once.
const FIGURE_LOADS = 2;
const figureTurns = { free: FIGURE_LOADS, waiting: [] };
function takeTurn() {
  return new Promise((resolve) => {
    if (figureTurns.free > 0) { figureTurns.free -= 1; resolve(); } else figureTurns.waiting.push(resolve);
  });
}
function giveTurn() {
  const next = figureTurns.waiting.shift();
  if (next) next(); else figureTurns.free += 1;
}

// A figure of the plots endpoint: shown while it renders, and its JSON error in place if it fails.
function Figure({ caption, cls = '' }) {
  const img = h('img');
  const status = h('div', { class: 'fig-status', role: 'status' });
  const downloads = h('span', { class: 'fig-downloads' });
  const el = h('figure', { class: `fig ${cls}` },
    h('div', { class: 'fig-frame' }, img, status),
    h('figcaption', null, h('span', null, caption), downloads));
  let url = null;
  let holding = false;  // this figure holds one of the page's turns
  const release = () => { if (holding) { holding = false; giveTurn(); } };
  const load = (want) => {  // the image of `want`, when a turn is free (a newer want replaces it)
    if (holding) { img.src = want; return; }
    takeTurn().then(() => {
      if (url !== want) { giveTurn(); return; }
      holding = true;
      img.removeAttribute('src');
      img.src = want;
    });
  };
  img.addEventListener('load', () => {
    release();
    el.classList.remove('is-loading', 'is-error');
    fill(status);
  });
  let retries = 0;
  img.addEventListener('error', async () => {
    const failed = url;
    release();
    if (!failed) return;
    let e;
    try {
      await api(failed, { retryBusy: false });
      e = new ApiError(0, 'image_error', 'the figure could not be decoded');
    } catch (err) { e = err; }
    if (failed !== url) return;  // another figure was asked for meanwhile
    if (e.status === 429 && retries < 20) {  // the service's analyses are all busy: its turn comes
      retries += 1;
      await sleep(1000);
      if (failed === url) load(failed);
      return;
    }
    el.classList.remove('is-loading');
    el.classList.add('is-error');
    fill(status, errorBox(e));
  });
  return {
    el,
    img,
    // newUrl: the figure as shown (it may be drawn at the panel's size); opts.download: the
    // paper-sized figure the links offer (default newUrl); opts.name: the files' base name.
    set(newUrl, alt, opts = {}) {
      img.alt = alt;
      if (newUrl === url) return;
      url = newUrl;
      retries = 0;
      el.classList.remove('is-error');
      el.classList.add('is-loading');
      fill(status, h('span', { class: 'loading' }, 'Rendering…'));
      load(newUrl);
      const base = opts.download || newUrl;
      const name = opts.name || fileName(base.match(/\/v1\/plots\/([A-Za-z0-9_]+)\./)?.[1]);
      const link = (ext) => {
        const href = base.replace(/\.png(\?|$)/, `.${ext}$1`);
        return h('a', { href, download: `${name}.${ext}`, onclick: (e) => saveAs(e, href, `${name}.${ext}`, downloads) }, ext.toUpperCase());
      };
      fill(downloads, 'Download ', link('png'), ' · ', link('svg'), ' · ', link('pdf'));
    },
  };
}

// A plain click fetches the figure first and saves it under the view's name, so that a failure
// (a 4xx with its JSON message) shows next to the links instead of downloading as a file.
async function saveAs(e, href, name, where) {
  if (e.button || e.ctrlKey || e.metaKey || e.shiftKey || e.altKey) return;  // open in a tab etc.: the link itself
  e.preventDefault();
  const a = e.currentTarget;
  a.setAttribute('aria-busy', 'true');
  where.querySelector('.error-box')?.remove();
  try {
    const r = await fetch(href);
    if (!r.ok) {
      await api(href);  // its JSON error
      throw new ApiError(r.status, 'http_error', `${r.status} ${r.statusText}`);
    }
    const url = URL.createObjectURL(await r.blob());
    const tmp = h('a', { href: url, download: name, hidden: true });
    document.body.append(tmp);
    tmp.click();
    tmp.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  } catch (err) {
    where.append(errorBox(err));
  } finally {
    a.removeAttribute('aria-busy');
  }
}

// ---- routing ----------------------------------------------------------------------------------

function hashOf(path, params) {
  const p = params instanceof URLSearchParams ? params : new URLSearchParams();
  if (!(params instanceof URLSearchParams)) {
    for (const [k, v] of Object.entries(params || {})) if (v != null && v !== '') p.set(k, v);
  }
  const qs = p.toString();
  return `#${path}${qs ? `?${qs}` : ''}`;
}

function parseHash() {
  let s = location.hash.slice(1) || '/';
  if (!s.startsWith('/')) s = `/${s}`;
  const i = s.indexOf('?');
  return { path: i < 0 ? s : s.slice(0, i), params: new URLSearchParams(i < 0 ? '' : s.slice(i + 1)) };
}

// Changes the URL (a history entry, or in place) and shows it, without waiting for hashchange.
function go(path, params, { replace = false } = {}) {
  const hash = hashOf(path, params);
  if (hash === location.hash) return;
  history[replace ? 'replaceState' : 'pushState'](null, '', hash);
  route();
}

const routes = [
  [/^\/$/, 'home', viewHome],
  [/^\/explore$/, 'explore', viewExplore],
  [/^\/studies$/, 'studies', viewStudies],
  [/^\/check$/, 'check', viewCheck],
  [/^\/degenerate$/, 'degenerate', viewDegenerate],
  [/^\/layer\/(\d+)$/, 'layer', viewLayer],
  [/^\/models$/, 'models', viewModels],
  [/^\/model\/(\d+)$/, 'model', viewModel],
  [/^\/sql$/, 'sql', viewSql],
];
const NAV_OF = { model: 'models' };  // a layer page: no nav entry (it is reached from several)

let current = null;
let firstRoute = true;

function route() {
  const { path, params } = parseHash();
  let match = null;
  for (const [re, name, view] of routes) {
    const m = path.match(re);
    if (m) { match = { name, view, args: m.slice(1), key: `${name}/${m.slice(1).join('/')}` }; break; }
  }
  if (match && current && current.key === match.key && current.update) {
    current.update(params);
    return;
  }
  current?.controller.abort();
  const controller = new AbortController();
  const name = match ? match.name : 'notfound';
  for (const a of document.querySelectorAll('.nav a[data-view]')) {
    if (a.dataset.view === (NAV_OF[name] || name)) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  const view = match ? match.view : viewNotFound;
  const ctx = { params, args: match ? match.args : [], signal: controller.signal };
  main.replaceChildren();
  main.dataset.view = name;
  const out = view(ctx) || {};
  current = { key: match ? match.key : null, controller, update: out.update };
  if (!firstRoute) {
    const h1 = main.querySelector('h1');
    if (h1) { h1.setAttribute('tabindex', '-1'); h1.focus({ preventScroll: true }); }
    window.scrollTo(0, 0);
  }
  firstRoute = false;
}

function setTitle(title) {
  document.title = title ? `${title} · ${APP}` : APP;
}

function header(title, ...sub) {
  setTitle(title);
  return h('div', { class: 'page-head' }, h('h1', null, title), sub.length ? h('p', { class: 'lede' }, sub) : null);
}

// A table of rows: columns [{key, label, num, render(row)}].
function dataTable(columns, rows, { caption, sort, onSort } = {}) {
  const thead = h('tr', null, columns.map((c) => {
    const th = h('th', { scope: 'col', class: [c.num ? 'num' : '', c.cls || ''].join(' ').trim() || null });
    if (onSort && c.sortable !== false) {
      const dir = sort && sort.key === c.key ? sort.dir : null;
      th.setAttribute('aria-sort', dir === 'asc' ? 'ascending' : dir === 'desc' ? 'descending' : 'none');
      add(th, h('button', { type: 'button', class: 'sort', 'data-key': c.key, onclick: () => onSort(c.key) },
        c.label, h('span', { class: 'sort-ind', 'aria-hidden': 'true' }, dir === 'asc' ? '▲' : dir === 'desc' ? '▼' : '↕')));
    } else {
      add(th, c.label);
    }
    return th;
  }));
  const body = rows.map((r) => h('tr', null, columns.map((c) =>
    h('td', { class: [c.num ? 'num' : '', c.nowrap ? 'nowrap' : '', c.cls || ''].join(' ').trim() || null }, c.render ? c.render(r) : cellText(r[c.key])))));
  return h('div', { class: 'table-wrap' },
    h('table', { class: 'data' }, caption ? h('caption', { class: 'visually-hidden' }, caption) : null, h('thead', null, thead), h('tbody', null, body)));
}

function defList(pairs) {
  return h('dl', { class: 'kv' }, pairs.filter(Boolean).map(([k, v]) => [h('dt', null, k), h('dd', null, v)]));
}

const layerLink = (id) => h('a', { href: `#/layer/${Number(id)}` }, `Layer ${id}`);
const modelLink = (id, text) => h('a', { href: `#/model/${Number(id)}` }, text ?? `Model ${id}`);

// ---- Overview ---------------------------------------------------------------------------------

function viewHome({ signal }) {
  const counts = h('div', { class: 'cards', 'aria-live': 'polite' });
  const fig = Figure({ caption: 'Symmetric KL divergence between the filter distributions of the groups of three fields; axis labels carry each group\'s model count.', cls: 'fig-wide' });
  // Drawn for the panel (the service lays the figure out again: its text stays legible), the
  // downloads the paper-sized figure.
  fig.set(plotUrl('kl_combined', { width: 16, height: 5.4 }), 'Three heatmaps of the symmetric KL divergence between the distributions of trained 3×3 convolution filters, between groups by task, by visual category and by relative depth of the convolution layer',
    { download: plotUrl('kl_combined'), name: 'kl_combined-task-visual_category-depth_bin' });
  add(main,
    header('Distribution shifts of trained 3×3 convolution filters',
      'The store at a glance, and the paper\'s headline figure. Open the ', h('a', { href: '#/explore' }, 'explorer'),
      ' to draw it for any selection and grouping.'),
    h('section', { 'aria-labelledby': 'h-counts' }, h('h2', { id: 'h-counts', class: 'visually-hidden' }, 'The store'), counts),
    h('section', { class: 'panel', 'aria-labelledby': 'h-kl' },
      h('div', { class: 'panel-head' }, h('h2', { id: 'h-kl' }, 'Divergence between groups'),
        h('span', { class: 'panel-links' }, 'Explore by ',
          h('a', { href: hashOf('/explore', { group_by: 'task' }) }, 'task'), ' · ',
          h('a', { href: hashOf('/explore', { group_by: 'visual_category' }) }, 'visual category'), ' · ',
          h('a', { href: hashOf('/explore', { group_by: 'depth_bin' }) }, 'depth'))),
      fig.el));
  load(counts, signal, async () => {
    const s = await api('/v1/stats', { signal });
    const card = (label, value, note, id) => h('div', { class: 'card', 'data-stat': id },
      h('div', { class: 'card-label' }, label), h('div', { class: 'card-value' }, value), note ? h('div', { class: 'card-note' }, note) : null);
    const b = s.basis;
    return [
      card('Store version', fmtInt(s.store_version),
        `${s.last_ingest_at ? `last ingest ${s.last_ingest_at.slice(0, 10)} ${s.last_ingest_at.slice(11, 16)} · ` : ''}cite it: results repeat with as_of`, 'version'),
      card('Models', fmtInt(s.models), null, 'models'),
      card('Layers', fmtInt(s.layers), null, 'layers'),
      card('Filters', fmtInt(s.filters), '3×3 kernels', 'filters'),
      card('Shards', fmtInt(s.shards), fmtBytes(s.shard_bytes), 'shards'),
      card('Basis', b ? `v${b.version}` : 'none', b ? `PCA of ${fmtInt(b.n_filters)} filters; c0–c1 explain ${fmtNum(100 * (b.explained_variance_ratio[0] + b.explained_variance_ratio[1]), 3)}%` : 'no filters yet', 'basis'),
    ];
  });
}

// ---- Explorer ---------------------------------------------------------------------------------

const METRICS = [['kl_sym', 'Symmetric KL'], ['js', 'Jensen–Shannon'], ['hellinger', 'Hellinger'], ['wasserstein', 'Wasserstein']];
const BASES = [['global', 'Global PCA'], ['selection', 'The selection\'s own PCA']];
const FIELD_LABELS = {
  task: 'Task', visual_category: 'Visual category', training_dataset: 'Training dataset',
  pretraining_dataset: 'Pretraining dataset', name: 'Architecture', model: 'Model', model_id: 'Model id',
  producer: 'Producer', conv_depth: 'Conv depth', depth_bin: 'Relative depth', layer_id: 'Layer id',
};
// Another field (a model property, e.g. clean_accuracy) by its name in words: "Clean accuracy".
const fieldLabel = (f) => FIELD_LABELS[f] || (f.charAt(0).toUpperCase() + f.slice(1)).replace(/_+/g, ' ').trim() || f;
// A field of /v1/fields: a number selected by range (an integer or double property), not by value;
// groupable (older services list no `groupable`: every field they list is).
const isRange = (f) => f.property === true && f.groupable === false;
const isGroupable = (f) => f.groupable !== false;
// <option>s of fields: the built-in ones, then the model properties under their own heading.
function fieldOptions(fields) {
  const opt = (x) => h('option', { value: x.name, title: x.property ? `model property ${x.name} (${x.type})` : null }, fieldLabel(x.name));
  const props = fields.filter((x) => x.property);
  return [fields.filter((x) => !x.property).map(opt),
    props.length ? h('optgroup', { label: 'Model properties' }, props.map(opt)) : null];
}

// A view's `where` from its URL: {whereRaw, where (an object), whereError (a sentence or null)}.
function parseWhere(params) {
  const s = { whereRaw: params.get('where') || '', where: {}, whereError: null };
  if (s.whereRaw) {
    try {
      const w = JSON.parse(s.whereRaw);
      if (w && typeof w === 'object' && !Array.isArray(w)) s.where = w;
      else s.whereError = 'where must be a JSON object {field: [values]}';
    } catch {
      s.whereError = 'where is not valid JSON';
    }
  }
  return s;
}

function exploreState(params) {
  return {
    group_by: params.get('group_by') || 'task',
    metric: params.get('metric') || 'kl_sym',
    bins: params.get('bins') || '70',
    basis: params.get('basis') || 'global',
    ...parseWhere(params),
  };
}

function exploreParams(s) {
  const where = Object.keys(s.where).length ? JSON.stringify(s.where) : '';
  return { group_by: s.group_by, where: s.whereError ? s.whereRaw : where, metric: s.metric, bins: s.bins, basis: s.basis };
}

const BOUNDS = { gte: '≥', gt: '>', lte: '≤', lt: '<' };
function condText(v) {  // a where condition that is not a list: a value or bounds
  if (v && typeof v === 'object' && Object.keys(v).every((k) => k in BOUNDS)) {
    return Object.entries(v).map(([k, x]) => `${BOUNDS[k]} ${fmtValue(x)}`).join(' and ');
  }
  return `is ${JSON.stringify(v)}`;
}

function whereName(where) {  // a selection in a file name: task_GAN_Segmentation
  return Object.entries(where).map(([f, v]) => [f, ...(Array.isArray(v) ? v : [v]).map((x) =>
    (x && typeof x === 'object' ? Object.entries(x).flat().join('_') : fmtValue(x)))].join('_')).join('-');
}

function describeWhere(where) {
  const parts = Object.entries(where).map(([f, v]) => `${fieldLabel(f)} ${Array.isArray(v) ? `is ${v.map(fmtValue).join(' or ')}` : condText(v)}`);
  return parts.length ? `filters where ${parts.join(' and ')}` : 'all filters';
}

function viewExplore({ params, signal }) {
  let state = exploreState(params);
  const nav = (s, opts) => go('/explore', exploreParams(s), opts);

  // Controls
  const groupSel = h('select', { id: 'x-group', name: 'group_by' }, h('option', { value: state.group_by }, fieldLabel(state.group_by)));
  const metricSel = h('select', { id: 'x-metric', name: 'metric' }, METRICS.map(([v, t]) => h('option', { value: v }, t)));
  const binsIn = h('input', { id: 'x-bins', name: 'bins', type: 'number', min: 1, max: 10000, step: 1, inputmode: 'numeric' });
  const basisSel = h('select', { id: 'x-basis', name: 'basis' }, BASES.map(([v, t]) => h('option', { value: v }, t)));
  groupSel.addEventListener('change', () => nav({ ...state, group_by: groupSel.value }));
  metricSel.addEventListener('change', () => nav({ ...state, metric: metricSel.value }));
  basisSel.addEventListener('change', () => nav({ ...state, basis: basisSel.value }));
  binsIn.addEventListener('change', () => { if (binsIn.checkValidity()) nav({ ...state, bins: binsIn.value }); });
  const form = h('form', { class: 'controls', onsubmit: (e) => { e.preventDefault(); nav({ ...state, bins: binsIn.value }); } },
    h('div', { class: 'control' }, h('label', { for: 'x-group' }, 'Group by'), groupSel),
    h('div', { class: 'control' }, h('label', { for: 'x-metric' }, 'Metric'), metricSel),
    h('div', { class: 'control control-narrow' }, h('label', { for: 'x-bins' }, 'Bins'), binsIn),
    h('div', { class: 'control' }, h('label', { for: 'x-basis' }, 'Basis'), basisSel),
    h('button', { type: 'submit', class: 'btn visually-hidden' }, 'Update'),
    h('p', { class: 'muted share-note' }, 'The address bar holds this view: copy it to share the figures.'));

  // Selection: chips, then a field and its values
  const chips = h('ul', { class: 'chips', 'aria-label': 'Selection' });
  const pickField = h('select', { id: 'x-pick-field' });
  const valueFilter = h('input', { id: 'x-value-filter', type: 'search', placeholder: 'Filter values', autocomplete: 'off' });
  const valueList = h('div', { class: 'value-list' });
  const valueFilterBox = h('div', { class: 'value-filter' },
    h('label', { for: 'x-value-filter', class: 'visually-hidden' }, 'Filter the values'), valueFilter);
  // A number property: the models whose value is within [at least, at most] (either may be empty).
  const rangeMin = h('input', { id: 'x-range-min', type: 'number', step: 'any', inputmode: 'decimal' });
  const rangeMax = h('input', { id: 'x-range-max', type: 'number', step: 'any', inputmode: 'decimal' });
  const rangeNote = h('p', { class: 'muted', id: 'x-range-note' });
  const rangeBox = h('div', { class: 'range', hidden: true },
    h('div', { class: 'control' }, h('label', { for: 'x-range-min' }, 'At least'), rangeMin),
    h('div', { class: 'control' }, h('label', { for: 'x-range-max' }, 'At most'), rangeMax),
    rangeNote);
  const valueBox = h('fieldset', { class: 'values' }, h('legend', null, 'Values'), valueFilterBox, valueList, rangeBox);
  const applyBtn = h('button', { type: 'button', class: 'btn btn-primary', id: 'x-apply' }, 'Apply to selection');
  const clearBtn = h('button', { type: 'button', class: 'btn', id: 'x-clear' }, 'Clear selection');
  let fields = [];

  function renderChips() {
    const items = [];
    for (const [f, v] of Object.entries(state.where)) {
      const vals = Array.isArray(v) ? v : [v];
      for (const x of vals) {
        const text = Array.isArray(v) ? `${fieldLabel(f)}: ${fmtValue(x)}` : `${fieldLabel(f)} ${condText(x)}`;
        items.push(h('li', { class: 'chip' }, h('span', null, text),
          h('button', { type: 'button', class: 'chip-x', 'aria-label': `Remove ${text}`, title: 'Remove', onclick: () => {
            const where = { ...state.where };
            if (Array.isArray(v) && v.length > 1) where[f] = v.filter((y) => y !== x);
            else delete where[f];
            nav({ ...state, where, whereError: null });
          } }, '×')));
      }
    }
    fill(chips, items.length ? items : h('li', { class: 'chip-empty' }, 'All filters (no selection)'));
    clearBtn.disabled = !items.length;
  }

  function renderRange(f) {
    const cur = state.where[f.name];
    const bounds = cur && typeof cur === 'object' && !Array.isArray(cur) ? cur : {};
    rangeMin.value = bounds.gte ?? bounds.gt ?? '';
    rangeMax.value = bounds.lte ?? bounds.lt ?? '';
    rangeMin.placeholder = f.min != null ? String(f.min) : '';
    rangeMax.placeholder = f.max != null ? String(f.max) : '';
    rangeMin.step = rangeMax.step = f.type === 'BIGINT' ? '1' : 'any';
    for (const el of [rangeMin, rangeMax]) el.setCustomValidity('');
    rangeNote.textContent = f.min == null ? 'No model has a value yet.'
      : `The models' values: ${fmtNum(f.min, 6)} to ${fmtNum(f.max, 6)} (${fmtInt(f.n_distinct)} distinct${f.type === 'BIGINT' ? ' integers' : ''}). A range leaves out the models without a value.`;
    valueBox.querySelector('legend').textContent = `Range of ${fieldLabel(f.name)}`;
  }

  function renderValues() {
    const f = fields.find((x) => x.name === pickField.value);
    if (!f) { fill(valueList); return; }
    const range = isRange(f);
    valueFilterBox.hidden = range;
    valueList.hidden = range;
    rangeBox.hidden = !range;
    if (range) { renderRange(f); return; }
    const chosen = new Set((Array.isArray(state.where[f.name]) ? state.where[f.name] : []).map((v) => JSON.stringify(v)));
    const q = valueFilter.value.trim().toLowerCase();
    const vals = f.values.filter((v) => !q || fmtValue(v.value).toLowerCase().includes(q));
    fill(valueList, vals.length ? vals.map((v, i) => {
      const id = `x-v-${i}`;
      return h('div', { class: 'value' },
        h('input', { type: 'checkbox', id, 'data-value': JSON.stringify(v.value), checked: chosen.has(JSON.stringify(v.value)) }),
        h('label', { for: id }, fmtValue(v.value), ' ', h('span', { class: 'muted' }, `${fmtInt(v.models)} model${v.models === 1 ? '' : 's'}, ${fmtInt(v.filters)} filters`)));
    }) : h('p', { class: 'muted' }, 'No value matches.'),
    f.truncated ? h('p', { class: 'muted' }, `The first ${fmtInt(f.values.length)} of ${fmtInt(f.n_distinct)} values.`) : null);
    valueBox.querySelector('legend').textContent = `Values of ${fieldLabel(f.name)}`;
  }
  pickField.addEventListener('change', () => { valueFilter.value = ''; renderValues(); });
  valueFilter.addEventListener('input', renderValues);
  applyBtn.addEventListener('click', () => {
    const f = pickField.value;
    const info = fields.find((x) => x.name === f);
    if (info && isRange(info)) {  // {"gte": at least, "lte": at most}; neither: no condition on it
      for (const el of [rangeMin, rangeMax]) el.setCustomValidity('');
      if (!rangeMin.checkValidity() || !rangeMax.checkValidity()) { (rangeMin.checkValidity() ? rangeMax : rangeMin).reportValidity(); return; }
      const lo = rangeMin.value === '' ? null : Number(rangeMin.value);
      const hi = rangeMax.value === '' ? null : Number(rangeMax.value);
      if (lo != null && hi != null && lo > hi) { rangeMax.setCustomValidity('At most must not be below at least.'); rangeMax.reportValidity(); return; }
      const where = { ...state.where };
      if (lo == null && hi == null) delete where[f];
      else where[f] = { ...(lo != null ? { gte: lo } : {}), ...(hi != null ? { lte: hi } : {}) };
      nav({ ...state, where, whereError: null });
      return;
    }
    const checked = [...valueList.querySelectorAll('input[type=checkbox]')];
    const visible = new Set(checked.map((c) => c.dataset.value));
    // Values hidden by the filter box stay as they were.
    const prev = (Array.isArray(state.where[f]) ? state.where[f] : []).filter((v) => !visible.has(JSON.stringify(v)));
    const vals = prev.concat(checked.filter((c) => c.checked).map((c) => JSON.parse(c.dataset.value)));
    const where = { ...state.where };
    if (vals.length) where[f] = vals; else delete where[f];
    nav({ ...state, where, whereError: null });
  });
  clearBtn.addEventListener('click', () => nav({ ...state, where: {}, whereError: null, whereRaw: '' }));

  const selection = h('section', { class: 'panel selection', 'aria-labelledby': 'h-sel' },
    h('h2', { id: 'h-sel' }, 'Selection'), chips,
    h('div', { class: 'picker' },
      h('div', { class: 'control' }, h('label', { for: 'x-pick-field' }, 'Field'), pickField),
      valueBox,
      h('div', { class: 'picker-actions' }, applyBtn, clearBtn)));

  // Results
  const heat = Figure({ caption: 'Divergence between the groups (rows and columns sorted by their mean, depth in natural order).', cls: 'fig-heat' });
  const ridge = Figure({ caption: 'Density of each principal-component coefficient c0…c8 per group (Gaussian KDE, Silverman\'s bandwidth).', cls: 'fig-wide' });
  const eigen = Figure({ caption: 'The selection\'s eigen-images v0…v8 with their explained variance ratio.', cls: 'fig-wide' });
  const density = Figure({ caption: 'Density of the first two coefficients (c0 right, c1 up; log colour scale).', cls: 'fig-square' });
  const variance = Figure({ caption: 'Cumulative explained variance ratio of the principal components: the global basis and the selection\'s own.', cls: 'fig-square' });
  const drift = h('div', { class: 'drift', 'aria-live': 'polite' });
  const whereNote = h('p', { class: 'lede', id: 'x-where-note' });
  add(main,
    header('Explorer', 'Distribution shifts between groups of any selection of filters.'),
    h('section', { class: 'panel', 'aria-label': 'Parameters' }, form),
    selection,
    whereNote,
    h('div', { class: 'grid-heat' },
      h('section', { class: 'panel', 'aria-labelledby': 'h-heat' }, h('h2', { id: 'h-heat' }, 'Divergence heatmap'), heat.el),
      h('section', { class: 'panel', 'aria-labelledby': 'h-drift' }, h('h2', { id: 'h-drift' }, 'Drift statistics'), drift)),
    h('section', { class: 'panel', 'aria-labelledby': 'h-ridge' }, h('h2', { id: 'h-ridge' }, 'Ridge plot'), ridge.el),
    h('section', { class: 'panel', 'aria-labelledby': 'h-eigen' }, h('h2', { id: 'h-eigen' }, 'Eigen-images'), eigen.el),
    h('div', { class: 'grid-even' },
      h('section', { class: 'panel', 'aria-labelledby': 'h-density' }, h('h2', { id: 'h-density' }, 'Density of c0 and c1'), density.el),
      h('section', { class: 'panel', 'aria-labelledby': 'h-variance' }, h('h2', { id: 'h-variance' }, 'Explained variance'), variance.el)));

  let driftCtl = null;
  function show() {
    const p = exploreParams(state);
    groupSel.value = state.group_by;
    metricSel.value = state.metric;
    binsIn.value = state.bins;
    basisSel.value = state.basis;
    renderChips();
    renderValues();
    const gl = fieldLabel(state.group_by);
    const sel = describeWhere(state.where);
    whereNote.textContent = state.whereError ? `The selection in the URL is not usable: ${state.whereError}.` : `Showing ${sel}, grouped by ${gl}.`;
    const metricName = (METRICS.find(([v]) => v === state.metric) || [0, state.metric])[1];
    // The heatmap, ridge plot and eigen-images are drawn about their panels' size (the paper's are
    // 10 and 18 inches wide); the downloads are the paper-sized figures.
    const where = whereName(state.where);
    const heatQ = { group_by: p.group_by, where: p.where, metric: p.metric, bins: p.bins, basis: p.basis };
    heat.set(plotUrl('divergence', { ...heatQ, width: 8, height: 8 }),
      `Heatmap of the ${metricName} divergence between the groups by ${gl} of ${sel}`,
      { download: plotUrl('divergence', heatQ), name: fileName('divergence', p.group_by, p.metric, where) });
    const ridgeQ = { group_by: p.group_by, where: p.where, basis: p.basis };
    ridge.set(plotUrl('ridge', { ...ridgeQ, width: 12 }),
      `Ridge plot: per group by ${gl}, the density of each of the nine principal-component coefficients of ${sel}`,
      { download: plotUrl('ridge', ridgeQ), name: fileName('ridge', p.group_by, where) });
    eigen.set(plotUrl('eigenimages', { where: p.where, width: 12 }), `The nine eigen-images (3×3 principal components) of ${sel}, with their explained variance ratios`,
      { download: plotUrl('eigenimages', { where: p.where }), name: fileName('eigenimages', where) });
    density.set(plotUrl('density2d', { where: p.where, basis: p.basis }), `Two-dimensional density of the first two principal-component coefficients of ${sel}`,
      { name: fileName('density2d', p.basis !== 'global' ? p.basis : '', where) });
    variance.set(plotUrl('explained_variance', { where: p.where }), `Line chart of the cumulative explained variance ratio of the principal components of ${sel}`,
      { name: fileName('explained_variance', where) });

    driftCtl?.abort();
    driftCtl = new AbortController();
    const ctl = driftCtl;
    signal.addEventListener('abort', () => ctl.abort(), { once: true });
    if (state.whereError) { fill(drift, errorBox(new ApiError(0, 'invalid_where', state.whereError))); return; }
    const body = { group_by: state.group_by, metric: state.metric, bins: /^\d+$/.test(state.bins) ? Number(state.bins) : state.bins, basis: state.basis };
    if (Object.keys(state.where).length) body.where = state.where;
    load(drift, ctl.signal, async () => {
      const r = await api('/v1/divergence', { method: 'POST', body, signal: ctl.signal });
      const d = r.drift;
      const stat = (k) => (d ? fmtNum(d[k]) : '—');
      return [
        d ? null : h('p', { class: 'note-box', id: 'x-one-group' }, r.labels.length === 1
          ? `This selection leaves one group (${gl}: ${fmtValue(r.labels[0])}), so there is nothing to compare: the heatmap is a single cell and there is no drift. Widen the selection or group by another field.`
          : 'Drift needs at least two groups: this selection has none with filters.'),
        h('table', { class: 'data stats', id: 'drift-table' },
          h('caption', { class: 'visually-hidden' }, 'Drift statistics of the divergence matrix'),
          h('tbody', null, [
            ['Groups', fmtInt(r.labels.length)], ['Drift mean', stat('mean')], ['Median', stat('median')],
            ['Q1', stat('q1')], ['Q3', stat('q3')], ['Min', stat('min')], ['Max', stat('max')],
            ['Metric', `${r.metric} (${r.weights} weights)`], ['Bins', fmtInt(r.bins)],
            ['Basis', `${r.basis.kind}${r.basis.version != null ? ` v${r.basis.version}` : ''}`],
            ['Store version', fmtInt(r.store_version)], ['Method', r.method], ['Elapsed', `${fmtNum(r.elapsed_ms, 3)} ms`],
          ].map(([k, v]) => h('tr', null, h('th', { scope: 'row' }, k), h('td', { class: 'num' }, v))))),
        r.empty_groups?.length ? h('p', { class: 'muted' }, `No filters for: ${r.empty_groups.map(fmtValue).join(', ')}`) : null,
        h('h3', null, 'Groups'),
        h('div', { class: 'scroll-y', tabindex: 0, role: 'region', 'aria-label': 'Groups' }, dataTable([
          { key: 'label', label: gl },
          { key: 'models', label: 'Models', num: true },
          { key: 'layers', label: 'Layers', num: true },
          { key: 'filters', label: 'Filters', num: true },
        ], r.labels.map((l, i) => ({ label: fmtValue(l), models: r.n_models[i], layers: r.n_layers[i], filters: r.n_filters[i] })))),
      ];
    });
  }

  once('/v1/fields').then((f) => {
    if (signal.aborted) return;
    fields = f.fields;
    // group_by takes every field but the number properties (selected by range in the picker).
    fill(groupSel, fieldOptions(fields.filter(isGroupable)));
    fill(pickField, fieldOptions(fields));
    groupSel.value = state.group_by;
    if (groupSel.value !== state.group_by) add(groupSel, h('option', { value: state.group_by }, state.group_by)).value = state.group_by;
    renderValues();
  }).catch((e) => { if (!signal.aborted) add(selection, errorBox(e)); });

  show();
  return { update(params2) { state = exploreState(params2); show(); } };
}

// ---- Studies ----------------------------------------------------------------------------------

// The follow-up studies' figures (docs/figures.md, "The studies' figures"): how two cohorts of a
// model field (robust or not) differ depth decile by depth decile, and how a model metric
// correlates with a property, per value of a series field (training_dataset).
const MODEL_METRICS = [
  ['variance_entropy', 'Variance entropy'], ['variance_entropy_norm', 'Variance entropy (normalized)'],
  ['variance_entropy_clean', 'Variance entropy (clean)'], ['sparsity', 'Sparsity'], ['orthogonality', 'Orthogonality'],
];
const METHODS = [['spearman', 'Spearman'], ['pearson', 'Pearson'], ['kendall', 'Kendall (tau-b)']];
const METHOD_SYMBOL = { spearman: 'ρ', pearson: 'r', kendall: 'τ' };
const LAYER_SCOPES = [['all', 'All layers'], ['first', 'First layer only']];
const STUDY_PARAMS = ['group_by', 'series', 'metric', 'y', 'method', 'layers'];
const labelOf = (pairs, v) => (pairs.find(([k]) => k === v) || [v, v])[1];
// The groups a field splits the models into: its values, null among them (a boolean property
// with unlabelled models gives three: False, True and (none)).
const nGroups = (f) => (f.truncated || !f.values ? f.n_distinct : f.values.length);
// A model field that splits the models into groups of several: a cohort or a series.
const isModelGroup = (f) => f.level === 'model' && isGroupable(f) && f.name !== 'model' && f.name !== 'model_id';
// A property a correlation takes (besides the model metrics): a number or a boolean.
const isVariable = (f) => f.property === true && (isRange(f) || f.type === 'BOOLEAN');

// The state's defaults from the store's fields: the first property of exactly two groups as the
// cohorts, training_dataset as the series, a number property (robust accuracy first) as y.
function studyDefaults(fields) {
  const props = fields.filter((f) => f.property);
  const cohorts = fields.filter((f) => isModelGroup(f) && nGroups(f) >= 2);
  const group = cohorts.find((f) => f.property && nGroups(f) === 2) || cohorts.find((f) => f.property)
    || cohorts.find((f) => nGroups(f) === 2);
  const vars = fields.filter(isVariable);
  const y = vars.find((f) => isRange(f) && /robust/i.test(f.name)) || vars.find(isRange) || vars[0];
  return {
    hasProperties: props.length > 0, cohorts, vars,
    series: fields.filter(isModelGroup),
    group_by: group?.name ?? null,
    seriesDefault: fields.some((f) => f.name === 'training_dataset') ? 'training_dataset' : '',
    y: y?.name ?? null,
  };
}

function studiesState(params, d) {
  return {
    group_by: params.get('group_by') || d.group_by,
    series: params.has('series') ? params.get('series') : d.seriesDefault,  // series= (empty): none
    metric: params.get('metric') || 'variance_entropy',
    y: params.get('y') || d.y,
    method: params.get('method') || 'spearman',
    layers: params.get('layers') || 'all',
    ...parseWhere(params),
  };
}

function studiesParams(s) {  // every parameter, an empty series too (no series, not the default)
  const p = new URLSearchParams();
  for (const k of STUDY_PARAMS) if (s[k] != null) p.set(k, s[k]);
  const where = s.whereError ? s.whereRaw : Object.keys(s.where).length ? JSON.stringify(s.where) : '';
  if (where) p.set('where', where);
  return p;
}

// How to give a store's models properties, in place of a figure that would need one.
function labelHint(id, what) {
  return h('div', { class: 'note-box study-hint', id },
    h('p', null, what),
    h('p', null, 'Add them from a CSV of one row per model, keyed by its name (columns such as Robust, Clean Accuracy, Robust Accuracy): ',
      h('code', null, 'cnnfilterdb label --manifest meta.csv --key Name'),
      ' types, checks and versions them (docs/cli.md, ', h('code', null, 'label'), '). Then reload this page.'));
}

// A number of the correlation table: 4 significant digits, the exact value in the title.
const exactNum = (x) => (x == null ? h('span', { class: 'null', title: 'undefined' }, '—') : h('span', { title: String(x) }, fmtNum(x, 4)));

function viewStudies({ params, signal }) {
  let d = null;  // studyDefaults of the store's fields, once read
  let state = null;
  let pending = params;
  const nav = (s) => go('/studies', studiesParams(s));
  const body = h('div', { id: 'studies' }, h('p', { class: 'loading' }, 'Loading…'));
  add(main,
    header('Studies', 'The follow-up studies\' questions: how two cohorts of models (e.g. robust and normally trained) differ depth decile by depth decile, and how a model metric correlates with a property, per training dataset.'),
    body);

  const sel = (id, name) => h('select', { id, name });
  const cohortSel = sel('s-cohort', 'group_by');
  const seriesSel = sel('s-series', 'series');
  const metricSel = h('select', { id: 's-metric', name: 'metric' }, MODEL_METRICS.map(([v, t]) => h('option', { value: v }, t)));
  const ySel = sel('s-y', 'y');
  const methodSel = h('select', { id: 's-method', name: 'method' }, METHODS.map(([v, t]) => h('option', { value: v }, t)));
  const layersSel = h('select', { id: 's-layers', name: 'layers' }, LAYER_SCOPES.map(([v, t]) => h('option', { value: v }, t)));
  const pickers = { group_by: cohortSel, series: seriesSel, metric: metricSel, y: ySel, method: methodSel, layers: layersSel };
  for (const [k, el] of Object.entries(pickers)) el.addEventListener('change', () => nav({ ...state, [k]: el.value }));
  const control = (el, label, title) => h('div', { class: 'control', title }, h('label', { for: el.id }, label), el);
  const form = h('form', { class: 'controls study-controls', onsubmit: (e) => e.preventDefault() },
    control(cohortSel, 'Cohorts', 'A model field whose values are the cohorts: the divergence compares exactly two'),
    control(seriesSel, 'Series', 'A colour of the divergence, a panel of the box plots, a group of the correlation'),
    control(metricSel, 'Model metric', 'Each model\'s weighted mean of a layer metric: boxes and correlation'),
    control(ySel, 'Property', 'The number or boolean property the metric is correlated with'),
    control(methodSel, 'Correlation', null),
    control(layersSel, 'Layers', 'The layers a model\'s metric is computed over'),
    h('p', { class: 'muted share-note' }, 'The address bar holds this view: copy it to share the figures.'));
  const whereNote = h('p', { class: 'lede', id: 's-where-note' });

  const divFig = Figure({ caption: 'Symmetric KL divergence (weighted by explained variance) between the two cohorts\' filter distributions, per depth decile ("0": the first convolution), a colour per series value.', cls: 'fig-study' });
  const metFig = Figure({ caption: 'The model metric per depth decile, a box per cohort side by side (the mean a white diamond), a panel per series value.', cls: 'fig-study' });
  const corFig = Figure({ caption: 'Each model\'s metric against the property, a panel per series value titled with the statistic, its 95% bootstrap interval and n.', cls: 'fig-study' });
  const corTable = h('div', { id: 's-corr', 'aria-live': 'polite' });
  const cohortBox = h('div');
  const corBox = h('div');

  function build() {
    if (!d.hasProperties) {
      fill(body, labelHint('s-no-properties', ['This store\'s models have no properties yet. The studies compare the cohorts of a property (e.g. ',
        h('code', null, 'robust'), ': True or False) and correlate a model metric with one (e.g. ', h('code', null, 'robust_accuracy'), ').']));
      return;
    }
    // A field of two values (the divergence's cohorts) with its values, another with its count.
    const groupsText = (f) => (nGroups(f) === 2 && f.values ? f.values.map((v) => fmtValue(v.value)).join(' / ') : `${fmtInt(nGroups(f))} groups`);
    const opts = (fs, text) => [fs.filter((f) => !f.property).map((f) => h('option', { value: f.name }, text(f))),
      fs.some((f) => f.property) ? h('optgroup', { label: 'Model properties' }, fs.filter((f) => f.property).map((f) => h('option', { value: f.name }, text(f)))) : null];
    fill(cohortSel, opts(d.cohorts, (f) => `${fieldLabel(f.name)}: ${groupsText(f)}`));
    fill(seriesSel, h('option', { value: '' }, 'None (all models)'), opts(d.series, (f) => fieldLabel(f.name)));
    fill(ySel, d.vars.map((f) => h('option', { value: f.name, title: `model property ${f.name} (${f.type})` }, fieldLabel(f.name))));
    ySel.disabled = !d.vars.length;
    fill(body,
      h('section', { class: 'panel', 'aria-label': 'Parameters' }, form),
      whereNote,
      h('section', { class: 'panel', 'aria-labelledby': 'h-s-div' }, h('h2', { id: 'h-s-div' }, 'Divergence between the cohorts by depth'), cohortBox),
      h('section', { class: 'panel', 'aria-labelledby': 'h-s-met' }, h('h2', { id: 'h-s-met' }, 'The model metric by depth, cohort beside cohort'), metFig.el),
      h('section', { class: 'panel', 'aria-labelledby': 'h-s-corr' }, h('h2', { id: 'h-s-corr' }, 'Correlation of the model metric with the property'), corBox));
    fill(cohortBox, d.cohorts.length ? divFig.el : labelHint('s-no-cohorts', 'No model field of two or more values to compare cohorts of.'));
    fill(corBox, d.vars.length ? [corTable, corFig.el]
      : labelHint('s-no-variable', 'No number or boolean property to correlate the model metric with (e.g. robust_accuracy).'));
    if (!d.cohorts.length) metFig.el.replaceWith(labelHint('s-no-cohorts-metric', 'No model field of two or more values to compare cohorts of.'));
  }

  let corCtl = null;
  let corKey = null;
  function show() {
    if (!d.hasProperties) return;
    for (const [k, el] of Object.entries(pickers)) {
      if (state[k] == null) continue;
      el.value = state[k];
      // A value of the URL the pickers do not offer: offered, and its figures say what is wrong.
      if (el.value !== state[k]) add(el, h('option', { value: state[k] }, state[k])).value = state[k];
    }
    const s = state;
    const where = s.whereError ? s.whereRaw : Object.keys(s.where).length ? JSON.stringify(s.where) : '';
    const wname = whereName(s.where);
    const selText = describeWhere(s.where);
    const gl = fieldLabel(s.group_by || '');
    const per = s.series ? `, per ${fieldLabel(s.series).toLowerCase()}` : '';
    const metricName = labelOf(MODEL_METRICS, s.metric);
    fill(whereNote, s.whereError ? `The selection in the URL is not usable: ${s.whereError}.`
      : Object.keys(s.where).length ? [`Showing ${selText}. `, h('a', { href: hashOf('/studies', studiesParams({ ...s, where: {}, whereError: null })) }, 'All filters')] : null);
    // Drawn for the panels: 8 inches wide at 150 dpi (1200 pixels), where the figures' text is
    // legible (it shrinks with the width, down to 5 pt; at their own 12 to 24 inches it is 10 pt),
    // a row of panels (three series values) about 1.7 inches high. The downloads are the figures
    // at their own size.
    const nSeries = Math.min(12, s.series ? nGroups(d.series.find((f) => f.name === s.series) || { n_distinct: 3 }) : 1);
    const cols = Math.min(Math.max(nSeries, 1), 3);
    const rows = Math.ceil(Math.max(nSeries, 1) / 3);
    const shown = (q, width, height) => plotUrl(q[0], { ...q[1], width, height: Math.round(10 * height) / 10, dpi: 150 });
    if (s.group_by && d.cohorts.length) {
      const divQ = { group_by: s.group_by, within: 'depth_decile', series: s.series, where };
      divFig.set(shown(['cohort_divergence', divQ], 8, 3.2),
        `Bar chart of the weighted symmetric KL divergence between the two cohorts by ${gl} per depth decile${per}, of ${selText}`,
        { download: plotUrl('cohort_divergence', divQ), name: fileName('cohort_divergence', s.group_by, s.series, wname) });
      const metQ = { metric: s.metric, group_by: s.group_by, series: s.series, layers: s.layers, where };
      metFig.set(shown(['cohort_metric', metQ], 8, 0.9 + 1.7 * rows),
        `Box plots of each model's ${metricName.toLowerCase()} per depth decile, the cohorts by ${gl} side by side${per}, of ${selText}`,
        { download: plotUrl('cohort_metric', metQ), name: fileName('cohort_metric', s.metric, s.group_by, s.series, s.layers !== 'all' ? s.layers : '', wname) });
    }
    if (!s.y) return;
    const corQ = { x: s.metric, y: s.y, group_by: s.series, method: s.method, layers: s.layers, where };
    corFig.set(shown(['correlation', corQ], Math.min(8, 1.5 + 2.2 * cols), 0.6 + 2 * rows),
      `Scatter plots of each model's ${metricName.toLowerCase()} against its ${fieldLabel(s.y).toLowerCase()}${per}, titled with the ${s.method} correlation and n`,
      { download: plotUrl('correlation', corQ), name: fileName('correlation', s.metric, s.y, s.series, s.method, s.layers !== 'all' ? s.layers : '', wname) });

    const req = { x: s.metric, y: s.y, group_by: s.series || null, method: s.method, layers: s.layers };
    if (Object.keys(s.where).length) req.where = s.where;
    const key = JSON.stringify([req, s.whereError]);
    if (key === corKey) return;
    corKey = key;
    corCtl?.abort();
    corCtl = new AbortController();
    const ctl = corCtl;
    signal.addEventListener('abort', () => ctl.abort(), { once: true });
    if (s.whereError) { fill(corTable, errorBox(new ApiError(0, 'invalid_where', s.whereError))); return; }
    load(corTable, ctl.signal, async () => {
      const r = await api('/v1/correlation', { method: 'POST', body: req, signal: ctl.signal });
      const sym = METHOD_SYMBOL[r.method] || 'statistic';
      const undefinedRows = r.groups.some((g) => g.statistic == null);
      return [
        h('p', { class: 'muted', id: 's-corr-note' },
          `${labelOf(METHODS, r.method)} correlation of ${metricName.toLowerCase()} (${r.layers === 'first' ? 'first layer' : 'all layers'}) with ${fieldLabel(r.y).toLowerCase()}`,
          r.group_by ? ` per ${fieldLabel(r.group_by).toLowerCase()}` : ' over all models',
          `; 95% bootstrap interval of ${fmtInt(r.resamples)} resamples (seed ${r.seed}); store version ${fmtInt(r.store_version)}.`,
          undefinedRows ? ' —: undefined (fewer than three models, or a variable without variation).' : ''),
        dataTable([
          { key: 'group', label: r.group_by ? fieldLabel(r.group_by) : 'Group', render: (g) => fmtValue(g.group) },
          { key: 'n', label: 'Models', num: true },
          { key: 'statistic', label: `${labelOf(METHODS, r.method).split(' ')[0]} ${sym}`, num: true, render: (g) => exactNum(g.statistic) },
          { key: 'p_value', label: 'p-value', num: true, render: (g) => exactNum(g.p_value) },
          { key: 'ci_low', label: '95% CI low', num: true, render: (g) => exactNum(g.ci_low) },
          { key: 'ci_high', label: '95% CI high', num: true, render: (g) => exactNum(g.ci_high) },
        ], r.groups, { caption: 'Correlation per group' }),
      ];
    });
  }

  once('/v1/fields').then((f) => {
    if (signal.aborted) return;
    d = studyDefaults(f.fields);
    build();
    state = studiesState(pending, d);
    show();
  }).catch((e) => { if (!signal.aborted) fill(body, errorBox(e)); });

  return {
    update(params2) {
      pending = params2;
      if (!d) return;
      state = studiesState(params2, d);
      show();
    },
  };
}

// ---- Degenerate layers ------------------------------------------------------------------------

const DEGEN_DEFAULTS = { sparsity_gt: '0.5', entropy_norm_lt: '0.5', entropy_norm_gt: '1.0', limit: '100', offset: '0' };
const DEGEN_COLUMNS = [
  { key: 'layer_id', label: 'Layer', num: true, render: (r) => layerLink(r.layer_id) },
  { key: 'model', label: 'Model', nowrap: true, render: (r) => modelLink(r.model_id, r.model) },
  { key: 'conv_depth', label: 'Depth', num: true },
  { key: 'depth_bin', label: 'Depth bin' },
  { key: 'n_filters', label: 'Filters', num: true },
  { key: 'sparsity', label: 'Sparsity', num: true, render: (r) => fmtMetric(r.sparsity) },
  { key: 'variance_entropy_norm', label: 'Entropy norm.', num: true, render: (r) => fmtMetric(r.variance_entropy_norm) },
  { key: 'flags', label: 'Flags', sortable: false, render: (r) => [
    r.sparse ? h('span', { class: 'badge badge-warn' }, 'sparse') : null,
    r.low_entropy ? h('span', { class: 'badge badge-info' }, 'low entropy') : null,
    r.random_like ? h('span', { class: 'badge badge-alt' }, 'random-like') : null] },
];

function sortRows(rows, key, dir) {
  const sign = dir === 'desc' ? -1 : 1;
  return [...rows].sort((a, b) => {
    const x = a[key];
    const y = b[key];
    if (x == null && y == null) return 0;
    if (x == null) return 1;  // missing values last, either way
    if (y == null) return -1;
    const c = typeof x === 'number' && typeof y === 'number' ? x - y : String(x).localeCompare(String(y), 'en', { numeric: true });
    return sign * c || a.layer_id - b.layer_id;
  });
}

function viewDegenerate({ params, signal }) {
  const inputs = {};
  const num = (name, label, attrs) => {
    inputs[name] = h('input', { id: `d-${name}`, name, type: 'number', step: 'any', ...attrs });
    return h('div', { class: 'control control-fit' }, h('label', { for: `d-${name}` }, label), inputs[name]);
  };
  const form = h('form', { class: 'controls', onsubmit: (e) => {
    e.preventDefault();
    const p = { ...Object.fromEntries(Object.entries(inputs).map(([k, el]) => [k, el.value])), offset: '0', sort: state.sort, dir: state.sort ? state.dir : '', color_by: state.color_by };
    go('/degenerate', p);
  } },
  num('sparsity_gt', 'Sparsity >', { min: 0, max: 1 }),
  num('entropy_norm_lt', 'Entropy norm. <', {}),
  num('entropy_norm_gt', 'Entropy norm. >', {}),
  num('limit', 'Rows', { min: 1, max: 10000, step: 1 }),
  h('button', { type: 'submit', class: 'btn btn-primary' }, 'Apply'));
  const result = h('div', { 'aria-live': 'polite' });
  const fig = Figure({ caption: 'Every layer\'s sparsity against its normalized variance entropy; the lines are the thresholds above (dotted: the random-like one).', cls: 'fig-square' });
  const colorSel = h('select', { id: 'd-color', name: 'color_by', title: 'The fields of at most 20 values (the figure colours up to 20 groups)' });
  colorSel.addEventListener('change', () => go('/degenerate', { ...state.q, sort: state.sort, dir: state.sort ? state.dir : '', color_by: colorSel.value }));
  once('/v1/fields').then((f) => {
    if (signal.aborted) return;
    // The figure colours at most 20 groups: only the fields with that few values.
    fill(colorSel, fieldOptions(f.fields.filter((x) => isGroupable(x) && x.n_distinct <= 20)));
    colorSel.value = state.color_by;
  }).catch(() => {});
  add(main,
    header('Degenerate layers', 'Layers whose filters are mostly zero (sparse), nearly all alike (low variance entropy) or random-like (high entropy).'),
    h('section', { class: 'panel', 'aria-label': 'Thresholds' }, form),
    h('section', { class: 'panel', 'aria-labelledby': 'h-layers' }, h('h2', { id: 'h-layers' }, 'Layers over the thresholds'), result),
    h('section', { class: 'panel', 'aria-labelledby': 'h-quality' },
      h('div', { class: 'panel-head' }, h('h2', { id: 'h-quality' }, 'Quality of every layer'),
        h('div', { class: 'control inline' }, h('label', { for: 'd-color' }, 'Colour by'), colorSel)),
      fig.el));

  let state = {};
  let data = null;
  let queryKey = null;
  let ctl = null;

  function renderTable(focusKey) {
    const rows = state.sort ? sortRows(data.layers, state.sort, state.dir) : data.layers;
    const from = data.total ? data.offset + 1 : 0;
    const to = data.offset + data.layers.length;
    const pageParams = (offset) => ({ ...state.q, offset: String(offset), sort: state.sort, dir: state.sort ? state.dir : '', color_by: state.color_by });
    fill(result,
      h('p', { class: 'muted', id: 'd-count' }, `${fmtInt(from)}–${fmtInt(to)} of ${fmtInt(data.total)} layers`),
      rows.length ? dataTable(DEGEN_COLUMNS, rows, {
        sort: { key: state.sort, dir: state.dir },
        onSort: (key) => {
          const dir = state.sort === key && state.dir === 'asc' ? 'desc' : 'asc';
          go('/degenerate', { ...state.q, sort: key, dir, color_by: state.color_by }, { replace: true });
        },
      }) : h('p', null, 'No layer is over the thresholds.'),
      h('nav', { class: 'pager', 'aria-label': 'Pages' },
        data.offset > 0 ? h('a', { href: hashOf('/degenerate', pageParams(Math.max(0, data.offset - data.limit))) }, '← Previous') : null,
        to < data.total ? h('a', { href: hashOf('/degenerate', pageParams(data.offset + data.limit)) }, 'Next →') : null));
    if (focusKey) result.querySelector(`button.sort[data-key="${focusKey}"]`)?.focus();
  }

  function show(params2) {
    const q = {};
    for (const k of Object.keys(DEGEN_DEFAULTS)) q[k] = params2.get(k) ?? DEGEN_DEFAULTS[k];
    const sort = params2.get('sort') || '';
    state = { q, sort, dir: params2.get('dir') === 'desc' ? 'desc' : 'asc', color_by: params2.get('color_by') || 'task' };
    for (const [k, el] of Object.entries(inputs)) el.value = q[k];
    if (colorSel.options.length) colorSel.value = state.color_by;
    const colorName = fieldLabel(state.color_by).toLowerCase();
    // The lines follow the form's thresholds (a value the figure does not take: its error in place).
    const lines = { sparsity_gt: q.sparsity_gt, entropy_norm_lt: q.entropy_norm_lt, entropy_norm_gt: q.entropy_norm_gt };
    fig.set(plotUrl('quality', { color_by: state.color_by === 'task' ? '' : state.color_by, ...lines }),
      `Scatter plot of every layer's sparsity against its normalized variance entropy, coloured by ${colorName}, with the thresholds (sparsity above ${q.sparsity_gt}, normalized entropy below ${q.entropy_norm_lt}${q.entropy_norm_gt !== '' ? ` or above ${q.entropy_norm_gt}` : ''}) drawn as lines`,
      { name: fileName('quality', state.color_by, `sparsity_gt_${q.sparsity_gt}`, `entropy_norm_lt_${q.entropy_norm_lt}`, q.entropy_norm_gt !== '' ? `entropy_norm_gt_${q.entropy_norm_gt}` : '') });
    const key = JSON.stringify(q);
    if (key === queryKey && data) {  // only the order changed
      const active = document.activeElement;
      renderTable(active?.classList.contains('sort') ? active.dataset.key : null);
      return;
    }
    queryKey = key;
    ctl?.abort();
    ctl = new AbortController();
    const c = ctl;
    signal.addEventListener('abort', () => c.abort(), { once: true });
    data = null;
    fill(result, h('p', { class: 'loading' }, 'Loading…'));
    api(`/v1/quality/degenerate?${new URLSearchParams(q)}`, { signal: c.signal }).then((d) => {
      if (c.signal.aborted) return;
      data = d;
      renderTable(null);
    }).catch((e) => { if (!isAbort(e) && !c.signal.aborted) fill(result, errorBox(e)); });
  }
  show(params);
  return { update: show };
}

// ---- Layer ------------------------------------------------------------------------------------

function viewLayer({ args, signal }) {
  const id = Number(args[0]);
  const body = h('div');
  const fig = Figure({ caption: 'Each filter of the layer as a 3×3 image, scaled to its own absolute peak (blue negative, red positive).', cls: 'fig-wide' });
  add(main, header(`Layer ${id}`), body);
  load(body, signal, async () => {
    const l = await api(`/v1/layers/${id}`, { signal });
    fig.set(plotUrl('layer_filters', { layer_id: id }), `The ${fmtInt(l.n_filters)} 3×3 filters of layer ${id} of model ${l.model}, each drawn as a small image`,
      { name: fileName('layer_filters', 'layer', id) });
    main.querySelector('.page-head').append(h('p', { class: 'lede', id: 'layer-lede' }, `Layer ${id}: the convolution at depth ${fmtInt(l.conv_depth)}`,
      l.conv_depth_norm != null ? ` (relative depth ${fmtNum(l.conv_depth_norm, 2)})` : '', ' of model ', modelLink(l.model_id, l.model), '.'));
    return [
      h('div', { class: 'grid-layer' },
        h('section', { class: 'panel', 'aria-labelledby': 'h-metrics' }, h('h2', { id: 'h-metrics' }, 'Quality metrics'),
          h('div', { id: 'layer-metrics' }, defList([
            ['Sparsity', fmtMetric(l.sparsity)],
            ['Variance entropy', fmtMetric(l.variance_entropy)],
            ['Variance entropy (normalized)', fmtMetric(l.variance_entropy_norm)],
            ['Variance entropy (clean)', fmtMetric(l.variance_entropy_clean)],
            ['Orthogonality', fmtMetric(l.orthogonality)],
          ])),
          h('h2', null, 'Layer'),
          defList([
            ['Model', modelLink(l.model_id, l.model)],
            ['Conv depth', `${fmtInt(l.conv_depth)} (relative ${fmtNum(l.conv_depth_norm, 3)}, bin ${l.depth_bin})`],
            ['Filters', `${fmtInt(l.n_filters)} (ids ${fmtInt(l.filter_id_first)}–${fmtInt(l.filter_id_last)})`],
            ['Channels in / out', `${fmtInt(l.in_channels)} / ${fmtInt(l.out_channels)}`],
            ['Groups', fmtInt(l.groups)],
          ]),
          h('p', { class: 'downloads' },
            h('a', { class: 'btn', id: 'npy-link', href: `/v1/layers/${id}/filters?format=npy`, download: `layer-${id}.npy` }, 'Download filters (.npy)'), ' ',
            h('a', { href: `/v1/layers/${id}/filters?limit=100` }, 'as JSON'))),
        h('section', { class: 'panel', 'aria-labelledby': 'h-filters' }, h('h2', { id: 'h-filters' }, 'Filters'), fig.el)),
    ];
  });
}

// ---- Models -----------------------------------------------------------------------------------

const MODEL_TEXT = ['model', 'name', 'task', 'task_raw', 'visual_category', 'training_dataset', 'pretraining_dataset', 'producer', 'paper'];
// The models search ignores case, spaces, '-' and '_': "unet" finds U-Net, "resnet 18" ResNet-18.
const foldText = (s) => String(s).toLowerCase().replace(/[-_\s]/g, '');

async function allModels(query, signal) {
  let url = `/v1/models?${new URLSearchParams({ ...query, limit: '1000' })}`;
  const items = [];
  let total = 0;
  for (let page = 0; url && page < 100; page++) {
    const r = await api(url, { signal });
    items.push(...r.items);
    total = r.total;
    url = r.next && r.next.startsWith('/v1/models') ? r.next : null;
  }
  return { items, total };
}

function viewModels({ params, signal }) {
  const search = h('input', { id: 'm-q', type: 'search', name: 'q', autocomplete: 'off', placeholder: 'name, task, dataset…' });
  const taskSel = h('select', { id: 'm-task', name: 'task' }, h('option', { value: '' }, 'Any task'));
  const catSel = h('select', { id: 'm-cat', name: 'visual_category' }, h('option', { value: '' }, 'Any visual category'));
  const count = h('p', { class: 'muted', id: 'm-count', 'aria-live': 'polite' });
  const list = h('div');
  let state = {};
  let models = null;
  let fetchKey = null;
  let timer = null;
  const current = () => ({ q: search.value.trim(), task: taskSel.value, visual_category: catSel.value });

  search.addEventListener('input', () => {
    clearTimeout(timer);
    timer = setTimeout(() => go('/models', current(), { replace: true }), 150);
  });
  taskSel.addEventListener('change', () => go('/models', current()));
  catSel.addEventListener('change', () => go('/models', current()));
  add(main,
    header('Models', 'Every model of the store; search filters the list as you type.'),
    h('section', { class: 'panel' },
      h('form', { class: 'controls', role: 'search', onsubmit: (e) => { e.preventDefault(); clearTimeout(timer); go('/models', current()); } },
        h('div', { class: 'control control-wide' }, h('label', { for: 'm-q' }, 'Search'), search),
        h('div', { class: 'control' }, h('label', { for: 'm-task' }, 'Task'), taskSel),
        h('div', { class: 'control' }, h('label', { for: 'm-cat' }, 'Visual category'), catSel))),
    h('section', { class: 'panel' }, count, list));

  once('/v1/fields').then((f) => {
    if (signal.aborted) return;
    const opts = (name) => (f.fields.find((x) => x.name === name)?.values || []).filter((v) => v.value !== null)
      .map((v) => h('option', { value: v.value }, `${v.value} (${fmtInt(v.models)})`));
    add(taskSel, opts('task'));
    add(catSel, opts('visual_category'));
    taskSel.value = state.task || '';
    catSel.value = state.visual_category || '';
  }).catch(() => {});

  function listContent() {
    const q = foldText(state.q);
    const rows = q ? models.items.filter((m, i) => models.folded[i].some((t) => t.includes(q))) : models.items;
    count.textContent = `${fmtInt(rows.length)} of ${fmtInt(models.total)} models${q ? ` matching “${state.q}”` : ''}`;
    return rows.length ? dataTable([
      { key: 'model', label: 'Model', render: (m) => modelLink(m.model_id, m.model) },
      { key: 'name', label: 'Architecture' },
      { key: 'task', label: 'Task' },
      { key: 'visual_category', label: 'Visual category' },
      { key: 'training_dataset', label: 'Training dataset' },
      { key: 'n_layers', label: 'Layers', num: true },
      { key: 'n_filters', label: 'Filters', num: true },
    ], rows, { caption: 'Models' }) : h('p', null, 'No model matches.');
  }

  function show(params2) {
    state = { q: params2.get('q') || '', task: params2.get('task') || '', visual_category: params2.get('visual_category') || '' };
    if (document.activeElement !== search) search.value = state.q;
    taskSel.value = state.task;
    catSel.value = state.visual_category;
    const query = {};
    if (state.task) query.task = state.task;
    if (state.visual_category) query.visual_category = state.visual_category;
    const key = JSON.stringify(query);
    if (key === fetchKey && models) { fill(list, listContent()); return; }
    fetchKey = key;
    models = null;
    load(list, signal, async () => {
      const m = await allModels(query, signal);
      if (fetchKey !== key) throw new DOMException('stale', 'AbortError');
      models = { ...m, folded: m.items.map((x) => MODEL_TEXT.map((k) => (x[k] == null ? '' : foldText(x[k])))) };
      return listContent();
    });
  }
  show(params);
  return { update: show };
}

function viewModel({ args, signal }) {
  const id = Number(args[0]);
  const meta = h('div', { id: 'model-meta' });
  const layers = h('div', { id: 'model-layers' });
  const similar = h('div', { id: 'model-similar' });
  add(main, header(`Model ${id}`),
    h('div', { class: 'grid-model' },
      h('section', { class: 'panel', 'aria-labelledby': 'h-meta' }, h('h2', { id: 'h-meta' }, 'Metadata'), meta),
      h('section', { class: 'panel', 'aria-labelledby': 'h-similar' }, h('h2', { id: 'h-similar' }, 'Most similar models'), similar)),
    h('section', { class: 'panel', 'aria-labelledby': 'h-mlayers' }, h('h2', { id: 'h-mlayers' }, 'Layers'), layers));
  load(meta, signal, async () => {
    const m = await api(`/v1/models/${id}`, { signal });
    setTitle(m.model);
    main.querySelector('h1').textContent = m.model;
    const link = (u) => (/^https?:\/\//i.test(u) ? h('a', { href: u, rel: 'noopener noreferrer', target: '_blank' }, u) : u);
    const counts = (o) => Object.entries(o || {}).map(([k, v]) => `${k}: ${fmtInt(v)}`).join(', ') || '—';
    main.querySelector('.page-head').append(h('p', { class: 'lede' },
      h('a', { href: hashOf('/explore', { group_by: 'depth_bin', where: JSON.stringify({ model_id: [id] }) }) }, 'Explore this model\'s filters by depth'),
      ' · ', h('a', { href: hashOf('/explore', { group_by: 'task', where: JSON.stringify({ name: [m.name] }) }) }, `All ${m.name ?? 'unnamed'} models by task`)));
    const props = Object.entries(m.properties || {});
    return [defList([
      ['Model id', String(m.model_id)], ['Architecture', m.name ?? '—'], ['Task', m.task_raw && m.task_raw !== m.task ? `${m.task} (${m.task_raw})` : m.task ?? '—'],
      ['Visual category', m.visual_category ?? '—'], ['Training dataset', m.training_dataset ?? '—'],
      ['Pretraining dataset', m.pretraining_dataset ?? '—'], ['Producer', m.producer ?? '—'],
      ['Opset / depth', `${m.op_set ?? '—'} / ${m.depth ?? '—'}`], ['Paper', m.paper ?? '—'], ['Accessible', m.accessible ?? '—'],
      ['Dataset URL', m.dataset_url ? link(m.dataset_url) : '—'],
      ['3×3 filters', `${fmtInt(m.n_filters)} in ${fmtInt(m.n_layers)} layers (${m.filter_share_3x3 != null ? fmtNum(100 * m.filter_share_3x3, 3) : '—'}% of ${fmtInt(m.total_filters)} filters)`],
      ['Kernel sizes', counts(m.kernel_counts)], ['Operators', counts(m.op_counts)],
      ['Source', m.source], m.sha256 ? ['SHA-256', h('code', null, m.sha256)] : null,
      m.extra ? ['Extra', h('code', null, JSON.stringify(m.extra))] : null,
    ]),
    // Its properties (GET /v1/fields lists them), by name in words; the field's name in the title.
    props.length ? [h('h3', { id: 'h-props' }, 'Properties'), h('div', { id: 'model-properties' }, defList(props.map(([k, v]) => [
      h('span', { title: k }, fieldLabel(k)),
      v === null ? h('span', { class: 'null', title: 'no value' }, '—') : typeof v === 'number' ? fmtNum(v, 6) : fmtValue(v)])))] : null];
  });
  load(layers, signal, async () => {
    const r = await api(`/v1/models/${id}/layers`, { signal });
    return dataTable([
      { key: 'layer_id', label: 'Layer', num: true, render: (l) => layerLink(l.layer_id) },
      { key: 'conv_depth', label: 'Depth', num: true },
      { key: 'depth_bin', label: 'Depth bin' },
      { key: 'n_filters', label: 'Filters', num: true },
      { key: 'sparsity', label: 'Sparsity', num: true, render: (l) => fmtMetric(l.sparsity) },
      { key: 'variance_entropy_norm', label: 'Entropy norm.', num: true, render: (l) => fmtMetric(l.variance_entropy_norm) },
      { key: 'orthogonality', label: 'Orthogonality', num: true, render: (l) => fmtMetric(l.orthogonality) },
    ], r.items);
  });
  load(similar, signal, async () => {
    const r = await api(`/v1/models/${id}/similar?k=5`, { signal });
    return [
      r.similar.length ? h('ol', { class: 'similar' }, r.similar.map((s) => h('li', null,
        modelLink(s.model_id, s.model ?? `Model ${s.model_id}`), ' ', h('span', { class: 'muted' }, `${r.metric} ${fmtNum(s.distance)}`)))) : h('p', null, 'No other model.'),
      h('p', { class: 'muted' }, `Distance between the models' filter distributions (${r.metric}, ${r.weights} weights, global basis).`),
    ];
  });
}

// ---- Check a model ----------------------------------------------------------------------------

// POST /v1/check with the file and the form's fields (multipart), by XMLHttpRequest: fetch cannot
// report the upload's progress. onProgress(sent, total) while it uploads, onSent() once it is up.
// Resolves with the body (JSON parsed, or a Blob for a figure or page); rejects with an ApiError
// from the service's JSON error body. A 429 check_busy (every check slot taken) is asked again.
function postCheck(file, fields, { format = 'json', signal, onProgress, onSent } = {}) {
  const ask = () => new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('POST', '/v1/check');
    xhr.responseType = format === 'json' ? 'text' : 'blob';
    xhr.setRequestHeader('Accept', format === 'json' ? 'application/json' : '*/*');
    const form = new FormData();
    for (const [k, v] of Object.entries(fields)) if (v != null && v !== '') form.append(k, v);
    if (format !== 'json') form.append('format', format);
    form.append('file', file, file.name);
    const abort = () => xhr.abort();
    signal?.addEventListener('abort', abort, { once: true });
    xhr.upload.addEventListener('progress', (e) => onProgress?.(e.loaded, e.lengthComputable ? e.total : file.size));
    xhr.upload.addEventListener('load', () => onSent?.());
    xhr.addEventListener('abort', () => reject(new DOMException('aborted', 'AbortError')));
    xhr.addEventListener('error', () => reject(new ApiError(0, 'network_error', 'the service did not answer (the upload failed or the connection closed)')));
    xhr.addEventListener('load', async () => {
      signal?.removeEventListener('abort', abort);
      const ok = xhr.status >= 200 && xhr.status < 300;
      if (ok) {
        if (format !== 'json') { resolve(xhr.response); return; }
        try { resolve(JSON.parse(xhr.responseText)); } catch { reject(new ApiError(xhr.status, 'bad_response', 'the answer is not JSON')); }
        return;
      }
      const text = xhr.responseType === 'blob' ? await xhr.response.text() : xhr.responseText;
      let err = null;
      try { err = JSON.parse(text)?.error; } catch { err = null; }
      const e = new ApiError(xhr.status, err?.code || 'http_error', err?.message || `${xhr.status} ${xhr.statusText}`);
      e.retryAfter = Number(xhr.getResponseHeader('Retry-After')) || 1;
      reject(e);
    });
    xhr.send(form);
  });
  return (async () => {
    for (let attempt = 0; ; attempt += 1) {
      try {
        return await ask();
      } catch (e) {
        if (!(e.status === 429 && attempt < 30) || signal?.aborted) throw e;
        onProgress?.(0, file.size, `busy: every check is taken, asking again in ${e.retryAfter} s`);
        await sleep(1000 * e.retryAfter);
        if (signal?.aborted) throw new DOMException('aborted', 'AbortError');
      }
    }
  })();
}

const CHECK_METRICS = [['sparsity', 'Sparsity'], ['variance_entropy', 'Variance entropy'],
  ['variance_entropy_norm', 'Entropy norm.'], ['variance_entropy_clean', 'Entropy (non-sparse)'], ['orthogonality', 'Orthogonality']];
const LAYER_TABLE_METRICS = ['sparsity', 'variance_entropy_norm', 'orthogonality'];
const CHECK_FLAGS = {
  sparse: 'sparsity above the threshold', low_entropy: 'normalized variance entropy below the threshold (redundant filters)',
  random_like: 'normalized variance entropy above the threshold (close to random)',
  unusual: 'kl_to_population at or above its depth decile\'s 95th percentile',
};
const PCT_TITLE = 'percentile: 100 × the share of the population\'s layers of this depth decile whose value is at most this one (ties count: many equal values push it to 100)';
const pctText = (p) => (p == null ? null : h('span', { class: 'pct', title: PCT_TITLE }, `p${Math.round(p)}`));

// A check's number, as the report writes it (check_report.number_text): an integer exact with
// thousands separators; a float at 4 significant digits, without an exponent from 1e-4 up, with
// one below (8.401e-05, as Python writes it), whole from 1e4 up; the exact value in the title.
function checkNumber(x) {
  if (typeof x !== 'number' || !Number.isFinite(x)) return String(x);
  if (x === 0) return '0';
  if (Number.isInteger(x)) return intFmt.format(x);
  const a = Math.abs(x);
  if (a >= 1e4) return intFmt.format(Math.round(x));
  if (a >= 1e-4) return String(Number(x.toPrecision(4)));
  const [m, e] = Number(x.toPrecision(4)).toExponential().split('e');
  return `${m}e${e[0] === '-' ? '-' : '+'}${e.replace(/^[-+]/, '').padStart(2, '0')}`;
}
function fmtCheck(x) {
  if (x == null) return h('span', { class: 'null', title: 'no value' }, '—');
  const text = checkNumber(x);
  return text === String(x) ? text : h('span', { title: String(x) }, text);
}
const withPct = (v, p) => h('span', { class: 'with-pct' }, fmtCheck(v), pctText(p));
const plural = (n, word, many) => `${fmtInt(n)} ${n === 1 ? word : (many || `${word}s`)}`;
// A population's where in words: "models where Task is GAN and Visual category is natural".
function populationText(where) {
  if (!where || !Object.keys(where).length) return 'every model';
  return `models where ${Object.entries(where).map(([f, v]) => `${fieldLabel(f)} ${Array.isArray(v) ? `is ${v.map(fmtValue).join(' or ')}`
    : v !== null && typeof v === 'object' ? condText(v) : `is ${fmtValue(v)}`}`).join(' and ')}`;
}
const msText = (ms) => `${intFmt.format(Math.round(ms))} ms`;
// A message of the page itself (not the service's): plain, without an error code.
const pageError = (text) => h('div', { class: 'error-box', role: 'alert' }, text);
const flagBadges = (flags) => flags.map((f) => h('span', { class: 'badge badge-flag', title: CHECK_FLAGS[f] || f }, f));

function checkState(params) {
  return { task: params.get('task') || '', where: params.get('where') || '', k: params.get('k') || '' };
}

function viewCheck({ params, signal }) {
  let state = checkState(params);
  let file = null;
  let ctl = null;
  let figureUrl = null;
  let last = null;  // the result shown: {file, key (the fields sent), blobs (format -> Blob, each asked once)}
  const input = h('input', { type: 'file', id: 'c-file', name: 'file', class: 'visually-hidden', accept: '.onnx,.pt,.pth,.bin,.safetensors,.npz' });
  const fileLabel = h('span', { id: 'c-file-name', class: 'muted' }, 'No file chosen');
  const drop = h('label', { for: 'c-file', id: 'c-drop', class: 'drop-zone' }, input,
    h('strong', null, 'Drop a model file here, or click to choose one'),
    h('span', { class: 'muted' }, 'ONNX, PyTorch (.pt, .pth), safetensors or .npz: read exactly as an ingest reads it; nothing is stored.'),
    fileLabel);
  const taskSel = h('select', { id: 'c-task', name: 'task' }, h('option', { value: '' }, 'Every model of the store'));
  const whereIn = h('input', { id: 'c-where', name: 'where', type: 'text', autocomplete: 'off', spellcheck: 'false', placeholder: '{"visual_category": ["natural"]}' });
  const kIn = h('input', { id: 'c-k', name: 'k', type: 'number', min: 1, max: 1000, step: 1, placeholder: '5', inputmode: 'numeric' });
  const runBtn = h('button', { type: 'submit', class: 'btn btn-primary', id: 'c-run', disabled: true }, 'Check');
  const status = h('div', { id: 'c-status', role: 'status', 'aria-live': 'polite' });
  const out = h('div', { id: 'c-result' });
  const form = h('form', { class: 'controls check-controls', id: 'c-form', onsubmit: (e) => { e.preventDefault(); run(); } },
    h('div', { class: 'control' }, h('label', { for: 'c-task' }, 'Population: task'), taskSel),
    h('div', { class: 'control control-wide' }, h('label', { for: 'c-where' }, 'and a selection (where, JSON)'), whereIn),
    h('div', { class: 'control control-narrow' }, h('label', { for: 'c-k' }, 'Nearest models'), kIn),
    runBtn);

  const choose = (f) => {
    if (!f) return;
    file = f;
    fileLabel.textContent = `${f.name} (${fmtBytes(f.size)})`;
    runBtn.disabled = false;
    run({ again: true });  // a file chosen (again) is read again: it may have changed
  };
  input.addEventListener('change', () => choose(input.files[0]));
  for (const ev of ['dragenter', 'dragover']) {
    drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add('is-over'); });
  }
  for (const ev of ['dragleave', 'dragend']) drop.addEventListener(ev, () => drop.classList.remove('is-over'));
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    drop.classList.remove('is-over');
    choose(e.dataTransfer?.files?.[0]);
  });
  // The form's state in the address (the file cannot be): a shared link opens the same population.
  function keep() { go('/check', { task: taskSel.value, where: whereIn.value.trim(), k: kIn.value }, { replace: true }); }
  for (const el of [taskSel, whereIn, kIn]) el.addEventListener('change', keep);

  add(main,
    header('Check a model', 'How a model\'s 3×3 filters compare with those of the store\'s models, depth decile by depth decile: each layer\'s divergence from the population\'s layers of its depth, its quality metrics as percentiles, flags, and the nearest models. The file is checked and discarded: nothing is written to the store.'),
    h('section', { class: 'panel', 'aria-label': 'The model file and the population' }, drop, form, status),
    out);
  signal.addEventListener('abort', () => { ctl?.abort(); if (figureUrl) URL.revokeObjectURL(figureUrl); });

  once('/v1/fields').then((f) => {
    if (signal.aborted) return;
    const values = (f.fields.find((x) => x.name === 'task')?.values || []).filter((v) => v.value !== null);
    add(taskSel, values.map((v) => h('option', { value: v.value }, `${v.value} (${fmtInt(v.models)} models)`)));
    taskSel.value = state.task;
  }).catch(() => {});

  // The population: the where typed and the task chosen, as one selection (the task added to the
  // where as a value, {"task": "GAN"}); a where that names task while a task is chosen is an error
  // said in place, not a silent choice of one of them.
  function fields() {
    const where = whereIn.value.trim();
    let w = null;
    if (where) {
      try { w = JSON.parse(where); } catch { throw new Error('The selection (where) is not valid JSON, e.g. {"visual_category": ["natural"]}.'); }
      if (!w || typeof w !== 'object' || Array.isArray(w)) throw new Error('The selection (where) must be a JSON object, {field: [values]}, e.g. {"visual_category": ["natural"]}.');
    }
    if (taskSel.value) {
      if (w && Object.hasOwn(w, 'task')) throw new Error(`The selection (where) names task, and the task "${taskSel.value}" is chosen too: choose "Every model of the store" as the task, or drop task from the where.`);
      w = { ...(w || {}), task: taskSel.value };
    }
    return { where: w ? JSON.stringify(w) : '', k: kIn.value };
  }

  function progress(text, value, max) {
    const bar = h('progress', { max: max || null });
    if (value != null) bar.value = value;
    fill(status, h('div', { class: 'check-progress' }, bar, h('span', null, text)));
  }

  async function run({ again = false } = {}) {
    if (!file) return;
    keep();
    let body;
    try {
      body = fields();
    } catch (e) {  // as a service's error: the previous result cleared, the message in place
      ctl?.abort();
      last = null;
      fill(out);
      fill(status, pageError(e.message));
      main.dataset.state = 'error';
      return;
    }
    const key = JSON.stringify(body);
    if (!again && last && last.file === file && last.key === key && main.dataset.state === 'done') {
      fill(status, h('p', { class: 'muted', id: 'c-done' }, `Nothing changed since the last check: the result below is for ${file.name} and this population.`));
      return;
    }
    ctl?.abort();
    ctl = new AbortController();
    const c = ctl;
    const f = file;
    last = null;
    fill(out);
    main.dataset.state = 'running';
    runBtn.disabled = true;
    progress(`Uploading ${f.name}…`, 0, f.size);
    const t0 = performance.now();
    try {
      const r = await postCheck(f, body, {
        signal: c.signal,
        onProgress: (sent, total, note) => progress(note || `Uploading ${f.name}: ${fmtBytes(sent)} of ${fmtBytes(total)}`, sent, total),
        onSent: () => progress(`Checking ${f.name} against the store (reading its layers, comparing them with the population)…`),
      });
      if (c.signal.aborted) return;
      fill(status, h('p', { class: 'muted', id: 'c-done' }, `Checked in ${msText(performance.now() - t0)} (${msText(r.elapsed_ms)} at the service).`));
      last = { file: f, key, blobs: new Map() };
      fill(out, report(r, f, body, last));
      main.dataset.state = 'done';
    } catch (e) {
      if (isAbort(e) || c.signal.aborted) return;
      fill(status, errorBox(e));
      main.dataset.state = 'error';
    } finally {
      if (ctl === c) runBtn.disabled = !file;
    }
  }

  function report(r, f, body, got) {
    const m = r.model;
    const pop = r.population;
    const figBox = h('div', { class: 'fig-frame' }, h('span', { class: 'loading' }, 'Drawing the figure…'));
    const figEl = h('figure', { class: 'fig is-loading', id: 'c-figure' }, figBox,
      h('figcaption', null, h('span', null, 'Left: each layer\'s kl_to_population against its relative depth (log scale; a divergence of 0 at the axis\'s floor), over the population\'s median and interquartile range per depth decile (dashed: the 95th percentile; red triangles: unusual layers). Right: the layers\' sparsity and normalized variance entropy over the population\'s density, the sparse and low_entropy thresholds dashed, random_like dotted; nearby flagged layers share a label ("3, 7").')));
    const downloads = h('p', { class: 'downloads', id: 'c-downloads' }, 'Download: ',
      ['html', 'png', 'svg', 'pdf'].map((fmt, i) => [i ? ' · ' : '', h('a', {
        href: '#', 'data-format': fmt,
        onclick: (e) => { e.preventDefault(); download(e.currentTarget, fmt, f, body, m.name, got); },
      }, fmt === 'html' ? 'the report (HTML)' : fmt.toUpperCase())]));
    loadFigure(f, body, figEl, figBox, r, got);
    const unusual = r.layers.filter((l) => l.flags.includes('unusual')).length;
    const flagged = r.layers.filter((l) => l.flags.length).length;
    const where = populationText(pop.where);
    return [
      h('section', { class: 'panel', 'aria-labelledby': 'h-c-model' },
        h('h2', { id: 'h-c-model' }, m.name),
        h('p', { class: 'lede', id: 'c-summary', 'data-where': JSON.stringify(pop.where ?? null) },
          `${plural(r.layers.length, 'layer')} of 3×3 filters (${plural(m.n_filters, 'filter')}), ${fmtInt(flagged)} flagged, ${fmtInt(unusual)} unusual; compared with ${plural(pop.n_models, 'model')} (${plural(pop.n_layers, 'layer')}) of store version ${r.store_version}: `,
          h('strong', { id: 'c-population' }, where), '.'),
        h('div', { class: 'grid-even' },
          defList([['File', m.file], ['Kind', m.kind], ['Size', fmtBytes(m.bytes)], ['SHA-256', h('code', null, m.sha256)],
            m.producer ? ['Producer', m.producer] : null, m.op_set != null ? ['Opset', String(m.op_set)] : null]),
          defList([['Store', h('code', null, r.store_id)], ['Store version', String(r.store_version)], ['Basis version', String(r.basis_version)],
            ['Population', `${where}: ${plural(pop.n_models, 'model')}, ${plural(pop.n_layers, 'layer')}, ${plural(pop.n_filters, 'filter')}`],
            ['Clipped', r.clipped ? `${plural(r.clipped, 'coefficient')} outside the basis range, counted in the edge bins` : 'none (every coefficient within the basis range)']])),
        downloads),
      h('section', { class: 'panel', 'aria-labelledby': 'h-c-fig' }, h('h2', { id: 'h-c-fig' }, 'Against the population'), figEl),
      h('section', { class: 'panel', 'aria-labelledby': 'h-c-layers' }, h('h2', { id: 'h-c-layers' }, 'Layers'),
        h('p', { class: 'muted' }, 'pN: the percentile among the population\'s layers of the same depth decile (the share whose value is at most this one). Flagged rows are tinted. The downloaded report lists every metric.'),
        layerTable(r)),
      h('div', { class: 'grid-model' },
        h('section', { class: 'panel', 'aria-labelledby': 'h-c-near' }, h('h2', { id: 'h-c-near' }, 'Nearest models'), nearestTable(r)),
        h('section', { class: 'panel', 'aria-labelledby': 'h-c-metrics' }, h('h2', { id: 'h-c-metrics' }, 'The model\'s metrics'), modelTable(m))),
      h('section', { class: 'panel', 'aria-labelledby': 'h-c-read' }, h('h2', { id: 'h-c-read' }, 'How to read this'),
        h('ul', { class: 'read' },
          h('li', null, 'A layer is compared with the population\'s layers of the same depth decile ("0": the first convolutions; "(0.1, 0.2]": relative depth above 0.1, at most 0.2).'),
          h('li', null, 'kl_to_population: the symmetric KL divergence (weighted by explained variance) between the layer\'s filter distribution in the store\'s basis and its decile\'s pooled distribution; 0 is the same distribution.'),
          h('li', null, 'pN: 100 × the share of the population\'s layers of the same depth decile (for the model\'s metrics: of its models) whose value is at most this one. Ties count in full: where many layers share a value (e.g. a sparsity of 0), a layer with that value is p100, which only says that few are higher.'),
          h('li', null, `Flags: sparse (sparsity above ${r.parameters.thresholds.sparsity_gt}), low_entropy (normalized variance entropy below ${r.parameters.thresholds.entropy_norm_lt})${r.parameters.thresholds.entropy_norm_gt != null ? `, random_like (above ${r.parameters.thresholds.entropy_norm_gt})` : ''}, unusual (kl_to_population at or above its decile's ${r.parameters.unusual_percentile}th percentile). A flag is a question, not a verdict.`),
          h('li', null, 'A flagged layer: narrow the population to the model\'s own task (the task above, or a where) and check again; compare with the nearest models (their pages); sparse or low_entropy often mean dead or pruned filters or a collapsed layer; random_like often means untrained or re-initialised weights; unusual means its filter distribution differs from the population\'s at that depth, expected for a different task or data.'),
          h('li', null, 'The definitions: docs/method.md, sections "Checking a model against the population" (#checking-a-model) and "Model metrics" (#model-metrics).'))),
    ];
  }

  function layerTable(r) {
    const table = dataTable([
      { key: 'layer', label: '#', num: true },
      // a name breaks only after a separator ("Conv 'p2o.Conv.11'" as "Conv 'p2o.Conv." / "11'"), never
      // leaving a quote alone on a line; the full name in the title
      { key: 'name', label: 'Name', cls: 'c-name', render: (l) => h('span', { title: l.name }, String(l.name ?? '').split(/(?<=[.\/_: -])/).flatMap((part, i) => (i ? [h('wbr'), part] : [part]))) },
      // at narrow widths (app.css) the columns marked c-wide are hidden: the table fits, no sideways scroll
      { key: 'conv_depth', label: 'Depth', num: true, cls: 'c-wide', render: (l) => [String(l.conv_depth), ' ', h('span', { class: 'pct' }, `(${fmtNum(l.conv_depth_norm, 3)})`)] },
      { key: 'depth_decile', label: 'Decile', nowrap: true, render: (l) => [l.depth_decile ?? '—', ' ', h('span', { class: 'pct', title: 'the population\'s layers of this decile' }, `(${fmtInt(l.population_layers)})`)] },
      { key: 'n_filters', label: 'Filters', num: true, render: (l) => fmtInt(l.n_filters) },
      // the page's table: the metrics of the figure and orthogonality (the report's has them all)
      ...CHECK_METRICS.filter(([k]) => LAYER_TABLE_METRICS.includes(k)).map(([k, label]) => ({ key: k, label, num: true, nowrap: true, cls: k === 'orthogonality' ? 'c-wide' : null, render: (l) => withPct(l[k], l.percentiles[k]) })),
      { key: 'kl_to_population', label: ['kl_to_', h('wbr'), 'population'], num: true, nowrap: true, render: (l) => withPct(l.kl_to_population, l.percentiles.kl_to_population) },
      { key: 'kl_unusual_at', label: 'Unusual at', num: true, cls: 'c-wide', render: (l) => fmtCheck(l.kl_unusual_at) },
      { key: 'flags', label: 'Flags', render: (l) => flagBadges(l.flags) },
    ], r.layers, { caption: 'The model\'s layers' });
    table.id = 'c-layers';
    table.querySelectorAll('tbody tr').forEach((tr, i) => { if (r.layers[i].flags.length) tr.classList.add('flagged'); });
    // where the table is still wider than its panel (a narrow phone), a visible cue to scroll
    const hint = h('p', { class: 'muted scroll-hint', id: 'c-layers-scroll', hidden: true }, 'The table is wider than the window: scroll it sideways for the flags →');
    const watch = new ResizeObserver(() => { hint.hidden = table.scrollWidth <= table.clientWidth + 1; });
    watch.observe(table);
    signal.addEventListener('abort', () => watch.disconnect(), { once: true });
    return [hint, table];
  }

  function modelTable(m) {
    const rows = [['n_layers', 'Layers of 3×3 filters'], ['n_filters', '3×3 filters'], ...CHECK_METRICS, ['divergence', 'Divergence from the population']]
      .map(([k, label]) => ({ key: k, label, value: m[k], p: m.percentiles[k] }));
    const counts = new Set(['n_layers', 'n_filters']);  // integers, exact
    const t = dataTable([
      { key: 'label', label: 'Metric' },
      { key: 'value', label: 'This model', num: true, render: (x) => (counts.has(x.key) ? fmtInt(x.value) : fmtCheck(x.value)) },
      { key: 'p', label: 'Percentile', num: true, render: (x) => (x.p == null ? '—' : String(Math.round(x.p))) },
    ], rows, { caption: 'The model\'s metrics' });
    t.id = 'c-model-metrics';
    return t;
  }

  function nearestTable(r) {
    if (!r.nearest_models.length) return h('p', null, 'The population holds no model.');
    const t = dataTable([
      { key: 'model', label: 'Model', render: (n) => modelLink(n.model_id, n.model) },
      { key: 'name', label: 'Architecture' },
      { key: 'task', label: 'Task' },
      { key: 'training_dataset', label: 'Training dataset' },
      { key: 'divergence', label: 'Divergence', num: true, render: (n) => fmtCheck(n.divergence) },
    ], r.nearest_models, { caption: 'Nearest models' });
    t.id = 'c-nearest';
    return t;
  }

  // The figure: the same upload asked as a PNG (the check computed again), shown from a blob and
  // kept for the PNG download.
  async function loadFigure(f, body, figEl, figBox, r, got) {
    const c = ctl;
    try {
      const blob = await postCheck(f, body, { format: 'png', signal: c.signal });
      if (c.signal.aborted) return;
      got.blobs.set('png', Promise.resolve(blob));
      if (figureUrl) URL.revokeObjectURL(figureUrl);
      figureUrl = URL.createObjectURL(blob);
      const img = h('img', { id: 'c-figure-img', alt: `The check figure of ${r.model.name}: left, the kl_to_population of each of its ${plural(r.layers.length, 'layer')} against relative depth over the population's interquartile band per depth decile; right, the layers' sparsity and normalized variance entropy over the population's density, with the degenerate thresholds.` });
      img.addEventListener('load', () => figEl.classList.remove('is-loading'), { once: true });
      img.src = figureUrl;
      fill(figBox, img);
    } catch (e) {
      if (isAbort(e) || c.signal.aborted) return;
      figEl.classList.remove('is-loading');
      figEl.classList.add('is-error');
      fill(figBox, errorBox(e));
    }
  }

  // A download: the result's file asked once per format (the PNG is the figure's), then reused.
  async function download(a, fmt, f, body, name, got) {
    a.setAttribute('aria-busy', 'true');
    a.parentElement.querySelector('.error-box')?.remove();
    try {
      let asked = got.blobs.get(fmt);
      if (!asked) {
        asked = postCheck(f, body, { format: fmt, signal });
        got.blobs.set(fmt, asked);
        asked.catch(() => { if (got.blobs.get(fmt) === asked) got.blobs.delete(fmt); });
      }
      const blob = await asked;
      const url = URL.createObjectURL(blob);
      const tmp = h('a', { href: url, download: `${fileName('check', name)}.${fmt}`, hidden: true });
      document.body.append(tmp);
      tmp.click();
      tmp.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
    } catch (e) {
      if (!isAbort(e)) a.parentElement.append(errorBox(e));
    } finally {
      a.removeAttribute('aria-busy');
    }
  }

  function show(params2) {
    state = checkState(params2);
    if (taskSel.querySelector(`option[value="${CSS.escape(state.task)}"]`)) taskSel.value = state.task;
    if (document.activeElement !== whereIn) whereIn.value = state.where;
    if (document.activeElement !== kIn) kIn.value = state.k;
    if (!file) fill(status, h('p', { class: 'muted' }, 'Choose or drop a model file to check it.'));
  }
  show(params);
  return { update: show };
}

// ---- SQL console ------------------------------------------------------------------------------

const SQL_EXAMPLES = [
  ['Models per task', 'SELECT task, count(*) AS models FROM models GROUP BY task ORDER BY models DESC'],
  ['Sparsest layers', 'SELECT layer_id, model_id, n_filters, sparsity FROM layers ORDER BY sparsity DESC LIMIT 20'],
  ['Filters per depth bin', 'SELECT depth_bin, sum(n_filters) AS filters FROM layers_with_models GROUP BY depth_bin ORDER BY depth_bin'],
];

function viewSql({ params, signal }) {
  const ta = h('textarea', { id: 'sql-q', name: 'sql', rows: 6, spellcheck: 'false', autocomplete: 'off', 'aria-describedby': 'sql-hint' });
  const maxRows = h('input', { id: 'sql-max', name: 'max_rows', type: 'number', min: 0, step: 1, placeholder: 'default' });
  const runBtn = h('button', { type: 'submit', class: 'btn btn-primary', id: 'sql-run' }, 'Run');
  const out = h('div', { id: 'sql-result', 'aria-live': 'polite' });
  const limits = h('div', { id: 'sql-limits' });
  let ctl = null;
  let lastRun = null;

  function submit() {
    const q = ta.value.trim();
    if (!q) return;
    const p = { q, max_rows: maxRows.value };
    const hash = hashOf('/sql', p);
    if (hash !== location.hash) history.pushState(null, '', hash);
    run(q, maxRows.value);
  }
  ta.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) { e.preventDefault(); submit(); }
  });
  const form = h('form', { class: 'sql-form', onsubmit: (e) => { e.preventDefault(); submit(); } },
    h('label', { for: 'sql-q' }, 'Query'), ta,
    h('div', { class: 'sql-actions' },
      runBtn,
      h('div', { class: 'control control-narrow inline' }, h('label', { for: 'sql-max' }, 'Max rows'), maxRows),
      h('span', { class: 'muted', id: 'sql-hint' }, 'Ctrl+Enter runs the query. One read-only statement (SELECT).')));
  add(main,
    header('SQL console', 'Read-only SQL over the store: tables ', h('code', null, 'models'), ', ', h('code', null, 'layers'), ', ',
      h('code', null, 'layers_with_models'), ', ', h('code', null, 'filters'), ', ', h('code', null, 'basis'), '.'),
    h('div', { class: 'grid-sql' },
      h('section', { class: 'panel' }, form,
        h('p', { class: 'examples' }, 'Examples: ', SQL_EXAMPLES.map(([t, q], i) => [i ? ' · ' : '', h('a', { href: hashOf('/sql', { q }) }, t)]))),
      h('section', { class: 'panel', 'aria-labelledby': 'h-limits' }, h('h2', { id: 'h-limits' }, 'Limits in force'), limits)),
    h('section', { class: 'panel', 'aria-labelledby': 'h-result' }, h('h2', { id: 'h-result' }, 'Result'), out));

  load(limits, signal, async () => {
    const s = await once('/v1/stats');
    const L = s.limits;
    const sb = L.sql_sandbox;
    return defList([
      ['Rows', `${fmtInt(L.sql_default_rows)} by default, at most ${fmtInt(L.sql_max_rows)}`],
      ['Result size', `${fmtBytes(L.sql_max_bytes)} of JSON rows`],
      ['Time', `${fmtNum(L.sql_timeout_s)} s per query`],
      ['Memory', `${L.sql_memory_limit} (DuckDB), ${fmtBytes(L.sql_worker_memory_cap)} address space`],
      ['Concurrency', `${fmtInt(L.sql_workers)} queries at once`],
      ['Sandbox', sb ? [sb.statement_check && 'statement check', sb.chroot && 'chroot',
                        sb.read_only_mount && 'read-only mount', sb.no_capabilities && 'no capabilities',
                        sb.landlock_abi && `Landlock ABI ${sb.landlock_abi}`].filter(Boolean).join(', ')
                     : 'read-only statements only'],
    ]);
  });

  function run(q, max) {
    ctl?.abort();
    ctl = new AbortController();
    const c = ctl;
    signal.addEventListener('abort', () => c.abort(), { once: true });
    lastRun = `${q}\u0000${max}`;
    runBtn.disabled = true;
    const body = { sql: q };
    if (max !== '' && max != null) body.max_rows = Number(max);
    const t0 = performance.now();
    load(out, c.signal, async () => {
      try {
        const r = await api('/v1/sql', { method: 'POST', body, signal: c.signal });
        // Right-aligned: scalar numbers only (not FLOAT[3][3], STRUCT(...), MAP(...)).
        const numeric = r.types.map((t) => /INT|DOUBLE|FLOAT|DECIMAL|REAL|NUMERIC/i.test(t) && !/\[|STRUCT|MAP|UNION/i.test(t));
        const head = h('tr', null, r.columns.map((col, i) => h('th', { scope: 'col', title: r.types[i], class: numeric[i] ? 'num' : null }, col)));
        const rows = r.rows.map((row) => h('tr', null, row.map((v, i) => sqlCell(v, numeric[i]))));
        return [
          h('p', { class: 'muted', id: 'sql-summary' },
            `${fmtInt(r.rows.length)} row${r.rows.length === 1 ? '' : 's'} · ${fmtNum(r.elapsed_ms, 3)} ms at the service (${fmtNum(performance.now() - t0, 3)} ms here) · caps: ${fmtInt(r.max_rows)} rows, ${fmtBytes(r.max_bytes)}`),
          r.truncated ? h('p', { class: 'warn-box', role: 'status' }, `Truncated: ${r.truncated_reason}`) : null,
          h('div', { class: 'table-wrap sql-wrap', id: 'sql-wrap', tabindex: 0, role: 'region', 'aria-label': 'Result rows' }, h('table', { class: 'data', id: 'sql-table' },
            h('thead', null, head), h('tbody', null, rows))),
        ];
      } finally {
        if (ctl === c) runBtn.disabled = false;
      }
    });
  }

  function show(params2) {
    const q = params2.get('q') || '';
    const max = params2.get('max_rows') || '';
    ta.value = q || ta.value || SQL_EXAMPLES[0][1];
    maxRows.value = max;
    if (q && `${q}\u0000${max}` !== lastRun) run(q, max);
    else if (!q) fill(out, h('p', { class: 'muted' }, 'Run a query to see its rows here.'));
  }
  show(params);
  return { update: show };
}

// ---- Not found --------------------------------------------------------------------------------

function viewNotFound() {
  add(main, header('Page not found', 'No view at this address. Go to the ', h('a', { href: '#/' }, 'overview'), '.'));
}

// ---- start ------------------------------------------------------------------------------------

document.getElementById('skip-link').addEventListener('click', (e) => {
  e.preventDefault();  // the hash holds the view's state: focus the content without changing it
  main.focus();
  main.scrollIntoView();
});
window.addEventListener('hashchange', route);
route();

// A store of the synthetic sample (`cnnfilterdb demo`) says so on every view.
once('/v1/stats').then((s) => {
  const n = s.sample_models || 0;
  if (!n) return;
  const demo = h('code', null, 'cnnfilterdb demo');
  const text = n >= s.models
    ? ['This is a synthetic sample store: its ', fmtInt(n), ` model${n === 1 ? '' : 's'} (made by `, demo, `) ${n === 1 ? 'is' : 'are'} not real data.`]
    : ['This store holds ', fmtInt(n), ` synthetic sample model${n === 1 ? '' : 's'} (made by `, demo, '): not real data.'];
  const banner = document.getElementById('sample-banner');
  fill(banner, h('div', { class: 'wrap' }, h('strong', null, 'Synthetic data. '), text));
  banner.hidden = false;
}).catch(() => {});
