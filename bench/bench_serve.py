"""Serving benchmark: the model server over HTTP against the same work done in-process.

    python -m bench.bench_serve [--config config/local.yaml] [--model BUNDLE] [--requests 300]

Uses the champion bundle that ``make run`` deployed (serving.model_dir) and real listings and
photos from ``data.local_dir``. Measures, in one run:

1. the floor: ``SearchEngine.answer_instances`` called in this process (decode the photo,
   preprocess, the traced model function, the FAISS search), one request at a time, for text,
   photo and fused (text + photo) requests; and the bare model call (``Bundle.predict``);
2. the server: ``marketsearch serve`` started as its own process on a free loopback port, the
   same requests sent one at a time over a kept-alive HTTP connection (V1 JSON), latency
   p50/p95/p99 and the ratio server / in-process;
3. throughput at concurrency 1, 4 and 16 (client threads, one kept-alive connection each,
   fused requests for a fixed time), with latency under load;
4. search relevance on the same listings, as ``marketsearch evaluate`` measures it
   (``marketsearch.evaluation.search_relevance``): each listing searched for by its photo, its
   text and both, precision@k and top-1 of its root category among the results (itself left out).

The client runs on the same 2-core machine as the server, so the concurrency figures include
the client's own CPU use. Writes bench/reports/serve.json and serve.md.
"""
from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import platform
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pandas as pd
from tqdm import tqdm

GOAL_P50_MS, GOAL_P99_MS = 20.0, 50.0
KINDS = ("text", "photo", "fused")


def percentiles(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"n": len(a), "p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean())}


def sample_listings(data_dir: Path, n: int, seed: int) -> tuple[pd.DataFrame, pd.Series]:
    """Up to n real listings (raw rows) whose first photo is on disk, and product id -> that
    photo's id."""
    products = pd.read_csv(data_dir / "products.csv", dtype=str, keep_default_na=False)
    images = pd.read_csv(data_dir / "images.csv", dtype=str, keep_default_na=False)
    first = images.drop_duplicates("product_id").set_index("product_id")["id"]
    products = products[products["id"].isin(first.index)]
    rows = products.sample(n=min(n, len(products)), random_state=seed)
    on_disk = [(data_dir / "images" / f"{first[pid]}.jpg").exists() for pid in rows["id"]]
    return rows[on_disk], first


def sample_requests(data_dir: Path, n: int, seed: int) -> dict[str, list[dict]]:
    """Real listings with a photo each -> V1 instances of the three kinds (n of each)."""
    rows, first = sample_listings(data_dir, n, seed)
    out: dict[str, list[dict]] = {k: [] for k in KINDS}
    for _, r in rows.iterrows():
        photo = data_dir / "images" / f"{first[r['id']]}.jpg"
        b64 = base64.b64encode(photo.read_bytes()).decode()
        text = {"product_name": r["product_name"], "product_description": r["product_description"]}
        out["text"].append({**text, "location": r["location"]})
        out["photo"].append({"image_b64": b64, "location": r["location"]})
        out["fused"].append({**text, "image_b64": b64, "location": r["location"]})
    return out


def time_calls(fn, items, warmup: int = 10, desc: str = "") -> list[float]:
    for item in items[:warmup]:
        fn(item)
    ms = []
    for item in tqdm(items, desc=desc, mininterval=2, leave=False):
        start = time.perf_counter()
        fn(item)
        ms.append((time.perf_counter() - start) * 1000)
    return ms


class Client:
    """One kept-alive HTTP/1.1 connection posting V1 requests."""

    def __init__(self, url: str, model: str):
        u = urlparse(url)
        self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        self.path = f"/v1/models/{model}:predict"

    def predict(self, body: bytes) -> dict:
        self.conn.request("POST", self.path, body, {"content-type": "application/json"})
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"server answered {resp.status}: {data[:300]!r}")
        return json.loads(data)

    def close(self):
        self.conn.close()


def throughput(url: str, model: str, bodies: list[bytes], concurrency: int, seconds: float) -> dict:
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def worker(offset: int):
        client = Client(url, model)
        mine, i = [], offset
        while time.perf_counter() < stop:
            start = time.perf_counter()
            try:
                client.predict(bodies[i % len(bodies)])
                mine.append((time.perf_counter() - start) * 1000)
            except Exception:
                with lock:
                    errors[0] += 1
            i += concurrency
        client.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(c,)) for c in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {"concurrency": concurrency, "seconds": round(wall, 2), "requests": len(latencies),
            "errors": errors[0], "throughput_rps": len(latencies) / wall, **percentiles(latencies)}


