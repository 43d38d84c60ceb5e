"""Which pods hold which GPUs: the kubelet's pod-resources API, for attributing a GPU's XIDs.

The node DaemonSet (deploy/k8s/node) watches every GPU of its node through NVML; an XID names a
GPU. The kubelet knows which container each device was allocated to: its PodResourcesLister v1
service (``List``), a gRPC endpoint on a unix socket, by default
``/var/lib/kubelet/pod-resources/kubelet.sock`` (stable since Kubernetes 1.28; dcgm-exporter uses
the same). The NVIDIA device plugin's device ids are the GPUs' UUIDs (``GPU-...``), the same as
``nvmlDeviceGetUUID``. MIG slices have their own UUIDs (``MIG-...``): an XID of a GPU split into
MIG slices is not attributed (no pod is named).

The messages are built from their descriptor at run time (no generated code), with the kubelet's
field numbers (pkg/kubelet/apis/podresources/v1/api.proto); fields Sentinel does not read are
skipped by protobuf as unknown. Needs ``grpcio`` and ``protobuf`` (``pip install sentinel-gpu[node]``).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_SOCKET", "LIST_METHOD", "REFRESH_S", "TIMEOUT_S", "PodDevice", "parse_list_response",
    "list_devices", "PodAttribution",
]

log = logging.getLogger("sentinel.podresources")

DEFAULT_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"
LIST_METHOD = "/v1.PodResourcesLister/List"
REFRESH_S = 10.0  # a listing is reused this long (pods come and go far slower than XIDs repeat)
TIMEOUT_S = 2.0


@dataclass(frozen=True)
class PodDevice:
    """One container a device is allocated to, from the kubelet's List response: its namespace, pod
    and container names and the resource name."""

    namespace: str
    pod: str
    container: str
    resource: str  # e.g. nvidia.com/gpu


def _message_classes() -> tuple[Any, Any]:
    """(ListPodResourcesRequest, ListPodResourcesResponse) classes, from a private descriptor pool."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    f = descriptor_pb2.FieldDescriptorProto
    fd = descriptor_pb2.FileDescriptorProto(name="sentinel/podresources_v1.proto", package="v1", syntax="proto3")

    def message(name: str, fields: list[tuple[str, int, int, int, str]]) -> None:
        m = fd.message_type.add(name=name)
        for fname, number, ftype, label, type_name in fields:
            field = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                field.type_name = type_name

    one, many, string, msg = f.LABEL_OPTIONAL, f.LABEL_REPEATED, f.TYPE_STRING, f.TYPE_MESSAGE
    message("ListPodResourcesRequest", [])
    message("ContainerDevices", [("resource_name", 1, string, one, ""), ("device_ids", 2, string, many, "")])
    message("ContainerResources", [("name", 1, string, one, ""), ("devices", 2, msg, many, ".v1.ContainerDevices")])
    message("PodResources", [("name", 1, string, one, ""), ("namespace", 2, string, one, ""),
                             ("containers", 3, msg, many, ".v1.ContainerResources")])
    message("ListPodResourcesResponse", [("pod_resources", 1, msg, many, ".v1.PodResources")])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    get = message_factory.GetMessageClass
    return (get(pool.FindMessageTypeByName("v1.ListPodResourcesRequest")),
            get(pool.FindMessageTypeByName("v1.ListPodResourcesResponse")))


def parse_list_response(data: bytes) -> dict[str, list[PodDevice]]:
    """Device id -> the containers it is allocated to, from a serialized ListPodResourcesResponse.
    Raises google.protobuf.message.DecodeError on bytes that are not one."""
    _request, response = _message_classes()
    out: dict[str, list[PodDevice]] = {}
    for pod in response.FromString(data).pod_resources:
        for container in pod.containers:
            for dev in container.devices:
                for device_id in dev.device_ids:
                    out.setdefault(device_id, []).append(
                        PodDevice(pod.namespace, pod.name, container.name, dev.resource_name))
    return out


def list_devices(socket_path: str = DEFAULT_SOCKET, timeout_s: float = TIMEOUT_S) -> dict[str, list[PodDevice]]:
    """Ask the kubelet once. Raises ImportError without grpcio/protobuf, grpc.RpcError when the
    kubelet does not answer (no socket, no permission: the socket is root's)."""
    import grpc

    request, _response = _message_classes()
    with grpc.insecure_channel(f"unix://{socket_path}") as channel:
        call = channel.unary_unary(LIST_METHOD, request_serializer=lambda m: m.SerializeToString(),
                                   response_deserializer=lambda b: b)
        return parse_list_response(call(request(), timeout=timeout_s))


class PodAttribution:
    """GPU UUID -> pods, from the kubelet, refreshed at most every REFRESH_S. Never raises: a
    kubelet that does not answer is logged once per kind of failure, and nothing is attributed."""

    def __init__(self, socket_path: str = DEFAULT_SOCKET) -> None:
        self.socket_path = socket_path
        self._devices: dict[str, list[PodDevice]] = {}
        self._at = -1e9
        self._lock = threading.Lock()
        self._logged: set[str] = set()
        self.errors = 0

    def pods_for(self, uuid: str) -> list[PodDevice]:
        """The containers holding GPU ``uuid`` (asks the kubelet at most every REFRESH_S, also on a
        miss: a GPU no pod holds does not cost a call per XID)."""
        with self._lock:
            if time.monotonic() - self._at > REFRESH_S:
                self._refresh()
            return list(self._devices.get(uuid, ()))

    def _refresh(self) -> None:
        self._at = time.monotonic()
        try:
            devices: dict[str, list[PodDevice]] = {}
            for device_id, holders in list_devices(self.socket_path).items():
                # The device plugin's time-slicing replicas are "GPU-<uuid>::<n>": the GPU is the uuid.
                devices.setdefault(device_id.split("::", 1)[0], []).extend(holders)
            self._devices = devices
        except Exception as exc:  # ImportError, grpc.RpcError, a bad reply: attribution off for now
            self.errors += 1
            kind = type(exc).__name__
            if kind not in self._logged:
                self._logged.add(kind)
                log.warning("XIDs not attributed to pods: the kubelet's pod-resources API did not answer",
                            extra={"socket": self.socket_path, "error": f"{kind}: {exc}"[:300]})
