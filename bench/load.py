#!/usr/bin/env python3
"""Load benchmark: modelroute.wasm in Envoy against plain Envoy, a do-nothing wasm filter and
the peer routers users would deploy instead (SGLang's router, vllm-router), all in front of the
same mock-llm pods, driven by wrk. Standard library only.

    python3 bench/load.py [--quick] [--rounds N] [--duration S] [--out bench]

Writes bench/RESULTS.md (bench/quick/ with --quick) (table, machine, versions, exact commands), bench/results.json and
bench/results.svg. Run through `./build.sh bench [--quick]`, which installs and builds what
this needs. Every process binds 127.0.0.1 only and every run is bounded in time.
"""

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, ".venv")
# Release builds of mock-llm and the controller (./build.sh bench builds them): a debug mock
# would be the bottleneck for large bodies.
BIN = os.environ.get("MODELROUTE_BIN_DIR", os.path.join(ROOT, "target", "release"))
# The controller only renders the config once; its debug build is fine.
CONTROLLER = os.path.join(ROOT, "target", "debug", "modelroute-controller")
WASM = os.environ.get("MODELROUTE_WASM") or os.path.join(ROOT, "target", "wasm32-wasip1", "release", "modelroute.wasm")
TIMING_WASM = os.path.join(ROOT, "target", "timing", "wasm32-wasip1", "release", "modelroute.wasm")
NOOP_WASM = os.path.join(ROOT, "target", "wasm32-wasip1", "release", "noop_filter.wasm")
MODEL = "bench-model"
TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, deadline_s=30, ok=lambda status: status < 500, data=None, headers=None):
    end = time.time() + deadline_s
    last = None
    while time.time() < end:
        try:
            req = urllib.request.Request(url, data=data, headers=headers or {})
            with urllib.request.urlopen(req, timeout=2) as r:
                if ok(r.status):
                    return
        except Exception as e:  # noqa: BLE001 - anything means "not yet"
            last = e
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready: {last}")


def wait_port(host, port, deadline_s=10):
    """Until something accepts TCP connections on host:port."""
    end = time.time() + deadline_s
    while time.time() < end:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{host}:{port} not listening")


