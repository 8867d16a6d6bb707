"""The namespaces, one per part of the API; shared by the sync and the async client.

Every method returns what its client makes of a :class:`Call`: the answer itself
(:class:`~micro_os.MicroOS`) or an awaitable of it (:class:`~micro_os.AsyncMicroOS`).
Methods that follow (``follow=True``, ``events.stream``) return iterators (async ones on
the async client).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from . import models as m
from ._call import NOTHING, TEXT, Call, Stream, Wait, api, body, seg, upload

if TYPE_CHECKING:
    from ._client import Runner

V1 = "/api/v1"


class Namespace:
    def __init__(self, client: "Runner"):
        self._c = client

    def _run(self, call: Call) -> Any:
        return self._c._run(call)

    def _stream(self, stream: Stream) -> Any:
        return self._c._stream(stream)


class Vms(Namespace):
    """VMs: namespace sandboxes and qemu guests."""

    @api("POST /api/v1/vms")
    def create(self, name: str, memory: int, cpu: float = 1, *, driver: Optional[str] = None,
               image: Optional[str] = None, restart: Optional[str] = None) -> Any:
        """Create a VM (``memory`` in MiB); it is not started."""
        return self._run(Call("POST", f"{V1}/vms", body=body(name=name, memory=memory, cpu=cpu, driver=driver,
                                                               image=image, restart=restart), result=m.Vm))

    @api("POST /api/v1/vms/batch")
    def create_many(self, vms: Sequence[dict[str, Any]]) -> Any:
        """Create several VMs at once (the shape of ``vm create --from-file``); all or none."""
        return self._run(Call("POST", f"{V1}/vms/batch", body={"vms": list(vms)}, result=list[m.Vm]))

    @api("GET /api/v1/vms")
    def list(self) -> Any:
        return self._run(Call("GET", f"{V1}/vms", result=list[m.Vm]))

    @api("GET /api/v1/vms/{id}")
    def get(self, id: str) -> Any:
        """A VM by id or name."""
        return self._run(Call("GET", f"{V1}/vms/{seg(id)}", result=m.Vm))

    @api("POST /api/v1/vms/{id}/start")
    def start(self, id: str, *, wait: bool = False, timeout: float = 180.0) -> Any:
        """Start a VM; with ``wait``, until its agent reports ready."""
        w = Wait(Call("GET", f"{V1}/vms/{seg(id)}", result=m.Vm),
                 done=lambda v: v.state == "running" and v.agent == "ready",
                 failed=lambda v: None if v.state == "running" else f"VM {v.name!r} is {v.state}: {v.error or 'no error given'}",
                 what=f"VM {id!r} ready", timeout=timeout) if wait else None
        return self._run(Call("POST", f"{V1}/vms/{seg(id)}/start", result=m.Vm, wait=w))

    @api("POST /api/v1/vms/{id}/stop")
    def stop(self, id: str, *, force: bool = False, timeout: Optional[float] = None) -> Any:
        return self._run(Call("POST", f"{V1}/vms/{seg(id)}/stop", params={"force": force, "timeout": timeout},
                              result=m.Vm))

    @api("POST /api/v1/vms/{id}/pause")
    def pause(self, id: str) -> Any:
        return self._run(Call("POST", f"{V1}/vms/{seg(id)}/pause", result=m.Vm))

    @api("POST /api/v1/vms/{id}/resume")
    def resume(self, id: str) -> Any:
        return self._run(Call("POST", f"{V1}/vms/{seg(id)}/resume", result=m.Vm))

    @api("DELETE /api/v1/vms/{id}")
    def remove(self, id: str, *, force: bool = False) -> Any:
        return self._run(Call("DELETE", f"{V1}/vms/{seg(id)}", params={"force": force}, result=NOTHING))


class Containers(Namespace):
    """OCI containers, on this host or on a VM."""

    @api("POST /api/v1/containers")
    def create(self, name: str, *, template: Optional[str] = None, image: Optional[str] = None,
               vm: Optional[str] = None, command: Optional[Sequence[str]] = None,
               env: Optional[dict[str, str]] = None, ports: Optional[Sequence[str]] = None,
               resources: Optional[dict[str, Any]] = None, restart: Optional[str] = None,
               health_check: Optional[dict[str, Any]] = None, network: Optional[dict[str, Any]] = None,
               config: Optional[dict[str, str]] = None, circuit: Optional[str] = None,
               replicate: Optional[int] = None, start: bool = False, rm: bool = False) -> Any:
        """Create a container from a template or an image (on VM ``vm`` if given); with
        ``start``, start it too."""
        b = body(name=name, template=template, image=image, vm=vm, command=list(command) if command else None,
                 env=env, ports=list(ports) if ports else None, resources=resources, restart=restart,
                 health_check=health_check, network=network, config=config, circuit=circuit, replicate=replicate)
        return self._run(Call("POST", f"{V1}/containers", params={"start": start or None, "rm": rm or None},
                              body=b, result=m.Container))

    @api("POST /api/v1/containers/deploy")
    def deploy(self, containers: Sequence[dict[str, Any]]) -> Any:
        """Create several containers and start them in the order of their ``depends_on``
        entries (the shape of ``container deploy --from-file``)."""
        return self._run(Call("POST", f"{V1}/containers/deploy", body={"containers": list(containers)},
                              result=list[m.Container]))

    @api("GET /api/v1/containers")
    def list(self) -> Any:
        return self._run(Call("GET", f"{V1}/containers", result=list[m.Container]))

    @api("GET /api/v1/containers/{id}")
    def get(self, id: str) -> Any:
        """A container by id or name."""
        return self._run(Call("GET", f"{V1}/containers/{seg(id)}", result=m.Container))

    @api("POST /api/v1/containers/{id}/start")
    def start(self, id: str, *, wait: bool = False, timeout: float = 120.0) -> Any:
        """Start a container; with ``wait``, until it runs and (if it has a health check) is healthy."""
        def done(c: Any) -> bool:
            return c.state == "running" and (c.health is None or c.health.status == "healthy")

        w = Wait(Call("GET", f"{V1}/containers/{seg(id)}", result=m.Container), done=done,
                 failed=lambda c: None if c.state == "running" else f"container {c.name!r} is {c.state} (exit code {c.exit_code})",
                 what=f"container {id!r} running", timeout=timeout) if wait else None
        return self._run(Call("POST", f"{V1}/containers/{seg(id)}/start", result=m.Container, wait=w))

    @api("POST /api/v1/containers/{id}/stop")
    def stop(self, id: str, *, timeout: Optional[float] = None) -> Any:
        return self._run(Call("POST", f"{V1}/containers/{seg(id)}/stop", params={"timeout": timeout},
                              result=m.Container))

    @api("POST /api/v1/containers/{id}/pause")
    def pause(self, id: str) -> Any:
        return self._run(Call("POST", f"{V1}/containers/{seg(id)}/pause", result=m.Container))

    @api("POST /api/v1/containers/{id}/resume")
    def resume(self, id: str) -> Any:
        return self._run(Call("POST", f"{V1}/containers/{seg(id)}/resume", result=m.Container))

    @api("POST /api/v1/containers/{id}/wait")
    def wait(self, id: str, *, rm: bool = False) -> Any:
        """Block until the container exits; its exit code."""
        return self._run(Call("POST", f"{V1}/containers/{seg(id)}/wait", params={"rm": rm or None},
                              result=m.WaitResponse))

    @api("POST /api/v1/containers/{id}/exec")
    def exec(self, id: str, command: Sequence[str], *, env: Optional[dict[str, str]] = None,
             timeout_s: Optional[float] = None) -> Any:
        """Run a command in a running container, with its environment (``docker exec``
        without a terminal); what it printed and its exit code."""
        return self._run(Call("POST", f"{V1}/containers/{seg(id)}/exec",
                              body=body(command=list(command), env=env, timeout_s=timeout_s), result=m.ExecResult))

    @api("DELETE /api/v1/containers/{id}")
    def remove(self, id: str, *, force: bool = False) -> Any:
        return self._run(Call("DELETE", f"{V1}/containers/{seg(id)}", params={"force": force or None},
                              result=NOTHING))

    @api("GET /api/v1/containers/{id}/config")
    def config(self, id: str) -> Any:
        """The settings handed to the workload."""
        return self._run(Call("GET", f"{V1}/containers/{seg(id)}/config", result=dict[str, str]))

    @api("PATCH /api/v1/containers/{id}/config")
    def configure(self, id: str, settings: dict[str, Any]) -> Any:
        """Merge settings into the workload's config (they apply at the next start)."""
        return self._run(Call("PATCH", f"{V1}/containers/{seg(id)}/config",
                              body={k: str(v) for k, v in settings.items()}, result=m.Container))

    @api("GET /api/v1/containers/{id}/logs")
    def logs(self, id: str, *, follow: bool = False, tail: Optional[int] = None, since: Optional[str] = None,
             timestamps: bool = False) -> Any:
        """Log lines (without their newline); with ``follow`` an iterator that goes on as
        the container writes, otherwise the list of lines so far."""
        call = Call("GET", f"{V1}/containers/{seg(id)}/logs",
                    params={"follow": follow, "tail": tail, "since": since, "timestamps": timestamps or None})
        if follow:
            return self._stream(Stream(call, "lines"))
        call.result = TEXT
        return self._c._then(self._run(call), lambda t: t.splitlines())

    @api("GET /api/v1/containers/{id}/events")
    def events(self, id: str) -> Any:
        """The container's last 100 lifecycle events, oldest first."""
        return self._run(Call("GET", f"{V1}/containers/{seg(id)}/events", result=list[m.EventInfo]))


