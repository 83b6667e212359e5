"""The ridge and density figures at the real dataset's size, alone (not in CI): bench_scale.py's
generator and ingest of N filters (default 6e8; ~22 GB of disk for the file, removed once
ingested, ~24 GB for the store), the small ONNX model ingested (its units are below the stored
size: scanned), then `cnnfilterdb serve` and each figure's first request and repeats
(bench_scale.first_and_repeats) for the explorer's two views. Wrote bench/results_scale_6e8_figures.json.

    python bench/bench_scale_figures.py [--n 6e8] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_scale as b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=float, default=6e8)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cnnfilterdb-figures-", dir=args.workdir))
    src, db = work / "dataset.h5", work / "db"
    out: dict = {}
    try:
        t = time.perf_counter()
        b.write_scale_h5(src, int(args.n), seed=0)
        b.log(f"gen {time.perf_counter() - t:.1f} s")
        b.log(f"ingest {b.cli('ingest', '--db', str(db), str(src))['seconds']:.1f} s")
        src.unlink()
        r = b.cli("ingest", "--db", str(db), "--model", "bench-scale-onnx", "--task", "Classification", str(b.SMALL_MODEL))
        b.log(f"onnx {r['seconds']:.2f} s")
        server, base = b.start_service(db)
        try:
            with httpx.Client(base_url=base, timeout=600) as c:
                fields = c.get("/v1/fields").json()["fields"]
                tasks = next(f for f in fields if f["name"] == "task")["values"]
                task = max(tasks, key=lambda v: v["filters"])["value"]
                for view, (g, w) in {"default": ("task", None), "selection": ("depth_bin", {"task": [task]})}.items():
                    figs = b.explorer_view(g, w)["figures"]
                    for name in ("ridge", "density2d"):
                        out[f"{view}/{name}"] = b.first_and_repeats(c, "GET", figs[name])
                        b.log(f"{view} {name} {out[f'{view}/{name}']['first_ms']:.0f} ms")
        finally:
            server.terminate()
            server.wait(timeout=60)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