def cpu_ticks(pid):
    """utime + stime of a process and its live descendants (Python launchers fork servers)."""
    total = 0
    for p in [pid] + descendants(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total


def descendants(pid):
    out, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                kids = [int(x) for x in f.read().split()]
        except OSError:
            kids = []
        out += kids
        frontier += kids
    return out


class Procs:
    def __init__(self):
        self.procs = []

    def start(self, args, log, env=None):
        p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.procs.append(p)
        return p

    def stop_all(self):
        for p in reversed(self.procs):
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except OSError:
                pass
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        self.procs = []


def envoy_bin():
    import glob

    c = glob.glob(os.path.join(VENV, "lib", "python3*", "site-packages", "envoy", "_bin", "envoy"))
    if not c:
        sys.exit("Envoy not installed in .venv: run ./build.sh build first")
    return c[0]


def plain_bootstrap(port, admin, pods, wasm=None, configuration=None):
    wasm_filter = ""
    if wasm:
        # With a configuration the filter may hold each request until its body is complete
        # (pause on headers), which needs allow_on_headers_stop_iteration, as modelroute's ECDS sets.
        mode = f"""
                allow_on_headers_stop_iteration: true
                configuration: {{ "@type": type.googleapis.com/google.protobuf.StringValue, value: {json.dumps(configuration)} }}""" if configuration else ""
        wasm_filter = f"""
          - name: noop
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: noop{mode}
                vm_config:
                  runtime: envoy.wasm.runtime.v8
                  code: {{ local: {{ filename: {wasm} }} }}"""
    endpoints = "\n".join(
        f"        - endpoint: {{ address: {{ socket_address: {{ address: {a.split(':')[0]}, port_value: {a.split(':')[1]} }} }} }}"
        for a in pods
    )
    return f"""
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}
static_resources:
  listeners:
  - address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    per_connection_buffer_limit_bytes: 67108864
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{{ match: {{ prefix: / }}, route: {{ cluster: pods, timeout: 0s }} }}]
          http_filters:{wasm_filter}
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
  clusters:
  - name: pods
    type: STATIC
    connect_timeout: 1s
    per_connection_buffer_limit_bytes: 67108864
    load_assignment:
      cluster_name: pods
      endpoints:
      - lb_endpoints:
{endpoints}
"""


def start_modelroute(procs, work, name, res_dir, pods_file, render_args=(), bootstrap_args=()):
    """Envoy with the filter as deployed, for the pods in `pods_file`: the controller renders
    `res_dir` (with `render_args`) and the shipped bootstrap (access log off); two workers
    (MODELROUTE_ENVOY_WORKERS).
    Returns (port, admin port, process); the caller waits for it to answer."""
    port, admin = free_port(), free_port()
    conf = os.path.join(work, f"config-{name}")
    subprocess.run([CONTROLLER, "render", "--resources", res_dir, "--pods", pods_file, "--wasm", WASM, "--out", conf,
                    *render_args], check=True, capture_output=True)
    boot = subprocess.run([CONTROLLER, "bootstrap", "--listen-port", str(port), "--admin-port", str(admin),
                           "--config-dir", conf, "--access-log", "off", *bootstrap_args], check=True,
                          capture_output=True,
                          text=True).stdout
    cfg = os.path.join(work, f"{name}.yaml")
    with open(cfg, "w") as f:
        f.write(boot)
    workers = os.environ.get("MODELROUTE_ENVOY_WORKERS", "2")
    p = procs.start([envoy_bin(), "-c", cfg, "--disable-hot-restart", "--concurrency", workers, "-l", "error"],
                    open(os.path.join(work, f"{name}.log"), "w"))
    return port, admin, p


def modelroute_resources(pod_port):
    return f"""apiVersion: networking.serving.volcano.sh/v1alpha1
kind: ModelServer
metadata: {{ name: bench, namespace: default }}
spec:
  workloadSelector: {{ matchLabels: {{ app: bench }} }}
  workloadPort: {{ port: {pod_port} }}
  model: {MODEL}
  inferenceEngine: vLLM
---
apiVersion: networking.serving.volcano.sh/v1alpha1
kind: ModelRoute
metadata: {{ name: bench, namespace: default }}
spec:
  modelName: {MODEL}
  rules:
  - name: default
    targetModels: [{{ modelServerName: bench }}]
"""


SCHEDULER_OFF = """apiVersion: v1
kind: ConfigMap
metadata: { name: kthena-router-config, namespace: kthena-system }
data:
  routerConfiguration: |-
    scheduler:
      plugins:
        Filter: { enabled: [] }
        Score: { enabled: [] }
"""


def pods_yaml(ips, pod_port):
    items = []
    for i, ip in enumerate(ips):
        items.append(
            f"""- apiVersion: v1
  kind: Pod
  metadata: {{ name: bench-{i}, namespace: default, labels: {{ app: bench }} }}
  spec: {{ containers: [{{ name: e, env: [{{ name: MODEL_NAME, value: {MODEL} }}], ports: [{{ containerPort: {pod_port} }}] }}] }}
  status: {{ phase: Running, podIP: {ip}, conditions: [{{ type: Ready, status: "True" }}] }}"""
        )
    return "apiVersion: v1\nkind: List\nitems:\n" + "\n".join(items) + "\n"


def chat_body(size):
    filler = "The quick brown fox jumps over the lazy dog. "
    content = (filler * (size // len(filler) + 1))[: max(size - 120, 10)]
    return json.dumps({"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 8})


WRK_LUA = """
local f = io.open(os.getenv("BENCH_BODY"), "rb")
local body = f:read("*a")
f:close()
local req
init = function(args)
  req = wrk.format("POST", "/v1/chat/completions", {["Host"] = "bench", ["Content-Type"] = "application/json"}, body)
end
request = function() return req end
"""


def per_request_lua(body, setup="", headers=""):
    """A wrk script whose every request is built anew: the body file (BENCH_BODY) read into
    `body`, then the Lua `setup` lines, and each request's body the Lua expression `body`
    (of `body` and the request's number `n`), with `headers` (Lua table entries) added."""
    return f"""
local f = io.open(os.getenv("BENCH_BODY"), "rb")
local body = f:read("*a")
f:close()
{setup}
local n = 0
request = function()
  n = n + 1
  return wrk.format("POST", "/v1/chat/completions",
                    {{["Host"] = "bench", ["Content-Type"] = "application/json"{headers}}}, {body})
end
"""


def timing_stats(admin):
    """The timing build's counters (nanoseconds per phase, requests) from Envoy's admin."""
    import urllib.request

    out = {}
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats?filter=modelroute.timing", timeout=10).read().decode()
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if value.strip().isdigit():
            out[name.rsplit(".", 1)[-1]] = int(value)
    return out


def first_byte(port, n):
    """Median and p99 milliseconds from sending a streaming chat request to its first body
    byte (the first SSE event), over n sequential requests on fresh connections."""
    import socket
    body = json.dumps({"model": MODEL, "stream": True, "max_tokens": 8,
                       "messages": [{"role": "user", "content": "San Francisco is a"}]}).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode()
    samples = []
    for _ in range(n):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            t0 = time.perf_counter()
            c.sendall(head + body)
            got = b""
            while b"data:" not in got:
                chunk = c.recv(65536)
                if not chunk:
                    raise RuntimeError(f"stream ended early: {got[:200]!r}")
                got += chunk
            samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    return {"first_byte_ms_p50": samples[len(samples) // 2], "first_byte_ms_p99": samples[min(len(samples) - 1, int(len(samples) * 0.99))]}


def run_wrk(port, conns, duration, body_file, lua_file):
    threads = 1 if conns == 1 else 2
    env = dict(os.environ, BENCH_BODY=body_file)
    cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration}s", "--latency", "-s", lua_file, f"http://127.0.0.1:{port}"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=duration + 30).stdout
    res = {"rps": 0.0, "p50_ms": None, "p99_ms": None, "requests": 0, "errors": 0}
    for line in out.splitlines():
        s = line.split()
        if line.startswith("Requests/sec:"):
            res["rps"] = float(s[1])
        elif len(s) == 2 and s[0] in ("50%", "99%"):
            res["p50_ms" if s[0] == "50%" else "p99_ms"] = to_ms(s[1])
        elif "requests in" in line:
            res["requests"] = int(s[0])
        elif line.strip().startswith("Non-2xx") or line.strip().startswith("Socket errors"):
            res["errors"] += sum(int(x.strip(",")) for x in s if x.strip(",").isdigit())
    return res


def to_ms(v):
    for unit, f in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if v.endswith(unit):
            return float(v[: -len(unit)]) * f
    return float(v)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="1 KB and 200 KB, 64 connections, 1 round (< 2 min)")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--duration", type=int, default=None)
    ap.add_argument("--out", default=None, help="default bench/ (bench/quick/ with --quick, so the recorded full run stays)")
    ap.add_argument("--targets", default="envoy,noop-wasm,noop-buffer,modelroute,modelroute-rr,modelroute-timed,vllm-router,sglang-router")
    ap.add_argument("--sizes", help="comma-separated body sizes in bytes (default: by mode)")
    ap.add_argument("--conns", help="comma-separated connection counts (default: by mode)")
    ap.add_argument("--report-from", help="only rewrite the report from a results.json")
    ap.add_argument("--first-byte", type=int, default=0, metavar="N",
                    help="also time N sequential streaming requests per target to their first body byte")
    args = ap.parse_args()
    args.out = args.out or os.path.join(ROOT, "bench", "quick" if args.quick else "")
    sizes = [1024, 200 * 1024] if args.quick else [1024, 16 * 1024, 200 * 1024, 1024 * 1024]
    conns = [64] if args.quick else [1, 64, 150]
    if args.sizes:
        sizes = [int(x) for x in args.sizes.split(",")]
    if args.conns:
        conns = [int(x) for x in args.conns.split(",")]
    rounds = args.rounds or (1 if args.quick else 3)
    duration = args.duration or (3 if args.quick else 5)
    targets = args.targets.split(",")
    if args.report_from:
        with open(args.report_from) as f:
            results = json.load(f)
        sizes = sorted({r["size"] for r in results})
        conns = sorted({r["conns"] for r in results})
        rounds = 1 + max(r["round"] for r in results)
        write_report(args, results, sizes, conns, rounds, duration, targets)
        return

    work = tempfile.mkdtemp(prefix="modelroute-bench-")
    procs = Procs()
    results = []
    try:
        # Two mock engines, the same pods for every target: distinct loopback addresses and
        # one port, as a Kthena ModelServer's pods are.
        pod_port = free_port()
        ips = ["127.0.0.91", "127.0.0.92"]
        pods = [f"{ip}:{pod_port}" for ip in ips]
        logs = open(os.path.join(work, "mocks.log"), "w")
        for i, addr in enumerate(pods):
            procs.start([os.path.join(BIN, "mock-llm"), "serve", "--listen", addr, "--model", MODEL, "--pod", f"default/bench-{i}"], logs)
        for addr in pods:
            wait_http(f"http://{addr}/health")

        live = {}  # target -> (port, pid)
        envoy = envoy_bin()
        for name in targets:
            port, admin = free_port(), free_port()
            log = open(os.path.join(work, f"{name}.log"), "w")
            if name in ("envoy", "noop-wasm", "noop-buffer"):
                cfg = os.path.join(work, f"{name}.yaml")
                with open(cfg, "w") as f:
                    f.write(plain_bootstrap(port, admin, pods, None if name == "envoy" else NOOP_WASM, "buffer" if name == "noop-buffer" else None))
                p = procs.start([envoy, "-c", cfg, "--disable-hot-restart", "--concurrency", "2", "-l", "error"], log)
            elif name in ("modelroute", "modelroute-observed", "modelroute-rr", "modelroute-filter", "modelroute-timed"):
                res_dir, conf = os.path.join(work, "resources"), os.path.join(work, "config")
                os.makedirs(res_dir, exist_ok=True)
                with open(os.path.join(res_dir, "bench.yaml"), "w") as f:
                    f.write(modelroute_resources(pod_port))
                with open(os.path.join(work, "pods.yaml"), "w") as f:
                    f.write(pods_yaml(ips, pod_port))
                render = [CONTROLLER, "render", "--resources", res_dir, "--pods", os.path.join(work, "pods.yaml"), "--wasm", WASM, "--out", conf]
                if name == "modelroute-timed":
                    # The same deployment with the build that clocks each callback in the VM.
                    conf = os.path.join(work, "config-timed")
                    render[render.index(WASM)] = TIMING_WASM
                    render[-1] = conf
                if name in ("modelroute-rr", "modelroute-filter"):
                    # Kthena's scheduler with every plugin off: weighted round robin over the
                    # pods, the same policy the peers run with.
                    conf = os.path.join(work, "config-rr")
                    sched = os.path.join(work, "scheduler-rr.yaml")
                    with open(sched, "w") as f:
                        f.write(SCHEDULER_OFF)
                    render[-1] = conf
                    render += ["--scheduler-config", sched]
                subprocess.run(render, check=True, capture_output=True)
                if name == "modelroute-filter":
                    # Diagnostic: plain Envoy's routing with modelroute.wasm deciding (its
                    # headers are ignored): the filter's own cost, without its Envoy wiring.
                    with open(os.path.join(conf, "ecds", "modelroute.json")) as f:
                        filter_json = json.load(f)["resources"][0]["typed_config"]["config"]["configuration"]["value"]
                    cfg = os.path.join(work, f"{name}.yaml")
                    with open(cfg, "w") as f:
                        f.write(plain_bootstrap(port, admin, pods, WASM, filter_json))
                    p = procs.start([envoy, "-c", cfg, "--disable-hot-restart", "--concurrency", "2", "-l", "error"], log)
                    body = chat_body(1024).encode()
                    wait_http(f"http://127.0.0.1:{port}/v1/chat/completions", 60, ok=lambda s: s == 200, data=body, headers={"Content-Type": "application/json"})
                    live[name] = (port, p.pid, admin)
                    continue
                # Kthena's metrics are always on; "modelroute-observed" also writes Kthena's
                # access log (JSON, a file), i.e. everything on.
                access_log = os.path.join(work, "access.log") if name == "modelroute-observed" else "off"
                boot = subprocess.run([CONTROLLER, "bootstrap", "--listen-port", str(port), "--admin-port", str(admin),
                                       "--config-dir", conf, "--access-log", access_log, "--access-log-format", "json"],
                                      check=True, capture_output=True, text=True).stdout
                cfg = os.path.join(work, f"{name}.yaml")
                with open(cfg, "w") as f:
                    f.write(boot)
                p = procs.start([envoy, "-c", cfg, "--disable-hot-restart", "--concurrency", "2", "-l", "error"], log)
            else:
                env = dict(os.environ, HF_HUB_OFFLINE="1", HF_ENDPOINT="http://127.0.0.1:9")
                urls = [f"http://{addr}" for addr in pods]
                metrics = free_port()
                if name == "vllm-router":
                    cmd = [os.path.join(VENV, "bin", "vllm-router"), "--host", "127.0.0.1", "--port", str(port), "--prometheus-host", "127.0.0.1", "--prometheus-port", str(metrics), "--policy", "round_robin", "--worker-urls", *urls]
                else:
                    exe = shutil.which("smg", path=os.path.join(VENV, "bin")) or os.path.join(VENV, "bin", "smg")
                    cmd = [exe, "launch", "--host", "127.0.0.1", "--port", str(port), "--prometheus-host", "127.0.0.1", "--prometheus-port", str(metrics), "--policy", "round_robin", "--worker-urls", *urls]
                if not os.path.exists(cmd[0]):
                    print(f"skipping {name}: {cmd[0]} not installed", file=sys.stderr)
                    continue
                p = procs.start(cmd, log, env=env)
            body = chat_body(1024).encode()
            try:
                wait_http(f"http://127.0.0.1:{port}/v1/chat/completions", 60, ok=lambda s: s == 200, data=body, headers={"Content-Type": "application/json"})
            except RuntimeError as e:
                print(f"skipping {name}: {e}", file=sys.stderr)
                continue
            live[name] = (port, p.pid, admin)

        if args.first_byte:
            for name, (port, _, _) in live.items():
                r = first_byte(port, args.first_byte)
                r.update(target=name, kind="first_byte")
                print(json.dumps(r), flush=True)

        lua = os.path.join(work, "post.lua")
        with open(lua, "w") as f:
            f.write(WRK_LUA)
        for size in sizes:
            body_file = os.path.join(work, f"body-{size}.json")
            with open(body_file, "w") as f:
                f.write(chat_body(size))
            for c in conns:
                for rnd in range(rounds):
                    for name, (port, pid, admin) in live.items():  # interleaved: A B C A B C ...
                        before = cpu_ticks(pid)
                        clocks = timing_stats(admin) if name == "modelroute-timed" else None
                        r = run_wrk(port, c, duration, body_file, lua)
                        used = (cpu_ticks(pid) - before) / TICK
                        r.update(target=name, size=size, conns=c, round=rnd, cpu_us_per_req=(used * 1e6 / r["requests"]) if r["requests"] else None)
                        if clocks is not None:
                            after = timing_stats(admin)
                            n = after.get("requests", 0) - clocks.get("requests", 0)
                            for phase in ("headers", "body", "done"):
                                key = f"{phase}_ns"
                                r[f"vm_{phase}_us"] = (after.get(key, 0) - clocks.get(key, 0)) / n / 1000 if n else None
                        results.append(r)
                        print(json.dumps(r), flush=True)
    finally:
        procs.stop_all()
    write_report(args, results, sizes, conns, rounds, duration, targets)
    shutil.rmtree(work, ignore_errors=True)


def median_of(rows, key):
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def summarize(results):
    table = {}
    for r in results:
        table.setdefault((r["size"], r["conns"], r["target"]), []).append(r)
    out = {}
    for k, rows in table.items():
        keys = {m for r in rows for m in r if m in ("rps", "p50_ms", "p99_ms", "cpu_us_per_req") or m.startswith("vm_")}
        out[k] = {m: median_of(rows, m) for m in keys}
        out[k]["errors"] = sum(r["errors"] for r in rows)
    return out


def human(size):
    return f"{size // 1024} KB" if size < 1024 * 1024 else f"{size // (1024 * 1024)} MB"


DESCRIPTIONS = [
    ("envoy", "plain Envoy, round robin to the pods, no filter: the limit"),
    ("noop-wasm", "plain Envoy + a wasm filter whose callbacks return at once: the VM floor"),
    ("noop-buffer", "the same no-op filter holding each request until its body is complete (what any body-reading router must do)"),
    ("modelroute", "Envoy + modelroute.wasm as deployed: controller-rendered ECDS/CDS/EDS, default Kthena scheduler (least-request filter; least-request, gpu-usage, least-latency, prefix-cache scores), metrics collected from the pods"),
    ("modelroute-rr", "the same with every scheduler plugin off: weighted round robin over the pods, the peers' policy"),
    ("modelroute-timed", "`modelroute` built with the `timing` feature: clocks each callback inside the VM (its clock reads and counter updates add ~5 us of Envoy CPU per request, mostly outside the measured intervals)"),
    ("modelroute-filter", "diagnostic: modelroute.wasm (scheduler off) in plain Envoy's routing, its headers ignored: the filter without its Envoy wiring"),
    ("vllm-router", "vllm-router (PyPI), `--policy round_robin`"),
    ("sglang-router", "SGLang's router (PyPI `sglang-router`, binary `smg`), `--policy round_robin`"),
]


def fmt(v, d=2):
    return "-" if v is None else f"{v:.{d}f}"


def target_checks(s, sizes, conns):
    """The issue's targets, measured: (target, measured, verdict)."""
    out = []
    c64 = 64 if 64 in conns else conns[-1]
    get = lambda sz, c, t, m: s.get((sz, c, t), {}).get(m)  # noqa: E731
    if 1024 in sizes:
        mr, noop = get(1024, c64, "modelroute", "cpu_us_per_req"), get(1024, c64, "noop-wasm", "cpu_us_per_req")
        if mr is not None and noop is not None:
            out.append(("Envoy CPU above the no-op wasm filter at 1 KB: <= 5 us", f"{mr - noop:.0f} us ({c64} connections)", "met" if mr - noop <= 5 else "missed"))
        for c in conns:
            r, base = get(1024, c, "modelroute", "rps"), get(1024, c, "envoy", "rps")
            if r and base:
                out.append((f"requests/s at 1 KB >= 0.8x plain Envoy ({c} connections)", f"{r / base:.2f}x", "met" if r / base >= 0.8 else "missed"))
    big = [z for z in sizes if z >= 200 * 1024]
    if 1024 in sizes and big:
        z = max(big)
        a, b = get(1024, c64, "modelroute-timed", "vm_body_us"), get(z, c64, "modelroute-timed", "vm_body_us")
        if a is not None and b is not None and b > a:
            rate = (z - 1024) / ((b - a) * 1e-6) / 1e9
            out.append(("body handling scales at >= 1 GB/s (VM body callback, 1 KB -> " + human(z) + ")", f"{rate:.2f} GB/s", "met" if rate >= 1 else "missed"))
    if 200 * 1024 in sizes:
        c = 150 if 150 in conns else c64
        a, b = get(200 * 1024, c, "modelroute", "p50_ms"), get(200 * 1024, c, "envoy", "p50_ms")
        if a is not None and b is not None:
            out.append((f"200 KB at {c} connections: p50 < plain Envoy + 5 ms", f"+{a - b:.2f} ms", "met" if a - b < 5 else "missed"))
    behind, compared = [], 0
    for z in sizes:
        for c in conns:
            m = s.get((z, c, "modelroute"))
            for peer in ("vllm-router", "sglang-router"):
                p = s.get((z, c, peer))
                if not m or not p:
                    continue
                compared += 1
                if m["rps"] < p["rps"]:
                    behind.append(f"{human(z)}/{c}: {peer} req/s {p['rps']:.0f} vs {m['rps']:.0f}")
                if m.get("p99_ms") is not None and p.get("p99_ms") is not None and m["p99_ms"] > p["p99_ms"]:
                    behind.append(f"{human(z)}/{c}: {peer} p99 {p['p99_ms']:.1f} vs {m['p99_ms']:.1f} ms")
    if compared:
        out.append(("ahead of both peers on req/s and p99 in every cell", f"all {compared} comparisons" if not behind else "behind in: " + "; ".join(behind), "met" if not behind else "missed"))
    return out


def write_report(args, results, sizes, conns, rounds, duration, targets):
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    s = summarize(results)
    names = [t for t in targets if any(k[2] == t for k in s)]
    cmd = "python3 bench/load.py" + (" --quick" if args.quick else "")
    lines = [
        "# Load benchmark: modelroute.wasm vs plain Envoy and peer routers",
        "",
        f"`./build.sh bench{' --quick' if args.quick else ''}` (which runs `{cmd}`): {rounds} interleaved round(s) of {duration} s"
        " per cell, medians; wrk POSTs an OpenAI chat completion request with a body of the given size.",
        "",
        f"Machine: {os.cpu_count()} vCPU ({platform.processor() or platform.machine()}), Linux {platform.release()}. The load"
        " generator, the router under test and the two mock-llm pods share these cores, so absolute numbers are low and"
        " noisy (+/-10-30 % between runs): compare within a row group. Envoy runs 2 workers.",
        f"Versions: {version_line()}.",
        "",
        "Targets:",
        "",
    ]
    lines += [f"- `{t}`: {d}" for t, d in DESCRIPTIONS if t in names]
    lines += [
        "",
        "`CPU us/req` is the router process's CPU time (user + system, from /proc) per request: Envoy for the Envoy",
        "targets, the router for the peers. `VM us` (modelroute-timed) is wall time inside the filter's callbacks,",
        "host calls included: request headers / request body / end of stream.",
        "",
        "| body | conns | target | req/s | x plain Envoy | p50 ms | p99 ms | CPU us/req | VM us | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for size in sizes:
        for c in conns:
            base = s.get((size, c, "envoy"), {}).get("rps")
            for t in names:
                m = s.get((size, c, t))
                if not m:
                    continue
                ratio = f"{m['rps'] / base:.2f}" if base and m["rps"] else "-"
                vm = "-"
                if m.get("vm_body_us") is not None:
                    vm = f"{fmt(m.get('vm_headers_us'), 1)} / {fmt(m.get('vm_body_us'), 1)} / {fmt(m.get('vm_done_us'), 1)}"
                lines.append(f"| {human(size)} | {c} | {t} | {fmt(m['rps'], 0)} | {ratio} | {fmt(m['p50_ms'])} | {fmt(m['p99_ms'])} | {fmt(m.get('cpu_us_per_req'), 0)} | {vm} | {m['errors']} |")
    checks = target_checks(s, sizes, conns)
    if checks:
        lines += ["", "## The issue's targets, as measured in this run", "", "| target | measured | |", "|---|---|---|"]
        lines += [f"| {t} | {m} | {v} |" for t, m, v in checks]
    lines += ["", "Where the filter's cost goes and why each missed target is missed: the Performance section of the"
              " [README](../README.md#performance).", "", "![requests per second relative to plain Envoy](results.svg)", ""]
    with open(os.path.join(args.out, "RESULTS.md"), "w") as f:
        f.write("\n".join(lines))
    write_svg(os.path.join(args.out, "results.svg"), s, sizes, names, conns)


def version_line():
    parts = []
    try:
        out = subprocess.run([envoy_bin(), "--version"], capture_output=True, text=True).stdout
        # "<path>  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL"
        parts.append("Envoy " + out.split("version:", 1)[1].strip().split("/")[1])
    except Exception:  # noqa: BLE001
        pass
    for pkg in ("sglang-router", "vllm-router"):
        out = subprocess.run([os.path.join(VENV, "bin", "pip"), "show", pkg], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Version:"):
                parts.append(f"{pkg} {line.split()[1]}")
    out = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    parts.append((out.stdout or out.stderr).splitlines()[0].split(" [")[0] if (out.stdout or out.stderr) else "wrk")
    parts.append(f"modelroute.wasm {os.path.getsize(WASM)} bytes")
    return ", ".join(parts)


def write_svg(path, s, sizes, names, conns):
    """Bars of req/s relative to plain Envoy: one panel per connection count, a group per size."""
    colors = {"envoy": "#7f7f7f", "noop-wasm": "#bcbd22", "noop-buffer": "#dbdb8d", "modelroute": "#1f77b4", "modelroute-rr": "#aec7e8",
              "modelroute-timed": "#9edae5", "modelroute-filter": "#17becf", "vllm-router": "#ff7f0e", "sglang-router": "#d62728"}
    names = [n for n in names if n not in ("modelroute-timed", "modelroute-filter")]
    bar, gap, ph, top_pad, left, legend_w = 14, 22, 170, 40, 50, 170
    group = len(names) * bar + gap
    w = max(left + len(sizes) * group + legend_w, 560)
    h = top_pad + len(conns) * (ph + 50)

    def ratio(sz, c, t):
        base = s.get((sz, c, "envoy"), {}).get("rps")
        v = s.get((sz, c, t), {}).get("rps") or 0
        return v / base if base else 0

    top = max([ratio(sz, c, t) for sz in sizes for c in conns for t in names] + [1.0]) * 1.05
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">',
           f'<text x="{(w - legend_w) / 2}" y="18" text-anchor="middle" font-size="14">requests/s relative to plain Envoy (higher is better)</text>']
    for ci, c in enumerate(conns):
        y0 = top_pad + ci * (ph + 50)  # panel top
        base_y = y0 + ph
        one = base_y - ph / top
        out.append(f'<text x="{left}" y="{y0 + 4}" font-size="12">{c} connection{"s" if c != 1 else ""}</text>')
        out.append(f'<line x1="{left - 5}" x2="{left + len(sizes) * group}" y1="{one:.1f}" y2="{one:.1f}" stroke="#999" stroke-dasharray="4"/>')
        out.append(f'<text x="{left - 8}" y="{one + 4:.1f}" text-anchor="end">1.0</text>')
        out.append(f'<line x1="{left - 5}" x2="{left + len(sizes) * group}" y1="{base_y}" y2="{base_y}" stroke="#333"/>')
        for gi, sz in enumerate(sizes):
            x0 = left + gi * group
            for ti, t in enumerate(names):
                v = ratio(sz, c, t)
                bh = ph * v / top
                out.append(f'<rect x="{x0 + ti * bar}" y="{base_y - bh:.1f}" width="{bar - 2}" height="{bh:.1f}" fill="{colors.get(t, "#444")}"><title>{t}, {human(sz)}, {c} conns: {v:.2f}x</title></rect>')
            out.append(f'<text x="{x0 + len(names) * bar / 2}" y="{base_y + 14}" text-anchor="middle">{human(sz)}</text>')
    for ti, t in enumerate(names):
        out.append(f'<rect x="{w - legend_w + 10}" y="{top_pad + ti * 18}" width="12" height="12" fill="{colors.get(t, "#444")}"/><text x="{w - legend_w + 28}" y="{top_pad + 10 + ti * 18}">{t}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out))


if __name__ == "__main__":
    main()