class CircuitState(Namespace):
    """A circuit's replicated key-value state (linearizable unless ``stale``)."""

    @api("GET /api/v1/circuits/{id}/state")
    def all(self, circuit: str, *, stale: bool = False, via: Optional[str] = None) -> Any:
        return self._run(Call("GET", f"{V1}/circuits/{seg(circuit)}/state", params={"stale": stale or None, "via": via},
                              result=m.ReadResult))

    @api("GET /api/v1/circuits/{id}/state/{key}")
    def get(self, circuit: str, key: str, *, stale: bool = False, via: Optional[str] = None) -> Any:
        return self._run(Call("GET", f"{V1}/circuits/{seg(circuit)}/state/{seg(key)}",
                              params={"stale": stale or None, "via": via}, result=m.ReadResult))

    @api("PUT /api/v1/circuits/{id}/state/{key}")
    def set(self, circuit: str, key: str, value: str, *, expected_version: Optional[int] = None,
            via: Optional[str] = None) -> Any:
        """Write a key (compare-and-set with ``expected_version``; 0: only if absent)."""
        return self._run(Call("PUT", f"{V1}/circuits/{seg(circuit)}/state/{seg(key)}", params={"via": via},
                              body=body(value=value, expected_version=expected_version), result=m.WriteResult))

    @api("DELETE /api/v1/circuits/{id}/state/{key}")
    def delete(self, circuit: str, key: str, *, via: Optional[str] = None) -> Any:
        return self._run(Call("DELETE", f"{V1}/circuits/{seg(circuit)}/state/{seg(key)}", params={"via": via},
                              result=m.WriteResult))


