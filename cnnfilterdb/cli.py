"""The ``cnnfilterdb`` command line: the one place that wires the ingest, the engine and the
service together (docs/cli.md)."""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from pathlib import Path

from .errors import UserError, first_line
from .layout import DEMO_DB, StoreDamaged, default_db, file_problem, relative_to_store
from .limits import MAX_ID
from .store import FilterStore


def _bounded(kind, lo, hi):
    """An argparse type: a finite number of ``kind`` in [lo, hi]."""
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not lo <= v <= hi:  # also refuses nan
            raise argparse.ArgumentTypeError(f"{text} is not between {lo} and {hi}")
        return v
    return parse


def _db_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", type=Path, default=None,
                   help="store directory (default: $CNNFILTERDB_DB or ./filterdb)")


def _refit_arg(p: argparse.ArgumentParser) -> None:
    from cnnfilterdb.store import REFIT_CHANGED_SHARE, REFIT_POLICIES, REFIT_SMALL_STORE

    text = (f"whether this commit refits the global basis: auto (default) refits while the store holds at most "
            f"{REFIT_SMALL_STORE:,} filters, or once {REFIT_CHANGED_SHARE:.0%} of its filters changed since the fit; "
            "always refits now; never keeps the basis (added layers are projected on it) "
            "(docs/method.md#refit)")
    p.add_argument("--refit", choices=REFIT_POLICIES, default="auto", help=text.replace("%", "%%"))


def _write_check_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--new-value", action="store_true",
                   help="store a value that differs from one the store holds only in case, spaces, - or _ as a value "
                        "of its own (refused otherwise: did you mean ...?)")


def cmd_ingest(args) -> int:
    import duckdb

    from cnnfilterdb.ingest import ingest_paths
    from cnnfilterdb.ingest.model_files import META_FIELDS

    meta = {k: getattr(args, k) for k in META_FIELDS}
    if args.manifest and (args.paths or any(meta.values())):
        raise UserError("--manifest gives the files and their metadata: no paths or metadata flags with it")
    if not args.manifest and not args.paths:
        raise UserError("nothing to ingest: give files or folders, or --manifest CSV")
    db = args.db or default_db()
    try:
        result = ingest_paths([Path(p) for p in args.paths], db, meta=meta,
                              manifest=Path(args.manifest) if args.manifest else None, skip_bad=args.skip_bad,
                              refit=args.refit, allow_missing=args.allow_missing, new_value=args.new_value)
    except (OSError, duckdb.IOException, duckdb.FatalException) as e:
        # A full disk, a permission, an I/O error (Parquet, numpy or DuckDB writing): the transaction
        # has rolled back. One line, naming the file, or the store when the error names none.
        raise UserError(io_fault(e, db)) from None
    print(json.dumps(result))
    return 0


# DuckDB's message for an error of the system writing a file (a full disk, a device error)
_DUCKDB_OS_ERROR = re.compile(r'Could not (?:write|create|open|truncate|sync|fsync)[^"]* file "([^"]+)": ([^":]+?)\.?$')


def io_fault(e: BaseException, db: Path | None) -> str:
    """One line for an I/O error of a command (a full disk, a permission, a device error) on the
    store ``db``: what went wrong, and where, as the user named it: the store (a file of its own,
    a staging copy, is not named), or the file outside it (a source, an output). The store's
    writers roll back on any error, so the store is as it was."""
    db = db or default_db()
    what = first_line(e) if getattr(e, "strerror", None) is None else e.strerror
    if re.fullmatch(r"\d+ requested and \d+ written", what):  # numpy's short write: the disk is full, most often
        what = f"a write was cut short ({what}): is the disk full?"
    filename = getattr(e, "filename", None)
    try:
        root = FilterStore(db).root
    except UserError:
        root = None
    if root is not None:
        what = relative_to_store(root, what)
    if filename is None:
        return f"{what} ({db})"
    try:
        inside = root is not None and (Path(os.fsdecode(filename)).resolve() == root
                                       or root in Path(os.fsdecode(filename)).resolve().parents)
    except (OSError, RuntimeError, ValueError, TypeError):
        inside = False
    return f"{what} ({db})" if inside else f"{what} ({os.fsdecode(filename)})"


def cmd_info(args) -> int:
    info = FilterStore(args.db or default_db()).info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    b = info["bytes"]
    ratio = b["shards"] / b["raw_float32"] if b["raw_float32"] else 0.0
    print(f"store      {info['db']}")
    print(f"id         {info['store_id']}")
    print(f"version    {info['version']}  (`cnnfilterdb log` lists them)")
    print(f"models     {info['models']:,}")
    print(f"layers     {info['layers']:,}")
    print(f"filters    {info['filters']:,}  in {info['shards']} shard(s)")
    print(f"size       {b['shards'] / 2**20:,.1f} MiB of shards ({ratio:.3f}x raw float32), "
          f"{b['histograms'] / 2**20:,.1f} MiB of stored histograms, catalog {b['catalog'] / 2**20:,.1f} MiB")
    basis = info["basis"]
    if basis:
        evr = ", ".join(f"{x:.4f}" for x in basis["explained_variance_ratio"])
        print(f"basis      version {basis['version']}, fitted on {basis['n_filters']:,} filters")
        print(f"           explained variance ratio [{evr}]")
        print(f"           coefficient range [{basis['range'][0]:.6g}, {basis['range'][1]:.6g}]")
    else:
        print("basis      none (fewer than 2 filters)")
    return 0


def cmd_sql(args) -> int:
    """One read-only statement, run like the service's POST /v1/sql: in a confined worker process
    (service/usersql/) under a time limit and memory cap, so it cannot write either."""
    from cnnfilterdb.service.settings import Settings
    from cnnfilterdb.service.usersql.pool import SqlFailed, SqlLimits, SqlPool

    store = FilterStore(args.db or default_db())
    # A clear error for a missing store, another layout, or a shard not as committed (a FIFO in
    # its place would hold the worker to the time limit), before a worker starts.
    with store.connect() as con:
        for rel, size in con.execute("SELECT path, bytes FROM _shards").fetchall():
            if (problem := file_problem(store.root, rel, size)) is not None:
                raise StoreDamaged(rel, problem)
    defaults = Settings(db=store.root)
    # The worker's own output (DuckDB's words before a crash) is the service's log, not this one
    # line: the error below says what happened.
    logging.getLogger("cnnfilterdb.service").setLevel(logging.CRITICAL)
    pool = SqlPool(store.root, 1, SqlLimits(timeout_s=args.timeout, memory_limit=defaults.sql_memory_limit,
                                            address_space_bytes=int(defaults.sql_worker_memory_cap)))
    try:
        result = pool.run(args.query, None, args.max_rows, defaults.sql_max_bytes)
    except SqlFailed as e:
        raise UserError(f"SQL ({e.code}): {e.message}") from None
    finally:
        pool.close()
    columns, rows = result.columns, json.loads(result.rows_json)
    if args.format == "json":
        print(json.dumps({"columns": columns, "types": result.types, "rows": rows, "truncated": result.truncated,
                          "truncated_reason": result.truncated_reason}))
    elif args.format == "csv":
        import csv

        w = csv.writer(sys.stdout, lineterminator="\n")  # csv's \r\n would end each id piped on in '\r'
        w.writerow(columns)
        w.writerows(rows)
    else:
        _print_table(columns, rows)
        if result.truncated:
            print(f"(first {result.n_rows} rows shown: {result.truncated_reason}; --max-rows to see more)")
    return 0


