"""Docker Swarm as a backend: each run becomes a `replicated-job` service, placed on any node.

The job may run on another machine, so nothing comes back through a shared filesystem. A small
POSIX sh wrapper (execution.handback.wrapper_script), shipped inside the service spec, runs in the task
container around the job:

  before  it checks what reprun cannot check from afar — no network interface but `lo`,
          no-new-privileges in force, and the dataset's hash where the data is read (a mismatch
          refuses the job: exit 3) — and writes reprun's probe files into a tmpfs;
  during  it runs the job exactly as a local run does (the same probe, then `exec` of the job);
  after   it prints a framed block at the end of the output: exit status, OOM kills, the
          metrics file (base64), and the sha256 of every artifact the spec's globs match,
          hashed where it was written. (The manifest is at the start of the job's output, as
          in a local run.)

The block is read back from the service's logs and cut from the job's log. Artifacts go to a
location the backend is configured with (`[swarm] artifacts`, mounted at the same path on every
node and on the host running reprun), one folder per run; they are copied into the store
afterwards and checked against the hashes taken in the container. A task that Swarm lost or
could not start is retried once, then reported with Swarm's own message; a job that ran and
failed is never retried. The service is removed on success, failure, timeout and interruption.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import secrets as _secrets
import socket
import stat
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import docker
import docker.errors
import requests.exceptions

from orchestrator.execution.handback import (ResultBlock, OutputSplitter, WrapperPlan, metrics_problem,
                                             parse_block, wrapper_script)
from orchestrator.execution.beneath import open_beneath
from orchestrator.execution.config import SwarmSettings
from orchestrator.execution.hermetic import META_MOUNT
from orchestrator.execution.job import RemoteResults, EventSink, ResultsToCollect
from orchestrator.execution.job import (LABEL, LABEL_OWNER, LABEL_RUN, ContainerJob,
                                        ContainerOutcome, LogSink)
from orchestrator.execution.local import LocalEngine, connect, engine_unreachable
from orchestrator.execution.owners import left_behind_because, owner_label
from orchestrator.errors import InfrastructureError
from orchestrator.spec.units import parse_size

# A task Swarm lost or could not start is tried this many times in all.
ATTEMPTS = 2
# After the task ends, how long its last log lines may take to arrive through the manager.
LOG_DRAIN_S = 15.0
QUIET_S = 2.0          # for a task that was killed: its output is over once it goes quiet
# The wrapper stops a job at its timeout and still hands back its results; the backend removes
# the service itself only if the job outlives that by this much (a wedged node, say).
HARD_TIMEOUT_GRACE_S = 60.0
POLL_S = 0.4
NODE_CHECK_POLLS = 25  # while a job runs, whether its node is still up is asked every 10 s
# reprun's own folders in the container (the probe's) become a tmpfs of this size.
WORK_TMPFS_BYTES = 64 << 20
# Files shipped inside the service spec: each argument of a process is capped by the kernel
# (128 KiB), and base64 inflates by a third.
MAX_SHIPPED_BYTES = 64 << 10
NO_NEW_PRIVILEGES_API = (1, 46)   # ContainerSpec.Privileges.NoNewPrivileges appeared here
TERMINAL_STATES = frozenset({"complete", "failed", "rejected", "shutdown", "orphaned", "remove"})
_UNKNOWN = object()     # facts_scope before the nodes were asked


class ServiceLogs(threading.Thread):
    """Follows a service's logs, stdout and stderr apart, until closed.

    The SDK's `service_logs` merges the two streams and cannot be closed, so the stream is read
    here: 8-byte frame headers (stream, size) as the engine sends them.
    """

    def __init__(self, api, service_id: str, splitter: OutputSplitter, on_output: LogSink):
        super().__init__(daemon=True, name=f"logs-{service_id[:12]}")
        self.api, self.service_id = api, service_id
        self.splitter, self.on_output = splitter, on_output
        self.response = None
        self.ended = threading.Event()
        self.last_data = time.monotonic()
        self._closing = False

    def run(self) -> None:
        try:
            response = self.api._get(self.api._url("/services/{0}/logs", self.service_id),
                                     params={"follow": 1, "stdout": 1, "stderr": 1},
                                     stream=True)
            self.api._raise_for_status(response)
            self.response = response
            if self._closing:
                response.close()
                return
            # A job may print nothing for hours: no read timeout on this stream.
            self.api._disable_socket_timeout(self.api._get_raw_response_socket(response))
            while True:
                header = response.raw.read(8)
                if len(header) < 8:
                    break
                stream, size = struct.unpack(">BxxxL", header)
                data = response.raw.read(size) if size else b""
                self.last_data = time.monotonic()
                if stream == 2:
                    self.on_output(data, "stderr")
                else:
                    self.splitter.feed(data)
        except Exception:
            pass   # the stream ends abruptly when it is closed or the service removed
        finally:
            self.ended.set()

    def drain(self, quiet_s: float) -> None:
        """Wait until the block has arrived, or nothing has for `quiet_s` (at most LOG_DRAIN_S)."""
        deadline = time.monotonic() + LOG_DRAIN_S
        start = time.monotonic()
        while not self.ended.wait(0.1) and time.monotonic() < deadline:
            if self.splitter.complete:
                return
            if time.monotonic() - max(self.last_data, start) > quiet_s:
                return

    def close(self) -> None:
        self._closing = True
        response = self.response
        if response is not None:
            # Shut the socket first: closing the response would wait for the blocked reader.
            try:
                raw = self.api._get_raw_response_socket(response)
                getattr(raw, "_sock", raw).shutdown(socket.SHUT_RDWR)
            except Exception:
                pass
        if self.is_alive() and self is not threading.current_thread():
            self.join(timeout=5)
        if response is not None:
            try:
                response.close()
            except Exception:
                pass


# --------------------------------------------------------------------------- the backend

@dataclass(frozen=True)
class _Attempt:
    outcome: ContainerOutcome
    lost: bool = False          # Swarm lost the task or could not start it: worth one more try


class SwarmBackend:
    """Runs each job as a replicated-job service on the swarm this engine manages."""

    def __init__(self, settings: SwarmSettings | None = None,
                 client: docker.DockerClient | None = None):
        self.settings = settings or SwarmSettings()
        self._client = client
        self._scope: str | None | object = _UNKNOWN
        self._lock = threading.Lock()
        self._live: dict[str, str] = {}          # service ID -> name
        self._pushed: dict[str, str] = {}        # image ID -> pinned reference
        self._interrupted = threading.Event()

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            self._client, _version = connect()
        return self._client

    # -- facts ---------------------------------------------------------------------------

    def _swarm(self) -> dict:
        try:
            info = self.client.info()
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise engine_unreachable(exc) from None
        swarm = info.get("Swarm") or {}
        if swarm.get("LocalNodeState") != "active" or not swarm.get("ControlAvailable"):
            raise InfrastructureError(
                "the swarm backend needs a swarm manager, but this engine is "
                f"{'a worker' if swarm.get('LocalNodeState') == 'active' else 'not in a swarm'}. "
                "Point DOCKER_HOST at a manager, or use --backend local (see docs/cluster.md).")
        return swarm

    def host_facts(self) -> dict[str, Any]:
        """The manager's engine, with the capacity of the whole swarm: every node that is ready
        and active. Each run's record then names the node that ran it."""
        self._swarm()
        facts = LocalEngine(self.client).host_facts()
        try:
            nodes = self.client.api.nodes()
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise engine_unreachable(exc) from None
        usable = usable_nodes(nodes)
        self._scope = facts_scope_of(usable)
        cpus = sum(n["Description"]["Resources"].get("NanoCPUs", 0) for n in usable) / 1e9
        facts.update(host_cpus=int(cpus) if cpus == int(cpus) else cpus,
                     host_memory_bytes=sum(n["Description"]["Resources"].get("MemoryBytes", 0)
                                           for n in usable),
                     swarm_node=None)
        return facts

    def facts_scope(self) -> str | None:
        if self._scope is _UNKNOWN:
            self.host_facts()
        return self._scope

    def _node_facts(self, node_id: str | None, own_node: str | None) -> dict[str, Any]:
        if not node_id:
            return {}
        try:
            node = self.client.api.inspect_node(node_id)
        except Exception:
            return {"swarm_node": node_id}
        description = node.get("Description", {})
        resources = description.get("Resources", {})
        cpus = resources.get("NanoCPUs", 0) / 1e9
        facts = {"swarm_node": description.get("Hostname") or node_id,
                 "engine_version": description.get("Engine", {}).get("EngineVersion"),
                 "host_cpus": int(cpus) if cpus == int(cpus) else cpus,
                 "host_memory_bytes": resources.get("MemoryBytes")}
        if node_id != own_node:
            # The manager's own facts say nothing about another machine.
            facts.update(api_version=None, storage_driver=None, cgroup_version=None,
                         host_os=None, host_kernel=None)
        return facts

    # -- running -------------------------------------------------------------------------

    def interrupt(self) -> None:
        self._interrupted.set()
        with self._lock:
            services = list(self._live)
        for service_id in services:
            self._remove_service(service_id)

    def run(self, job: ContainerJob, on_output: LogSink,
            on_event: EventSink | None = None) -> ContainerOutcome:
        say = on_event or (lambda text: None)
        started = time.monotonic()
        if self._interrupted.is_set():
            return ContainerOutcome(None, "interrupted", 0.0,
                                    "reprun was interrupted; the job was never submitted")
        own_node = self._swarm().get("NodeID")
        image = self._pinned_image(job.image_id, say)
        outputs_here = self._prepare_outputs(job)
        attempt = None
        for number in range(1, ATTEMPTS + 1):
            plan = self._plan(job)
            name = job.name if number == 1 else f"{job.name}-{number}"
            attempt = self._attempt(job, plan, image, name, on_output, say, started, own_node)
            if not attempt.lost or number == ATTEMPTS or self._interrupted.is_set():
                break
            say(f"{attempt.outcome.message}; trying once more")
        outcome = attempt.outcome
        if attempt.lost:
            outcome = dataclasses.replace(outcome, message=(
                f"{outcome.message} (tried {ATTEMPTS} times)"))
        if outcome.collected is not None and outcome.collected.artifacts and outputs_here:
            outcome = self._bring_artifacts_home(job, outcome, outputs_here)
        if outputs_here is not None and outputs_here[1] is not None:
            with _quiet():
                outputs_here[1].rmdir()      # an empty run folder on shared storage is clutter
        return outcome

    def _attempt(self, job: ContainerJob, plan: WrapperPlan, image: str, name: str,
                 on_output: LogSink, say: EventSink, started: float,
                 own_node: str | None) -> _Attempt:
        spec = self._service_spec(job, plan, image, name)
        try:
            service_id = self.client.api.create_service(**spec)["ID"]
        except docker.errors.APIError as exc:
            raise InfrastructureError(f"the swarm refused the job's service: "
                                      f"{exc.explanation or exc}") from None
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise engine_unreachable(exc) from None
        except KeyboardInterrupt:
            self._remove_by_name(name)
            raise
        with self._lock:
            self._live[service_id] = name
        splitter = OutputSplitter(plan.marker, on_output)
        logs = ServiceLogs(self.client.api, service_id, splitter, on_output)
        logs.start()
        say(f"submitted to the swarm as service {name}")
        try:
            return self._watch(job, plan, service_id, logs, splitter, say, started, own_node)
        finally:
            logs.close()
            self._remove_service(service_id)
            with self._lock:
                self._live.pop(service_id, None)

    def _watch(self, job: ContainerJob, plan: WrapperPlan, service_id: str, logs: ServiceLogs,
               splitter: OutputSplitter, say: EventSink, started: float,
               own_node: str | None) -> _Attempt:
        schedule_deadline = time.monotonic() + self.settings.schedule_timeout_s
        running_since, node_id, last_state, task = None, None, None, None
        waiting_for, polls = None, 0
        while True:
            polls += 1
            if self._interrupted.is_set():
                return _Attempt(ContainerOutcome(None, "interrupted", time.monotonic() - started,
                                                 "reprun was interrupted; the service was removed"))
            try:
                task = self._task(service_id) or task
            except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
                if self._interrupted.is_set():
                    continue
                return _Attempt(ContainerOutcome(None, "engine", time.monotonic() - started,
                                                 f"lost the swarm manager during the run: {exc}"))
            state = (task or {}).get("Status", {}).get("State", "new")
            node_id = (task or {}).get("NodeID") or node_id
            if state != last_state:
                last_state = state
                if state == "running":
                    running_since = time.monotonic()
                    say(f"running on swarm node {self._node_name(node_id)}")
            why = _task_message(task)
            if state in ("new", "pending") and why and why != waiting_for:
                waiting_for = why
                say(f"waiting for a node: {why}")
            if state in TERMINAL_STATES:
                break
            now = time.monotonic()
            if running_since is None and now > schedule_deadline:
                # Waiting longer would not help (no node has the room or the constraints), so
                # this is reported, not retried.
                why = _task_message(task) or "no node accepted it"
                return _Attempt(ContainerOutcome(
                    None, "engine", now - started,
                    f"Swarm found no node to run the job within "
                    f"{self.settings.schedule_timeout_s:g}s (task {state}): {why}"))
            if running_since is not None and now - running_since > plan.timeout_s + HARD_TIMEOUT_GRACE_S:
                self._remove_service(service_id)
                return _Attempt(ContainerOutcome(
                    None, "timeout", now - started,
                    f"the job ran past its timeout of {job.timeout_s:g}s and was killed"))
            if running_since is not None and node_id and polls % NODE_CHECK_POLLS == 0 \
                    and self._node_down(node_id):
                return _Attempt(ContainerOutcome(
                    None, "engine", now - started,
                    f"swarm node {self._node_name(node_id)} went down while the job ran"),
                    lost=True)
            time.sleep(POLL_S)
        status = task.get("Status", {})
        container = status.get("ContainerStatus") or {}
        ran = running_since is not None or bool(container.get("ContainerID")
                                                   and "ExitCode" in container)
        if ran:
            # A wrapper that exited by itself printed a block: wait for it to come through the
            # manager. One that was killed printed none: wait only for the output to go quiet.
            killed = (container.get("ExitCode") or 0) >= 128
            logs.drain(QUIET_S if killed else LOG_DRAIN_S)
        logs.close()
        text = splitter.finish()
        duration = time.monotonic() - started
        host = self._node_facts(node_id, own_node)
        block = parse_block(text, plan.marker) if text is not None else None
        if block is None or not block.complete:
            return self._without_block(state, status, container, bool(ran), node_id, host,
                                       duration)
        return (self._agrees_with_task(block, container, node_id, host, duration)
                or _Attempt(self._judge(job, plan, block, host, duration, node_id)))

    def _without_block(self, state: str, status: dict, container: dict, ran: bool,
                       node_id: str | None, host: dict, duration: float) -> _Attempt:
        where = f"swarm node {self._node_name(node_id)}" if node_id else "the swarm"
        swarm_says = _task_message({"Status": status})
        exit_code = container.get("ExitCode")
        if ran and state in ("complete", "failed") and exit_code is not None:
            # The job ran and was stopped before the wrapper could speak: a job failure.
            signal = f" (killed by signal {exit_code - 128})" if exit_code > 128 else ""
            return _Attempt(ContainerOutcome(
                exit_code, "exit", duration,
                f"the job exited with status {exit_code}{signal} on {where}, before its "
                f"results could be handed back; Swarm says: {swarm_says or state}",
                collected=RemoteResults(host=host)))
        return _Attempt(ContainerOutcome(
            None, "engine", duration,
            f"Swarm could not run the job on {where}: {swarm_says or 'no reason given'} "
            f"(task {state})", collected=RemoteResults(host=host)), lost=True)

    def _judge(self, job: ContainerJob, plan: WrapperPlan, block: ResultBlock, host: dict, duration: float,
               node_id: str | None) -> ContainerOutcome:
        where = f"swarm node {self._node_name(node_id)}"
        if block.refused is not None:
            what, why = block.refused
            if what == "dataset":
                message = (f"the dataset at {plan.dataset_target} on {where} hashes to "
                           f"{block.dataset_sha256 or 'nothing'}, not to its pin "
                           f"{plan.dataset_sha256}; the copy on that node differs from the one "
                           "reprun checked, so the job was not run"
                           + (f" ({why})" if why else ""))
                return ContainerOutcome(None, "pin", duration, message,
                                        collected=RemoteResults(host=host))
            hint = {"network": "; a task without a network joins the node's default bridge: "
                               "run that node's dockerd with --bridge=none",
                    "privileges": f" (API {self.client.api.api_version})"}.get(what, "")
            return ContainerOutcome(None, "engine", duration,
                                    f"refused to run the job on {where}: {why}{hint}",
                                    collected=RemoteResults(host=host))
        name = PurePosixPath(plan.metrics or "metrics").name
        problems = block.problems
        collected = RemoteResults(
            metrics=block.metrics if block.metrics_state == "file" else None,
            metrics_problem=metrics_problem(block, name),
            artifacts=dict(block.artifacts),
            artifacts_problem=problems[0] if problems else None,
            host=host)
        code = block.exit_code
        if block.timed_out:
            return ContainerOutcome(None, "timeout", duration,
                                    f"the job ran past its timeout of {job.timeout_s:g}s and "
                                    "was killed", collected=collected)
        if block.oom_kills > 0:
            return ContainerOutcome(code, "oom", duration,
                                    f"the job was killed for running out of memory "
                                    f"(limit {job.memory_bytes} bytes)", collected=collected)
        if code != 0:
            return ContainerOutcome(code, "exit", duration,
                                    f"the job exited with status {code}"
                                    + (f" (killed by signal {code - 128})"
                                       if code and code > 128 else ""), collected=collected)
        return ContainerOutcome(0, "ok", duration, collected=collected)

    # -- the service -------------------------------------------------------------------------

    def _plan(self, job: ContainerJob) -> WrapperPlan:
        collect: ResultsToCollect | None = job.collect
        shipped: dict[str, bytes] = {}
        workdir = META_MOUNT
        for mount in job.mounts:
            if mount.target != META_MOUNT:
                continue
            # reprun's own folder (the entrypoint's): its files travel inside the service spec.
            for entry in sorted(Path(mount.source).iterdir()):
                if entry.is_file():
                    shipped[str(PurePosixPath(mount.target) / entry.name)] = entry.read_bytes()
        if sum(len(c) for c in shipped.values()) > MAX_SHIPPED_BYTES:
            raise InfrastructureError(f"the files reprun ships with the job exceed "
                                      f"{MAX_SHIPPED_BYTES} bytes")
        dataset_target = None
        if collect is not None and collect.dataset_source is not None:
            dataset = next((m for m in job.mounts if m.source == collect.dataset_source), None)
            if dataset is None:
                raise InfrastructureError("the job does not mount its dataset; nothing to verify "
                                          "where it runs")
            dataset_target = dataset.target
        return WrapperPlan(
            marker="@@reprun-end-" + _secrets.token_hex(8), workdir=workdir, shipped=shipped,
            dataset_target=dataset_target,
            dataset_sha256=collect.dataset_sha256 if collect else None,
            outputs_dir=collect.outputs_dir if collect else None,
            metrics=collect.metrics if collect else None,
            artifacts=tuple(collect.artifacts) if collect else (),
            no_network=job.network == "none",
            no_new_privileges=("no-new-privileges" in job.security_opt
                               and not self._engine_sets_no_new_privileges()),
            timeout_s=job.timeout_s)

    def _engine_sets_no_new_privileges(self) -> bool:
        version = self.client.api.api_version
        try:
            return tuple(int(p) for p in version.split(".")) >= NO_NEW_PRIVILEGES_API
        except ValueError:
            return False

    def _service_spec(self, job: ContainerJob, plan: WrapperPlan, image: str, name: str) -> dict:
        labels = {LABEL: "1", LABEL_OWNER: owner_label(), **job.labels}
        mounts = []
        work_targets = set()
        for mount in job.mounts:
            if mount.target == META_MOUNT:
                # A tmpfs, where the wrapper writes the files shipped with the job.
                work_targets.add(mount.target)
                mounts.append({"Type": "tmpfs", "Target": mount.target,
                               "TmpfsOptions": {"SizeBytes": WORK_TMPFS_BYTES, "Mode": 0o1777}})
            elif plan.outputs_dir is not None and mount.target == plan.outputs_dir \
                    and not mount.read_only:
                source = str(self._outputs_source(job, mount.source))
                mounts.append({"Type": "bind", "Source": source, "Target": mount.target,
                               "ReadOnly": False})
            elif mount.read_only:
                mounts.append({"Type": "bind", "Source": mount.source, "Target": mount.target,
                               "ReadOnly": True})
            else:
                work_targets.add(mount.target)
                mounts.append({"Type": "tmpfs", "Target": mount.target,
                               "TmpfsOptions": {"SizeBytes": WORK_TMPFS_BYTES, "Mode": 0o1777}})
        if plan.workdir not in work_targets:
            mounts.append({"Type": "tmpfs", "Target": plan.workdir,
                           "TmpfsOptions": {"SizeBytes": WORK_TMPFS_BYTES, "Mode": 0o1777}})
        for target, options in job.tmpfs.items():
            mounts.append({"Type": "tmpfs", "Target": target, "TmpfsOptions": _tmpfs(options)})
        # A service has no shm size: /dev/shm becomes a tmpfs of the size the spec asks for.
        mounts.append({"Type": "tmpfs", "Target": "/dev/shm",
                       "TmpfsOptions": {"SizeBytes": job.shm_bytes, "Mode": 0o1777}})
        if job.workdir:
            raise InfrastructureError("the swarm backend cannot give the job a working folder "
                                      "(workdir) yet; run this spec on the local engine")
        container = {
            "Image": image,
            "Command": ["/bin/sh", "-c", wrapper_script(plan), "reprun-wrapper"],
            "Args": [*job.entrypoint, *job.command],
            "Hostname": job.hostname,
            "Env": [f"{k}={v}" for k, v in job.env.items()],
            "User": job.user,
            "Labels": labels,
            "Mounts": mounts,
            "ReadOnly": job.read_only_root,
            "CapabilityDrop": list(job.cap_drop),
            # Removing the service kills at once, as a local run's forced removal does.
            "StopSignal": "SIGKILL",
        }
        if "no-new-privileges" in job.security_opt and not plan.no_new_privileges:
            container["Privileges"] = {"NoNewPrivileges": True}
        others = [o for o in job.security_opt if o != "no-new-privileges"]
        if others:
            raise InfrastructureError(f"the swarm backend cannot apply the security options "
                                      f"{', '.join(others)}")
        task = {
            "ContainerSpec": container,
            "Resources": {
                "Limits": {"NanoCPUs": job.nano_cpus, "MemoryBytes": job.memory_bytes,
                           "Pids": job.pids},
                # Reserved too, so that Swarm never puts two jobs on CPUs or memory they would
                # have to share: a queued job waits for a node instead.
                "Reservations": {"NanoCPUs": job.nano_cpus, "MemoryBytes": job.memory_bytes},
            },
            "RestartPolicy": {"Condition": "none", "MaxAttempts": 0},
        }
        if self.settings.constraints:
            task["Placement"] = {"Constraints": list(self.settings.constraints)}
        if job.network == "host":
            task["Networks"] = [{"Target": "host"}]
        elif job.network != "none":
            raise InfrastructureError(f"the swarm backend cannot give a job the network "
                                      f"{job.network!r}")
        return dict(task_template=task, name=name, labels=labels,
                    mode={"ReplicatedJob": {"MaxConcurrent": 1, "TotalCompletions": 1}})

    def _outputs_source(self, job: ContainerJob, store_folder: str) -> Path:
        if self.settings.artifacts is None:
            return Path(store_folder)
        return self.settings.artifacts / job.labels.get(LABEL_RUN, job.name)

    def _prepare_outputs(self, job: ContainerJob) -> tuple[Path, Path | None] | None:
        """(the store's outputs folder, the run's folder on shared storage, made for the job)."""
        collect = job.collect
        mount = next((m for m in job.mounts if collect and m.target == collect.outputs_dir
                      and not m.read_only), None)
        if mount is None:
            return None
        if self.settings.artifacts is None:
            return Path(mount.source), None
        if not self.settings.artifacts.is_dir():
            raise InfrastructureError(
                f"the artifacts location {self.settings.artifacts} is not mounted on this host; "
                "reprun makes each run's folder there before the job starts (see "
                "docs/cluster.md)")
        folder = self._outputs_source(job, mount.source)
        folder.mkdir(exist_ok=True)
        uid, _, gid = job.user.partition(":")
        if os.geteuid() == 0 and uid.isdigit():
            os.chown(folder, int(uid), int(gid or uid))
        else:
            folder.chmod(0o777)
        return Path(mount.source), folder

    def _bring_artifacts_home(self, job: ContainerJob, outcome: ContainerOutcome,
                              outputs: tuple[Path, Path | None]) -> ContainerOutcome:
        """Copy the artifacts from shared storage into the run's folder in the store, each
        checked against the hash taken where it was written. A copy, not a link: what happens
        to the shared copy later must not change what the store holds."""
        store_folder, shared = outputs
        if shared is None:
            return outcome
        collected = outcome.collected
        for rel, artifact in sorted(collected.artifacts.items()):
            try:
                sha, size = copy_beneath(shared, store_folder, rel)
            except OSError as exc:
                problem = (f"the artifact {rel} could not be brought from {shared} into the "
                           f"store ({exc.strerror or exc})")
            else:
                if (sha, size) == (artifact.sha256, artifact.size):
                    continue
                problem = (f"the artifact {rel} on shared storage no longer matches the hash "
                           "taken where it was written")
            return dataclasses.replace(outcome, collected=dataclasses.replace(
                collected, artifacts_problem=collected.artifacts_problem or problem))
        return outcome

    def _agrees_with_task(self, block: ResultBlock, container: dict, node_id: str | None,
                          host: dict, duration: float) -> _Attempt | None:
        """None when the block's exit status is the task's; a job failure otherwise: the block
        was not the wrapper's last words (it died before it could print them)."""
        exit_code = container.get("ExitCode")
        if block.refused is not None or exit_code is None or block.exit_code == exit_code:
            return None
        return _Attempt(ContainerOutcome(
            exit_code, "exit", duration,
            f"the results handed back say the job exited with status {block.exit_code}, but "
            f"its task on swarm node {self._node_name(node_id)} ended with status {exit_code}: "
            "they are not the wrapper's and were not used", collected=RemoteResults(host=host)))

    def _pinned_image(self, image_id: str, say: EventSink) -> str:
        """The image as `registry/name@sha256:…`, which every node pulls identically; an image
        no registry has is pushed to the configured one first."""
        with self._lock:
            if image_id in self._pushed:
                return self._pushed[image_id]
        try:
            image = self.client.images.get(image_id)
        except docker.errors.ImageNotFound:
            raise InfrastructureError(f"the image {image_id} vanished from the engine") from None
        registry = self.settings.registry
        digests = list(image.attrs.get("RepoDigests") or [])
        preferred = [d for d in digests if registry and d.startswith(registry + "/")]
        if preferred or digests:
            reference = (preferred or digests)[0]
        elif registry is None:
            raise InfrastructureError(
                f"the image {image_id[:19]} is in no registry, so the swarm's nodes cannot pull "
                "it. Set `registry` under [swarm] in reprun.toml (see docs/cluster.md).")
        else:
            reference = self._push(image, registry, say)
        with self._lock:
            self._pushed[image_id] = reference
        return reference

    def _push(self, image, registry: str, say: EventSink) -> str:
        repository = f"{registry}/reprun/images"
        tag = image.id.split(":")[-1][:24]
        say(f"pushing image {image.id[:19]} to {registry} for the swarm's nodes")
        image.tag(repository, tag)
        try:
            for event in self.client.api.push(repository, tag=tag, stream=True, decode=True):
                if "error" in event:
                    raise InfrastructureError(f"pushing {image.id[:19]} to {registry} failed: "
                                              f"{event['error']}")
        except docker.errors.APIError as exc:
            raise InfrastructureError(f"pushing {image.id[:19]} to {registry} failed: "
                                      f"{exc.explanation or exc}") from None
        image.reload()
        pushed = [d for d in image.attrs.get("RepoDigests") or [] if d.startswith(repository + "@")]
        if not pushed:
            raise InfrastructureError(f"pushed {image.id[:19]} to {registry}, but the engine "
                                      "reports no digest for it there")
        return pushed[0]

    def _task(self, service_id: str) -> dict | None:
        tasks = self.client.api.tasks(filters={"service": service_id})
        return max(tasks, key=lambda t: t.get("CreatedAt", "")) if tasks else None

    def _node_down(self, node_id: str) -> bool:
        try:
            node = self.client.api.inspect_node(node_id)
        except Exception:
            return False
        return node.get("Status", {}).get("State") == "down"

    def _node_name(self, node_id: str | None) -> str:
        if not node_id:
            return "?"
        try:
            return self.client.api.inspect_node(node_id)["Description"]["Hostname"]
        except Exception:
            return node_id[:12]

    def _remove_service(self, service_id: str) -> None:
        remove_service(self.client, service_id)

    def _remove_by_name(self, name: str) -> None:
        with _quiet():
            for service in self.client.api.services(filters={"name": name}):
                if service["Spec"]["Name"] == name:
                    self._remove_service(service["ID"])


