#!/usr/bin/env python3
"""Routing quality: the same seeded workload, on the same simulated engines, through each
router; how often the engines' prefix caches hit and what clients wait.

usage: quality.py [--quick] [--requests 1800] [--rates 60,120] [--pods 4] [--slow-pods 0] [--seeds 7,8,9]
                  [--routers a,b,...] [--gateways 1] [--workload even|skewed] [--out bench]
                  [--requests-out DIR]

Writes quality.json, quality-results.md (medians over the seeds, per rate) and quality.svg
(the first rate) into --out; with --requests-out each run's requests (pod and TTFT), which
`quality_breakdown.py` explains. `./build.sh bench [--quick]` runs it.

Engines: `mock-llm fleet` with the simulated engine (`--sim-kv-blocks`: a prefix KV cache of
bounded size, LRU; prefill time per uncached block; decode time per token; `--max-running`:
the batch limit, beyond which requests queue). Restarted for every router (cold caches).
Workload: users sharing a few long system prompts, multi-turn conversations that grow, one-off
short and long prompts, Poisson arrivals with bursts; streamed chat completions. TTFT is the
time to the first SSE event at the client.
"""
import argparse
import collections
import hashlib
import http.client
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load as L  # noqa: E402

ROOT = L.ROOT
SIM = ["--max-running", "4", "--sim-kv-blocks", "400", "--sim-prefill-us-per-block", "400",
       "--sim-decode-ms-per-token", "4"]
# modelroute-tuned: the profile the README recommends for chat traffic.
# MODELROUTE_TUNED_PROFILE: another profile to measure under this name.
SCHEDULER_TUNED = (os.environ.get("MODELROUTE_TUNED_PROFILE")
                   or os.path.join(ROOT, "examples", "scheduler", "cache-affinity.yaml"))
# --slow-pods: the last pods run at half speed (prefill and decode), as an older GPU or a
# throttled one in the same fleet would.
SLOW = 2


def sim_flags(slow=False):
    """The simulated engine's flags; `slow`: SLOW times slower to prefill and to decode."""
    out = list(SIM)
    for flag in ("--sim-prefill-us-per-block", "--sim-decode-ms-per-token") if slow else ():
        i = out.index(flag) + 1
        out[i] = str(int(out[i]) * SLOW)
    return out


ROUTERS = ["round-robin", "modelroute", "modelroute-tuned", "modelroute-tuned-shared", "sglang-router",
           "vllm-router"]


def ip(i):
    return f"127.3.0.{i + 1}"


def words(rng, n):
    vocab = ["alpha", "bravo", "charlie", "delta", "echo", "fox", "golf", "hotel", "india", "juliet",
             "kilo", "lima", "mike", "nova", "oscar", "papa", "quebec", "romeo", "sierra", "tango"]
    return " ".join(rng.choice(vocab) + str(rng.randrange(100)) for _ in range(n))


# How users are spread over the system prompts: "even", four prompts drawn uniformly; "skewed",
# six prompts drawn with Zipf weights 1/k (41, 20, 14, 10, 8 and 7% of the users), as one
# product's prompt usually dominates a deployment.
WORKLOADS = ("even", "skewed")


