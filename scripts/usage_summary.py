#!/usr/bin/env python3
"""Per-model summary read back from Envoy's /stats/prometheus (Kthena's metric names):
requests, tokens in / out, and the median router-side time to first token of streams.

usage: usage_summary.py ADMIN_PORT

Histograms reach the admin output at Envoy's stats flush (5 s), so it waits until every
request counted in kthena_router_requests_total is in kthena_router_request_duration_seconds.
"""
import re
import sys
import time
import urllib.request

SERIES = re.compile(r'^(\w+)\{(.*)\} (\S+)$')
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(admin):
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats/prometheus", timeout=5).read().decode()
    rows = []
    for line in text.splitlines():
        m = SERIES.match(line)
        if m:
            rows.append((m.group(1), dict(LABEL.findall(m.group(2))), float(m.group(3))))
    return rows


def total(rows, name, **labels):
    return sum(v for n, l, v in rows if n == name and all(l.get(k) == w for k, w in labels.items()))


def median(rows, name, model):
    """Prometheus' histogram_quantile(0.5): linear within the bucket holding the median."""
    buckets = {}
    for n, l, v in rows:
        if n == f"{name}_bucket" and l.get("model") == model:
            le = float("inf") if l["le"] == "+Inf" else float(l["le"])
            buckets[le] = buckets.get(le, 0) + v
    count = buckets.get(float("inf"), 0)
    if not count:
        return None
    prev_le, prev_cum = 0.0, 0.0
    for le in sorted(buckets):
        cum = buckets[le]
        if cum >= count / 2:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (count / 2 - prev_cum) / max(cum - prev_cum, 1e-9)
        prev_le, prev_cum = le, cum
    return None


def main():
    admin = sys.argv[1]
    deadline = time.time() + 12
    while True:
        rows = scrape(admin)
        done = total(rows, "kthena_router_requests_total") == total(rows, "kthena_router_request_duration_seconds_count")
        if done or time.time() > deadline:
            break
        time.sleep(0.5)
    models = sorted({l["model"] for n, l, _ in rows if n == "kthena_router_requests_total"})
    print(f"{'model':40} {'requests':>8} {'tokens in':>10} {'tokens out':>10} {'p50 TTFT':>10}")
    for m in models:
        ttft = median(rows, "kthena_router_time_to_first_token_seconds", m)
        print(f"{m:40} {int(total(rows, 'kthena_router_requests_total', model=m)):>8} "
              f"{int(total(rows, 'kthena_router_tokens_total', model=m, token_type='input')):>10} "
              f"{int(total(rows, 'kthena_router_tokens_total', model=m, token_type='output')):>10} "
              f"{'-' if ttft is None else f'{ttft * 1000:.1f} ms':>10}")


if __name__ == "__main__":
    main()
