#!/usr/bin/env python3
"""Replays the HorizontalPodAutoscaler of k8s/hpa.yaml on metrics scraped during real load runs.

For each scenario: a simulator, `minReplicas` replicas of `serve`, load from scripts/load.sh,
and `/metrics` scraped every second from every replica. Each second the HPA's rule is applied to
what was scraped, as the controller would (the Pods metric averaged over the pods, 10%
tolerance, min/max replicas):

    desired = ceil(current * average(replica_saturation) / target)

Scenarios: `saturated` (slots are the bottleneck: few slots, no rate limit), `rate_limited` (the
provider's limit is the bottleneck: more replicas cannot help), then `idle` after each.
usage: scripts/hpa-replay.py [--binary target/release/hn-classifier]
"""

import argparse
import math
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def hpa_settings():
    text = (ROOT / "k8s/hpa.yaml").read_text()
    target = re.search(r"name: replica_saturation\s+target:\s+type: AverageValue\s+averageValue: (\d+)m", text)
    return (
        int(re.search(r"minReplicas: (\d+)", text).group(1)),
        int(re.search(r"maxReplicas: (\d+)", text).group(1)),
        int(target.group(1)) / 1000,
    )


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def wait_up(url):
    for _ in range(100):
        try:
            get(url)
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"not up: {url}")


def saturation(url):
    text = get(url + "/metrics")
    return float(re.search(r"^replica_saturation (\S+)$", text, re.M).group(1))


def desired(current, values, target, low, high):
    ratio = (sum(values) / len(values)) / target
    if abs(ratio - 1.0) <= 0.1:  # the controller's default tolerance
        return current
    return max(low, min(high, math.ceil(current * ratio)))


def scenario(name, binary, sim_flags, serve_env, batches, replicas, bounds):
    low, high, target = bounds
    procs = []
    sim_port = free_port()
    procs.append(subprocess.Popen(
        [binary, "sim", "--listen", f"127.0.0.1:{sim_port}", *sim_flags],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    urls = []
    for _ in range(replicas):
        port = free_port()
        env = dict(os.environ, OPENAI_API_KEY="sk-hpa", RUST_LOG="warn",
                   OPENAI_BASE_URL=f"http://127.0.0.1:{sim_port}/v1",
                   HNC_LISTEN=f"127.0.0.1:{port}", **serve_env)
        procs.append(subprocess.Popen([binary, "serve"], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        urls.append(f"http://127.0.0.1:{port}")
    try:
        for url in urls:
            wait_up(url + "/readyz")
        load = subprocess.Popen(
            [str(ROOT / "scripts/load.sh"), *urls],
            env=dict(os.environ, BATCHES=str(batches), SIZE="50", DISTINCT="1"),
            stdout=subprocess.PIPE, text=True)
        rows = []
        started = time.time()
        while load.poll() is None:
            values = [saturation(u) for u in urls]
            rows.append((time.time() - started, values, desired(replicas, values, target, low, high)))
            time.sleep(1)
        summary = load.stdout.read().strip().splitlines()[-1]
        time.sleep(1)
        idle_values = [saturation(u) for u in urls]
        idle = desired(replicas, idle_values, target, low, high)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
    print(f"\n## {name}: {replicas} replicas, target {target} per pod, {low}..{high} replicas")
    print(f"load: {summary}")
    print("| t (s) | replica_saturation per pod | HPA asks for |")
    print("| --- | --- | --- |")
    for t, values, want in rows:
        print(f"| {t:.0f} | {', '.join(f'{v:.2f}' for v in values)} | {want} |")
    under_load = [want for _, _, want in rows[1:]] or [replicas]
    print(f"under load the HPA asks for {max(under_load)} (median {sorted(under_load)[len(under_load) // 2]}); "
          f"idle afterwards (saturation {', '.join(f'{v:.2f}' for v in idle_values)}): {idle}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", default=str(ROOT / "target/release/hn-classifier"))
    args = parser.parse_args()
    bounds = hpa_settings()
    low = bounds[0]
    # Slots are the bottleneck: 32 per replica at 300 ms a call, no rate limit in the way.
    scenario("saturated", args.binary,
             ["--sim-rpm", "600000", "--sim-latency-ms", "300"],
             {"HNC_MAX_IN_FLIGHT": "32"}, batches=60, replicas=low, bounds=bounds)
    # The provider's limit is the bottleneck (6,000 RPM for the key): calls wait for their
    # turn, slots are plentiful, more replicas would only share the same limit.
    scenario("rate_limited", args.binary,
             ["--sim-rpm", "6000", "--sim-latency-ms", "300"],
             {}, batches=20, replicas=low, bounds=bounds)


if __name__ == "__main__":
    main()