def in_process(model_dir: Path, cfg, reqs: dict[str, list[dict]]) -> tuple[dict, dict, dict]:
    """Latency of the same work in this process: whole requests per kind, then the model call
    and the index search of fused requests on their own."""
    from marketsearch.bundle import Bundle
    from marketsearch.serving.engine import SearchEngine

    engine = SearchEngine(Bundle(model_dir), cfg.serving)
    engine.warmup()
    whole = {kind: percentiles(time_calls(lambda inst: engine.answer_instances([inst]),
                                          reqs[kind], desc=f"in-process {kind}"))
             for kind in KINDS}
    queries = [q for inst in reqs["fused"] for q in engine.parse([inst])]
    model_only = percentiles(time_calls(
        lambda q: engine.bundle.predict([q.text], q.pixels[None], per_modality=True),
        queries, desc="model call"))
    probe = np.ones(engine.index.dim, np.float32)
    index_only = percentiles(time_calls(
        lambda q: engine.neighbors(probe, q.k, q.lat, q.lon), queries, desc="index search"))
    return whole, model_only, index_only


def search_quality(model_dir: Path, cfg, data_dir: Path, n: int, seed: int) -> dict:
    """``search_relevance`` (the evaluate stage's figures) on ``n`` real listings the bundle
    never learned from (not in its ``seen_ids.json``), cleaned as ``marketsearch evaluate``
    cleans them, each with its first photo."""
    from marketsearch.bundle import Bundle
    from marketsearch.cleaning import clean_frames
    from marketsearch.evaluation import search_relevance

    bundle = Bundle(model_dir)
    rows, first = sample_listings(data_dir, 10 ** 9, seed)  # all, shuffled
    if bundle.seen_ids is not None:  # listings the models learned from would flatter search
        rows = rows[~rows["id"].isin(bundle.seen_ids)]
    rows = rows.head(n)
    photos = pd.DataFrame({
        "id": [first[pid] for pid in rows["id"]], "product_id": rows["id"].tolist(),
        "data": [(data_dir / "images" / f"{first[pid]}.jpg").read_bytes() for pid in rows["id"]]})
    data = clean_frames(rows, photos, cfg, image_size=bundle.image_size, remove_outliers=False,
                        assign_split=False)
    return search_relevance(bundle, data.products, data.images, data.pixels,
                            cfg.evaluate.search_k)


def main(argv=None) -> int:
    from marketsearch.config import load_config
    from marketsearch.serving.engine import resolve_bundle_dir
    from marketsearch.serving.process import model_server

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config")
    p.add_argument("--model", help="bundle directory (default: serving.model_dir)")
    p.add_argument("--requests", type=int, default=300, help="requests per kind")
    p.add_argument("--seconds", type=float, default=15.0, help="per concurrency level")
    p.add_argument("--out", default=str(Path(__file__).parent / "reports"))
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    cfg = load_config(args.config)
    model_dir = resolve_bundle_dir(args.model or cfg.path(cfg.serving.model_dir))
    reqs = sample_requests(Path(cfg.data.local_dir), args.requests, cfg.seed)
    n = len(reqs["fused"])
    print(f"bundle {model_dir}; {n} real listings per request kind")

    # 1. in-process floor (the engine is freed before the server starts)
    inproc, model_only, index_only = in_process(model_dir, cfg, reqs)
    print(f"in-process fused p50 {inproc['fused']['p50_ms']:.1f} ms")

    # 2 + 3. the server
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    with model_server(model_dir, out_dir / "serve-server.log") as srv:
        client = Client(srv.url, cfg.serving.model_name)
        bodies = {kind: [json.dumps({"instances": [inst]}).encode() for inst in reqs[kind]]
                  for kind in KINDS}
        server = {kind: percentiles(time_calls(client.predict, bodies[kind], desc=f"server {kind}"))
                  for kind in KINDS}
        client.close()
        load = [throughput(srv.url, cfg.serving.model_name, bodies["fused"], c, args.seconds)
                for c in tqdm((1, 4, 16), desc="concurrency", leave=False)]
        startup_s = srv.readiness[-1][0]

    # 4. search relevance on the same listings (after the server, so it times nothing)
    search = search_quality(model_dir, cfg, Path(cfg.data.local_dir), args.requests, cfg.seed)

    for kind in KINDS:
        server[kind]["ratio_p50_vs_in_process"] = server[kind]["p50_ms"] / inproc[kind]["p50_ms"]
    fused = server["fused"]
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "bundle": str(model_dir), "photo_runtime": cfg.serving.photo_runtime,
        "listings_indexed": None, "requests_per_kind": n,
        "server_ready_after_s": startup_s,
        "in_process": inproc, "model_call": model_only, "index_search": index_only,
        "server": server, "concurrency": load, "search": search,
        "goal": {"fused_p50_ms": GOAL_P50_MS, "fused_p99_ms": GOAL_P99_MS,
                 "met": fused["p50_ms"] <= GOAL_P50_MS and fused["p99_ms"] <= GOAL_P99_MS},
    }
    report["listings_indexed"] = len(json.loads((model_dir / "index" / "ids.json").read_text()))
    (out_dir / "serve.json").write_text(json.dumps(report, indent=2))
    (out_dir / "serve.md").write_text(markdown(report))
    print((out_dir / "serve.md").read_text())
    return 0