class Circuits(Namespace):
    """Circuits: groups of VMs that keep one replicated state with Raft."""

    def __init__(self, client: "Runner"):
        super().__init__(client)
        self.state = CircuitState(client)

    @api("POST /api/v1/circuits")
    def create(self, name: str, nodes: Sequence[str], *, type: Optional[str] = None) -> Any:
        return self._run(Call("POST", f"{V1}/circuits", body=body(name=name, nodes=list(nodes), type=type),
                              result=m.CircuitView))

    @api("GET /api/v1/circuits")
    def list(self) -> Any:
        return self._run(Call("GET", f"{V1}/circuits", result=list[m.CircuitView]))

    @api("GET /api/v1/circuits/{id}")
    def get(self, id: str) -> Any:
        return self._run(Call("GET", f"{V1}/circuits/{seg(id)}", result=m.CircuitView))

    @api("DELETE /api/v1/circuits/{id}")
    def remove(self, id: str) -> Any:
        return self._run(Call("DELETE", f"{V1}/circuits/{seg(id)}", result=NOTHING))

    @api("POST /api/v1/circuits/{id}/members")
    def add_member(self, id: str, vm: str) -> Any:
        return self._run(Call("POST", f"{V1}/circuits/{seg(id)}/members", body={"vm": vm}, result=m.CircuitView))

    @api("DELETE /api/v1/circuits/{id}/members/{vm}")
    def remove_member(self, id: str, vm: str) -> Any:
        return self._run(Call("DELETE", f"{V1}/circuits/{seg(id)}/members/{seg(vm)}", result=m.CircuitView))

    @api("POST /api/v1/circuits/{id}/leader")
    def transfer_leader(self, id: str, vm: str) -> Any:
        return self._run(Call("POST", f"{V1}/circuits/{seg(id)}/leader", body={"vm": vm}, result=m.CircuitView))


