#!/usr/bin/env python3
"""Filter memory in Envoy (2 workers): every modelroute VM reports its linear memory as the
gauge `modelroute.vm.<n>.memory_bytes` (a high-water mark: wasm memory never shrinks); Envoy's
RSS covers the rest (V8's compiled code, Envoy itself). Scenarios:

  idle      the load benchmark's configuration (1 ModelServer, 2 mock pods), no traffic
  10k-pods  100 ModelServers x 100 pods, 1,000 ModelRoutes (scheduler off: see MEMORY.md)
  1mb       the small configuration after wrk sent 1 MB chat bodies for a while
  long      the small configuration under wrk for --duration seconds with a new prompt per
            request (the prefix index fills and evicts), sampled every 5 s

    python3 bench/memory.py [--quick] [--duration S] [--out bench]

Writes bench/MEMORY.md and bench/memory.json. Standard library only; reuses load.py.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load as L  # noqa: E402

VARYING_LUA = L.per_request_lua(
    '(body:gsub("The quick", "Request " .. n .. " " .. math.random(1e9) .. ": the quick", 1))')


def gauges(admin):
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats?filter=modelroute\\.vm\\.", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if name.endswith(".memory_bytes") and value.strip().isdigit():
            out[name.split("vm.")[1].split(".")[0]] = int(value)
    return out


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def sample(admin, pid):
    time.sleep(1.2)  # the gauges are recorded on the root tick
    g = gauges(admin)
    workers = sorted(g.values())[-2:]  # the two largest: the worker VMs
    return {"vms": g, "worker_max_bytes": max(workers, default=0), "envoy_rss_kb": rss_kb(pid)}


def big_resources(servers=100, pods=100, routes=1000):
    docs, items = [], []
    for s in range(servers):
        docs.append(f"""apiVersion: networking.serving.volcano.sh/v1alpha1