def cmd_verify(args) -> int:
    v = FilterStore(args.db or default_db()).verify()
    for problem in v.problems:
        print(problem)
    if v.problems:
        return 1
    digests = f"; the digest of {v.versions} version(s) as committed" if v.versions else ""
    print(f"intact: {v.files} file(s), {v.bytes / 2**20:,.1f} MiB, every size and sha256 as the catalog recorded{digests}")
    return 0


def _analyse(args, name: str) -> dict:
    """The analysis ``name`` of requests.ANALYSES on the store, its request built from the command's
    options (``--where`` as JSON)."""
    from .requests import ANALYSES, from_arguments

    req = from_arguments(ANALYSES[name].request, args, where=_json_where(args.where))
    con, analysis = _open_analysis(FilterStore(args.db or default_db()), args.as_of)
    with con:
        return getattr(analysis, name)(req)


def cmd_drift(args) -> int:
    return _print_divergence(_analyse(args, "divergence"), args.json)


def cmd_spark_divergence(args) -> int:
    from .requests import DivergenceRequest, from_arguments
    from .spark import SparkStore
    from .spark.session import running

    if args.store and args.db:
        raise UserError("give the store as --db DIR or --store URI, not both")
    req = from_arguments(DivergenceRequest, args, where=_json_where(args.where))  # checked before Spark starts (10-20 s)
    if not args.store and FilterStore(args.db or default_db()).exists():  # its fields checked before Spark starts
        _check_fields(FilterStore(args.db or default_db()), req)
    with running(args.master, dict(args.conf)) as spark:
        store = SparkStore.open(spark, args.store or args.db or default_db(), args.as_of, args.read)
        out = store.divergence(req)
    return _print_divergence(out, args.json)


def _check_fields(store: FilterStore, req) -> None:
    """SelectionError for a group_by, within or where field a local store's version lacks (its
    model properties are known only to the store): said before a slow start such as Spark's (a
    directory without a catalog is Spark's to name: its tables may be all there is)."""
    from .properties import properties_at
    from .selection import check_group_by, condition

    con, analysis = _open_analysis(store, req.as_of)
    with con:
        properties = properties_at(con, analysis.version)
        for name in ("group_by", "within"):
            check_group_by(getattr(req, name, None), properties, parameter=name)
        condition(con, req.selection, analysis.version)


def cmd_spark_refresh(args) -> int:
    from .spark import refresh
    from .spark.session import running

    db = args.db or default_db()
    FilterStore(db).connect().close()  # no store, or not readable: said before Spark starts (10-20 s)
    with running(args.master, dict(args.conf)) as spark:
        out = refresh(db, spark, args.store, args.read)
    print(json.dumps(out))
    return 0


def _print_divergence(out: dict, as_json: bool) -> int:
    """A divergence result (``Analysis.divergence``) as JSON, or as a table with its drift
    statistics; with ``within``, one table per value of it, then the whole selection's."""
    if as_json:
        print(json.dumps(out, default=str))
        return 0
    for facet in out.get("facets") or []:
        print(f"{out['within']} = {facet['value']}:")
        _print_matrix({**out, **facet, "empty_groups": [], "within": None})
        print()
    if out.get("facets"):
        print("the whole selection:")
    return _print_matrix(out)


def _print_matrix(out: dict) -> int:
    # Rows carry the full label and the group's model count; columns are numbered like the rows,
    # so that no label is cut to fit a column.
    labels = [f"{'(none)' if v is None else v} ({m})" for v, m in zip(out["labels"], out["n_models"])]
    print(f"{out['metric']} divergence by {out['group_by']} ({out['weights']} weights, {out['bins']} bins, "
          f"{out['basis']['kind']} basis; store version {out['store_version']}; {out['method']}, "
          f"{out['elapsed_ms']:.0f} ms)")
    w = max(len(x) for x in labels) + 5
    print(" " * w + "  " + " ".join(f"{f'[{j + 1}]':>9}" for j in range(len(labels))) + "   filters")
    for j, (lab, row, n) in enumerate(zip(labels, out["matrix"], out["n_filters"])):
        print(f"{f'[{j + 1}] {lab}':<{w}}  " + " ".join(f"{v:9.5f}" for v in row) + f"   {n:,}")
    if len(out["labels"]) < 2:
        print(f"one group only: nothing to compare (widen --where, or group by another field than {out['group_by']})")
    if out["drift"]:
        d = out["drift"]
        print(f"drift: mean {d['mean']:.5f}  median {d['median']:.5f}  q1 {d['q1']:.5f}  q3 {d['q3']:.5f}  "
              f"min {d['min']:.5f}  max {d['max']:.5f}")
    if out["empty_groups"]:
        print(f"left out (no filters): {out['empty_groups']}")
    if any(out.get("n_outside") or []):
        counts = ", ".join(f"[{j + 1}] {n:,}" for j, n in enumerate(out["n_outside"]) if n)
        print(f"coefficients outside the basis range, left out of the histograms: {counts} (layers added since "
              "the basis was fitted; `cnnfilterdb refit` fits one on them: docs/method.md#refit)")
    return 0


def cmd_model_metrics(args) -> int:
    """Per model (and depth decile): the layers' quality metrics as weighted means (SPEC 14)."""
    out = _analyse(args, "model_metrics")
    if args.json:
        print(json.dumps(out, default=str))
    elif args.csv:
        import csv

        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(out["columns"])
        w.writerows(out["rows"])
    else:
        _print_table(out["columns"], [[f"{v:.6g}" if isinstance(v, float) else v for v in r] for r in out["rows"]])
    return 0