class Chain(Namespace):
    """Nodes of the reference chain."""

    @api("GET /api/v1/chain/{container}")
    def status(self, container: str) -> Any:
        return self._run(Call("GET", f"{V1}/chain/{seg(container)}", result=m.ChainStatus))

    @api("POST /api/v1/chain/{container}/send")
    def send(self, container: str, to: str, amount: float, *, fee_rate: Optional[int] = None) -> Any:
        """Send ``amount`` coins from the node's wallet to address ``to``."""
        return self._run(Call("POST", f"{V1}/chain/{seg(container)}/send",
                              body=body(to=to, amount=amount, fee_rate=fee_rate), result=m.ChainSent))

    @api("GET /api/v1/chain/{container}/wallet")
    def wallet(self, container: str) -> Any:
        return self._run(Call("GET", f"{V1}/chain/{seg(container)}/wallet", result=m.ChainWallet))


class Ai(Namespace):
    """The AI layer: modules per chain node, their config, training and models."""

    @api("POST /api/v1/ai/enable")
    def enable(self, module: Optional[str] = None, container: Optional[str] = None, *,
               config: Optional[dict[str, Any]] = None, all: bool = False) -> Any:
        """Enable a module (``transaction``; ``mining`` and ``network`` are not built yet)
        for one node or every node, or ``all`` modules."""
        return self._run(Call("POST", f"{V1}/ai/enable",
                              body=body(module=module, container=container, config=config, all=all or None),
                              result=list[m.AiModuleStatus]))

    @api("POST /api/v1/ai/disable")
    def disable(self, module: Optional[str] = None, container: Optional[str] = None, *, all: bool = False) -> Any:
        return self._run(Call("POST", f"{V1}/ai/disable", body=body(module=module, container=container, all=all or None),
                              result=list[m.AiModuleStatus]))

    @api("POST /api/v1/ai/config")
    def configure(self, module: str, set: dict[str, Any], container: Optional[str] = None) -> Any:
        """Set config keys (``{"batch_size": 256}``), checked against the module's schema."""
        return self._run(Call("POST", f"{V1}/ai/config",
                              body=body(module=module, container=container, set=[f"{k}={v}" for k, v in set.items()]),
                              result=list[m.AiModuleStatus]))

    @api("GET /api/v1/ai")
    def list(self) -> Any:
        return self._run(Call("GET", f"{V1}/ai", result=list[m.AiModuleStatus]))

    status = list

    @api("POST /api/v1/ai/train")
    def train(self, module: str, container: Optional[str] = None) -> Any:
        return self._run(Call("POST", f"{V1}/ai/train", body=body(module=module, container=container),
                              result=list[m.AiTrainReport]))

    @api("GET /api/v1/ai/models")
    def models(self) -> Any:
        return self._run(Call("GET", f"{V1}/ai/models", result=list[m.AiModelInfo]))


