"""Deployment files, checked offline: kustomize renders every overlay and component, the core
objects validate against the Kubernetes schema, the baseline variants meet the Pod Security
"baseline" level rule by rule, the sidecar is hardened and never gates the server's readiness, the
server's PYTHONPATH is extended (run for real), selectors do not cross examples, the PrometheusRule
is the shipped rules (regenerated, identical, promtool-valid) and ships once, and the Dockerfiles'
sources exist and the CLI they run has every flag the manifests pass."""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "deploy" / "k8s"
KUBECTL = shutil.which("kubectl")
VALIDATE = Path(sys.executable).parent / "kubernetes-validate"
SENTINEL = Path(sys.executable).parent / "sentinel"

# Every kustomization a user applies, with the kinds it renders.
POD = ["Deployment", "Service", "ServiceMonitor"]
OVERLAYS = {
    "base": POD,
    "examples/vllm": POD,
    "examples/sglang": POD,
    "examples/vllm-baseline": POD,
    "node": ["DaemonSet", "Namespace", "Service", "ServiceMonitor"],
    "rules": ["PrometheusRule"],
}
SIDECAR_OVERLAYS = ["base", "examples/vllm", "examples/sglang", "examples/vllm-baseline"]
PTRACE_OVERLAYS = {"examples/vllm", "examples/sglang"}  # components/ptrace
BASELINE_OVERLAYS = ["base", "examples/vllm-baseline"]
SENTINEL_CONTAINERS = {"sentinel", "sentinel-hooks"}
UID = 65532  # the sidecar's user and group, and the pod's shared group
HOOKS = "/opt/sentinel/hooks"

needs_kubectl = pytest.mark.skipif(KUBECTL is None and not os.environ.get("CI"), reason="kubectl not installed")


@functools.cache
def _render_text(path: str) -> str:
    assert KUBECTL, "CI must have kubectl (Debian's kubectl package)"
    res = subprocess.run([KUBECTL, "kustomize", path], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return res.stdout


def render(overlay: str | Path) -> list[dict]:
    path = overlay if isinstance(overlay, Path) else K8S / overlay
    return [d for d in yaml.safe_load_all(_render_text(str(path))) if d]


def overlay_with(tmp_path: Path, resource: str, *components: str, extra: str = "") -> Path:
    """A kustomization in tmp_path over one of ours plus components (kustomize wants relative paths)."""
    rel = os.path.relpath(K8S, tmp_path)
    text = f"resources: [{rel}/{resource}]\n"
    if components:
        text += "components: [" + ", ".join(f"{rel}/{c}" for c in components) + "]\n"
    (tmp_path / "kustomization.yaml").write_text(text + extra)
    return tmp_path


def one(docs: list[dict], kind: str) -> dict:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def pod_template(docs: list[dict]) -> dict:
    return next(d for d in docs if d["kind"] in ("Deployment", "DaemonSet"))["spec"]["template"]


def containers(spec: dict) -> dict[str, dict]:
    return {c["name"]: c for k in ("initContainers", "containers") for c in spec.get(k) or []}


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env") or []}


def quantity(text: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9}
    m = re.fullmatch(r"(\d+)([KMGT]i|[kMG])?", str(text))
    assert m, text
    return int(m.group(1)) * units.get(m.group(2) or "", 1)


# --- Pod Security Standards ---------------------------------------------------------------------
#
# Implemented from the published rule list, https://kubernetes.io/docs/concepts/security/pod-security-standards/
# (read 2026-11: "Baseline" with HostProcess, Host Namespaces, Privileged Containers, Capabilities,
# HostPath Volumes, Host Ports, Host Probes / Lifecycle Hooks (v1.34+), AppArmor, SELinux, /proc
# Mount Type, Seccomp, Sysctls; "Restricted" adds Volume Types, Privilege Escalation, Running as
# Non-root, Running as Non-root user, Seccomp, Capabilities). No maintained checker of these levels
# installs offline from PyPI, Debian or npm (the reference is the Go pod-security-admission
# library, run by an API server), so they are written out here, and test_pss_checker_flags_each_rule
# shows each rule catches its violation.

BASELINE_CAPS = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
                 "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes"}
