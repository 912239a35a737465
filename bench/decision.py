"""Benchmark: one decision against a policy of 10,000 rules (budget: p50 <= 20 us).

Run: ``python -m bench.decision [--rules N] [--samples N] [--json]``. Rules mix exact
repositories, tag globs, digests, namespace ``*`` and ``**`` patterns and other
registries; queries mix hits, near misses and category fall-through, so the figure is
not a best case.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from datetime import UTC, datetime
from typing import Any

from agent.core.decision import decide
from agent.core.policy.document import parse_policy
from agent.core.reference import Reference, parse_normalized_named

BUDGET_P50_US = 20.0


def make_policy_document(n_rules: int, rng: random.Random) -> dict[str, Any]:
    rules: list[dict[str, Any]] = []
    for i in range(n_rules):
        kind = i % 10
        ns = f"ns{i % 700}"
        if kind < 4:
            match = f"{ns}/app{i}"
        elif kind == 4:
            match = f"{ns}/app{i}:1.{i % 20}.*"
        elif kind == 5:
            match = f"{ns}/app{i}@sha256:{rng.getrandbits(256):064x}"
        elif kind == 6:
            match = f"{ns}/*"
        elif kind == 7:
            match = f"ghcr.io/org{i % 300}/**"
        elif kind == 8:
            match = f"registry{i % 50}.example.com/team{i}/*:v*"
        else:
            match = f"{ns}/svc-*/app{i}"
        rules.append({"id": f"r{i}", "match": match, "action": "allow" if i % 3 else "deny"})
    return {
        "schema": "pullgate.policy/v1",
        "org": "bench",
        "serial": 1,
        "issued_at": "2026-01-01T00:00:00Z",
        "expires_at": "2027-01-01T00:00:00Z",
        "hub": {"org_namespaces": ["acme"], "community": "deny"},
        "rules": rules,
    }


def make_queries(n: int, rng: random.Random) -> list[Reference]:
    texts = []
    for _ in range(n):
        i = rng.randrange(10_000)
        texts.append(
            rng.choice(
                [
                    f"ns{i % 700}/app{i}",
                    f"ns{i % 700}/app{i}:1.{i % 20}.3",
                    f"ns{i % 700}/other{i}",
                    f"ghcr.io/org{i % 300}/deep/path/app:2",
                    f"registry{i % 50}.example.com/team{i}/x:v1",
                    "alpine:3.20",
                    f"someuser{i}/tool",
                    f"quay.io/x/y{i}",
                ]
            )
        )
    return [parse_normalized_named(t) for t in texts]


def run(n_rules: int, samples: int) -> dict[str, Any]:
    rng = random.Random(42)
    doc = make_policy_document(n_rules, rng)
    t0 = time.perf_counter()
    policy = parse_policy(doc)
    compile_s = time.perf_counter() - t0
    queries = make_queries(samples, rng)
    now = datetime(2026, 6, 1, tzinfo=UTC)
    for ref in queries[:1000]:  # warm caches (fnmatch, branch paths)
        decide(policy, ref, now=now)
    timings = []
    clock = time.perf_counter_ns
    for ref in queries:
        start = clock()
        decide(policy, ref, now=now)
        timings.append(clock() - start)
    timings.sort()

    def pct(p: float) -> float:
        return timings[min(len(timings) - 1, int(p * len(timings)))] / 1000

    return {
        "rules": n_rules,
        "samples": samples,
        "compile_s": round(compile_s, 3),
        "p50_us": round(pct(0.50), 2),
        "p90_us": round(pct(0.90), 2),
        "p99_us": round(pct(0.99), 2),
        "mean_us": round(statistics.fmean(timings) / 1000, 2),
        "budget_p50_us": BUDGET_P50_US,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rules", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args.rules, args.samples)
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"decision, {result['rules']} rules, {result['samples']} samples: "
            f"p50 {result['p50_us']} us, p90 {result['p90_us']} us, "
            f"p99 {result['p99_us']} us (budget p50 <= {BUDGET_P50_US} us); "
            f"policy compile {result['compile_s']} s"
        )
    return 0 if result["p50_us"] <= BUDGET_P50_US else 1


if __name__ == "__main__":
    raise SystemExit(main())
