#!/bin/bash
# `lockdown-agent check` against Checkov on the same 408 kubeadm manifests (the three
# kubeadm fixture versions, 12 files, copied 34 times), whole process against whole
# process, in one run (issue 13). Checkov comes from PyPI into a venv, for this benchmark
# only: python3 -m venv ~/.cache/checkov/venv && ~/.cache/checkov/venv/bin/pip install checkov
# usage: [DISTINCT=1] [CK_RUNS=3] tests/benches/checkov.sh [LOCKDOWN_BIN] [CHECKOV_BIN] [RUNS]
set -eu
BIN=${1:-target/release/lockdown-agent}
CHECKOV=${2:-$HOME/.cache/checkov/venv/bin/checkov}
RUNS=${3:-20}
D=$(mktemp -d); trap 'rm -rf "$D"' EXIT
mkdir "$D/manifests"
for i in $(seq -w 1 34); do
  for v in v1.24 v1.28 v1.31; do
    for f in "$(dirname "$0")"/../data/kubeadm/$v/*.yaml; do
      cp "$f" "$D/manifests/$i-$v-$(basename "$f")"
      # DISTINCT=1: every file differs (a comment line), so no two are evaluated as one.
      [ "${DISTINCT:-0}" = 1 ] && echo "# copy $i" >> "$D/manifests/$i-$v-$(basename "$f")"
    done
  done
done
echo "manifests: $(ls "$D/manifests" | wc -l); cores: $(nproc); $("$CHECKOV" --version 2>/dev/null | tail -1 | sed 's/^/checkov /')"
printf 'node_name: bench\n' > "$D/agent.yaml"
ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
# Warm the page cache and both programs once.
"$BIN" check --config "$D/agent.yaml" --format json "$D/manifests" > /dev/null || true
t=$(date +%s%N)
for _ in $(seq "$RUNS"); do
  "$BIN" check --config "$D/agent.yaml" --format json "$D/manifests" > /dev/null || true
done
ours=$(ms "$t")
echo "lockdown-agent check --format json: $((ours / RUNS)) ms/run over $RUNS runs ($(( ours * 1000 / RUNS )) us)"
CK_RUNS=${CK_RUNS:-3}
t=$(date +%s%N)
for _ in $(seq "$CK_RUNS"); do
  "$CHECKOV" -d "$D/manifests" --framework kubernetes --quiet --compact -o json > /dev/null 2>&1 || true
done
theirs=$(ms "$t")
echo "checkov -d --framework kubernetes -o json: $((theirs / CK_RUNS)) ms/run over $CK_RUNS runs"
echo "ratio checkov / lockdown-agent: $(( theirs * RUNS / CK_RUNS / (ours > 0 ? ours : 1) ))x"