class Monitor(Namespace):
    """Resource use, health, alerts, history, the P2P network and the daemon's log."""

    @api("GET /api/v1/monitor/resources")
    def resources(self, *, vm: Optional[str] = None, container: Optional[str] = None, all: bool = False) -> Any:
        return self._run(Call("GET", f"{V1}/monitor/resources", params={"vm": vm, "container": container,
                                                                         "all": all or None}, result=list[m.Sample]))

    @api("GET /api/v1/monitor/history")
    def history(self, *, from_: Optional[str] = None, to: Optional[str] = None, object: Optional[str] = None) -> Any:
        """Samples between two times (RFC 3339, a date, ``now`` or ``2h`` for two hours ago)."""
        return self._run(Call("GET", f"{V1}/monitor/history", params={"from": from_, "to": to, "object": object},
                              result=list[m.Sample]))

    @api("GET /api/v1/monitor/export")
    def export(self, *, from_: Optional[str] = None, to: Optional[str] = None, object: Optional[str] = None,
               format: str = "csv") -> Any:
        """The history as text (csv or json)."""
        return self._run(Call("GET", f"{V1}/monitor/export",
                              params={"from": from_, "to": to, "object": object, "format": format}, result=TEXT))

    @api("GET /api/v1/monitor/health")
    def health(self, *, components: Optional[str] = None, critical_only: bool = False, ai_alerts: bool = False) -> Any:
        return self._run(Call("GET", f"{V1}/monitor/health", params={"components": components,
                                                                      "critical_only": critical_only or None,
                                                                      "ai_alerts": ai_alerts or None},
                              result=m.HealthReport))

    @api("GET /api/v1/monitor/performance")
    def performance(self, container: str, *, since: Optional[str] = None, ai_stats: bool = False) -> Any:
        return self._run(Call("GET", f"{V1}/monitor/performance",
                              params={"container": container, "since": since, "ai_stats": ai_stats or None},
                              result=m.PerformanceReport))

    @api("GET /api/v1/monitor/network")
    def network(self, *, vm: Optional[str] = None) -> Any:
        """The libp2p layer of this host (or of VM ``vm``): peers, traffic, rejections."""
        return self._run(Call("GET", f"{V1}/monitor/network", params={"vm": vm}, result=m.NetStatus))

    @api("GET /api/v1/metrics")
    def metrics(self) -> Any:
        """The Prometheus exposition, as text."""
        return self._run(Call("GET", f"{V1}/metrics", result=TEXT))

    @api("GET /api/v1/logs")
    def daemon_logs(self, *, component: str = "all", level: str = "info", follow: bool = False,
                    tail: Optional[int] = None) -> Any:
        """The daemon's own log lines; with ``follow`` an iterator."""
        call = Call("GET", f"{V1}/logs", params={"component": component, "level": level, "follow": follow, "tail": tail})
        if follow:
            return self._stream(Stream(call, "lines"))
        call.result = TEXT
        return self._c._then(self._run(call), lambda t: t.splitlines())


class Net(Namespace):
    """The libp2p layer: signed messages and what peers provide in the DHT."""

    @api("POST /api/v1/net/send", "POST /api/v1/net/send/stream")
    def send(self, to: str, type: str, *, from_: Optional[str] = None, state: Optional[str] = None,
             count: Optional[int] = None, size: Optional[int] = None, stream: Optional[bool] = None,
             file: Optional[str] = None) -> Any:
        """Signed messages, or a DATA stream; with ``file`` (DATA only) this client uploads
        the local file's bytes and the daemon sends them as one stream."""
        if file is not None:
            if type.upper() != "DATA":
                raise ValueError(f"a file travels as a DATA stream, not {type}")
            up = upload(file)
            return self._run(Call("POST", f"{V1}/net/send/stream", params={"to": to, "from": from_, "name": up.name},
                                  upload=up, result=m.SendReport))
        return self._run(Call("POST", f"{V1}/net/send", body=body(to=to, type=type, from_=from_, state=state,
                                                                   count=count, size=size, stream=stream),
                              result=m.SendReport))

    @api("GET /api/v1/net/providers")
    def providers(self, key: str, *, vm: Optional[str] = None) -> Any:
        return self._run(Call("GET", f"{V1}/net/providers", params={"key": key, "vm": vm}, result=list[m.Provider]))


class Hosts(Namespace):
    """Hosts of the fabric."""

    @api("GET /api/v1/hosts")
    def list(self) -> Any:
        return self._run(Call("GET", f"{V1}/hosts", result=list[m.HostInfo]))

    @api("GET /api/v1/hosts/token")
    def token(self) -> Any:
        return self._run(Call("GET", f"{V1}/hosts/token", result=m.HostToken))

    @api("POST /api/v1/hosts/join")
    def join(self, addr: str, token: str) -> Any:
        return self._run(Call("POST", f"{V1}/hosts/join", body={"addr": addr, "token": token}, result=list[m.HostInfo]))

    @api("POST /api/v1/hosts/leave")
    def leave(self) -> Any:
        return self._run(Call("POST", f"{V1}/hosts/leave", result=NOTHING))


