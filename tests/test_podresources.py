"""XIDs attributed to the pods holding the GPU, from the kubelet's pod-resources API.

No kubelet runs here, so a real gRPC server on a unix socket answers PodResourcesLister/List in
its place, with a reply encoded by hand from the kubelet's published field numbers
(pkg/kubelet/apis/podresources/v1/api.proto), including fields Sentinel does not read (cpu_ids,
topology, memory): that checks the client's descriptor against the wire format, not against
itself. The daemon then counts and labels an XID event with the pod, as NVML's watcher thread
would hand it over (no GPU here: the event is built, everything after it is real).
"""

from __future__ import annotations

import concurrent.futures
import os
import time
from pathlib import Path

import pytest

grpc = pytest.importorskip("grpc")

from sentinel.daemon import podresources  # noqa: E402
from sentinel.daemon.loop import Daemon, DaemonConfig  # noqa: E402
from sentinel.daemon.nvml import XidEvent  # noqa: E402


def _varint(n: int) -> bytes:
    out = b""
    while True:
        b, n = n & 0x7F, n >> 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out


def _field(number: int, payload: bytes | str | int, wire: int = 2) -> bytes:
    if wire == 0:
        return _varint(number << 3) + _varint(int(payload))
    data = payload.encode() if isinstance(payload, str) else payload
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _reply() -> bytes:
    def devices(resource: str, ids: list[str]) -> bytes:
        topology = _field(1, _field(1, 0, wire=0))  # TopologyInfo{nodes: [NUMANode{ID: 0}]}: unread
        return _field(1, resource) + b"".join(_field(2, i) for i in ids) + _field(3, topology)

    def container(name: str, devs: list[bytes]) -> bytes:
        return _field(1, name) + b"".join(_field(2, d) for d in devs) + _field(3, 7, wire=0)  # cpu_ids: unread

    def pod(name: str, namespace: str, containers: list[bytes]) -> bytes:
        return _field(1, name) + _field(2, namespace) + b"".join(_field(3, c) for c in containers)

    pods = [
        pod("vllm-0", "serving", [container("server", [devices("nvidia.com/gpu", ["GPU-aaaa", "GPU-bbbb"])]),
                                  container("sentinel", [])]),
        pod("other-team-7", "research", [container("train", [devices("nvidia.com/gpu", ["GPU-cccc"])])]),
        # the device plugin's time-slicing: replicas of one GPU, "GPU-<uuid>::<n>"
        pod("shared-1", "research", [container("a", [devices("nvidia.com/gpu", ["GPU-eeee::0"])])]),
        pod("shared-2", "research", [container("b", [devices("nvidia.com/gpu", ["GPU-eeee::1"])])]),
        pod("nginx", "web", [container("nginx", [])]),
    ]
    return b"".join(_field(1, p) for p in pods)


@pytest.fixture
def kubelet(tmp_path: Path):
    sock = str(tmp_path / "kubelet.sock")
    calls = []

    def list_(request: bytes, context) -> bytes:  # noqa: ANN001
        calls.append(request)
        return _reply()

    handler = grpc.method_handlers_generic_handler("v1.PodResourcesLister", {
        "List": grpc.unary_unary_rpc_method_handler(list_, request_deserializer=lambda b: b,
                                                    response_serializer=lambda b: b)})
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"unix://{sock}")
    server.start()
    try:
        yield sock, calls
    finally:
        server.stop(grace=None)


def test_the_kubelets_reply_maps_each_gpu_to_its_pod(kubelet):
    sock, calls = kubelet
    devices = podresources.list_devices(sock)
    assert calls == [b""]  # ListPodResourcesRequest{} is empty on the wire
    assert {k: [(d.namespace, d.pod, d.container, d.resource) for d in v] for k, v in devices.items()} == {
        "GPU-aaaa": [("serving", "vllm-0", "server", "nvidia.com/gpu")],
        "GPU-bbbb": [("serving", "vllm-0", "server", "nvidia.com/gpu")],
        "GPU-cccc": [("research", "other-team-7", "train", "nvidia.com/gpu")],
        "GPU-eeee::0": [("research", "shared-1", "a", "nvidia.com/gpu")],
        "GPU-eeee::1": [("research", "shared-2", "b", "nvidia.com/gpu")],
    }
    # Attribution is by GPU: both time-sliced pods hold GPU-eeee.
    held = podresources.PodAttribution(sock).pods_for("GPU-eeee")
    assert sorted(d.pod for d in held) == ["shared-1", "shared-2"]


def test_a_kubelet_that_does_not_answer_attributes_nothing_and_says_so_once(tmp_path: Path, caplog):
    attribution = podresources.PodAttribution(str(tmp_path / "absent.sock"))
    assert attribution.pods_for("GPU-aaaa") == [] and attribution.pods_for("GPU-bbbb") == []
    assert attribution.errors == 1  # one try per REFRESH_S, not one per XID
    assert sum("did not answer" in r.getMessage() for r in caplog.records) == 1


def test_the_node_daemon_labels_an_xid_with_the_pod_holding_the_gpu(kubelet, tmp_path: Path):
    sock, calls = kubelet
    attribution = podresources.PodAttribution(sock)
    d = Daemon(DaemonConfig(base_dir=str(tmp_path / "node"), use_events=False, nvml=False))
    try:
        # What the NVML watcher thread hands over (it calls the attribution, off the poll thread).
        for uuid, gpu in (("GPU-bbbb", "1"), ("GPU-dddd", "3")):  # GPU-dddd: held by no pod
            pods = tuple(sorted({(p.namespace, p.pod) for p in attribution.pods_for(uuid)}))
            d.gpus.record_xid(XidEvent(gpu, uuid, 79, (), time.time(), pods))
        assert d.gpus.xid_counts == {("1", 79, "serving", "vllm-0"): 1, ("3", 79, "", ""): 1}
        d._publish()
        from prometheus_client import generate_latest

        from sentinel.exporter.collectors import build_registry

        text = generate_latest(build_registry(lambda: d.snapshot)).decode()
        assert 'sentinel_gpu_xid_errors_total{gpu="1",namespace="serving",pod="vllm-0",xid="79"} 1.0' in text
        assert 'sentinel_gpu_xid_errors_total{gpu="3",namespace="",pod="",xid="79"} 1.0' in text
        assert len(calls) == 1  # one listing serves both: a GPU no pod holds costs no second call
    finally:
        d.close()
    again = Daemon(DaemonConfig(base_dir=str(tmp_path / "node"), use_events=False, nvml=False))
    try:
        assert again.gpus.xid_counts == {("1", 79, "serving", "vllm-0"): 1, ("3", 79, "", ""): 1}  # journaled
    finally:
        again.close()
    assert os.path.exists(sock)