def workload(seed, n, rate, popularity="even"):
    """[(arrival seconds, messages, conversation)]: seeded, the same for every router;
    conversation is (user, conversation number), None for a one-off prompt."""
    rng = random.Random(seed)
    if popularity == "skewed":
        systems = [words(rng, 500) for _ in range(6)]
        weights = [1 / (k + 1) for k in range(len(systems))]
        users = [{"id": i, "system": rng.choices(range(len(systems)), weights)[0], "history": [],
                  "conversation": 0} for i in range(48)]
    else:
        systems = [words(rng, 500) for _ in range(4)]  # ~3.5 KB each
        users = [{"id": i, "system": rng.randrange(4), "history": [], "conversation": 0} for i in range(48)]
    out, t = [], 0.0
    for i in range(n):
        # Bursts: every 10 s, 2 s at three times the rate.
        burst = (t % 10.0) < 2.0
        t += rng.expovariate(rate * (3 if burst else 1))
        r = rng.random()
        conversation = None
        if r < 0.1:
            msgs = [{"role": "user", "content": words(rng, 20)}]
        elif r < 0.2:
            msgs = [{"role": "user", "content": words(rng, 900)}]
        else:
            u = rng.choice(users)
            if len(u["history"]) >= 12:
                u["history"] = []  # a new conversation
                u["conversation"] += 1
            conversation = (u["id"], u["conversation"])
            u["history"].append({"role": "user", "content": words(rng, 30)})
            msgs = [{"role": "system", "content": systems[u["system"]]}] + list(u["history"])
            u["history"].append({"role": "assistant", "content": words(rng, 20)})
        out.append((t, msgs, conversation))
    return out


FAILURES = []  # (status, body start) of the answers that were not 200


def one_request(port, msgs):
    body = json.dumps({"model": L.MODEL, "messages": msgs, "stream": True, "max_tokens": 16})
    start = time.monotonic()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        c.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        r = c.getresponse()
        if r.status != 200:
            FAILURES.append((r.status, r.read()[:200]))
            return None
        # The simulated engine names itself: which pod served it, whatever the router.
        ttft, pod = None, r.getheader("x-mock-pod")
        while True:
            line = r.readline()
            if not line:
                break
            if ttft is None and line.startswith(b"data:"):
                ttft = time.monotonic() - start
        return ttft, time.monotonic() - start, pod
    except OSError as e:
        FAILURES.append((0, str(e).encode()))
        return None
    finally:
        c.close()


def replay(ports, trace, threads=96):
    """Sends the trace; request i to one of `ports` (several gateways: spread at random, the
    same way for every router, as a Kubernetes Service spreads connections)."""
    spread = random.Random(1)
    gateway = [ports[spread.randrange(len(ports))] for _ in trace]
    results = [None] * len(trace)
    begin = time.monotonic() + 0.5
    lock = threading.Lock()
    nxt = [0]

    def worker():
        while True:
            with lock:
                i = nxt[0]
                nxt[0] += 1
            if i >= len(trace):
                return
            at, msgs, _ = trace[i]
            delay = begin + at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            results[i] = one_request(gateway[i], msgs)

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return results, time.monotonic() - begin


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(p / 100 * len(v)))] if v else float("nan")