def cmd_correlate(args) -> int:
    """The correlation of two model metrics or properties per group, with its bootstrap interval."""
    out = _analyse(args, "correlation")
    if args.json:
        print(json.dumps({k: v for k, v in out.items() if k != "points"} | {"n_points": len(out["points"]["x"])},
                         default=str))
        return 0
    print(f"{out['method']} correlation of {out['x']} with {out['y']} per {out['group_by'] or 'all models'} "
          f"({out['layers']} layers; 95% interval of {out['resamples']} bootstrap resamples, seed {out['seed']}; "
          f"store version {out['store_version']})")
    shown = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    _print_table([out["group_by"] or "group", "n", "statistic", "p_value", "ci_low", "ci_high", "resamples"],
                 [["(none)" if g["group"] is None else g["group"], g["n"], shown(g["statistic"]), shown(g["p_value"]),
                   shown(g["ci_low"]), shown(g["ci_high"]), g["n_resamples"]] for g in out["groups"]])
    if any(g["statistic"] is None for g in out["groups"]):
        print("-: undefined (fewer than 3 models with both values, or x or y the same for all of them)")
    if any(0 < g["n_resamples"] < out["resamples"] // 2 for g in out["groups"]):
        print(f"resamples: of the {out['resamples']}, those whose statistic is defined; few, and the interval says little")
    return 0


def cmd_check(args) -> int:
    """A model file against the store's population (SPEC 15): nothing is written to the store."""
    from .check import check
    from .ingest.model_files import read_checked
    from .requests import CheckRequest, from_arguments

    req = from_arguments(CheckRequest, args, where=_json_where(args.where))
    if args.output:
        from .check_report import CHECK_FORMATS

        if Path(args.output).suffix.lower() not in CHECK_FORMATS:
            raise UserError(f"{args.output}: the output's suffix says what to write: {', '.join(CHECK_FORMATS)}")
        _writable(args.output, args.db)
    model = read_checked(Path(args.file))
    con, analysis = _open_analysis(FilterStore(args.db or default_db()), args.as_of)
    with con:
        out = check(analysis, req, model)
        wrote = None
        if args.output:
            from .check_report import write_check_output
            from .plots import Provenance

            try:
                wrote = write_check_output(out, Provenance.of(analysis), Path(args.output))
            except OSError as e:
                raise UserError(f"{args.output}: {e.strerror or e}") from None
    if args.json:
        print(json.dumps(out, default=str))
        return 0
    _print_check(out)
    if wrote:
        print(wrote)
    return 0


def _print_check(out: dict) -> None:
    m, pop = out["model"], out["population"]
    shown = lambda v, f=".4g": "-" if v is None else format(v, f)  # noqa: E731
    pct = lambda v: "" if v is None else f" (p{v:.0f})"  # noqa: E731
    plural = lambda n, word: f"{n:,} {word}" + ("" if n == 1 else "s")  # noqa: E731
    said = ", ".join(f"{k.replace('_', ' ')} {m[k]}" for k in ("task", "visual_category", "training_dataset") if m.get(k))
    print(f"{m['file']} ({m['kind']}, {plural(m['n_layers'], 'layer')} of 3x3 filters, {plural(m['n_filters'], 'filter')}"
          f"{'; ' + said if said else ''}) against store {out['store_id']} version {out['store_version']}")
    where = f"where {json.dumps(pop['where'])}" if pop["where"] else "every model (--where restricts it)"
    print(f"population: {where}: {plural(pop['n_models'], 'model')}, {plural(pop['n_layers'], 'layer')}")
    if pop.get("n_sample_models"):
        print(f"synthetic data: {pop['n_sample_models']:,} of its models are the synthetic sample of `cnnfilterdb demo`, "
              "not real models: its percentiles say nothing about real ones")
    rows = []
    for layer in out["layers"]:
        p = layer["percentiles"]
        rows.append([layer["layer"], layer["name"], layer["conv_depth"], layer["depth_decile"],
                     layer["population_layers"], layer["n_filters"],
                     shown(layer["sparsity"], ".3f") + pct(p["sparsity"]),
                     shown(layer["variance_entropy_norm"], ".3f") + pct(p["variance_entropy_norm"]),
                     shown(layer["orthogonality"], ".3f") + pct(p["orthogonality"]),
                     shown(layer["kl_to_population"]) + pct(p["kl_to_population"]), " ".join(layer["flags"])])
    _print_table(["layer", "name", "depth", "decile", "pop", "filters", "sparsity", "entropy_norm", "orthogonality",
                  "kl_to_population", "flags"], rows)
    mp = m["percentiles"]
    print("model: " + ", ".join(f"{k} {shown(m[k], '.4f')}{pct(mp[k])}" for k in (
        "sparsity", "variance_entropy_norm", "orthogonality")) + f", divergence {shown(m['divergence'])}"
          f"{pct(mp['divergence'])}")
    print("nearest models: " + ("; ".join(f"{n['model']} ({n['task'] or '-'}, {shown(n['divergence'])})"
                                          for n in out["nearest_models"]) or "none"))
    par = out["parameters"]
    print(f"pop: the population's layers of the layer's depth decile; pN: the percentile among them (100 x the share "
          f"whose value is at most this one; for the model, among the models); -: unknown, or no population layer in "
          f"the decile. Flags: sparse, low_entropy, random_like by the thresholds; unusual: kl_to_population at or "
          f"above its decile's {par['unusual_percentile']:g}th percentile (deciles of {par['min_unusual_layers']} "
          "layers or more). docs/method.md#checking-a-model")
    if out["clipped"]:
        print(f"clipped: {out['clipped']:,} coefficients outside the basis range, counted in the edge bins")


def cmd_log(args) -> int:
    """The store versions, newest first (as git log)."""
    from .catalog import list_versions, store_id

    with FilterStore(args.db or default_db()).connect() as con:
        versions = list_versions(con)
        sid = store_id(con)
    if args.json:
        print(json.dumps(versions, default=str))
        return 0
    print(f"store {sid}")
    for v in reversed(versions):
        basis = "no basis" if v["basis_version"] is None else f"basis {v['basis_version']}"
        gone = "  (compacted: as_of no longer possible)" if v["compacted"] else ""
        digest = f", digest {v['digest']}" if v.get("digest") else ""  # none before catalog layout 8
        print(f"version {v['version']}  {v['committed_at']:%Y-%m-%d %H:%M:%S} UTC  {v['action']}: {v['summary']}")
        print(f"    {v['n_models']:,} model{'s' if v['n_models'] != 1 else ''}, {v['n_filters']:,} filters, "
              f"{basis}{digest}{gone}")
    return 0


def cmd_label(args) -> int:
    from cnnfilterdb.ingest.labels import LABEL_FIELDS, Labels, label_models, parse_assignments, parse_types, read_label_manifest

    values = {f: getattr(args, f) for f in LABEL_FIELDS if getattr(args, f) is not None}
    assigned = parse_assignments(args.set)
    if twice := sorted(set(values) & set(assigned)):
        raise UserError(f"{twice[0]} is given both as --{twice[0].replace('_', '-')} and with --set: give it once")
    values |= assigned
    sources = [bool(args.manifest), bool(args.models), args.where is not None]
    if sum(sources) != 1:
        raise UserError("name the models to label, or give --where JSON or --manifest CSV (one of them)")
    if args.key != "model" and not args.manifest:
        raise UserError("--key names the manifest's column of model names: give it with --manifest")
    labels, where = None, None
    if args.manifest:
        if values:
            raise UserError("--manifest gives the models and their metadata: no metadata flags or --set with it")
        labels = read_label_manifest(Path(args.manifest), key=args.key)
    elif args.models:
        labels = Labels([(m, dict(values), "label") for m in args.models])
    else:
        where = _json_where(args.where)
    result = label_models(args.db or default_db(), labels, where=where, values=values, types=parse_types(args.type),
                          new_value=args.new_value, new_property=args.new_property, skip_unknown=args.skip_unknown,
                          dry_run=args.dry_run)
    print(json.dumps(result))
    return 0


def cmd_remove(args) -> int:
    from cnnfilterdb.ingest.curate import remove_models

    where = None if args.where is None else _json_where(args.where)
    if where is None and args.where is not None:
        raise UserError("--where selects every model with an empty selection: name the models to remove instead")
    print(json.dumps(remove_models(args.db or default_db(), args.models, refit=args.refit, where=where,
                                   dry_run=args.dry_run)))
    return 0


def cmd_refit(args) -> int:
    from cnnfilterdb.ingest.curate import refit_store

    print(json.dumps(refit_store(args.db or default_db())))
    return 0


def cmd_compact(args) -> int:
    from cnnfilterdb.ingest.curate import compact

    print(json.dumps(compact(args.db or default_db(), args.keep_versions)))
    return 0


def cmd_export(args) -> int:
    """The filters of a selection to a file (the format from its suffix), atomically: the same
    rows as GET /v1/filters."""
    from .catalog import store_id
    from .export import FORMATS, write_export
    from .requests import ExportRequest, build

    by_suffix = {suffix: fmt for fmt, (_, suffix) in FORMATS.items()} | {".arrow": "arrow"}
    out = Path(args.output)
    fmt = args.format or by_suffix.get(out.suffix.lower())
    if fmt is None:
        raise UserError(f"{out}: the suffix gives the format: one of {', '.join(sorted(by_suffix))} (or --format)")
    where = _json_where(args.where)
    req = build(ExportRequest, where=where, format=fmt, as_of=args.as_of)  # GET /v1/filters' request, checked
    _writable(args.output, args.db)
    con, analysis = _open_analysis(FilterStore(args.db or default_db()), req.as_of)
    with con:
        plan = analysis.export_plan(where)
        sid = store_id(con)
    version = plan.pop("store_version")
    metadata = {"store_id": sid, "store_version": str(version), "where": json.dumps(where)}
    try:
        rows = write_export(out, **plan, fmt=req.format, metadata=metadata)
    except OSError as e:
        raise UserError(f"{out}: {e.strerror or e}") from None
    print(json.dumps({"path": str(out), "format": req.format, "rows": rows, "store_id": sid, "store_version": version}))
    return 0


def _writable(out: str, db: Path | None) -> None:
    """One line and exit 1, before any work, for an output path that cannot be written (a missing
    directory, a device or a directory: cnnfilterdb/atomic.py) or that lies inside the store (its
    own files, or one a later writer would delete as garbage)."""
    from .atomic import destination

    try:
        target = destination(out)
    except OSError as e:
        raise UserError(f"{out}: {e.strerror}") from None
    _outside_store(target, out, db)


def _outside_store(target: Path, out, db: Path | None) -> None:
    """StoreError if ``target`` (the output ``out`` names) is the store or inside it."""
    root = FilterStore(db or default_db()).root
    target = Path(target).resolve()
    if target == root or root in target.parents:
        raise UserError(f"{out}: inside the store {root}; write outputs elsewhere")


def _as_of_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--as-of", type=_bounded(int, 1, MAX_ID), default=None, metavar="VERSION",
                   help="read the store as of this version (`cnnfilterdb log`); default the current one")