SELINUX_TYPES = {None, "", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}
PROBES = ("livenessProbe", "readinessProbe", "startupProbe")


def _all_containers(spec: dict) -> list[dict]:
    return [c for k in ("initContainers", "containers", "ephemeralContainers") for c in spec.get(k) or []]


def baseline_violations(meta: dict, spec: dict) -> list[str]:
    """The Pod Security "baseline" rules this pod (template metadata + spec) breaks."""
    out = []
    pod_sc = spec.get("securityContext") or {}
    scs = [("pod", pod_sc)] + [(c["name"], c.get("securityContext") or {}) for c in _all_containers(spec)]
    for who, sc in scs:
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            out.append(f"HostProcess: {who}")
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            out.append(f"Host Namespaces: {field}")
    for c in _all_containers(spec):
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            out.append(f"Privileged Containers: {c['name']}")
        extra = set((sc.get("capabilities") or {}).get("add") or []) - BASELINE_CAPS
        if extra:
            out.append(f"Capabilities: {c['name']} adds {sorted(extra)}")
        if any(p.get("hostPort") not in (None, 0) for p in c.get("ports") or []):
            out.append(f"Host Ports: {c['name']}")
        handlers = [c.get(p) or {} for p in PROBES] + list((c.get("lifecycle") or {}).values())
        if any((h.get(k) or {}).get("host") not in (None, "") for h in handlers for k in ("httpGet", "tcpSocket")):
            out.append(f"Host Probes / Lifecycle Hooks: {c['name']}")
        if sc.get("procMount") not in (None, "Default"):
            out.append(f"/proc Mount Type: {c['name']}")
    for v in spec.get("volumes") or []:
        if "hostPath" in v:
            out.append(f"HostPath Volumes: {v['name']}")
    for who, sc in scs:
        if (sc.get("appArmorProfile") or {}).get("type") not in (None, "RuntimeDefault", "Localhost"):
            out.append(f"AppArmor: {who}")
        se = sc.get("seLinuxOptions") or {}
        if se.get("type") not in SELINUX_TYPES or se.get("user") or se.get("role"):
            out.append(f"SELinux: {who}")
        if (sc.get("seccompProfile") or {}).get("type") not in (None, "RuntimeDefault", "Localhost"):
            out.append(f"Seccomp: {who}")
    for key, value in ((meta or {}).get("annotations") or {}).items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and not (
                value == "runtime/default" or value.startswith("localhost/")):
            out.append(f"AppArmor: annotation {key}")
    for s in pod_sc.get("sysctls") or []:
        if s["name"] not in SAFE_SYSCTLS:
            out.append(f"Sysctls: {s['name']}")
    return out


def restricted_violations(meta: dict, spec: dict) -> list[str]:
    """The Pod Security "restricted" rules this pod breaks (baseline's included)."""
    out = baseline_violations(meta, spec)
    pod_sc = spec.get("securityContext") or {}
    for v in spec.get("volumes") or []:
        if not set(v) - {"name"} <= RESTRICTED_VOLUMES:
            out.append(f"Volume Types: {v['name']}")
    if pod_sc.get("runAsUser") == 0:
        out.append("Running as Non-root user: pod")
    for c in _all_containers(spec):
        sc, name = c.get("securityContext") or {}, c["name"]
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"Privilege Escalation: {name}")
        if not sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
            out.append(f"Running as Non-root: {name}")
        if sc.get("runAsUser") == 0:
            out.append(f"Running as Non-root user: {name}")
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"Seccomp: {name} sets none")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []) or not set(caps.get("add") or []) <= {"NET_BIND_SERVICE"}:
            out.append(f"Capabilities: {name}")
    return out


def pods(docs: list[dict]) -> list[tuple[str, dict, dict]]:
    """(name, metadata, spec) of every pod the documents make."""
    out = []
    for d in docs:
        if d["kind"] == "Pod":
            out.append((d["metadata"]["name"], d["metadata"], d["spec"]))
        elif d["kind"] == "CronJob":
            t = d["spec"]["jobTemplate"]["spec"]["template"]
            out.append((d["metadata"]["name"], t.get("metadata") or {}, t["spec"]))
        elif d["kind"] in ("Deployment", "DaemonSet", "StatefulSet", "ReplicaSet", "Job"):
            t = d["spec"]["template"]
            out.append((d["metadata"]["name"], t.get("metadata") or {}, t["spec"]))
    return out


