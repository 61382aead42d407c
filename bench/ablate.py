#!/usr/bin/env python3
"""Where a per-request cost goes: Envoy CPU per request for variants of one modelroute
deployment, measured with less noise than the load benchmark (one Envoy worker pinned to CPU
0; wrk and the mock pods pinned to CPU 1), in interleaved rounds.

usage: ablate.py [--rounds N] [--duration S] [--connections N] [--pods N] [--old-wasm PATH]
                 [--fresh-prompts | --fresh-endings | --sessions N] VARIANT...

--fresh-prompts: every request's prompt starts with a number of its own, so no pod has seen
it (what one-off prompts cost the prefix index and its placement records).
--fresh-endings: every request's prompt has a number of its own 200 bytes before its end, after
the same ~700 bytes, so each starts a new branch off a prefix every pod has seen (a new
conversation after a shared system prompt: what bounded-load placement and its placement
record cost).
--sessions N: every request names one of N sessions in turn (`X-Session-ID: s<i>`).

Variants (each a bootstrap rendered by `modelroute-controller bootstrap`, then edited):
  plain       Envoy routing to the pods, no filter (the floor)
  plainhist   `plain` with one stats-logger histogram shaped as Kthena's request duration (7
              labels, read from the request; unit Percent): what Envoy's only way to record a
              per-request histogram in seconds costs by itself, with no filter at all
  old         the filter build given by --old-wasm, no access loggers
  filter      this filter, no access loggers (what the filter itself costs)
  main        this filter, only the histogram every request records (request duration)
  metrics     this filter, Kthena's metrics (the shipped default with --access-log off)
  all         this filter, Kthena's metrics and access log (JSON, a file)
  limited     `metrics` with a token rate limit on the route (budgets never exhausted): what
              local rate limiting costs a request
  global      `limited` with the budget global: Envoy's rate-limit filter, modelroute-ratelimit
              and a real Redis (both on CPU 1): what a global budget costs a request
  timed       `metrics` with the timing build (target/timing): also prints the VM's own time
              per callback (host calls included), from its modelroute.timing.* counters
  affinity    `filter` picking with examples/scheduler/cache-affinity.yaml without boundedLoad
              and podSpeed
  bounded     the same with boundedLoad 1.5: what bounded-load placement costs (with
              --fresh-endings every request is a new branch, placed under the bound and
              published)
  speed       `filter` picking with examples/scheduler/cache-affinity.yaml as shipped (also
              podSpeed): what weighing pods by speed costs (busy pods scraped for their TPOT)
  leastreq    `filter` picking by least-request alone
  session     `leastreq` with Kthena's session-affinity (weight 10) before it: with
              --sessions, what reading (and renewing) a session's binding costs a request
  sticky      `leastreq` with the route's sessionSticky (header X-Session-ID): with
              --sessions, what a sticky session costs a request
  stickyshared `sticky` with the gateways' shared store (modelroute-ratelimit and a real
              Redis, both on CPU 1): a session this Envoy has not confirmed within a second
              is claimed in the store (the pick ranks, then ranks again with the answer),
              a move written there
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load as L  # noqa: E402


def bootstrap(port, admin, conf, access_log, extra=()):
    return subprocess.run([L.CONTROLLER, "bootstrap", "--listen-port", str(port), "--admin-port", str(admin),
                           "--config-dir", conf, "--access-log", access_log, "--access-log-format", "json", *extra],
                          check=True, capture_output=True, text=True).stdout


# One histogram as Kthena's request duration is recorded (a value and seven labels), every
# label read by a formatter that needs no filter.
PLAIN_HISTOGRAM = {
    "name": "envoy.access_loggers.stats",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.stats.v3.Config",
        "stats_scope": {"prefix": "wasmcustom"},
        "histograms": [{
            "stat": {"name": "kthena_router_request_duration_seconds", "tags": [
                {"name": n, "value_format": f} for n, f in [
                    ("model", "%REQ(host)%"), ("path", "%REQ(:path)%"), ("status_code", "%RESPONSE_CODE%"),
                    ("model_route", "%REQ(:method)%"), ("backend_type", "%PROTOCOL%"),
                    ("backend_name", "%REQ(content-type)%"), ("upstream_model", "%REQ(host)%")]]},
            "unit": "Percent", "value_format": "%DURATION%"}],
    },
}


def set_loggers(boot, keep):
    """The bootstrap with its HTTP connection manager's access loggers cut to none (`keep` 0)
    or to the metrics logger with only its first histogram, the one every request records
    (`keep` 1)."""
    line = re.search(r"^(\s+access_log: )(\[.*\])$", boot, re.M)
    loggers = json.loads(line.group(2))[:keep]
    for logger in loggers:
        logger["typed_config"]["histograms"] = logger["typed_config"]["histograms"][:1]
    return boot[: line.start(2)] + json.dumps(loggers) + boot[line.end(2):]


# wrk: the body with a request counter of its own spliced into the first message's content:
# `split` is the Lua pattern cutting the body in two around where it goes.
def fresh_lua(split):
    return L.per_request_lua("head .. n .. ' ' .. tail", setup=f"""local head, tail = body:match({split})
