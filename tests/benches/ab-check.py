#!/usr/bin/env python3
"""Interleaved A/B of `lockdown-agent check` binaries on the 408 kubeadm copies of
tests/benches/checkov.sh: each round runs every binary once, in turn, so that a VM's drift
hits all of them alike; prints the median and first quartile of each, in milliseconds.

usage: tests/benches/ab-check.py BIN [BIN ...]   (RUNS=150 by default)
"""
import glob
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

here = os.path.dirname(os.path.abspath(__file__))
data = os.path.join(here, "..", "data", "kubeadm")
d = tempfile.mkdtemp()
try:
    os.makedirs(d + "/manifests")
    for i in range(1, 35):
        for v in ["v1.24", "v1.28", "v1.31"]:
            for f in glob.glob(f"{data}/{v}/*.yaml"):
                shutil.copy(f, f"{d}/manifests/{i:02d}-{v}-{os.path.basename(f)}")
    with open(d + "/agent.yaml", "w") as cfg:
        cfg.write("node_name: bench\n")
    bins = sys.argv[1:]
    runs = int(os.environ.get("RUNS", "150"))
    times = {b: [] for b in bins}
    with open(os.devnull, "w") as null:
        for _ in range(runs):
            for b in bins:
                t = time.perf_counter()
                subprocess.run(
                    [b, "check", "--config", d + "/agent.yaml", "--format", "json", d + "/manifests"],
                    stdout=null,
                    stderr=null,
                )
                times[b].append(time.perf_counter() - t)
    for b in bins:
        q = statistics.quantiles(times[b], n=4)
        print(f"{b}: median {statistics.median(times[b]) * 1000:.3f} ms, p25 {q[0] * 1000:.3f} ms over {runs} runs")
finally:
    shutil.rmtree(d)