def usable_nodes(nodes: list[dict]) -> list[dict]:
    """The nodes a task can be placed on: ready and active."""
    return [n for n in nodes if n.get("Status", {}).get("State") == "ready"
            and n.get("Spec", {}).get("Availability") == "active"]


def facts_scope_of(usable: list[dict]) -> str | None:
    """A swarm of one node is one machine; in a larger one a job may land on any of them."""
    return f"swarm node {usable[0]['ID']}" if len(usable) == 1 else None


def remove_service(client: docker.DockerClient, service_id: str) -> None:
    try:
        client.api.remove_service(service_id)
    except docker.errors.NotFound:
        pass
    except Exception:
        return
    # Engines before 24.0 keep the finished task's container of a removed replicated-job
    # service (moby/moby#42789); the one on this engine's node goes here.
    with _quiet():
        for container in client.api.containers(
                all=True, filters={"label": f"com.docker.swarm.service.id={service_id}"}):
            with _quiet(docker.errors.NotFound):
                client.api.remove_container(container["Id"], force=True)


def _task_message(task: dict | None) -> str:
    status = (task or {}).get("Status", {})
    return status.get("Err") or status.get("Message") or ""


def _tmpfs(options: str) -> dict:
    """A local tmpfs option string as a service's TmpfsOptions (size and mode only)."""
    result: dict[str, int] = {}
    for option in options.split(","):
        key, _, value = option.partition("=")
        if key == "size":
            result["SizeBytes"] = parse_size(value)
        elif key == "mode":
            result["Mode"] = int(value, 8)
        elif key in ("rw", "nosuid", "nodev", "noexec", ""):
            continue    # a service's tmpfs is always mounted rw,nosuid,nodev,noexec
        else:
            raise InfrastructureError(f"the swarm backend cannot set the tmpfs option {option!r} "
                                      "(services take a size and a mode only)")
    return result