class Images(Namespace):
    """Images: built locally or imported from files (there is no registry)."""

    @api("GET /api/v1/images")
    def list(self) -> Any:
        return self._run(Call("GET", f"{V1}/images", result=list[m.ImageInfo]))

    @api("DELETE /api/v1/images/{name}")
    def remove(self, name: str) -> Any:
        return self._run(Call("DELETE", f"{V1}/images/{seg(name)}", result=NOTHING))

    @api("POST /api/v1/images/build", "POST /api/v1/images/import")
    def build(self, base: Optional[str] = None, *, name: Optional[str] = None, from_dir: Optional[str] = None,
              progress: Optional[Callable[[Any], None]] = None) -> Any:
        """Build an image; ``progress`` gets each :class:`~micro_os.models.ImageEvent`; the
        built image's :class:`~micro_os.models.ImageInfo`. With ``from_dir`` (a local
        directory, needs ``name``) the directory is tarred here and uploaded as a root
        filesystem tarball."""
        if from_dir is not None:
            if name is None:
                raise ValueError("an image built from a directory needs a name")
            if not os.path.isdir(from_dir):
                raise FileNotFoundError(f"directory {from_dir} cannot be opened")
            up = upload(from_dir)
            call = Call("POST", f"{V1}/images/import", params={"name": name, "source": up.name}, upload=up)
        else:
            call = Call("POST", f"{V1}/images/build", body=body(base=base, name=name))
        return self._c._image_job(Stream(call, "ndjson", m.ImageEvent), progress)

    @api("POST /api/v1/images/import")
    def import_file(self, path: str, *, name: Optional[str] = None,
                    progress: Optional[Callable[[Any], None]] = None) -> Any:
        """Import an OCI layout (a directory or a tar), a docker-save tarball or a root
        filesystem tarball (gzip or not) from this client's machine: the file is uploaded
        (a directory tarred first)."""
        up = upload(path)
        call = Call("POST", f"{V1}/images/import", params={"name": name, "source": up.name}, upload=up)
        return self._c._image_job(Stream(call, "ndjson", m.ImageEvent), progress)


class Templates(Namespace):
    """Container templates."""

    @api("GET /api/v1/templates")
    def list(self) -> Any:
        return self._run(Call("GET", f"{V1}/templates", result=list[m.Template]))

    @api("GET /api/v1/templates/{name}")
    def get(self, name: str) -> Any:
        return self._run(Call("GET", f"{V1}/templates/{seg(name)}", result=m.Template))


class Events(Namespace):
    """The event stream: lifecycle events of containers, VMs, circuits, hosts and AI
    modules, and alerts, in the order the store recorded them."""

    @api("GET /api/v1/events")
    def stream(self, *, type: Optional[str | Sequence[str]] = None, object: Optional[str] = None,
               since: Optional[int] = None, tail: Optional[int] = None, follow: bool = True) -> Any:
        """An iterator of :class:`~micro_os.models.Event`. ``since`` resumes after an event
        id (nothing missed, nothing repeated, across daemon restarts); without it the
        stream starts with the next event, or with the last ``tail`` ones."""
        kinds = type if isinstance(type, str) or type is None else ",".join(type)
        call = Call("GET", f"{V1}/events", params={"type": kinds, "object": object, "since": since, "tail": tail,
                                                     "follow": follow})
        return self._stream(Stream(call, "sse", m.Event))

    def list(self, *, type: Optional[str | Sequence[str]] = None, object: Optional[str] = None,
             since: Optional[int] = None, tail: Optional[int] = None) -> Any:
        """The events recorded so far (after ``since``, or the last ``tail``), as a list."""
        it = self.stream(type=type, object=object, since=since, tail=tail, follow=False)
        return self._c._collect(it)


__all__ = ["Vms", "Containers", "Circuits", "CircuitState", "Chain", "Ai", "Monitor", "Net", "Hosts", "Images",
           "Templates", "Events"]