def _json_where(text: str | None) -> dict | None:
    """``--where``: a JSON selection (``null`` or nothing: all filters), checked by the engine's
    grammar (requests.parse_where: the same values refused as over HTTP, e.g. NaN bounds, "yes"
    for a boolean); one line if it is not JSON or not valid."""
    from .requests import parse_where

    return parse_where(text, "--where")


def _open_analysis(store: FilterStore, as_of: int | None = None):
    """The store's catalog and an Analysis on it as of store version ``as_of`` (default the
    current one), its snapshot read as the service reads it."""
    from .analysis import Analysis
    from .snapshot import Snapshot

    con = store.connect()
    try:
        analysis = Analysis(con, store.root, snapshot=Snapshot.at(con, store.root, as_of))
        analysis.snapshot.prepare(con)  # every file checked, as when the service opens a catalog
    except BaseException:
        con.close()
        raise
    return con, analysis


def cmd_plot(args) -> int:
    """One figure to a file, the same bytes as GET /v1/plots/{figure}.{fmt} with the same
    parameters (both are plots.draw + plots.render); only the options given are passed, so a
    parameter the figure does not take is the same error as over HTTP."""
    from . import plots
    from .report import write_atomic

    out = Path(args.output)
    fmt = out.suffix.lower().removeprefix(".")
    if fmt not in plots.FORMATS:
        raise UserError(f"{out}: unknown format {out.suffix or '(no suffix)'!r}; the file must end in "
                         f"{', '.join('.' + f for f in plots.FORMATS)}")
    params = {name: getattr(args, name) for name in plots.OPTIONS} | {"where": _json_where(args.where)}
    try:
        req = plots.PlotRequest.of(args.figure, **params)
    except LookupError as e:  # an unknown figure
        raise UserError(str(e)) from None
    _writable(args.output, args.db)
    store = FilterStore(args.db or default_db())
    con, analysis = _open_analysis(store, args.as_of)
    with con:
        try:
            data = plots.render(plots.draw(analysis, req), fmt, req.dpi, plots.Provenance.of(analysis))
        except LookupError:  # layer_filters of a layer that is not there
            raise UserError(f"no layer {req.layer_id}") from None
    try:
        write_atomic(out, data)
    except OSError as e:
        raise UserError(f"{out}: {e.strerror or e}") from None
    print(f"wrote {out} ({len(data):,} bytes, {fmt}, {req.figure})")
    return 0