def sentinel_only(spec: dict) -> dict:
    """The pod spec with Sentinel's own containers only (the serving container is the user's)."""
    spec = copy.deepcopy(spec)
    for k in ("initContainers", "containers"):
        spec[k] = [c for c in spec.get(k) or [] if c["name"] in SENTINEL_CONTAINERS]
    return spec


CLEAN_POD = {
    "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
    "volumes": [{"name": "d", "emptyDir": {}}],
    "containers": [{"name": "c", "image": "x", "ports": [{"containerPort": 80}],
                    "livenessProbe": {"httpGet": {"path": "/", "port": 80}},
                    "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
                                        "capabilities": {"drop": ["ALL"]}}}],
}
C = ("containers", 0)
MUTATIONS = {  # rule -> (where, patch): each one breaks exactly that baseline rule
    "HostProcess": (C, {"securityContext": {"windowsOptions": {"hostProcess": True}}}),
    "Host Namespaces": ((), {"hostPID": True}),
    "Privileged Containers": (C, {"securityContext": {"privileged": True}}),
    "Capabilities": (C, {"securityContext": {"capabilities": {"add": ["SYS_PTRACE"]}}}),
    "HostPath Volumes": ((), {"volumes": [{"name": "h", "hostPath": {"path": "/"}}]}),
    "Host Ports": (C, {"ports": [{"containerPort": 80, "hostPort": 8080}]}),
    "Host Probes / Lifecycle Hooks": (C, {"livenessProbe": {"httpGet": {"path": "/", "port": 80, "host": "10.0.0.1"}}}),
    "AppArmor": (C, {"securityContext": {"appArmorProfile": {"type": "Unconfined"}}}),
    "SELinux": ((), {"securityContext": {"seLinuxOptions": {"type": "spc_t"}}}),
    "/proc Mount Type": (C, {"securityContext": {"procMount": "Unmasked"}}),
    "Seccomp": (C, {"securityContext": {"seccompProfile": {"type": "Unconfined"}}}),
    "Sysctls": ((), {"securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}]}}),
}


def _merge(dst: dict, src: dict) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _merge(dst[k], v)
        else:
            dst[k] = v


@pytest.mark.parametrize("rule", sorted(MUTATIONS))
def test_pss_checker_flags_each_rule(rule):
    assert baseline_violations({}, CLEAN_POD) == [] and restricted_violations({}, CLEAN_POD) == []
    spec = copy.deepcopy(CLEAN_POD)
    where, patch = MUTATIONS[rule]
    target = spec[where[0]][where[1]] if where else spec
    _merge(target, patch)
    found = baseline_violations({}, spec)
    assert found and all(v.startswith(rule + ":") for v in found), found


def test_pss_checker_flags_apparmor_annotation_and_restricted_rules():
    meta = {"annotations": {"container.apparmor.security.beta.kubernetes.io/c": "unconfined"}}
    assert baseline_violations(meta, CLEAN_POD) == ["AppArmor: annotation container.apparmor.security.beta.kubernetes.io/c"]
    for patch, rule in [({"allowPrivilegeEscalation": True}, "Privilege Escalation"),
                        ({"runAsNonRoot": False}, "Running as Non-root"),
                        ({"runAsUser": 0}, "Running as Non-root user"),
                        ({"capabilities": {"drop": ["NET_RAW"]}}, "Capabilities")]:
        spec = copy.deepcopy(CLEAN_POD)
        spec["containers"][0]["securityContext"].update(patch)
        assert [v.split(":")[0] for v in restricted_violations({}, spec)] == [rule]
    spec = copy.deepcopy(CLEAN_POD)
    spec["volumes"].append({"name": "n", "nfs": {"server": "s", "path": "/"}})
    assert restricted_violations({}, spec) == ["Volume Types: n"]


# --- rendering and schema -------------------------------------------------------------------------

@needs_kubectl
@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_kustomize_renders_and_validates(overlay, tmp_path):
    docs = render(overlay)
    assert sorted(d["kind"] for d in docs) == sorted(OVERLAYS[overlay])
    out = tmp_path / "rendered.yaml"
    out.write_text(yaml.safe_dump_all(docs))
    res = subprocess.run([str(VALIDATE), "--strict", "--quiet", str(out)], capture_output=True, text=True)
    assert "ERROR" not in res.stdout + res.stderr and res.returncode == 0, res.stdout + res.stderr


@needs_kubectl
def test_web_config_component_renders_and_validates(tmp_path):
    docs = render(overlay_with(tmp_path, "examples/vllm", "components/web-config"))
    out = tmp_path / "rendered.yaml"
    out.write_text(yaml.safe_dump_all(docs))
    res = subprocess.run([str(VALIDATE), "--strict", "--quiet", str(out)], capture_output=True, text=True)
    assert "ERROR" not in res.stdout + res.stderr and res.returncode == 0, res.stdout + res.stderr
    spec = pod_template(docs)["spec"]
    side = containers(spec)["sentinel"]
    assert "--web-config=/etc/sentinel/web/web-config.yml" in side["args"]
    probe = side["livenessProbe"]["httpGet"]
    assert probe["scheme"] == "HTTPS" and probe["path"] == "/-/healthy" and "httpHeaders" not in probe
    assert {"name": "sentinel-web", "mountPath": "/etc/sentinel/web", "readOnly": True} in side["volumeMounts"]
    assert not any(m["name"] == "sentinel-web" for m in containers(spec)["server"]["volumeMounts"])
    (ep,) = one(docs, "ServiceMonitor")["spec"]["endpoints"]
    assert ep["scheme"] == "https" and ep["basicAuth"]["password"]["name"] == "sentinel-scrape"
    assert ep["tlsConfig"]["ca"]["secret"] == {"name": "sentinel-scrape", "key": "ca.crt"}


# --- Pod Security ---------------------------------------------------------------------------------

@needs_kubectl
@pytest.mark.parametrize("overlay", BASELINE_OVERLAYS)
def test_baseline_variant_meets_pod_security_baseline(overlay):
    found = pods(render(overlay))
    assert found
    for name, meta, spec in found:
        assert baseline_violations(meta, spec) == [], name
        # Bonus: Sentinel's own containers (not the user's server) meet "restricted" too.
        assert restricted_violations(meta, sentinel_only(spec)) == [], name


@needs_kubectl
@pytest.mark.parametrize("overlay", sorted(PTRACE_OVERLAYS))
def test_ptrace_variant_breaks_baseline_by_sys_ptrace_alone(overlay):
    ((_, meta, spec),) = pods(render(overlay))
    assert baseline_violations(meta, spec) == ["Capabilities: sentinel adds ['SYS_PTRACE']"]


@needs_kubectl
def test_node_component_needs_privileged_namespace_for_its_hostpath_alone():
    docs = render("node")
    ((_, meta, spec),) = pods(docs)
    assert baseline_violations(meta, spec) == ["HostPath Volumes: pod-resources"]
    ns = one(docs, "Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    assert all(d["metadata"].get("namespace") == ns["metadata"]["name"] for d in docs if d["kind"] != "Namespace")


@needs_kubectl
def test_baseline_example_is_the_vllm_example_without_ptrace():
    full, baseline = render("examples/vllm"), render("examples/vllm-baseline")
    side = containers(pod_template(full)["spec"])["sentinel"]["securityContext"]
    del side["capabilities"]["add"]
    side["allowPrivilegeEscalation"] = False
    assert full == baseline


@needs_kubectl
def test_images_switch_both_sentinel_containers_together(tmp_path):
    """The init container copies the hooks the daemon reads: one image name, switched as one."""
    extra = "images:\n  - {name: sentinel-cuda-gdb, newName: registry.example.com/sentinel, newTag: 0.1.0}\n"
    spec = pod_template(render(overlay_with(tmp_path, "examples/vllm", extra=extra)))["spec"]
    images = {n: c["image"] for n, c in containers(spec).items() if n in SENTINEL_CONTAINERS}
    assert images == dict.fromkeys(SENTINEL_CONTAINERS, "registry.example.com/sentinel:0.1.0")


# --- the sidecar ----------------------------------------------------------------------------------

@needs_kubectl
@pytest.mark.parametrize("overlay", SIDECAR_OVERLAYS)
def test_sidecar_is_hardened(overlay):
    spec = pod_template(render(overlay))["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert UID in spec["securityContext"]["supplementalGroups"]
    assert spec["shareProcessNamespace"] is True  # allowed by baseline; py-spy and coredump pids need it
    byname = containers(spec)
    assert [c["name"] for c in spec["initContainers"]] == ["sentinel-hooks"]
    assert spec["initContainers"][0]["command"][:2] == ["sentinel", "install-hooks"]
    ptrace = overlay in PTRACE_OVERLAYS
    for name in SENTINEL_CONTAINERS:
        c = byname[name]
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] == UID and sc["runAsGroup"] == UID, name
        assert sc["readOnlyRootFilesystem"] is True, name
        assert sc["capabilities"]["drop"] == ["ALL"], name
        # File capabilities (py-spy's) need privilege escalation allowed; nothing else does.
        want_add = ["SYS_PTRACE"] if ptrace and name == "sentinel" else None
        assert sc["capabilities"].get("add") == want_add, name
        assert sc["allowPrivilegeEscalation"] is (ptrace and name == "sentinel"), name
        assert "nvidia.com/gpu" not in json.dumps(c.get("resources", {})), name
        assert env_of(c)["NVIDIA_VISIBLE_DEVICES"]["value"] == "void", name
        assert c["image"] == "sentinel-cuda-gdb:0.1.0", name  # deploy/Dockerfile.cuda-gdb
        # A writable /tmp: the root filesystem is read-only, and the CLI does not start without one.
        assert "/tmp" in {m["mountPath"] for m in c["volumeMounts"]}, name
    side = byname["sentinel"]
    assert "--no-nvml" in side["args"] and "NVIDIA_DRIVER_CAPABILITIES" not in env_of(side)
    assert {"--group=65532", "--any-owner"} <= set(side["args"])
    server = byname["server"]
    assert env_of(server)["SENTINEL_GROUP"]["value"] == str(UID)
    assert env_of(server)["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert "PYTHONPATH" not in env_of(server)  # set by the command wrapper, from the image's own
    assert "/var/run/sentinel" in {m["mountPath"] for m in side["volumeMounts"]}
    assert {m["name"] for m in server["volumeMounts"]} == {"sentinel-dir", "sentinel-rings", "sentinel-hooks"}
    # The rings in memory, in both containers: the GPU writes the collective marks into their pages.
    rings = next(v for v in spec["volumes"] if v["name"] == "sentinel-rings")
    assert rings["emptyDir"]["medium"] == "Memory"
    for c in (server, side):
        assert {"name": "sentinel-rings", "mountPath": "/var/run/sentinel/rings"} in c["volumeMounts"]
    if overlay != "base":
        assert server["image"] != "your-inference-image:latest"


@needs_kubectl
@pytest.mark.parametrize("overlay", SIDECAR_OVERLAYS)
def test_sidecar_never_gates_readiness_and_its_probe_needs_no_auth(overlay):
    spec = pod_template(render(overlay))["spec"]
    for c in _all_containers(spec):
        if c["name"] in SENTINEL_CONTAINERS:
            # A readiness or startup probe would hold the server's traffic on the sidecar.
            assert "readinessProbe" not in c and "startupProbe" not in c, c["name"]
    probe = containers(spec)["sentinel"]["livenessProbe"]
    assert probe["httpGet"] == {"path": "/-/healthy", "port": "metrics"}  # no headers, no credentials
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 60  # a minute before a restart


@needs_kubectl
@pytest.mark.parametrize("overlay", SIDECAR_OVERLAYS)
def test_sentinel_dir_size_limit_holds_the_coredump_cap(overlay):
    spec = pod_template(render(overlay))["spec"]
    limit = next(v["emptyDir"]["sizeLimit"] for v in spec["volumes"] if v["name"] == "sentinel-dir")
    args = containers(spec)["sentinel"]["args"]
    cap_mb = float(next(a.split("=", 1)[1] for a in args if a.startswith("--cores-max-mb=")))
    # The cap, half as much again for dumps awaiting cuda-gdb, and 1 GiB for rings, journal and the rest.
    assert quantity(limit) >= cap_mb * 2**20 * 1.5 + 2**30, (limit, cap_mb)


@needs_kubectl
def test_flags_in_the_manifests_exist_in_the_cli():
    helps = {}
    for overlay in SIDECAR_OVERLAYS + ["node"]:
        for c in _all_containers(pod_template(render(overlay))["spec"]):
            if not c["image"].startswith("sentinel"):
                continue
            argv = c.get("command") or ["sentinel"] + c["args"]
            sub = argv[1]
            if sub not in helps:
                helps[sub] = subprocess.run([str(SENTINEL), sub, "--help"], capture_output=True, text=True).stdout
            for arg in argv[2:]:
                if arg.startswith("--"):
                    assert arg.split("=")[0] in helps[sub], (overlay, c["name"], arg)


# --- PYTHONPATH ------------------------------------------------------------------------------------

PROBE = """
import builtins, json, os, sys, sentinel_hooks
print(json.dumps({"pythonpath": os.environ["PYTHONPATH"], "hooks": sentinel_hooks.__file__,
                  "sitecustomize": sys.modules["sitecustomize"].__file__,
                  "image_sitecustomize": getattr(builtins, "IMAGE_SITECUSTOMIZE", False),
                  "image_module": __import__("image_module").__file__}))
"""


@needs_kubectl
def test_server_command_extends_the_images_pythonpath(tmp_path):
    """Run the rendered wrapper as the container would: the image's PYTHONPATH (with its own
    sitecustomize and modules) stays, after the hooks that `sentinel install-hooks` copied."""
    for overlay in SIDECAR_OVERLAYS:  # the same wrapper everywhere; the examples set args only
        server = containers(pod_template(render(overlay))["spec"])["server"]
        assert server["command"] == containers(pod_template(render("base"))["spec"])["server"]["command"]
    server = containers(pod_template(render("examples/vllm"))["spec"])["server"]
    assert server["args"][:2] == ["vllm", "serve"]
    shell, flag, script, name = server["command"]
    assert (shell, flag) == ("/bin/sh", "-c")
    hooks = tmp_path / "hooks"  # stands for /opt/sentinel/hooks, the init container's copy
    res = subprocess.run([str(SENTINEL), "install-hooks", str(hooks)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    script = script.replace(HOOKS, str(hooks))
    image = tmp_path / "image-site"  # the image's own PYTHONPATH entry
    image.mkdir()
    (image / "sitecustomize.py").write_text("import builtins\nbuiltins.IMAGE_SITECUSTOMIZE = True\n")
    (image / "image_module.py").write_text("")
    inject, root = str(hooks / "sentinel_hooks" / "_inject"), str(hooks)
    base_env = {"PATH": os.environ["PATH"], "SENTINEL_DIR": str(tmp_path / "dir"), "HOME": str(tmp_path)}
    res = subprocess.run([shell, flag, script, name, sys.executable, "-c", PROBE], capture_output=True, text=True,
                         env={**base_env, "PYTHONPATH": str(image)}, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["pythonpath"] == f"{inject}:{root}:{image}"
    assert got["hooks"].startswith(root) and got["sitecustomize"].startswith(inject)
    assert got["image_sitecustomize"] is True  # Sentinel's sitecustomize ran the image's one
    assert got["image_module"].startswith(str(image))
    # The server ran under the log tap: its output passed through (read above) and was copied for the
    # sidecar to DIR/logs/.
    logs = list((tmp_path / "dir" / "logs").glob("*.log"))
    assert len(logs) == 1 and got["pythonpath"] in logs[0].read_text()
    # An image without PYTHONPATH: no empty entry (which would put the working directory on the path).
    res = subprocess.run([shell, flag, script, name, sys.executable, "-c", "import os; print(os.environ['PYTHONPATH'])"],
                         capture_output=True, text=True, env=base_env, cwd=tmp_path)
    assert res.returncode == 0 and res.stdout.strip() == f"{inject}:{root}", res.stderr


# --- selectors, labels, rules ----------------------------------------------------------------------

def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@needs_kubectl
def test_examples_select_only_their_own_pods_and_services():
    rendered = {ex: render(f"examples/{ex}") for ex in ("vllm", "sglang")}
    for a, docs_a in rendered.items():
        svc, sm, dep = one(docs_a, "Service"), one(docs_a, "ServiceMonitor"), one(docs_a, "Deployment")
        assert selects(dep["spec"]["selector"]["matchLabels"], dep["spec"]["template"]["metadata"]["labels"])
        # job="sentinel" for every sidecar, whatever the Service's (prefixed) name: the rules use it.
        assert svc["metadata"]["labels"][sm["spec"]["jobLabel"]] == "sentinel"
        for b, docs_b in rendered.items():
            pod_labels = one(docs_b, "Deployment")["spec"]["template"]["metadata"]["labels"]
            assert selects(svc["spec"]["selector"], pod_labels) is (a == b), (a, b)
            other_svc = one(docs_b, "Service")["metadata"]["labels"]
            assert selects(sm["spec"]["selector"]["matchLabels"], other_svc) is (a == b), (a, b)


@needs_kubectl
def test_one_prometheusrule_and_release_labels_for_kube_prometheus_stack():
    rules = [(o, d) for o in OVERLAYS for d in render(o) if d["kind"] == "PrometheusRule"]
    assert [o for o, _ in rules] == ["rules"]  # applied once per cluster, not with each overlay
    for overlay in OVERLAYS:
        if overlay == "base":
            continue  # the base is for kustomizations; every overlay shipped adds the label
        for d in render(overlay):
            if d["kind"] in ("ServiceMonitor", "PrometheusRule"):
                assert d["metadata"]["labels"]["release"] == "kube-prometheus-stack", (overlay, d["kind"])


@needs_kubectl
def test_release_label_is_a_parameter(tmp_path):
    patch = ("patches:\n  - target: {group: monitoring.coreos.com, kind: ServiceMonitor|PrometheusRule}\n"
             "    patch: |\n      - {op: replace, path: /metadata/labels/release, value: prom}\n")
    docs = render(overlay_with(tmp_path, "rules", extra=patch))
    assert one(docs, "PrometheusRule")["metadata"]["labels"]["release"] == "prom"


# --- the node component ---------------------------------------------------------------------------

@needs_kubectl
def test_node_daemonset_has_the_gpus_and_the_pod_resources_socket():
    docs = render("node")
    ds = one(docs, "DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert c["args"] == ["daemon", "--dir=/var/run/sentinel-node", "--listen=0.0.0.0:9465",
                                  "--pod-resources-socket=/var/lib/kubelet/pod-resources/kubelet.sock"]  # NVML on
    env = env_of(c)
    assert env["NVIDIA_VISIBLE_DEVICES"]["value"] == "all" and env["NVIDIA_DRIVER_CAPABILITIES"]["value"] == "utility"
    assert "nvidia.com/gpu" not in json.dumps(c.get("resources", {}))  # no request: the device plugin's GPUs stay
    (vol,) = [v for v in spec["volumes"] if "hostPath" in v]
    assert vol["hostPath"]["path"] == "/var/lib/kubelet/pod-resources"
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == vol["name"]]
    assert mount["readOnly"] is True and mount["mountPath"] == "/var/lib/kubelet/pod-resources"
    sc = c["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True and not sc.get("privileged")
    assert spec["automountServiceAccountToken"] is False
    assert c["livenessProbe"]["httpGet"] == {"path": "/-/healthy", "port": "metrics"} and "readinessProbe" not in c
    svc, sm = one(docs, "Service"), one(docs, "ServiceMonitor")
    assert svc["spec"]["clusterIP"] == "None"
    assert selects(svc["spec"]["selector"], ds["spec"]["template"]["metadata"]["labels"])
    assert selects(sm["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"])
    assert svc["metadata"]["labels"][sm["spec"]["jobLabel"]] == "sentinel-node"


@needs_kubectl
def test_node_kernel_log_component_reads_the_hosts_syslog_file_read_only(tmp_path):
    """components/node-kernel-log: the host's /var/log mounted read-only, --kmsg on its kern.log, and
    no capability or privilege added for it."""
    docs = render(overlay_with(tmp_path, "node", "components/node-kernel-log"))
    spec = one(docs, "DaemonSet")["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert c["args"][-1] == "--kmsg=/host/var/log/kern.log"
    (vol,) = [v for v in spec["volumes"] if v["name"] == "host-log"]
    assert vol["hostPath"] == {"path": "/var/log", "type": "Directory"}
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == "host-log"]
    assert mount == {"name": "host-log", "mountPath": "/host/var/log", "readOnly": True}
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]} and not c["securityContext"].get("privileged")


# --- the PrometheusRule ---------------------------------------------------------------------------

def test_prometheusrule_is_generated_from_the_rule_files():
    res = subprocess.run([sys.executable, str(K8S / "gen_prometheusrule.py"), "--check"], capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr


@pytest.mark.skipif(shutil.which("promtool") is None and not os.environ.get("CI"), reason="promtool not installed")
def test_prometheusrule_spec_is_valid_rules(tmp_path):
    rule = yaml.safe_load((K8S / "rules" / "prometheusrule.yaml").read_text())
    out = tmp_path / "from-crd.rules.yml"
    out.write_text(yaml.safe_dump(rule["spec"]))
    res = subprocess.run([shutil.which("promtool"), "check", "rules", str(out)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    names = {r.get("alert") or r.get("record") for g in rule["spec"]["groups"] for r in g["rules"]}
    shipped = set(re.findall(r"- (?:alert|record): (\S+)", "".join(
        p.read_text() for p in (REPO / "deploy" / "prometheus").glob("*.rules.yml"))))
    assert names == shipped


# --- the images -----------------------------------------------------------------------------------

def test_dockerfile_sources_exist_and_entrypoint_is_the_cli():
    text = (REPO / "deploy" / "Dockerfile").read_text()
    for src in re.findall(r"^COPY (.+?) \S+$", text, re.M):
        for part in src.split():
            assert (REPO / part).exists(), part
    assert 'ENTRYPOINT ["sentinel"]' in text
    code = re.sub(r"#.*", "", text)
    assert "torch" not in code  # the sidecar image stays small
    assert re.search(r"^USER 65532:65532$", text, re.M)  # the manifests' runAsUser/runAsGroup
    # py-spy alone gets SYS_PTRACE, as a file capability (components/ptrace says why)
    assert 'setcap cap_sys_ptrace+ep "$(command -v py-spy)"' in code
    assert "-perm /6000 -exec chmod a-s" in code
    # and the CLI it runs really has the subcommands the manifests use
    res = subprocess.run([str(SENTINEL), "--help"], capture_output=True, text=True)
    assert "daemon" in res.stdout and "install-hooks" in res.stdout


def test_cuda_gdb_dockerfile_adds_only_cuda_gdb_to_the_sidecar_image():
    text = (REPO / "deploy" / "Dockerfile.cuda-gdb").read_text()
    code = re.sub(r"#.*", "", text)
    assert "ARG SIDECAR_IMAGE=sentinel:0.1.0" in code and "FROM ${SIDECAR_IMAGE}" in code
    assert re.search(r"ARG CUDA_IMAGE=nvidia/cuda:\S+-devel-\S+", code)
    copies = re.findall(r"^COPY (.+)$", code, re.M)
    assert copies == ["--from=cuda /usr/local/cuda/bin/cuda-gdb-minimal /usr/local/bin/cuda-gdb"]
    assert [ln for ln in code.splitlines() if ln.strip()][-2:] == ["USER 65532:65532", "RUN cuda-gdb --version"]
    assert "NVIDIA_VISIBLE_DEVICES" not in code and "torch" not in code
