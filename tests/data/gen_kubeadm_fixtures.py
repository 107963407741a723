#!/usr/bin/env python3
"""Writes kubeadm-style static pod manifests for the test fixtures.

Follows ../shared/reference/kubeadm-manifest-format.md: keys sorted, flags sorted as
--name=value, probes from staticpod/utils.go, per-version differences for 1.24, 1.28, 1.31.
Run from this directory: python3 gen_kubeadm_fixtures.py (output: kubeadm/v1.XX/*.yaml).
"""
import os

ADV = "10.0.0.10"
VERSIONS = {"1.24": ("v1.24.17", "3.5.6-0"), "1.28": ("v1.28.15", "3.5.15-0"), "1.31": ("v1.31.4", "3.5.15-0")}


def probe(kind, host, path, port, scheme, indent):
    p = " " * indent
    th = {"liveness": 8, "readiness": 3, "startup": 24}[kind]
    period = 1 if kind == "readiness" else 10
    lines = [f"{p}failureThreshold: {th}", f"{p}httpGet:", f"{p}  host: {host}", f"{p}  path: {path}",
             f"{p}  port: {port}", f"{p}  scheme: {scheme}"]
    if kind != "readiness":
        lines.append(f"{p}initialDelaySeconds: 10")
    lines += [f"{p}periodSeconds: {period}", f"{p}timeoutSeconds: 15"]
    return "\n".join(lines)


def pod(name, image, flags, probes, mounts, volumes, minor, extra_annotations="", cpu="250m"):
    out = ["apiVersion: v1", "kind: Pod", "metadata:"]
    if extra_annotations:
        out += ["  annotations:", f"    {extra_annotations}"]
    out += ["  creationTimestamp: null", "  labels:", f"    component: {name}", "    tier: control-plane",
            f"  name: {name}", "  namespace: kube-system", "spec:", "  containers:", "  - command:", f"    - {name}"]
    out += [f"    - --{k}={v}" for k, v in sorted(flags.items())]
    out += [f"    image: {image}", "    imagePullPolicy: IfNotPresent"]
    for kind in ("liveness", "readiness", "startup"):
        if kind in probes:
            if kind == "readiness":
                out.append("    name: " + name) if "name_done" not in probes else None
                probes["name_done"] = True
            out.append(f"    {kind}Probe:")
            out.append(probe(kind, *probes[kind], indent=6))
        if kind == "liveness" and "readiness" not in probes:
            out.append("    name: " + name)
            probes["name_done"] = True
    out += ["    resources:", "      requests:", f"        cpu: {cpu}"]
    out.append("    volumeMounts:")
    for mpath, vname in mounts:
        out += [f"    - mountPath: {mpath}", f"      name: {vname}"] + (["      readOnly: true"] if vname not in ("etcd-data", "etcd-certs", "flexvolume-dir") else [])
    out.append("  hostNetwork: true")
    if minor >= 27:
        out.append("  priority: 2000001000")
    out += ["  priorityClassName: system-node-critical", "  securityContext:", "    seccompProfile:", "      type: RuntimeDefault", "  volumes:"]
    for vname, hpath, vtype in sorted(volumes):
        out += ["  - hostPath:", f"      path: {hpath}", f"      type: {vtype}", f"    name: {vname}"]
    out.append("status: {}")
    return "\n".join(out) + "\n"


