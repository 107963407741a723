#!/bin/bash
# `lockdown-agent check` against Checkov on the same 408 kubeadm manifests (the three
# kubeadm fixture versions, 12 files, copied 34 times), whole process against whole
# process, in one run (issue 13). Checkov comes from PyPI into a venv, for this benchmark
# only: python3 -m venv ~/.cache/checkov/venv && ~/.cache/checkov/venv/bin/pip install checkov
# usage: [DISTINCT=1] [CK_RUNS=3] tests/benches/checkov.sh [LOCKDOWN_BIN] [CHECKOV_BIN] [RUNS]
set -eu
BIN=${1:-target/release/lockdown-agent}
CHECKOV=${2:-$HOME/.cache/checkov/venv/bin/checkov}
RUNS=${3:-40}
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
# Each run timed on its own; the ratio is of medians (a 5 ms run is easily doubled by one
# scheduler hiccup on a shared VM, a 5 s run is not), the means are printed too.
runs() { # N command...: prints one wall time per run, in microseconds
  local n=$1; shift
  for _ in $(seq "$n"); do
    local t=${EPOCHREALTIME/./}  # bash's own clock, in microseconds: no process to start
    "$@" > /dev/null 2>&1 || true
    echo $(( ${EPOCHREALTIME/./} - t ))
  done
}
stats() { sort -n | awk '{v[NR]=$1; s+=$1} END {m=(NR%2)?v[(NR+1)/2]:(v[NR/2]+v[NR/2+1])/2; printf "%d %d\n", m, s/NR}'; }
# Warm the page cache and both programs once.
"$BIN" check --config "$D/agent.yaml" --format json "$D/manifests" > /dev/null || true
read -r ours ours_mean < <(runs "$RUNS" "$BIN" check --config "$D/agent.yaml" --format json "$D/manifests" | stats)
echo "lockdown-agent check --format json: median $ours us, mean $ours_mean us over $RUNS runs"
CK_RUNS=${CK_RUNS:-3}
read -r theirs theirs_mean < <(runs "$CK_RUNS" "$CHECKOV" -d "$D/manifests" --framework kubernetes --quiet --compact -o json | stats)
echo "checkov -d --framework kubernetes -o json: median $((theirs / 1000)) ms, mean $((theirs_mean / 1000)) ms over $CK_RUNS runs"
echo "ratio checkov / lockdown-agent (medians): $(( theirs / (ours > 0 ? ours : 1) ))x (means: $(( theirs_mean / (ours_mean > 0 ? ours_mean : 1) ))x)"