def cmd_report(args) -> int:
    """Every figure of the notebook (and quality; with --cohort the studies') and an offline index.html
    (cnnfilterdb/report.py)."""
    from .plots import options
    from .report import write_report

    options(dpi=args.dpi)  # a bad --dpi: one line before any work
    _outside_store(Path(args.output), args.output, args.db)
    store = FilterStore(args.db or default_db())
    info = store.info()
    con, analysis = _open_analysis(store, args.as_of)
    with con:
        try:
            write_report(analysis, info, Path(args.output), args.format, args.dpi, log=print, cohort=args.cohort,
                         series=args.series)
        except BrokenPipeError:
            raise  # its progress lines piped into a closed reader: main() ends quietly
        except OSError as e:
            raise UserError(f"{getattr(e, 'filename', None) or args.output}: {e.strerror or e}") from None
    return 0


def _print_table(columns: list[str], rows: list[tuple]) -> None:
    cells = [[str(c) for c in columns]] + [["NULL" if v is None else str(v) for v in r] for r in rows]
    widths = [min(60, max(len(r[i]) for r in cells)) for i in range(len(columns))]
    for k, r in enumerate(cells):
        print("  ".join(v[:60].ljust(w) for v, w in zip(r, widths)).rstrip())
        if k == 0:
            print("  ".join("-" * w for w in widths))


# The demo's own store: the synthetic sample never goes where real models are (./filterdb,
# $CNNFILTERDB_DB) unless --db says so.


def demo_db(db: Path | None) -> Path:
    """The directory of the demo's sample store: ``--db`` if given, else ./filterdb-sample."""
    return (db or Path(DEMO_DB)).resolve()


def cmd_demo(args) -> int:
    from cnnfilterdb.ingest import ingest_paths, sample_and_real
    from cnnfilterdb.ingest.sample import write_sample_h5

    if not args.no_serve:
        _check_port(args.host, args.port)  # before the sample is built, not after
    db = demo_db(args.db)
    n_sample = n_real = 0
    if FilterStore(db).exists():
        with FilterStore(db).connect() as con:
            n_sample, n_real = sample_and_real(con)
    if FilterStore(db).exists() and not args.rebuild:
        what = (f"{n_sample} synthetic sample models, not real data" if not n_real else
                f"{n_real} real model(s) and {n_sample} synthetic sample model(s)")
        print(f"using the existing store at {db}: {what} (--rebuild to write the sample anew)", file=sys.stderr)
    else:
        if n_real:
            raise UserError(f"{db} holds {n_real} real model(s): --rebuild would delete them; "
                             "give the sample a directory of its own (--db)")
        if FilterStore(db).exists():
            import shutil

            shutil.rmtree(db)
        db.mkdir(parents=True, exist_ok=True)
        sample = db / "SAMPLE-synthetic-dataset.h5"
        print(f"building the demo's sample store in {db} (synthetic sample data, not real models; "
              "--db to choose another directory)", file=sys.stderr)
        print(f"writing a synthetic SAMPLE dataset ({args.models} models, {args.filters:,} filters; "
              f"not real data) to {sample}", file=sys.stderr)
        try:
            write_sample_h5(sample, n_models=args.models, n_filters=args.filters, seed=args.seed)
            ingest_paths([sample], db)
        except Exception as e:
            import duckdb
            from tables.exceptions import HDF5ExtError

            if not isinstance(e, (OSError, HDF5ExtError, duckdb.IOException, duckdb.FatalException)):
                raise
            import shutil

            shutil.rmtree(db, ignore_errors=True)  # no half-built sample left
            if isinstance(e, HDF5ExtError):  # HDF5's back trace: its errno's message, or its last line
                m = re.search(r"error message = '([^']+)'", str(e))
                e = OSError(None, m.group(1) if m else first_line(e).strip(), str(sample))
            raise UserError(io_fault(e, db)) from None
    cmd_info(argparse.Namespace(db=db, json=False))
    if args.no_serve:
        return 0
    return _serve(db, args.host, args.port)


def _listen_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_bounded(int, 1, 65535), default=8000, help="port (default 8000)")


def _check_port(host: str, port: int) -> None:
    """One line now if the address is taken, rather than a banner, uvicorn's bind error and the
    SQL workers' broken pipes."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise UserError(f"--host {host}: {e.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            s.bind(address)
        except OSError as e:
            raise UserError(f"cannot listen on {host}:{port} ({e.strerror}); choose another with --port") from None


def _serve(db: Path, host: str, port: int, overrides: dict | None = None) -> int:
    from cnnfilterdb.service.main import run

    _check_port(host, port)
    print(f"serving {db}\n  dashboard  http://{host}:{port}/\n  OpenAPI    http://{host}:{port}/docs\n"
          f"  shell      cd {db} && duckdb -readonly catalog.duckdb", file=sys.stderr)
    return run(db=db, host=host, port=port, overrides=overrides)


def cmd_serve(args) -> int:
    from pydantic import ValidationError

    from cnnfilterdb.service.settings import LIMITS, Settings

    overrides = {k: getattr(args, k) for k in LIMITS if getattr(args, k) is not None}
    db = (args.db or default_db()).resolve()
    try:
        Settings(db=db, **overrides)  # checked here: one line for a bad value, before anything starts
    except ValidationError as e:
        err = e.errors()[0]
        raise UserError(f"--{str(err['loc'][0]).replace('_', '-')}: {err['msg']}") from None
    return _serve(db, args.host, args.port, overrides)


def _divergence_args(s: argparse.ArgumentParser) -> None:
    """The options of a divergence (``drift``, ``spark divergence``): the request type's."""
    from .requests import DivergenceRequest, cli_arguments

    cli_arguments(s, DivergenceRequest, ("group_by", "metric", "bins", "weights", "basis", "within"))
    s.add_argument("--where", help='a JSON selection, e.g. \'{"task": ["Classification", "GAN"], "conv_depth": {"gte": 2}}\'')
    s.add_argument("--json", action="store_true", help="print the result as JSON (the keys of POST /v1/divergence)")
    _db_arg(s)
    _as_of_arg(s)


