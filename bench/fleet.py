#!/usr/bin/env python3
"""Load signals at fleet scale: what collecting engine metrics costs one Envoy with thousands of
pods, and how often each pod is scraped when several Envoys share the pods, with and without
traffic (busy vLLM pods report in-band and are not scraped). Results: bench/LOAD_SIGNALS.md.

usage: fleet.py one   [--pods 5000] [--seconds 30]
       fleet.py many  [--envoys 4] [--pods 200] [--seconds 20]

Pods are `mock-llm fleet` (one process, one listener per pod on 127.2.x.y); every Envoy runs
the shipped bootstrap with Kthena's default scheduler and a 1 s metrics interval.
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

FIRST = (127, 2, 0, 1)

# Chat requests whose prompts differ from the first byte, so every Envoy's scheduler spreads
# them over all pods (a fixed prompt would pin each Envoy to the pod its prefix index chose).
VARIED_LUA = """
local n = 0
request = function()
  n = n + 1
  local body = '{"model":"%s","messages":[{"role":"user","content":"' .. n .. ' ' .. math.random(1e9)
    .. ' tell me about the fleet"}],"max_tokens":8}'
  return wrk.format("POST", "/v1/chat/completions", {["Content-Type"] = "application/json"}, body)
end
""" % L.MODEL


def ip(i):
    n = (FIRST[1] << 16 | FIRST[2] << 8 | FIRST[3]) + i
    return f"127.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


def start_fleet(procs, work, count, port):
    log = open(os.path.join(work, "fleet.log"), "w")
    p = procs.start([os.path.join(L.BIN, "mock-llm"), "fleet", "--count", str(count), "--listen", f"{ip(0)}:{port}",
                     "--model", L.MODEL], log)
    for i in (0, count // 2, count - 1):
        L.wait_http(f"http://{ip(i)}:{port}/health", 60)
    return p


def start_envoy(procs, work, name, pods_file, res_dir):
    port, admin, p = L.start_modelroute(procs, work, name, res_dir, pods_file, ["--metrics-interval-ms", "1000"])
    L.wait_http(f"http://127.0.0.1:{port}/v1/models", 60, ok=lambda s: s == 200)
    return port, admin, p


def stats(admin, prefix):
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats?filter={prefix}", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        k, _, v = line.partition(": ")
        try:
            out[k] = int(v)
        except ValueError:
            pass
    return out


def pod_counts(port, idx):
    """(scrapes, successful requests) a mock pod has answered so far."""
    r = json.loads(urllib.request.urlopen(f"http://{ip(idx)}:{port}/mock/metrics", timeout=10).read())
    return r["scrapes"], r["requests_ok"]


def scrapes(port, idx):
    return pod_counts(port, idx)[0]


def setup(work, count, pod_port):
    res = os.path.join(work, "resources")
    os.makedirs(res)
    with open(os.path.join(res, "fleet.yaml"), "w") as f:
        f.write(L.modelroute_resources(pod_port))
    pods_file = os.path.join(work, "pods.yaml")
    with open(pods_file, "w") as f:
        f.write(L.pods_yaml([ip(i) for i in range(count)], pod_port))
    return res, pods_file


def one(args):
    work = tempfile.mkdtemp(prefix="modelroute-fleet-")
    procs = L.Procs()
    try:
        pod_port = L.free_port()
        fleet = start_fleet(procs, work, args.pods, pod_port)
        res, pods_file = setup(work, args.pods, pod_port)
        _, admin, envoy = start_envoy(procs, work, "envoy", pods_file, res)
        time.sleep(5)  # the first intervals: lease, first scrapes, first snapshot
        sample = range(0, args.pods, max(1, args.pods // 50))
        before = ({i: scrapes(pod_port, i) for i in sample}, L.cpu_ticks(envoy.pid), L.cpu_ticks(fleet.pid),
                  stats(admin, "modelroute.metrics"))
        time.sleep(args.seconds)
        after = ({i: scrapes(pod_port, i) for i in sample}, L.cpu_ticks(envoy.pid), L.cpu_ticks(fleet.pid),
                 stats(admin, "modelroute.metrics"))
        mem = stats(admin, "memory_bytes")
        per_pod = [(after[0][i] - before[0][i]) / args.seconds for i in sample]
        ok = sum(v for k, v in after[3].items() if k.endswith("scrape_ok")) - \
            sum(v for k, v in before[3].items() if k.endswith("scrape_ok"))
        failed = sum(v for k, v in after[3].items() if k.endswith("scrape_failed")) - \
            sum(v for k, v in before[3].items() if k.endswith("scrape_failed"))
        print(json.dumps({
            "pods": args.pods, "seconds": args.seconds,
            "envoy_cpu_percent": round((after[1] - before[1]) / L.TICK / args.seconds * 100, 1),
            "engines_cpu_percent_for_scrapes": round((after[2] - before[2]) / L.TICK / args.seconds * 100, 1),
            "scrapes_per_pod_per_s": {"min": min(per_pod), "max": max(per_pod),
                                      "mean": round(sum(per_pod) / len(per_pod), 2)},
            "side_calls_ok_per_s": round(ok / args.seconds, 1), "failed_per_s": round(failed / args.seconds, 1),
            "vm_memory_bytes": mem,
        }, indent=1))
    finally:
        procs.stop_all()


def many(args):
    work = tempfile.mkdtemp(prefix="modelroute-fleet-")
    procs = L.Procs()
    try:
        pod_port = L.free_port()
        start_fleet(procs, work, args.pods, pod_port)
        res, pods_file = setup(work, args.pods, pod_port)
        envoys = [start_envoy(procs, work, f"envoy{e}", pods_file, res) for e in range(args.envoys)]
        time.sleep(5)

        def rate(seconds, load):
            before = [pod_counts(pod_port, i) for i in range(args.pods)]
            wrks = []
            if load:
                lua = os.path.join(work, "varied.lua")
                with open(lua, "w") as f:
                    f.write(VARIED_LUA)
                wrks = [subprocess.Popen(["wrk", "-t1", "-c8", f"-d{seconds}s", "-s", lua,
                                          f"http://127.0.0.1:{port}/v1/chat/completions"],
                                         stdout=subprocess.PIPE, text=True) for port, _, _ in envoys]
            time.sleep(seconds)
            for w in wrks:
                w.wait()
            after = [pod_counts(pod_port, i) for i in range(args.pods)]
            # Busy: served at least 10 requests a second in the window.
            rows = [((a[0] - b[0]) / seconds, (a[1] - b[1]) / seconds) for a, b in zip(after, before)]

            def summary(sel):
                if not sel:
                    return None
                return {"pods": len(sel), "scrapes_per_s_mean": round(sum(sel) / len(sel), 2),
                        "min": min(sel), "max": max(sel)}
            return {"busy": summary([s for s, r in rows if r >= 10]),
                    "idle": summary([s for s, r in rows if r < 10]),
                    "requests_per_s": round(sum(r for _, r in rows), 1)}

        idle = rate(args.seconds, False)
        busy = rate(args.seconds, True)
        skipped = sum(v for port, admin, _ in envoys for k, v in stats(admin, "scrape_skipped").items())
        print(json.dumps({"envoys": args.envoys, "pods": args.pods, "seconds": args.seconds,
                          "scrapes_per_pod_per_s_idle": idle, "scrapes_per_pod_per_s_under_load": busy,
                          "scrapes_skipped_in_band_total": skipped}, indent=1))
    finally:
        procs.stop_all()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["one", "many"])
    ap.add_argument("--pods", type=int)
    ap.add_argument("--envoys", type=int, default=4)
    ap.add_argument("--seconds", type=int)
    args = ap.parse_args()
    if args.mode == "one":
        args.pods, args.seconds = args.pods or 5000, args.seconds or 30
        one(args)
    else:
        args.pods, args.seconds = args.pods or 200, args.seconds or 20
        many(args)


if __name__ == "__main__":
    main()