assert(head, "the body has no content member")""")


# At the start of the content: a prompt no pod has seen.
FRESH_LUA = fresh_lua("""'^(.-"content": ")(.*)$'""")
# 200 bytes before the end of the content (the last message's): the same ~700 bytes first,
# then whole blocks of its own, so each prompt branches off a prefix every pod has seen. (At
# the very end the counter would only change the prompt's last, partial block: a
# continuation, not a branch.)
FRESH_ENDINGS_LUA = fresh_lua("""'^(.*)(' .. string.rep(".", 200) .. '"}%].*)$'""")


def sessions_lua(sessions):
    """The same body every request, naming session `n % sessions`."""
    return L.per_request_lua("body", headers=f', ["X-Session-ID"] = "s" .. (n % {sessions})')


# Scheduler profiles of the picking variants besides the shipped cache-affinity one.
LEAST_REQUEST = "scheduler:\n  plugins:\n    Score:\n      enabled:\n      - {name: least-request, weight: 1}\n"
SESSION = LEAST_REQUEST.replace("      enabled:\n", "      enabled:\n      - {name: session-affinity, weight: 10}\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--old-wasm")
    ap.add_argument("--connections", type=int, default=16, help="wrk connections (1: unloaded latency)")
    ap.add_argument("--pods", type=int, default=2, help="mock pods (1: every variant picks the same pod)")
    ap.add_argument("--fresh-prompts", action="store_true", help="a prompt no pod has seen, every request")
    ap.add_argument("--fresh-endings", action="store_true", help="a new branch off a known prefix, every request")
    ap.add_argument("--sessions", type=int, default=0, help="requests name one of N sessions in turn")
    ap.add_argument("variants", nargs="+")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="modelroute-ablate-")
    procs = L.Procs()
    try:
        pod_port = L.free_port()
        ips = [f"127.0.0.{91 + i}" for i in range(args.pods)]
        pods = [f"{ip}:{pod_port}" for ip in ips]
        logs = open(os.path.join(work, "mock.log"), "w")
        for i, addr in enumerate(pods):
            procs.start(["taskset", "-c", "1", os.path.join(L.BIN, "mock-llm"), "serve", "--listen", addr,
                         "--model", L.MODEL, "--pod", f"default/bench-{i}"], logs)
        for addr in pods:
            L.wait_http(f"http://{addr}/health")
        res = os.path.join(work, "resources")
        os.makedirs(res)
        with open(os.path.join(res, "bench.yaml"), "w") as f:
            f.write(L.modelroute_resources(pod_port))
        res_limited = os.path.join(work, "resources-limited")
        os.makedirs(res_limited)
        with open(os.path.join(res_limited, "bench.yaml"), "w") as f:
            limit = "  rateLimit: { inputTokensPerUnit: 1000000000, outputTokensPerUnit: 1000000000 }\n"
            f.write(L.modelroute_resources(pod_port).replace("  rules:\n", limit + "  rules:\n", 1))
        res_sticky = os.path.join(work, "resources-sticky")
        os.makedirs(res_sticky)
        with open(os.path.join(res_sticky, "bench.yaml"), "w") as f:
            sticky = "  sessionSticky: { sources: [ { type: Header, name: X-Session-ID } ] }\n"
            f.write(L.modelroute_resources(pod_port).replace("  rules:\n", sticky + "  rules:\n", 1))
        rate_limit_service = None
        if "global" in args.variants or "stickyshared" in args.variants:
            redis_port, rls_port = L.free_port(), L.free_port()
            procs.start(["taskset", "-c", "1", "redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                         "--save", "", "--appendonly", "no"], logs)
            rate_limit_service = f"127.0.0.1:{rls_port}"
            procs.start(["taskset", "-c", "1", os.path.join(L.BIN, "modelroute-ratelimit"), "--listen",
                         rate_limit_service], logs)
            res_global = os.path.join(work, "resources-global")
            os.makedirs(res_global)
            with open(os.path.join(res_global, "bench.yaml"), "w") as f:
                limit = ("  rateLimit: { inputTokensPerUnit: 1000000000, outputTokensPerUnit: 1000000000, "
                         f"global: {{ redis: {{ address: '127.0.0.1:{redis_port}' }} }} }}\n")
                f.write(L.modelroute_resources(pod_port).replace("  rules:\n", limit + "  rules:\n", 1))
        with open(os.path.join(work, "pods.yaml"), "w") as f:
            f.write(L.pods_yaml(ips, pod_port))
        profile = open(os.path.join(L.ROOT, "examples", "scheduler", "cache-affinity.yaml")).read()
        bounded = re.sub(r"(?m)^.*podSpeed:.*\n", "", profile)
        profiles = {"speed": profile, "bounded": bounded,
                    "affinity": re.sub(r"(?m)^.*boundedLoad:.*\n", "", bounded),
                    "leastreq": LEAST_REQUEST, "session": SESSION, "sticky": LEAST_REQUEST,
                    "stickyshared": LEAST_REQUEST}
        for name, text in profiles.items():
            with open(os.path.join(work, f"{name}.yaml"), "w") as f:
                f.write(text)
        live = {}
        for name in args.variants:
            port, admin = L.free_port(), L.free_port()
            cfg = os.path.join(work, f"{name}.yaml")
            if name in ("plain", "plainhist"):
                boot = L.plain_bootstrap(port, admin, pods)
                if name == "plainhist":
                    boot = boot.replace("stat_prefix: bench\n", "stat_prefix: bench\n          access_log: "
                                        + json.dumps([PLAIN_HISTOGRAM]) + "\n", 1)
            else:
                conf = os.path.join(work, f"config-{name}")
                wasm = {"old": args.old_wasm, "timed": L.TIMING_WASM}.get(name, L.WASM)
                resources = {"limited": res_limited, "sticky": res_sticky, "stickyshared": res_sticky,
                             "global": res_global if name == "global" else None}.get(name, res)
                service = ["--rate-limit-service", rate_limit_service] if name in ("global", "stickyshared") else []
                shared = ["--shared-placements-redis", f"127.0.0.1:{redis_port}"] if name == "stickyshared" else []
                picking = ["--scheduler-config", os.path.join(work, f"{name}.yaml")] if name in profiles else []
                subprocess.run([L.CONTROLLER, "render", "--resources", resources, "--pods", os.path.join(work, "pods.yaml"),
                                "--wasm", wasm, "--out", conf] + service + shared + picking, check=True, capture_output=True)
                access_log = os.path.join(work, f"{name}-access.log") if name == "all" else "off"
                boot = bootstrap(port, admin, conf, access_log, service)
                keep = {"old": 0, "filter": 0, "main": 1, "affinity": 0, "bounded": 0, "speed": 0, "leastreq": 0,
                        "session": 0, "sticky": 0, "stickyshared": 0}.get(name)
                if keep is not None:
                    boot = set_loggers(boot, keep)
            with open(cfg, "w") as f:
                f.write(boot)
            p = procs.start(["taskset", "-c", "0", L.envoy_bin(), "-c", cfg, "--disable-hot-restart", "--concurrency", "1",
                             "-l", "error"], open(os.path.join(work, f"{name}.log"), "w"))
            body = L.chat_body(1024).encode()
            L.wait_http(f"http://127.0.0.1:{port}/v1/chat/completions", 60, ok=lambda s: s == 200, data=body,
                        headers={"Content-Type": "application/json"})
            live[name] = (port, p.pid, admin)
        body_file = os.path.join(work, "body.json")
        with open(body_file, "w") as f:
            f.write(L.chat_body(1024))
        lua = os.path.join(work, "post.lua")
        with open(lua, "w") as f:
            f.write(FRESH_LUA if args.fresh_prompts else FRESH_ENDINGS_LUA if args.fresh_endings
                    else sessions_lua(args.sessions) if args.sessions else L.WRK_LUA)
        results = {n: [] for n in live}
        latencies = {n: [] for n in live}
        for _ in range(args.rounds):
            for name, (port, pid, admin) in live.items():
                before = L.cpu_ticks(pid)
                clocks = L.timing_stats(admin) if name == "timed" else None
                env = dict(os.environ, BENCH_BODY=body_file)
                out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", f"-c{args.connections}", "--latency", f"-d{args.duration}s", "-s", lua,
                                      f"http://127.0.0.1:{port}/v1/chat/completions"], env=env, capture_output=True,
                                     text=True).stdout
                n = int(re.search(r"(\d+) requests in", out).group(1))
                used = (L.cpu_ticks(pid) - before) / L.TICK
                results[name].append(used * 1e6 / n)
                p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
                latencies[name].append(p50.group(1) if p50 else "?")
                if clocks is not None:
                    after = L.timing_stats(admin)
                    reqs = after.get("requests", 0) - clocks.get("requests", 0)
                    vm = {k[:-3]: round((after[k] - clocks.get(k, 0)) / reqs / 1000, 2)
                          for k in after if k.endswith("_ns") and reqs}
                    print(json.dumps({"variant": name, "vm_us_per_request": vm}), flush=True)
                print(json.dumps({"variant": name, "cpu_us_per_req": round(used * 1e6 / n, 2), "requests": n}), flush=True)
        print("variant  Envoy CPU us/request per round  (median)")
        for name, v in results.items():
            print(f"{name:8} {', '.join(f'{x:.1f}' for x in v)}  ({sorted(v)[len(v) // 2]:.1f})"
                  f"  latency p50 at {args.connections} connections: {', '.join(latencies[name])}")
    finally:
        procs.stop_all()


if __name__ == "__main__":
    main()