def _export_format_arg(s: argparse.ArgumentParser) -> None:
    """export's --format: ExportRequest's (its values and what they mean); checked by the command
    (one line and exit 1, with the nearest format), not by argparse."""
    from .requests import EXPORT_FORMATS, ExportRequest

    text = ExportRequest.model_fields["format"].description
    s.add_argument("--format", default=None, metavar="{" + ",".join(EXPORT_FORMATS) + "}",
                   help=f"instead of the suffix: {text}".replace("%", "%%"))


_PLOT_METAVARS = {"group_by": "G[,G...]", "where": "JSON", "components": "I,J", "range": "LO,HI", "color_by": "FIELD",
                  "within": "FIELD", "series": "FIELD", "x": "VARIABLE", "y": "VARIABLE",
                  "width": "IN", "height": "IN"}


def _plot_args(s: argparse.ArgumentParser) -> None:
    """plot's options: every figure's parameters, each with what it means to the figures that take
    it, its range and default there (plots.describe: the request type of each figure's analysis);
    checked by the command (one line and exit 1, the service's message), not by argparse."""
    from .plots import OPTIONS, describe, kind_of

    for name in OPTIONS:
        text = ('the selection, e.g. \'{"task": ["Classification"]}\'' if name == "where" else
                describe(name) + ("; write --range=-3,3 for a negative LO" if name == "range" else ""))
        s.add_argument("--" + name.replace("_", "-"), dest=name, type=kind_of(name), default=None,
                       metavar=_PLOT_METAVARS.get(name), help=text.replace("%", "%%"))


def _spark_args(s: argparse.ArgumentParser, store_help: str) -> None:
    s.add_argument("--master", required=True, help="the Spark master URL: local[2], spark://host:7077, yarn, ...")
    s.add_argument("--store", metavar="URI", default=None, help=store_help)
    s.add_argument("--read", choices=["arrow", "spark"], default="arrow",
                   help="how the tasks read the shards: arrow (default: whole row groups with pyarrow's filesystems, "
                        "local/s3/hdfs/gcs) or spark (Spark's Parquet reader and Hadoop filesystems: any storage "
                        "Spark reads, about 6x slower)")
    s.add_argument("--conf", metavar="KEY=VALUE", type=_spark_setting, action="append", default=[],
                   help="a Spark setting, as spark-submit's --conf (repeat it), e.g. "
                        "spark.jars.packages=org.apache.hadoop:hadoop-aws:3.4.1")


