"""Ray nodes of a cluster of this test's own on 127.0.0.1, and an S3-compatible server beside it.

Each node gets free ports and its own temp dir, so it shares nothing with the test session's Ray (the
`ray_session` fixture) or any other Ray on the machine. A node is stopped by killing the processes
that run under its temp dir: never `ray stop`, which stops every Ray on the machine.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

RAY = str(Path(sys.executable).parent / "ray")
JOB_TIMEOUT_S = 600


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_env(**extra: str) -> dict:
    """The environment `ray start` runs with. Ray's token auth is on by default, but this process's
    clients send no token unless told to: the nodes listen on loopback only, so they run without
    (README shows the token route)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env["RAY_AUTH_MODE"] = "disabled"
    env.update(extra)
    return env


def start_node(num_cpus: int, head_address: str | None = None, env: dict | None = None,
               system_config: str | None = None, resources: dict | None = None) -> dict:
    """`ray start` a head (head_address None; with a dashboard, the job server) or a worker node joining
    head_address, with `resources` (custom ones) besides its CPUs. Returns the node's temp_dir, its node
    manager port, and for a head its GCS address and dashboard (http) address."""
    temp_dir = tempfile.mkdtemp(prefix="rn", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    node_manager_port = free_port()
    command = [RAY, "start", "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}", f"--temp-dir={temp_dir}",
               f"--node-manager-port={node_manager_port}", f"--object-manager-port={free_port()}",
               f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
               f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
               "--disable-usage-stats"]
    if resources:
        command.append(f"--resources={json.dumps(resources)}")
    node = {"temp_dir": temp_dir, "node_manager_port": node_manager_port}
    if head_address is None:
        gcs, dashboard = free_port(), free_port()
        command += ["--head", f"--port={gcs}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={dashboard}", f"--ray-client-server-port={free_port()}"]
        if system_config:
            command.append(f"--system-config={system_config}")
        node.update(gcs=f"127.0.0.1:{gcs}", address=f"http://127.0.0.1:{dashboard}")
    else:
        command.append(f"--address={head_address}")
    started = subprocess.run(command, env=env or node_env(), capture_output=True, text=True, timeout=120)
    if started.returncode != 0:
        stop_node(temp_dir)
        raise RuntimeError(f"ray start failed: {started.stdout[-2000:]}{started.stderr[-2000:]}")
    return node


def node_processes(temp_dir: str) -> list[psutil.Process]:
    """The processes of the node started under temp_dir, with their children (the workers)."""
    found = {}
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in part for part in proc.info["cmdline"] or []):
                found[proc.pid] = proc
                for child in proc.children(recursive=True):
                    found[child.pid] = child
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return list(found.values())


def raylet(temp_dir: str) -> psutil.Process:
    (proc,) = [p for p in node_processes(temp_dir) if p.name() == "raylet"]
    return proc


def stop_node(temp_dir: str) -> None:
    procs = node_processes(temp_dir)
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=5)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)
    shutil.rmtree(temp_dir, ignore_errors=True)


def wait_for_job_server(address: str, timeout_s: float = 90):
    from ray.job_submission import JobSubmissionClient

    deadline = time.time() + timeout_s
    while True:
        try:
            return JobSubmissionClient(address)
        except OSError:  # refused or 5xx: the dashboard takes a few seconds after `ray start` returns
            if time.time() > deadline:
                raise
            time.sleep(1)


def wait_for_job(client, job_id: str, timeout_s: float = JOB_TIMEOUT_S) -> str:
    from ray.job_submission import JobStatus

    deadline = time.time() + timeout_s
    while (status := client.get_job_status(job_id)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.time() < deadline, f"job {job_id} still {status} after {timeout_s} s"
        time.sleep(1)
    return status


def wait_for(condition, what: str, timeout_s: float = 120, every_s: float = 0.5):
    """Poll `condition` until it returns something true; fail naming `what` after timeout_s."""
    deadline = time.time() + timeout_s
    while not (value := condition()):
        assert time.time() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(every_s)
    return value


# --------------------------------------------------------------------------- S3 on 127.0.0.1
def start_s3_server() -> tuple[subprocess.Popen, dict]:
    """moto's S3-compatible server on a free loopback port; returns it and the environment a client
    (pyarrow, boto3, Ray's workers) needs to reach it."""
    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}

    def answers():
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_for(answers, f"the S3 server on port {port}", timeout_s=60, every_s=0.2)
    return server, env


def create_bucket(env: dict, name: str) -> None:
    import boto3

    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_DEFAULT_REGION"],
                 aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                 aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"]).create_bucket(Bucket=name)