def generate(minor_s):
    tag, etcd_tag = VERSIONS[minor_s]
    minor = int(minor_s.split(".")[1])
    d = f"kubeadm/v{minor_s}"
    os.makedirs(d, exist_ok=True)
    ca = [("/etc/ssl/certs", "ca-certs"), ("/etc/ca-certificates", "etc-ca-certificates"), ("/etc/kubernetes/pki", "k8s-certs"),
          ("/usr/local/share/ca-certificates", "usr-local-share-ca-certificates"), ("/usr/share/ca-certificates", "usr-share-ca-certificates")]
    cav = [("ca-certs", "/etc/ssl/certs", "DirectoryOrCreate"), ("etc-ca-certificates", "/etc/ca-certificates", "DirectoryOrCreate"),
           ("k8s-certs", "/etc/kubernetes/pki", "DirectoryOrCreate"), ("usr-local-share-ca-certificates", "/usr/local/share/ca-certificates", "DirectoryOrCreate"),
           ("usr-share-ca-certificates", "/usr/share/ca-certificates", "DirectoryOrCreate")]
    api = {
        "advertise-address": ADV, "allow-privileged": "true", "authorization-mode": "Node,RBAC",
        "client-ca-file": "/etc/kubernetes/pki/ca.crt", "enable-admission-plugins": "NodeRestriction",
        "enable-bootstrap-token-auth": "true", "etcd-cafile": "/etc/kubernetes/pki/etcd/ca.crt",
        "etcd-certfile": "/etc/kubernetes/pki/apiserver-etcd-client.crt", "etcd-keyfile": "/etc/kubernetes/pki/apiserver-etcd-client.key",
        "etcd-servers": "https://127.0.0.1:2379", "kubelet-client-certificate": "/etc/kubernetes/pki/apiserver-kubelet-client.crt",
        "kubelet-client-key": "/etc/kubernetes/pki/apiserver-kubelet-client.key", "kubelet-preferred-address-types": "InternalIP,ExternalIP,Hostname",
        "proxy-client-cert-file": "/etc/kubernetes/pki/front-proxy-client.crt", "proxy-client-key-file": "/etc/kubernetes/pki/front-proxy-client.key",
        "requestheader-allowed-names": "front-proxy-client", "requestheader-client-ca-file": "/etc/kubernetes/pki/front-proxy-ca.crt",
        "requestheader-extra-headers-prefix": "X-Remote-Extra-", "requestheader-group-headers": "X-Remote-Group",
        "requestheader-username-headers": "X-Remote-User", "secure-port": "6443",
        "service-account-issuer": "https://kubernetes.default.svc.cluster.local", "service-account-key-file": "/etc/kubernetes/pki/sa.pub",
        "service-account-signing-key-file": "/etc/kubernetes/pki/sa.key", "service-cluster-ip-range": "10.96.0.0/12",
        "tls-cert-file": "/etc/kubernetes/pki/apiserver.crt", "tls-private-key-file": "/etc/kubernetes/pki/apiserver.key",
    }
    probes = {"liveness": (ADV, "/livez", 6443, "HTTPS"), "readiness": (ADV, "/readyz", 6443, "HTTPS"), "startup": (ADV, "/livez", 6443, "HTTPS")}
    open(f"{d}/kube-apiserver.yaml", "w").write(pod("kube-apiserver", f"registry.k8s.io/kube-apiserver:{tag}", api, probes, ca, cav, minor,
        extra_annotations=f"kubeadm.kubernetes.io/kube-apiserver.advertise-address.endpoint: {ADV}:6443"))
    kcm = {
        "allocate-node-cidrs": "false" if False else None, "authentication-kubeconfig": "/etc/kubernetes/controller-manager.conf",
        "authorization-kubeconfig": "/etc/kubernetes/controller-manager.conf", "bind-address": "127.0.0.1",
        "client-ca-file": "/etc/kubernetes/pki/ca.crt", "cluster-name": "kubernetes",
        "cluster-signing-cert-file": "/etc/kubernetes/pki/ca.crt", "cluster-signing-key-file": "/etc/kubernetes/pki/ca.key",
        "controllers": "*,bootstrapsigner,tokencleaner", "kubeconfig": "/etc/kubernetes/controller-manager.conf",
        "leader-elect": "true", "requestheader-client-ca-file": "/etc/kubernetes/pki/front-proxy-ca.crt",
        "root-ca-file": "/etc/kubernetes/pki/ca.crt", "service-account-private-key-file": "/etc/kubernetes/pki/sa.key",
        "use-service-account-credentials": "true",
    }
    kcm = {k: v for k, v in kcm.items() if v is not None}
    kmounts = ca[:2] + [("/usr/libexec/kubernetes/kubelet-plugins/volume/exec", "flexvolume-dir"), ("/etc/kubernetes/pki", "k8s-certs"),
              ("/etc/kubernetes/controller-manager.conf", "kubeconfig")] + ca[3:]
    kvols = cav + [("flexvolume-dir", "/usr/libexec/kubernetes/kubelet-plugins/volume/exec", "DirectoryOrCreate"),
                   ("kubeconfig", "/etc/kubernetes/controller-manager.conf", "FileOrCreate")]
    kprobes = {"liveness": ("127.0.0.1", "/healthz", 10257, "HTTPS"), "startup": ("127.0.0.1", "/healthz", 10257, "HTTPS")}
    open(f"{d}/kube-controller-manager.yaml", "w").write(pod("kube-controller-manager", f"registry.k8s.io/kube-controller-manager:{tag}",
        kcm, kprobes, sorted(kmounts, key=lambda m: m[1]), kvols, minor, cpu="200m"))
    sched = {"authentication-kubeconfig": "/etc/kubernetes/scheduler.conf", "authorization-kubeconfig": "/etc/kubernetes/scheduler.conf",
             "bind-address": "127.0.0.1", "kubeconfig": "/etc/kubernetes/scheduler.conf", "leader-elect": "true"}
    sprobes = {"liveness": ("127.0.0.1", "/healthz", 10259, "HTTPS"), "startup": ("127.0.0.1", "/healthz", 10259, "HTTPS")}
    open(f"{d}/kube-scheduler.yaml", "w").write(pod("kube-scheduler", f"registry.k8s.io/kube-scheduler:{tag}", sched, sprobes,
        [("/etc/kubernetes/scheduler.conf", "kubeconfig")], [("kubeconfig", "/etc/kubernetes/scheduler.conf", "FileOrCreate")], minor, cpu="100m"))
    etcd = {"advertise-client-urls": f"https://{ADV}:2379", "cert-file": "/etc/kubernetes/pki/etcd/server.crt", "client-cert-auth": "true",
            "data-dir": "/var/lib/etcd", "experimental-initial-corrupt-check": "true", "initial-advertise-peer-urls": f"https://{ADV}:2380",
            "initial-cluster": f"cp-1=https://{ADV}:2380", "key-file": "/etc/kubernetes/pki/etcd/server.key",
            "listen-client-urls": f"https://127.0.0.1:2379,https://{ADV}:2379", "listen-metrics-urls": "http://127.0.0.1:2381",
            "listen-peer-urls": f"https://{ADV}:2380", "name": "cp-1", "peer-cert-file": "/etc/kubernetes/pki/etcd/peer.crt",
            "peer-client-cert-auth": "true", "peer-key-file": "/etc/kubernetes/pki/etcd/peer.key",
            "peer-trusted-ca-file": "/etc/kubernetes/pki/etcd/ca.crt", "snapshot-count": "10000",
            "trusted-ca-file": "/etc/kubernetes/pki/etcd/ca.crt"}
    if minor >= 25:
        etcd["experimental-watch-progress-notify-interval"] = "5s"
    if minor >= 31:
        eprobes = {"liveness": ("127.0.0.1", "/livez", 2381, "HTTP"), "readiness": ("127.0.0.1", "/readyz", 2381, "HTTP"), "startup": ("127.0.0.1", "/readyz", 2381, "HTTP")}
    elif minor >= 25:
        eprobes = {"liveness": ("127.0.0.1", "/health?exclude=NOSPACE&serializable=true", 2381, "HTTP"), "startup": ("127.0.0.1", "/health?serializable=false", 2381, "HTTP")}
    else:
        eprobes = {"liveness": ("127.0.0.1", "/health", 2381, "HTTP"), "startup": ("127.0.0.1", "/health", 2381, "HTTP")}
    open(f"{d}/etcd.yaml", "w").write(pod("etcd", f"registry.k8s.io/etcd:{etcd_tag}", etcd, eprobes,
        [("/var/lib/etcd", "etcd-data"), ("/etc/kubernetes/pki/etcd", "etcd-certs")],
        [("etcd-certs", "/etc/kubernetes/pki/etcd", "DirectoryOrCreate"), ("etcd-data", "/var/lib/etcd", "DirectoryOrCreate")], minor,
        extra_annotations=f"kubeadm.kubernetes.io/etcd.advertise-client-urls: https://{ADV}:2379", cpu="100m").replace(
        "    resources:\n      requests:\n        cpu: 100m\n    volumeMounts:\n    - mountPath: /var/lib/etcd",
        "    resources:\n      requests:\n        cpu: 100m\n        memory: 100Mi\n    volumeMounts:\n    - mountPath: /var/lib/etcd"))


for m in VERSIONS:
    generate(m)