def _spark_setting(text: str) -> tuple[str, str]:
    key, eq, value = text.partition("=")
    if not eq or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line. ``command``: give only that command its options (every other one listed
    with its help), so that a command starts without importing what the others' options are built
    from (the request types, the figures, the service's settings: about 0.8 s); None: all."""
    p = argparse.ArgumentParser(prog="cnnfilterdb", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def wanted(name: str) -> bool:
        return command in (None, name)

    s = sub.add_parser("ingest", help="load dataset.h5 and model files (ONNX, PyTorch, safetensors, npz) "
                                      "into the store, all or nothing")
    s.add_argument("paths", nargs="*", help="files or folders (walked recursively); the kind is read from the content")
    _db_arg(s)
    meta = s.add_argument_group("metadata of model files (dataset.h5 carries its own)")
    for name in ["model", "name", "task", "visual_category", "training_dataset", "pretraining_dataset", "paper",
                 "dataset_url", "accessible"]:
        meta.add_argument("--" + name.replace("_", "-"), dest=name, default=None,
                          help={"model": "unique model id (default: the file name)",
                                "name": "architecture name"}.get(name))
    s.add_argument("--manifest", help="CSV, one row per file: a 'path' column and any of the metadata names")
    s.add_argument("--skip-bad", action="store_true", help="skip files that fail their checks, list them, ingest the rest")
    s.add_argument("--allow-missing", action="store_true",
                   help="ingest a model file without its task, visual category or training dataset (stored as unknown)")
    _write_check_args(s)
    _refit_arg(s)
    s.set_defaults(func=cmd_ingest)

    s = sub.add_parser("info", help="counts, basis and sizes of the store")
    _db_arg(s)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("sql", help="run one read-only SQL query against the store (in a confined process, "
                                   "as the service's /v1/sql)")
    s.add_argument("query")
    _db_arg(s)
    s.add_argument("--format", choices=["table", "csv", "json"], default="table")
    s.add_argument("--max-rows", type=_bounded(int, 0, 10_000_000), default=100,
                   help="rows shown at most (default 100); the result says when it was cut")
    s.add_argument("--timeout", type=_bounded(float, 0.001, 86_400), default=60.0,
                   help="seconds before the query is stopped (default 60)")
    s.set_defaults(func=cmd_sql)

    s = sub.add_parser("verify", help="check every file the catalog references (size, sha256) and the catalog "
                                      "itself; one line per damaged or missing file and exit 1")
    _db_arg(s)
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("drift", help="the divergence matrix between groups of filters (docs/method.md#divergence)")
    if wanted("drift"):
        _divergence_args(s)
    s.set_defaults(func=cmd_drift)

    text = ("the store's scans as Apache Spark jobs (docs/method.md#spark; needs pip install 'cnnfilterdb[spark]' "
            "and a Java runtime)")
    spark = sub.add_parser("spark", help=text, description=text)
    spark_sub = spark.add_subparsers(dest="spark_command", required=True)
    text = ("`drift` with its scans on Spark: the same options, table and JSON; reads the store through its "
            "Parquet tables, and always scans its filters (with default parameters and the catalog at hand, "
            "`drift` answers from the stored per-layer histograms in milliseconds)")
    s = spark_sub.add_parser("divergence", help=text, description=text)
    if wanted("spark"):
        _divergence_args(s)
    _spark_args(s, "where Spark reads the store (s3a://bucket/store, hdfs://..., file:///...): default --db")
    s.set_defaults(func=cmd_spark_divergence)
    text = ("refit the basis and per-layer histograms with the scans on Spark and commit them as a new store "
            "version (action refresh), all or nothing; prints the commit as JSON")
    s = spark_sub.add_parser("refresh", help=text, description=text)
    _db_arg(s)
    _spark_args(s, "where the executors read the same store, if not at --db (e.g. s3a://bucket/store)")
    s.set_defaults(func=cmd_spark_refresh)

    s = sub.add_parser("export", help="write the filters of a selection to a file (.parquet, .arrows, .npy, .csv): "
                                      "filter_id, model_id, layer_id and the 9 weights, streamed, no row cap")
    s.add_argument("-o", "--output", required=True, metavar="FILE", help="the file; its suffix gives the format")
    s.add_argument("--where", default=None, metavar="JSON", help='the selection, e.g. \'{"visual_category": "natural"}\'')
    if wanted("export"):
        _export_format_arg(s)
    _db_arg(s)
    _as_of_arg(s)
    s.set_defaults(func=cmd_export)

    if wanted("model-metrics"):
        from .requests import ModelMetricsRequest, cli_arguments

        s = sub.add_parser("model-metrics", help="per model (and depth decile): its layers' quality metrics as "
                                                 "weighted means (docs/method.md#model-metrics)")
        cli_arguments(s, ModelMetricsRequest, ("layers", "by"))
        s.add_argument("--where", metavar="JSON", help="the layers to compute over (the analyses' where)")
        out = s.add_mutually_exclusive_group()
        out.add_argument("--json", action="store_true", help="print the result as JSON (GET /v1/model-metrics' keys)")
        out.add_argument("--csv", action="store_true", help="print the table as CSV (a header, a row per model)")
        _db_arg(s)
        _as_of_arg(s)
        s.set_defaults(func=cmd_model_metrics)
    else:
        sub.add_parser("model-metrics", help="per model (and depth decile): its layers' quality metrics")
    if wanted("correlate"):
        from .requests import CorrelationRequest, cli_arguments

        s = sub.add_parser("correlate", help="the correlation of two model metrics or properties over the models of "
                                             "each group, with a bootstrap interval (docs/method.md#correlation)")
        s.add_argument("x", help=CorrelationRequest.model_fields["x"].description)
        s.add_argument("y", help=CorrelationRequest.model_fields["y"].description)
        cli_arguments(s, CorrelationRequest, ("group_by", "method", "layers"))
        s.add_argument("--where", metavar="JSON", help="the layers the model metrics are computed over")
        s.add_argument("--json", action="store_true", help="print the result as JSON (POST /v1/correlation's keys, "
                                                           "without the points)")
        _db_arg(s)
        _as_of_arg(s)
        s.set_defaults(func=cmd_correlate)
    else:
        sub.add_parser("correlate", help="the correlation of two model metrics or properties per group")

    if wanted("check"):
        from .requests import CheckRequest, cli_arguments

        text = ("check a model file against the store's population, depth decile by depth decile (nothing is "
                "written; docs/method.md#checking-a-model)")
        s = sub.add_parser("check", help=text, description=text)
        s.add_argument("file", help="the model file: ONNX, PyTorch .pt/.pth, safetensors or .npz (read as ingest reads it)")
        cli_arguments(s, CheckRequest, ("name", "task", "visual_category", "training_dataset", "k", "sparsity_gt",
                                        "entropy_norm_lt", "entropy_norm_gt"))
        s.add_argument("--where", metavar="JSON", help="the population: a selection (the analyses' where), e.g. "
                                                       "'{\"task\": \"Classification\"}'; default every model")
        s.add_argument("--json", action="store_true", help="print the result as JSON (POST /v1/check's keys)")
        s.add_argument("-o", "--output", metavar="FILE", help="also write FILE: .html a self-contained report (the "
                                                              "figure inline, the table, the store it was compared "
                                                              "with), .png, .svg or .pdf the check figure")
        _db_arg(s)
        _as_of_arg(s)
        s.set_defaults(func=cmd_check)
    else:
        sub.add_parser("check", help="check a model file against the store's population")

    s = sub.add_parser("log", help="the store versions: what each commit added, relabelled or removed, and its basis")
    _db_arg(s)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_log)

    s = sub.add_parser("label", help="change models' metadata and typed properties (a new store version; the old "
                                     "values stay in the history; docs/cli.md#label)")
    s.add_argument("models", nargs="*", metavar="MODEL", help="model names (the `model` column) or model_ids")
    if wanted("label"):
        from cnnfilterdb.ingest.labels import LABEL_FIELDS

        for name in LABEL_FIELDS:
            s.add_argument("--" + name.replace("_", "-"), dest=name, default=None)
    s.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="set a model property (repeatable), e.g. --set robust=true --set clean_accuracy=81.2; a new "
                        "property is typed from its value (boolean, integer, double, text)")
    s.add_argument("--type", action="append", default=[], metavar="NAME=TYPE",
                   help="the type of a new property: boolean, integer, double or text (repeatable)")
    s.add_argument("--where", metavar="JSON", help="label every model this selection holds (the analyses' where), "
                                                   "e.g. '{\"task\": \"GAN\"}'")
    s.add_argument("--manifest", help="CSV, one row per model: a column naming the model (--key), columns of the "
                                      "metadata names (or their aliases: Task, Visual Category, Training-Dataset, ...) "
                                      "and any other column as a property (an empty cell leaves the field as it is)")
    s.add_argument("--key", default="model", metavar="COLUMN",
                   help="the manifest's column of model names (default: model; the robustness study's meta.csv: Name)")
    _write_check_args(s)
    s.add_argument("--new-property", action="store_true",
                   help="make a new property whose name is near an existing one's (refused otherwise: did you mean ...?)")
    s.add_argument("--skip-unknown", action="store_true",
                   help="leave out the manifest's rows of models the store does not hold (listed in skipped_models)")
    s.add_argument("--dry-run", action="store_true", help="list the models it would change; commit nothing")
    _db_arg(s)
    s.set_defaults(func=cmd_label)

    s = sub.add_parser("remove", help="take models out of the store (a new store version; older versions keep them)")
    s.add_argument("models", nargs="*", metavar="MODEL", help="model names (the `model` column) or model_ids")
    s.add_argument("--where", metavar="JSON", help="remove every model this selection holds (the analyses' where)")
    s.add_argument("--dry-run", action="store_true", help="list the models it would remove; commit nothing")
    _refit_arg(s)
    _db_arg(s)
    s.set_defaults(func=cmd_remove)

    text = ("refit the global basis and the stored histograms of every layer now, as a new store version (older "
            "versions keep their basis); nothing to do if the basis is fitted on the current filters already "
            "(docs/method.md#refit)")
    s = sub.add_parser("refit", help=text, description=text)
    _db_arg(s)
    s.set_defaults(func=cmd_refit)

    s = sub.add_parser("compact", help="forget store versions older than the last N and reclaim their space "
                                       "(removed models' filters, old bases)")
    s.add_argument("--keep-versions", type=_bounded(int, 1, MAX_ID), required=True, metavar="N")
    _db_arg(s)
    s.set_defaults(func=cmd_compact)

    plot_help = ("draw one of the paper's figures (docs/method.md#figures) to a PNG, SVG or PDF file: the same "
                 "bytes as the service's GET /v1/plots/{figure}.{format}")
    report_help = ("write the notebook's figures and an offline index.html showing them with the store's counts and "
                   "drift statistics")
    if not (wanted("plot") or wanted("report")):
        sub.add_parser("plot", help=plot_help)
        sub.add_parser("report", help=report_help)
    else:
        from .plots import ALL_FIGURES, NOTEBOOK_FIGURES, describe
        s = sub.add_parser("plot", help=plot_help,
                           description="Draw one of the paper's figures to FILE (.png, .svg or .pdf). Every option is "
                                       "optional (the notebook's defaults); a figure takes only its own parameters.")
        # Checked by the command, not by argparse choices: an unknown figure is one line and exit 1, as
        # every other bad request; the metavar lists them in --help.
        s.add_argument("figure", metavar="{" + ",".join(ALL_FIGURES) + "}", help="the figure")
        s.add_argument("-o", "--output", required=True, metavar="FILE", help="the file; its suffix gives the format")
        _db_arg(s)
        _plot_args(s)
        _as_of_arg(s)
        s.set_defaults(func=cmd_plot)

        s = sub.add_parser("report", help=report_help,
                           description=f"Write {', '.join(NOTEBOOK_FIGURES)} and quality as DIR/FIGURE.FORMAT with "
                                       "their default parameters, and DIR/index.html showing them (it needs nothing but "
                                       "the files beside it: open it from disk, offline).")
        s.add_argument("-o", "--output", required=True, metavar="DIR", help="the directory (created if missing)")
        _db_arg(s)
        s.add_argument("--format", choices=["png", "svg"], default="png", help="the figures' format (default png)")
        s.add_argument("--dpi", type=int, default=None, help=describe("dpi"))
        s.add_argument("--cohort", metavar="FIELD", default=None,
                       help="also draw the follow-up studies' figures (cohort_divergence, cohort_metric, correlation) "
                            "comparing the cohorts of this model field, e.g. robust (a boolean or text property, or a "
                            "built-in model field); default none: a store need not have one")
        s.add_argument("--series", metavar="FIELD", default=None,
                       help="with --cohort: a model field drawn apart in the studies' figures, e.g. training_dataset "
                            "(a colour of bars, a panel each)")
        _as_of_arg(s)
        s.set_defaults(func=cmd_report)

    s = sub.add_parser("demo", help="build a clearly labelled synthetic sample store (in ./filterdb-sample, apart "
                                    "from real data) and serve it")
    s.add_argument("--db", type=Path, default=None,
                   help=f"the sample store's directory (default ./{DEMO_DB}, apart from real data: "
                        "not $CNNFILTERDB_DB or ./filterdb)")
    s.add_argument("--models", type=int, default=40, help="models in the sample (default 40)")
    s.add_argument("--filters", type=int, default=1_000_000, help="filters in the sample (default 1,000,000)")
    s.add_argument("--seed", type=int, default=0, help="random seed of the sample (default 0)")
    s.add_argument("--rebuild", action="store_true", help="write the sample store anew")
    s.add_argument("--no-serve", action="store_true", help="build the store, do not start the service")
    _listen_args(s)
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("serve", help="run the HTTP service")
    _db_arg(s)
    _listen_args(s)
    if wanted("serve"):
        from cnnfilterdb.service.settings import LIMITS, Settings

        for name in LIMITS:  # every limit of the service (service/settings.py), checked by Settings
            field = Settings.model_fields[name]
            s.add_argument("--" + name.replace("_", "-"), dest=name, default=None,
                           help=f"{field.description or name} (default {field.default}; env CNNFILTERDB_{name.upper()})")
    s.set_defaults(func=cmd_serve)
    return p