class _quiet:
    """Ignore the given exceptions (default: any), as contextlib.suppress but for cleanups."""

    def __init__(self, *kinds):
        self.kinds = kinds or (Exception,)

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        return kind is not None and issubclass(kind, self.kinds)


def remove_leftover_services(client: docker.DockerClient, *,
                             finished_runs: set[str] = frozenset()) -> list[str]:
    """Services reprun submitted and never removed (its process was killed): each one removed,
    described. A service whose reprun process is alive on this host is left alone; this engine
    must be a swarm manager, or there is nothing to do."""
    try:
        swarm = client.info().get("Swarm") or {}
        if not swarm.get("ControlAvailable"):
            return []
        services = client.api.services(filters={"label": LABEL})
    except (docker.errors.DockerException, requests.exceptions.RequestException):
        return []
    removed = []
    for service in services:
        labels = service.get("Spec", {}).get("Labels") or {}
        run_id = labels.get(LABEL_RUN, "?")
        why = left_behind_because(labels, finished_runs)
        if why is None:
            continue
        remove_service(client, service["ID"])
        removed.append(f"{service['Spec']['Name']} (run {run_id}: {why})")
    return removed


def copy_beneath(shared: Path, store_folder: Path, rel: str) -> tuple[str, int]:
    """Copy shared/rel to store_folder/rel, (sha256, size) of what was copied. No symlink is
    followed on either side and the copy is a new file: a job's link on shared storage, or a
    name with "..", never makes reprun read or write outside the two folders."""
    digest, size = hashlib.sha256(), 0
    source = open_beneath(shared, rel, os.O_RDONLY)
    try:
        if not stat.S_ISREG(os.fstat(source).st_mode):
            raise OSError(f"{rel} is not a regular file")
        target = open_beneath(store_folder, rel, os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                              make_folders=True)
        try:
            while chunk := os.read(source, 1 << 20):
                digest.update(chunk)
                size += len(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(target, view):]
        finally:
            os.close(target)
    finally:
        os.close(source)
    return digest.hexdigest(), size
