#!/bin/bash
# Memory and disk of the agent under a flood of large manifests (issue 11, item 9): starts
# BIN on a sandbox kubeadm 1.31 node, writes 200 valid 1 MB manifests, prints RSS, peak RSS
# and the state directory size, deletes them and prints again.
# usage: tests/benches/manifest-flood.sh target/release/lockdown-agent
BIN=$1; R=$(mktemp -d); mkdir -p $R/manifests $R/k8s/pki
cp "$(dirname "$0")"/../data/kubeadm/v1.31/*.yaml $R/manifests/
printf 'manifests_dir: %s\nkubernetes_dir: %s\npki_dir: %s\ncni_dirs: []\nstate_dir: %s\nnode_name: m\n' $R/manifests $R/k8s $R/k8s/pki $R/state > $R/cfg.yaml
$BIN run --config $R/cfg.yaml 2>/dev/null & PID=$!
sleep 1
echo "start: $(grep VmRSS /proc/$PID/status)"
python3 - $R <<'PY'
import sys,os
r=sys.argv[1]
pad="".join(f"# padding line {i:06d} " + "x"*40 + "\n" for i in range(16000))  # ~1 MB
for n in range(200):
    open(f"{r}/manifests/big-{n:03d}.yaml","w").write(pad[:1000000]+"apiVersion: v1\nkind: Pod\nmetadata:\n  name: p%d\nspec:\n  containers:\n  - name: c\n    image: busybox\n" % n)
PY
sleep 8
$BIN spool --config $R/cfg.yaml 2>/dev/null | grep -c big- | sed "s/^/events naming big-: /"
echo "after 200 x 1MB: $(grep -E 'VmRSS' /proc/$PID/status) $(grep VmHWM /proc/$PID/status) state: $(du -sm $R/state | cut -f1) MB"
rm -f $R/manifests/big-*
sleep 4
echo "after delete: $(grep VmRSS /proc/$PID/status) state: $(du -sm $R/state | cut -f1) MB"
kill $PID; wait $PID; rm -rf $R