kind: ModelServer
metadata: {{ name: server-{s}, namespace: default }}
spec:
  workloadSelector: {{ matchLabels: {{ app: server-{s} }} }}
  workloadPort: {{ port: 8000 }}
  model: org/model-{s}
  inferenceEngine: vLLM""")
        for i in range(pods):
            n = s * pods + i
            items.append(f"""- apiVersion: v1
  kind: Pod
  metadata: {{ name: server-{s}-pod-{i}, namespace: default, labels: {{ app: server-{s} }} }}
  spec: {{ containers: [{{ name: e, ports: [{{ containerPort: 8000 }}] }}] }}
  status: {{ phase: Running, podIP: 10.{n // 65536}.{(n // 256) % 256}.{n % 256}, conditions: [{{ type: Ready, status: "True" }}] }}""")
    for r in range(routes):
        docs.append(f"""apiVersion: networking.serving.volcano.sh/v1alpha1
kind: ModelRoute
metadata: {{ name: route-{r}, namespace: default }}
spec:
  modelName: model-{r:04}
  rules:
  - name: default
    targetModels: [{{ modelServerName: server-{r % servers} }}]""")
    # In files of 100 objects / 1,000 pods: the controller's YAML reader caps documents and
    # nodes per file (a guard against hostile input).
    res = ["\n---\n".join(docs[i:i + 100]) + "\n" for i in range(0, len(docs), 100)]
    pods = ["apiVersion: v1\nkind: List\nitems:\n" + "\n".join(items[i:i + 1000]) + "\n" for i in range(0, len(items), 1000)]
    return res, pods


def start_envoy(procs, work, name, resources, pods_yaml, scheduler_off):
    """`resources` and `pods_yaml`: lists of YAML files' contents."""
    res, pods, conf = (os.path.join(work, name, d) for d in ("resources", "pods", "config"))
    os.makedirs(res)
    os.makedirs(pods)
    for i, text in enumerate(resources):
        with open(os.path.join(res, f"r{i}.yaml"), "w") as f:
            f.write(text)
    for i, text in enumerate(pods_yaml):
        with open(os.path.join(pods, f"p{i}.yaml"), "w") as f:
            f.write(text)
    render = [L.CONTROLLER, "render", "--resources", res, "--pods", pods, "--wasm", L.WASM, "--out", conf]
    if scheduler_off:
        with open(os.path.join(work, name, "sched.yaml"), "w") as f:
            f.write(L.SCHEDULER_OFF)
        render += ["--scheduler-config", os.path.join(work, name, "sched.yaml")]
    subprocess.run(render, check=True, capture_output=True)
    with open(os.path.join(conf, "ecds", "modelroute.json")) as f:
        config_bytes = len(json.load(f)["resources"][0]["typed_config"]["config"]["configuration"]["value"])
    port, admin = L.free_port(), L.free_port()
    boot = subprocess.run([L.CONTROLLER, "bootstrap", "--listen-port", str(port), "--admin-port", str(admin),
                           "--config-dir", conf, "--access-log", "off"], check=True, capture_output=True, text=True).stdout
    cfg = os.path.join(work, name, "envoy.yaml")
    with open(cfg, "w") as f:
        f.write(boot)
    t0 = time.time()
    p = procs.start([L.envoy_bin(), "-c", cfg, "--disable-hot-restart", "--concurrency", "2", "-l", "error"], open(os.path.join(work, name, "envoy.log"), "w"))
    # Ready when the filter answers /v1/models (it needs its configuration for that).
    L.wait_http(f"http://127.0.0.1:{port}/v1/models", 120, ok=lambda s: s == 200)
    return port, admin, p.pid, config_bytes, time.time() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="an 8 s long run, results in bench/quick/")
    ap.add_argument("--duration", type=int, default=None, help="long run seconds (default 60)")
    ap.add_argument("--out", default=None, help="default bench/ (bench/quick/ with --quick)")
    args = ap.parse_args()
    args.out = args.out or os.path.join(L.ROOT, "bench", "quick" if args.quick else "")
    duration = args.duration or (8 if args.quick else 60)
    work = tempfile.mkdtemp(prefix="modelroute-mem-")
    procs = L.Procs()
    out = {}
    try:
        pod_port = L.free_port()
        ips = ["127.0.0.91", "127.0.0.92"]
        logs = open(os.path.join(work, "mocks.log"), "w")
        for i, ip in enumerate(ips):
            procs.start([os.path.join(L.BIN, "mock-llm"), "serve", "--listen", f"{ip}:{pod_port}", "--model", L.MODEL, "--pod", f"default/bench-{i}"], logs)
        for ip in ips:
            L.wait_http(f"http://{ip}:{pod_port}/health")
        small = ([L.modelroute_resources(pod_port)], [L.pods_yaml(ips, pod_port)])
        lua = os.path.join(work, "vary.lua")
        with open(lua, "w") as f:
            f.write(VARYING_LUA)

        port, admin, pid, cfg_bytes, secs = start_envoy(procs, work, "small", *small, False)
        out["idle"] = dict(sample(admin, pid), config_bytes=cfg_bytes, ready_s=round(secs, 2))
        print("idle", json.dumps(out["idle"]), flush=True)

        body = os.path.join(work, "1mb.json")
        with open(body, "w") as f:
            f.write(L.chat_body(1024 * 1024))
        r = L.run_wrk(port, 8, 5, body, lua)
        out["1mb"] = dict(sample(admin, pid), requests=r["requests"], errors=r["errors"])
        print("1mb", json.dumps(out["1mb"]), flush=True)

        series = []
        bodies = {}
        for size in (1024, 16 * 1024, 200 * 1024):
            bodies[size] = os.path.join(work, f"{size}.json")
            with open(bodies[size], "w") as f:
                f.write(L.chat_body(size))
        t_end, total, k = time.time() + duration, 0, 0
        while time.time() < t_end:
            size = (1024, 16 * 1024, 1024, 200 * 1024)[k % 4]
            k += 1
            r = L.run_wrk(port, 32, 4, bodies[size], lua)
            total += r["requests"]
            series.append(dict(sample(admin, pid), t=round(duration - (t_end - time.time())), requests=total, errors=r["errors"]))
            print("long", json.dumps(series[-1]), flush=True)
        out["long"] = series

        # A fresh Envoy for the large configuration (the small one stops with the pods' run).
        res, pods_yaml = big_resources()
        port, admin, pid, cfg_bytes, secs = start_envoy(procs, work, "big", res, pods_yaml, True)
        out["10k-pods"] = dict(sample(admin, pid), config_bytes=cfg_bytes, ready_s=round(secs, 2))
        print("10k-pods", json.dumps(out["10k-pods"]), flush=True)
    finally:
        procs.stop_all()
    write(args, out, duration)


def mb(v):
    return f"{v / 1048576:.1f} MB"


def write(args, out, duration):
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "memory.json"), "w") as f:
        json.dump(out, f, indent=1)
    long = out.get("long", [])
    warm = long[len(long) // 3] if long else None
    last = long[-1] if long else None
    lines = [
        "# Filter memory in Envoy",
        "",
        f"`./build.sh bench{' --quick' if args.quick else ''}` runs `python3 bench/memory.py{' --quick' if args.quick else ''}`"
        " after the load benchmark. Envoy 2 workers; each modelroute VM reports its linear memory"
        " (`wasmcustom.modelroute.vm.<n>.memory_bytes`, a high-water mark: wasm memory never shrinks). Envoy runs four"
        " VMs of the filter: one per worker (the ones that serve requests, shown) and two on the main thread. RSS is the whole"
        " Envoy process (V8's compiled code included).",
        "",
        "| scenario | configuration JSON | worker VM memory (max) | Envoy RSS | notes |",
        "|---|---|---|---|---|",
    ]
    i = out.get("idle")
    if i:
        lines.append(f"| idle, 1 ModelServer / 2 pods | {i['config_bytes']:,} B | {mb(i['worker_max_bytes'])} | {i['envoy_rss_kb'] / 1024:.0f} MB | |")
    b = out.get("10k-pods")
    if b:
        lines.append(f"| idle, 100 ModelServers x 100 pods, 1,000 ModelRoutes | {b['config_bytes']:,} B | {mb(b['worker_max_bytes'])} | {b['envoy_rss_kb'] / 1024:.0f} MB | serving {b['ready_s']} s after start |")
    m = out.get("1mb")
    if m:
        lines.append(f"| after {m['requests']} requests with 1 MB bodies (8 connections) | | {mb(m['worker_max_bytes'])} | {m['envoy_rss_kb'] / 1024:.0f} MB | {m['errors']} errors |")
    if warm and last:
        lines.append(f"| long run, {duration} s, {last['requests']:,} requests (1 KB / 16 KB / 200 KB, a new prompt each) | | {mb(last['worker_max_bytes'])} | {last['envoy_rss_kb'] / 1024:.0f} MB | growth after the first third: {last['worker_max_bytes'] - warm['worker_max_bytes']:+,} B VM, {last['envoy_rss_kb'] - warm['envoy_rss_kb']:+,} KB RSS |")
        lines += ["", "Long run, sampled after each 4 s wrk run:", "", "| t s | requests | worker VM max | Envoy RSS |", "|---|---|---|---|"]
        lines += [f"| {r['t']} | {r['requests']:,} | {mb(r['worker_max_bytes'])} | {r['envoy_rss_kb'] / 1024:.1f} MB |" for r in long]
    lines += [
        "",
        "The 10,000-pod configuration is rendered with the scheduler off: with it on, the filter's collector would scrape",
        "`/metrics` and `/v1/models` of every pod each `--metrics-interval-ms` (20,000 side calls a second at the default",
        "1 s), and these pods do not exist. At that scale raise the interval. The parsed configuration, its route and pod",
        "tables and one prefix index per ModelServer (bounded by `maxHashCacheSize`, ~2.4 MB each at the default 50,000",
        "block hashes, allocated as prompts arrive) are per worker VM.",
        "",
    ]
    with open(os.path.join(args.out, "MEMORY.md"), "w") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    main()
