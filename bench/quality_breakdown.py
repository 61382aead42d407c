#!/usr/bin/env python3
"""Where a router's cache hits were won and lost, request by request: replays one recorded
run (`quality.py --requests-out DIR`) through the mirrored engine caches with the pods the
router chose, and prints the hit rate by kind of prompt (a conversation's system prompt and
its history, first turns, one-off prompts), which pods each system prompt went to and how
many of its blocks each pod missed (copies, and evictions between uses), where the one-off
prompts went, and TTFT per pod.

usage: quality_breakdown.py RUN.json [RUN.json ...]

The replay admits prompts in arrival order, as the engines did up to a few milliseconds; its
hit rate is printed beside the measured one so that a difference shows.
"""
import collections
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import quality as Q  # noqa: E402


def kind(msgs, systems):
    """'one-off short' / 'one-off long', or the conversation's system prompt number (in order
    of first appearance) and whether this is its first turn."""
    if msgs[0]["role"] != "system":
        return "one-off long" if len(msgs[0]["content"]) > 1000 else "one-off short"
    s = systems.setdefault(msgs[0]["content"], len(systems))
    return f"system {s} " + ("first turn" if len(msgs) == 2 else "later turn")


def breakdown(run):
    trace = Q.workload(run["seed"], run["requests"], run["rate"], run["workload"])
    kv_blocks = int(Q.SIM[Q.SIM.index("--sim-kv-blocks") + 1])
    names = sorted({p for p in run["pod"] if p})
    mirror = Q.MirrorCaches(len(names), kv_blocks)
    hit = collections.defaultdict(lambda: [0, 0])  # kind -> [cached blocks, blocks]
    pods_of = collections.defaultdict(collections.Counter)
    # System-prompt blocks missed, by system prompt and pod: where copies and evictions cost.
    missed_of = collections.defaultdict(collections.Counter)
    ttft = collections.defaultdict(list)
    systems = {}
    for (_, msgs, _), pod, t in zip(trace, run["pod"], run["ttft_ms"]):
        if pod is None:
            continue
        blocks = Q.prompt_blocks(msgs)
        cached = mirror.cached(names.index(pod), blocks)
        mirror.admit(names.index(pod), blocks)
        k = kind(msgs, systems)
        for key, n, of in [(k, cached, len(blocks)), ("all", cached, len(blocks))]:
            hit[key][0] += n
            hit[key][1] += of
        if msgs[0]["role"] == "system":
            # The system prompt's whole blocks, then the conversation's history.
            own = len(f"system\n{msgs[0]['content']}\n".encode()) // 64
            for key, n, of in [("conversations: system prompt", min(cached, own), own),
                               ("conversations: history", max(0, cached - own), len(blocks) - own)]:
                hit[key][0] += n
                hit[key][1] += of
            pods_of[k.rsplit(" ", 2)[0]][pod] += 1
            missed_of[k.rsplit(" ", 2)[0]][pod] += own - min(cached, own)
        else:
            pods_of["one-off prompts"][pod] += 1
        if t is not None:
            ttft[pod].append(t)
    print(f"## {run['router']}, {run['workload']} workload, {run['rate']:g} req/s, seed {run['seed']}")
    print(f"replayed hit rate {hit['all'][0] / max(1, hit['all'][1]):.3f}\n")
    print("| prompts | hit rate | blocks |\n|---|---|---|")
    for k in sorted(hit):
        print(f"| {k} | {hit[k][0] / max(1, hit[k][1]):.3f} | {hit[k][1]} |")
    print("\n| requests of (system-prompt blocks missed) | " + " | ".join(names) + " |\n|---|"
          + "---|" * len(names))
    for k in sorted(pods_of):
        cells = (f"{pods_of[k][p]} ({missed_of[k][p]})" if k in missed_of and pods_of[k][p] else str(pods_of[k][p])
                 for p in names)
        print(f"| {k} | " + " | ".join(cells) + " |")
    print("| TTFT p50 / p99 ms | " + " | ".join(
        f"{Q.pct(ttft[p], 50):.1f} / {Q.pct(ttft[p], 99):.1f}" for p in names) + " |\n")


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for path in sys.argv[1:]:
        with open(path) as f:
            breakdown(json.load(f))


if __name__ == "__main__":
    main()