def markdown(r: dict) -> str:
    lines = [
        "# Serving benchmark",
        "",
        f"{r['date']} · {r['machine']['cpus']} CPUs · bundle `{r['bundle']}` "
        f"({r['listings_indexed']:,} listings indexed) · {r['requests_per_kind']} real listings "
        "per kind, one request at a time (V1 JSON over a kept-alive connection).",
        "",
        "## One request: server vs in-process",
        "",
        "| request | in-process p50 | server p50 | p95 | p99 | server / in-process (p50) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for kind in KINDS:
        i, s = r["in_process"][kind], r["server"][kind]
        lines.append(f"| {kind} | {i['p50_ms']:.1f} ms | {s['p50_ms']:.1f} ms | {s['p95_ms']:.1f} ms "
                     f"| {s['p99_ms']:.1f} ms | {s['ratio_p50_vs_in_process']:.2f}x |")
    m, ix = r["model_call"], r["index_search"]
    lines += [
        "",
        f"In-process parts of a fused request: model call (`Bundle.predict`: the photo backbone "
        f"on {r.get('photo_runtime', 'tensorflow')}, then the fused, text and photo models) "
        f"p50 {m['p50_ms']:.1f} ms / p99 {m['p99_ms']:.1f} ms; index search with "
        f"distance re-ranking p50 {ix['p50_ms']:.2f} ms / p99 {ix['p99_ms']:.2f} ms. The rest of the "
        "in-process time is the request's parsing (the photo decoded, the text prepared), the "
        "price and the neighbours' fields.",
        "",
        "## Throughput (fused requests)",
        "",
        "| concurrency | requests | errors | req/s | p50 | p95 | p99 |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in r["concurrency"]:
        lines.append(f"| {c['concurrency']} | {c['requests']} | {c['errors']} | "
                     f"{c['throughput_rps']:.1f} | {c['p50_ms']:.1f} ms | {c['p95_ms']:.1f} ms | "
                     f"{c['p99_ms']:.1f} ms |")
    g, f = r["goal"], r["server"]["fused"]
    lines += [
        "",
        "The load generator shares the machine's CPUs with the server.",
        "",
        "## Goal",
        "",
        f"Fused p50 ≤ {g['fused_p50_ms']:.0f} ms and p99 ≤ {g['fused_p99_ms']:.0f} ms at one request "
        f"at a time: measured p50 {f['p50_ms']:.1f} ms, p99 {f['p99_ms']:.1f} ms — "
        f"**{'met' if g['met'] else 'not met'}**.",
        f"The server was ready {r['server_ready_after_s']:.1f} s after its process started.",
        "",
    ]
    s = r.get("search")
    if s:
        k = s["k"]
        lines += [
            "## Search relevance",
            "",
            f"Real listings the bundle never learned from (not in its `seen_ids.json`), searched "
            f"for in the index (k = {k}, no location, the listing itself left out), as "
            "`marketsearch evaluate` measures it: the share of the results in the listing's "
            "root category, and whether the first result is.",
            "",
            f"| query | queries | precision@{k} | top-1 |",
            "|---|---:|---:|---:|",
        ]
        for mode in ("image", "text", "both"):
            m = s[mode]
            if m["n_queries"]:
                lines.append(f"| {mode} | {m['n_queries']} | {m[f'precision_at_{k}']:.3f} "
                             f"| {m['top1']:.3f} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