COMMANDS = ("ingest", "info", "sql", "verify", "drift", "model-metrics", "correlate", "check", "spark", "export", "log", "label",
            "remove", "refit", "compact",
            "plot", "report", "demo", "serve")
_FLAG = re.compile(r"--[a-z][a-z0-9_-]*(?==|$)")


def _dashed(arg: str) -> str:
    """``--as_of`` as ``--as-of``: flags are spelled with dashes, their HTTP names (as_of,
    group_by) with underscores; both are taken."""
    m = _FLAG.match(arg)
    return arg if m is None else m.group(0).replace("_", "-") + arg[m.end():]


def say_error(message: str) -> None:
    """The one line of a failed command on stderr: a line break inside it (a path holding one)
    is written as the escape it is."""
    one_line = message.strip().replace("\r", "\\r").replace("\n", "\\n")
    print(f"cnnfilterdb: error: {one_line}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    from .runtime import tune_allocator

    tune_allocator()
    argv = sys.argv[1:] if argv is None else argv
    # The command's own options only (build_parser): `--help` or an unknown command builds them all.
    args = build_parser(argv[0] if argv and argv[0] in COMMANDS else None).parse_args([_dashed(a) for a in argv])
    try:
        code = args.func(args)
        # Flushed here, not at exit: a reader that went away after the last print (`| head`) is
        # a BrokenPipeError caught below, not an "Exception ignored" line at interpreter shutdown.
        sys.stdout.flush()
        return code
    except UserError as e:  # the store's, the ingest's: one line, no traceback
        say_error(str(e))
        return 1
    except BrokenPipeError:  # the reader of stdout went away (`| head`): stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as e:  # a full disk, a permission, a device error: one line (the writers rolled back)
        say_error(io_fault(e, getattr(args, 'db', None)))
        return 1
    except Exception as e:
        import duckdb

        if not isinstance(e, duckdb.Error):
            raise
        db = getattr(args, "db", None) or default_db()
        if (m := _DUCKDB_OS_ERROR.search(first_line(e))) is not None:  # a full disk, ...: as io_fault says it
            say_error(io_fault(OSError(None, m.group(2), m.group(1)), db))
            return 1
        # e.g. a catalog damaged past what opening it reads: one line, files relative to the store
        message = relative_to_store(FilterStore(db).root, first_line(e))
        say_error(message)
        return 1
    except KeyboardInterrupt:
        print("cnnfilterdb: interrupted; the store is unchanged", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