def start_store(procs, work):
    """The gateways' shared placement store: a Redis and modelroute-ratelimit in front of it.
    Returns (the service's address, Redis's)."""
    redis_port, service_port = L.free_port(), L.free_port()
    log = open(os.path.join(work, "store.log"), "w")
    procs.start(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no"], log)
    service = f"127.0.0.1:{service_port}"
    procs.start([os.path.join(L.BIN, "modelroute-ratelimit"), "--listen", service], log)
    L.wait_port("127.0.0.1", redis_port, 10)
    L.wait_port("127.0.0.1", service_port, 10)
    return service, f"127.0.0.1:{redis_port}"


def start_router(name, procs, work, pods, pod_port, tag="", store=None):
    """One instance of router `name` in front of the pods; its port (None: not installed).
    `tag` tells several instances' files apart; `store`: the shared placement store
    (`start_store`) for the `-shared` routers."""
    urls = [f"http://{ip(i)}:{pod_port}" for i in range(pods)]
    if name in ("sglang-router", "vllm-router"):
        port = L.free_port()
        log = open(os.path.join(work, f"{name}{tag}.log"), "w")
        env = dict(os.environ, HF_HUB_OFFLINE="1", HF_ENDPOINT="http://127.0.0.1:9")
        if name == "vllm-router":
            cmd = [os.path.join(L.VENV, "bin", "vllm-router"), "--host", "127.0.0.1", "--port", str(port),
                   "--prometheus-host", "127.0.0.1", "--prometheus-port", str(L.free_port()),
                   "--policy", "cache_aware", "--worker-urls", *urls]
        else:
            exe = shutil.which("smg", path=os.path.join(L.VENV, "bin")) or os.path.join(L.VENV, "bin", "smg")
            cmd = [exe, "launch", "--host", "127.0.0.1", "--port", str(port), "--prometheus-host", "127.0.0.1",
                   "--prometheus-port", str(L.free_port()), "--policy", "cache_aware", "--worker-urls", *urls]
        if not os.path.exists(cmd[0]):
            return None
        procs.start(cmd, log, env=env)
    else:
        res = os.path.join(work, f"res-{name}")
        os.makedirs(res, exist_ok=True)
        with open(os.path.join(res, "r.yaml"), "w") as f:
            f.write(L.modelroute_resources(pod_port))
        pods_file = os.path.join(work, "pods.yaml")
        with open(pods_file, "w") as f:
            f.write(L.pods_yaml([ip(i) for i in range(pods)], pod_port))
        render, boot = ["--metrics-interval-ms", "200"], []
        if store:
            render += ["--rate-limit-service", store[0], "--shared-placements-redis", store[1]]
            boot = ["--rate-limit-service", store[0]]
        if name == "round-robin":
            path = os.path.join(work, "sched-off.yaml")
            with open(path, "w") as f:
                f.write(L.SCHEDULER_OFF)
            render += ["--scheduler-config", path]
        elif name.startswith("modelroute-tuned"):
            render += ["--scheduler-config", SCHEDULER_TUNED]
        port, _, _ = L.start_modelroute(procs, work, name + tag, res, pods_file, render, boot)
    L.wait_http(f"http://127.0.0.1:{port}/v1/chat/completions", 60, ok=lambda s: s == 200,
                data=json.dumps({"model": L.MODEL, "messages": [{"role": "user", "content": "warm"}],
                                 "max_tokens": 1}).encode(), headers={"Content-Type": "application/json"})
    return port


def cache_stats(pods, pod_port):
    """Per pod: (prompt blocks looked up in its KV cache, blocks found)."""
    out = []
    for i in range(pods):
        s = json.loads(urllib.request.urlopen(f"http://{ip(i)}:{pod_port}/mock/metrics", timeout=10).read())["sim"]
        out.append((s["block_queries"], s["block_hits"]))
    return out


ORACLE = "oracle: exact caches, no load"


def prompt_blocks(msgs):
    """The prompt's chained block hashes as mock-llm's simulated engine makes them
    (`mock-llm/src/sim.rs`: `prompt_text`'s `role\ncontent\n`, 64-byte chained blocks); a
    change there is a change here."""
    text = "".join(f"{m['role']}\n{m['content']}\n" for m in msgs).encode()
    blocks, h = [], b""
    for i in range(0, len(text), 64):
        h = hashlib.blake2b(h + text[i:i + 64], digest_size=8).digest()
        blocks.append(h)
    return blocks


class MirrorCaches:
    """The simulated engines' prefix caches, mirrored: per pod an LRU of `kv_blocks` blocks
    (`KvCache::admit` in mock-llm), a block counting only behind a cached prefix."""

    def __init__(self, pods, kv_blocks):
        self.caches = [collections.OrderedDict() for _ in range(pods)]
        self.kv_blocks = kv_blocks

    def cached(self, pod, blocks):
        """Leading blocks of the prompt pod `pod` holds."""
        n = 0
        while n < len(blocks) and blocks[n] in self.caches[pod]:
            n += 1
        return n

    def admit(self, pod, blocks):
        cache = self.caches[pod]
        for b in blocks:
            cache[b] = True
            cache.move_to_end(b)
        while len(cache) > self.kv_blocks:
            cache.popitem(last=False)


def oracle_hit_rate(trace, pods, kv_blocks):
    """The cache hit rate of a reference that is not a router: each prompt, in arrival order,
    goes to the pod whose simulated cache holds most of it (ties: fewest prompts so far),
    knowing every cache exactly and ignoring time and load. A greedy reference for what
    cache-aware placement can win on this trace, not a bound: a router may place differently
    and do a little better."""
    mirror = MirrorCaches(pods, kv_blocks)
    placed = [0] * pods
    hits = queries = 0
    for _, msgs, _ in trace:
        blocks = prompt_blocks(msgs)
        cached = [mirror.cached(p, blocks) for p in range(pods)]
        best = max(range(pods), key=lambda p: (cached[p], -placed[p]))
        hits, queries, placed[best] = hits + cached[best], queries + len(blocks), placed[best] + 1
        mirror.admit(best, blocks)
    return round(hits / max(1, queries), 3)


def conversation_moves(trace, results):
    """The share of conversation turns served by another pod than the conversation's turn
    before (its cached prefix left behind); None when the router hid the pods' names."""
    last, turns, moved = {}, 0, 0
    for (_, _, conversation), r in zip(trace, results):
        if conversation is None or not r:
            continue
        if r[2] is None:
            return None
        if conversation in last:
            turns += 1
            moved += last[conversation] != r[2]
        last[conversation] = r[2]
    return round(moved / turns, 3) if turns else None


def run_router(name, args, trace):
    """One router on freshly started (cold) engines: the trace replayed; one result row and
    the per-request results ((TTFT s, end to end s, pod) or None), or None if not installed."""
    work = tempfile.mkdtemp(prefix=f"modelroute-quality-{name}-")
    procs = L.Procs()
    try:
        pod_port = L.free_port()
        fast = args.pods - args.slow_pods
        for first, count, slow in ((0, fast, False), (fast, args.slow_pods, True)):
            if count:
                procs.start([os.path.join(L.BIN, "mock-llm"), "fleet", "--count", str(count), "--listen",
                             f"{ip(first)}:{pod_port}", "--model", L.MODEL, *sim_flags(slow),
                             "--pod", "default/slow" if slow else "default/fleet"],
                            open(os.path.join(work, f"fleet-{first}.log"), "w"))
        for i in range(args.pods):
            L.wait_http(f"http://{ip(i)}:{pod_port}/health", 30)
        store = start_store(procs, work) if name.endswith("-shared") else None
        ports = [start_router(name, procs, work, args.pods, pod_port, f"-{g}", store)
                 for g in range(args.gateways)]
        if None in ports:
            print(f"skipping {name}: not installed", file=sys.stderr)
            return None, None
        time.sleep(1)
        before = cache_stats(args.pods, pod_port)
        results, wall = replay(ports, trace)
        after = cache_stats(args.pods, pod_port)
    finally:
        procs.stop_all()
    queries = [a[0] - b[0] for a, b in zip(after, before)]
    hits = sum(a[1] - b[1] for a, b in zip(after, before))
    if FAILURES:
        print(f"{name}: {len(FAILURES)} failed, e.g. {FAILURES[0]}", file=sys.stderr)
        FAILURES.clear()
    ok = [r for r in results if r]
    ttft = [r[0] * 1000 for r in ok if r[0] is not None]
    e2e = [r[1] * 1000 for r in ok]
    return {"router": name, "ok": len(ok), "failed": len(results) - len(ok),
            "cache_hit_rate": round(hits / max(1, sum(queries)), 3),
            # How unevenly the prompt work fell on the pods: the busiest pod's share over the mean.
            "pod_skew": round(max(queries) * len(queries) / max(1, sum(queries)), 2),
            "conversation_moves": conversation_moves(trace, results),
            "ttft_p50_ms": round(pct(ttft, 50), 1), "ttft_p99_ms": round(pct(ttft, 99), 1),
            "e2e_p50_ms": round(pct(e2e, 50), 1), "e2e_p99_ms": round(pct(e2e, 99), 1),
            "throughput_rps": round(len(ok) / wall, 1)}, results


METRICS = ["cache_hit_rate", "ttft_p50_ms", "ttft_p99_ms", "e2e_p50_ms", "e2e_p99_ms", "throughput_rps",
           "pod_skew", "conversation_moves"]


def summary(rows):
    """Per (rate, router): the median over seeds of each metric, with its range."""
    out = []
    for rate in sorted({r["rate"] for r in rows}):
        for name in dict.fromkeys(r["router"] for r in rows):
            runs = [r for r in rows if r["rate"] == rate and r["router"] == name]
            if not runs:
                continue
            row = {"rate": rate, "router": name, "seeds": len(runs), "failed": sum(r["failed"] for r in runs)}
            for m in METRICS:
                v = sorted(r[m] for r in runs if r.get(m) is not None)
                row[m] = v[len(v) // 2] if v else None
                row[m + "_range"] = [v[0], v[-1]] if v else [None, None]
            out.append(row)
    return out


def markdown(args, table, command):
    lines = [f"# Routing quality, as `{command}` last recorded it",
             "",
             f"{args.requests} requests per run, workload `{args.workload}` (bench/QUALITY.md), "
             f"{args.pods} simulated pods ({' '.join(SIM)}), "
             + (f"the last {args.slow_pods} of them {SLOW} times slower ({' '.join(sim_flags(True))}), "
                if args.slow_pods else "")
             + (f"{args.gateways} instances of each router, requests spread over them at random, "
                if args.gateways > 1 else "") + "seeds "
             f"{args.seeds}; each cell the median over the seeds [lowest, highest]. Analysis: bench/QUALITY.md.",
             ""]
    for rate in sorted({r["rate"] for r in table}):
        lines += [f"## {rate:g} requests a second (bursts at three times that)", "",
                  "| router | cache hit rate | TTFT p50 ms | TTFT p99 ms | e2e p50 ms | e2e p99 ms | req/s | "
                  "busiest pod / mean | conversation turns moved | failed |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in (r for r in table if r["rate"] == rate):
            cells = []
            for m in METRICS:
                lo, hi = r[m + "_range"]
                if r[m] is None:
                    cells.append("-")
                    continue
                cells.append(f"{r[m]:g}" + (f" [{lo:g}, {hi:g}]" if r["seeds"] > 1 else ""))
            lines.append(f"| {r['router']} | " + " | ".join(cells) + f" | {r['failed']} |")
        lines.append("")
    lines += ["```sh", command, "```", ""]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="300 requests, one seed and rate, results in bench/quick/")
    ap.add_argument("--requests", type=int, default=None, help="per run (default 1800; 300 with --quick)")
    ap.add_argument("--rates", default=None, help="arrivals a second, comma-separated (default 60,120; 60 with --quick)")
    ap.add_argument("--pods", type=int, default=4)
    ap.add_argument("--slow-pods", type=int, default=0,
                    help=f"the last N pods {SLOW} times slower to prefill and decode (a mixed fleet)")
    ap.add_argument("--seeds", default=None, help="comma-separated (default 7,8,9; 7 with --quick)")
    ap.add_argument("--routers", default=",".join(ROUTERS))
    ap.add_argument("--gateways", type=int, default=1,
                    help="instances of each router in front of the same pods, requests spread over them")
    ap.add_argument("--workload", choices=WORKLOADS, default="even",
                    help="how users are spread over the system prompts (see WORKLOADS)")
    ap.add_argument("--out", default=None, help="default bench/ (bench/quick/ with --quick)")
    ap.add_argument("--requests-out", default=None,
                    help="also write each run's pod and TTFT per request here, for quality_breakdown.py")
    args = ap.parse_args()
    args.requests = args.requests or (300 if args.quick else 1800)
    args.rates = args.rates or ("60" if args.quick else "60,120")
    args.seeds = args.seeds or ("7" if args.quick else "7,8,9")
    if not 0 <= args.slow_pods < args.pods:
        ap.error("--slow-pods must leave at least one pod at full speed")
    args.out = args.out or os.path.join(ROOT, "bench", "quick" if args.quick else "")
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for rate in [float(r) for r in args.rates.split(",")]:
        for seed in [int(s) for s in args.seeds.split(",")]:
            trace = workload(seed, args.requests, rate, args.workload)
            for name in args.routers.split(","):
                row, results = run_router(name, args, trace)
                if row and args.requests_out:
                    save_requests(args, name, rate, seed, results)
                if row:
                    row.update(rate=rate, seed=seed)
                    print(json.dumps(row), flush=True)
                    rows.append(row)
            kv_blocks = int(SIM[SIM.index("--sim-kv-blocks") + 1])
            rows.append({"router": ORACLE, "rate": rate, "seed": seed, "failed": 0,
                         **{m: None for m in METRICS},
                         "cache_hit_rate": oracle_hit_rate(trace, args.pods, kv_blocks)})
    table = summary(rows)
    command = "python3 bench/quality.py" + " ".join([""] + sys.argv[1:])
    with open(os.path.join(args.out, "quality.json"), "w") as f:
        json.dump({"args": vars(args), "sim": SIM, "results": rows, "summary": table}, f, indent=1)
    with open(os.path.join(args.out, "quality-results.md"), "w") as f:
        f.write(markdown(args, table, command))
    write_svg(os.path.join(args.out, "quality.svg"),
              [r for r in table if r["rate"] == table[0]["rate"] and r["router"] != ORACLE])
    print(markdown(args, table, command))


def save_requests(args, router, rate, seed, results):
    """One run's requests in arrival order: which pod served each and its TTFT (ms); with
    what rebuilds the trace (`workload()`)."""
    os.makedirs(args.requests_out, exist_ok=True)
    path = os.path.join(args.requests_out, f"{router}-{args.workload}-{rate:g}-{seed}.json")
    with open(path, "w") as f:
        json.dump({"router": router, "workload": args.workload, "rate": rate, "seed": seed,
                   "requests": args.requests, "pods": args.pods,
                   "pod": [r[2] if r else None for r in results],
                   "ttft_ms": [round(r[0] * 1000, 2) if r and r[0] is not None else None for r in results]}, f)


def write_svg(path, rows):
    """Bars: cache hit rate (%), TTFT p50 and p99 (ms), one group per router."""
    metrics = [("cache_hit_rate", "cache hit %", 100.0), ("ttft_p50_ms", "TTFT p50 ms", 1.0),
               ("ttft_p99_ms", "TTFT p99 ms", 1.0)]
    colors = ["#1f77b4", "#ff7f0e", "#d62728"]
    w, h, pad = 760, 320, 40
    group = (w - 2 * pad) / max(1, len(rows))
    top = max([r[k] * s for r in rows for k, _, s in metrics] + [1])
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">',
           f'<rect width="{w}" height="{h}" fill="white"/>']
    for gi, r in enumerate(rows):
        x0 = pad + gi * group
        for mi, (k, _, s) in enumerate(metrics):
            v = r[k] * s
            bh = (h - 2 * pad) * v / top
            x = x0 + 10 + mi * (group - 20) / 3
            out.append(f'<rect x="{x:.1f}" y="{h - pad - bh:.1f}" width="{(group - 20) / 3 - 4:.1f}" height="{bh:.1f}" fill="{colors[mi]}"/>')
            out.append(f'<text x="{x:.1f}" y="{h - pad - bh - 3:.1f}">{v:.0f}</text>')
        out.append(f'<text x="{x0 + 10:.1f}" y="{h - pad + 14}">{r["router"]}</text>')
    for mi, (_, label, _) in enumerate(metrics):
        out.append(f'<rect x="{pad + mi * 140}" y="10" width="10" height="10" fill="{colors[mi]}"/>')
        out.append(f'<text x="{pad + mi * 140 + 14}" y="19">{label}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out))


if __name__ == "__main__":
    main()
