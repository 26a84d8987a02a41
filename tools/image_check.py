"""`make image-check`: build the image without a Docker daemon, then run the sidecar in it and
make a real call through it.

1. The base. The Dockerfile's base (the official ``python:3.11.7-slim-bookworm``) is pulled if
   the registry can be reached; where it cannot (this project's CI), a stand-in is built from
   Debian's own packages with debootstrap (bookworm, Debian's Python 3.11, python3-venv),
   imported with buildah, and cached as ``localhost/agent-sidecar-standin-base:bookworm``.
   The check says which base it used.
2. ``buildah bud`` builds the Dockerfile unchanged (BASE as a build argument). The build
   itself runs ``policy check``, ``policy test`` and one real decision as the sidecar's user,
   so an image that cannot run its engine fails here. A TLS-intercepting proxy's CA bundle
   (``PIP_CERT`` / ``SSL_CERT_FILE``) is passed as a build secret, never into the image.
3. In a working container of that image (chroot isolation, the host's loopback): the
   development Workload API and ``agent-sidecar serve`` run as the image's user; the host
   calls ``tickets.get`` through the sidecar's unix socket (a bind mount) and gets the
   example upstream's answer; ``agent-sidecar health`` inside says SERVING; ``nft`` (the
   egress lock) and ``libatomic`` are present.

Needs root, buildah and debootstrap (Debian packages). Exit 0 only if everything held.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sidecar  # noqa: E402,F401  (before grpc: the engine's load order)
from examples.demo.tools_server import ToolServer  # noqa: E402
from sidecar.client import SidecarClient  # noqa: E402

OFFICIAL_BASE = "python:3.11.7-slim-bookworm"
STANDIN_BASE = "localhost/agent-sidecar-standin-base:bookworm"
IMAGE = "localhost/agent-sidecar:check"
SPIFFE_ID = "spiffe://demo.example/agent/support"
ISOLATION = ["--isolation", "chroot"]


def say(text: str) -> None:
    print(f"image-check: {text}", flush=True)


def run(*args: str, timeout: float = 900, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=True, timeout=timeout, **kwargs)


def has_image(name: str) -> bool:
    found = subprocess.run(["buildah", "images", "-q", name], capture_output=True, text=True)
    return found.returncode == 0 and bool(found.stdout.strip())


def base_image() -> str:
    pulled = subprocess.run(
        ["timeout", "60", "buildah", "pull", "-q", OFFICIAL_BASE], capture_output=True, text=True
    )
    if pulled.returncode == 0:
        say(f"base: the official {OFFICIAL_BASE}")
        return OFFICIAL_BASE
    if not has_image(STANDIN_BASE):
        say(f"{OFFICIAL_BASE} cannot be pulled here; building a stand-in from Debian packages")
        with tempfile.TemporaryDirectory(prefix="standin-") as tmp:
            rootfs = Path(tmp) / "rootfs"
            run(
                "debootstrap", "--variant=minbase",
                "--include=python3,python3-venv,python-is-python3,ca-certificates",
                "bookworm", str(rootfs), "http://deb.debian.org/debian",
                stdout=subprocess.DEVNULL,
            )  # fmt: skip
            container = run("buildah", "from", "scratch", capture_output=True, text=True)
            name = container.stdout.strip()
            try:
                mount = run("buildah", "mount", name, capture_output=True, text=True)
                run("cp", "-a", f"{rootfs}/.", mount.stdout.strip())
                run("buildah", "umount", name, stdout=subprocess.DEVNULL)
                path = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
                run("buildah", "config", "--env", "LANG=C.UTF-8", "--env", path, name)
                run("buildah", "commit", "-q", name, STANDIN_BASE, stdout=subprocess.DEVNULL)
            finally:
                subprocess.run(["buildah", "rm", name], capture_output=True)
    say(f"base: stand-in {STANDIN_BASE} (Debian bookworm, its Python 3.11; not the official)")
    return STANDIN_BASE


def build(base: str) -> None:
    args = ["buildah", "bud", *ISOLATION, "--network", "host", "--layers"]
    ca = os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE")
    if ca and Path(ca).is_file():
        args += ["--secret", f"id=build_ca,src={ca}"]
    args += ["--build-arg", f"BASE={base}", "-t", IMAGE, str(ROOT)]
    say("building the Dockerfile (the build runs policy check, policy test and one decision)")
    run(*args, cwd=ROOT)


def config(run_dir: Path, tools_url: str) -> dict:
    return {
        "server": {"listen": ["unix:///run/agent-sidecar/agent.sock"]},
        "identity": {"mode": "pod", "socket": "unix:///run/agent-sidecar/workload.sock"},
        "policy": {"engine": "embedded", "dir": "/etc/agent-sidecar/policy"},
        "audit": {"path": "/run/agent-sidecar/audit.log"},
        "state": {"dir": "/run/agent-sidecar/state"},
        "targets": {"tickets": {"base_url": tools_url, "timeout_s": 5}},
        "tools": {
            "tickets.get": {
                "target": "tickets", "operation": "read", "method": "GET",
                "path": "/tickets/{id}",
            }
        },
    }  # fmt: skip


def wait_for(path: Path, procs: list[subprocess.Popen], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        for proc in procs:
            if proc.poll() is not None:
                raise SystemExit(f"image-check: {proc.args[-1]} exited ({proc.returncode})")
        if time.monotonic() > deadline:
            raise SystemExit(f"image-check: {path.name} did not appear in {timeout_s:.0f}s")
        time.sleep(0.1)


def run_inside() -> None:
    container = run("buildah", "from", IMAGE, capture_output=True, text=True).stdout.strip()
    run_dir = Path(tempfile.mkdtemp(prefix="image-check-"))
    run_dir.chmod(0o777)  # the image's user (65532) creates the sockets here
    procs: list[subprocess.Popen] = []

    def inside(*args: str, **kwargs) -> list[str]:
        return ["buildah", "run", *ISOLATION, "--network", "host",
                "-v", f"{run_dir}:/run/agent-sidecar", container, "--", *args]  # fmt: skip

    try:
        with ToolServer() as tools:
            (run_dir / "config.yaml").write_text(yaml.safe_dump(config(run_dir, tools.url)))
            (run_dir / "config.yaml").chmod(0o644)
            procs.append(subprocess.Popen(inside(
                "agent-sidecar", "dev", "workload-api", "--trust-domain", "demo.example",
                "--socket", "/run/agent-sidecar/workload.sock", "--spiffe-id", SPIFFE_ID,
            )))  # fmt: skip
            wait_for(run_dir / "workload.sock", procs)
            procs.append(subprocess.Popen(inside(
                "agent-sidecar", "serve", "--config", "/run/agent-sidecar/config.yaml",
            )))  # fmt: skip
            wait_for(run_dir / "agent.sock", procs)
            deadline = time.monotonic() + 60
            while subprocess.run(
                inside("agent-sidecar", "health", "--addr", "unix:///run/agent-sidecar/agent.sock"),
                capture_output=True,
            ).returncode:
                if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                    raise SystemExit("image-check: the sidecar in the image never became SERVING")
                time.sleep(0.2)
            say("the sidecar in the image is SERVING (agent-sidecar health, inside)")
            with SidecarClient(f"unix:{run_dir / 'agent.sock'}", timeout_s=30) as client:
                reply = client.call_tool("tickets.get", {"id": "7"}).json()
            if reply.get("id") != "7" or not tools.received:
                raise SystemExit(f"image-check: unexpected answer through the image: {reply}")
            say(f"a call through the image's sidecar reached the upstream: {reply}")
            run(*inside("nft", "--version"), stdout=subprocess.DEVNULL)
            say("nft (the egress lock) is in the image")
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        subprocess.run(["buildah", "rm", container], capture_output=True)
        shutil.rmtree(run_dir, ignore_errors=True)


def main() -> int:
    missing = [tool for tool in ("buildah", "debootstrap") if shutil.which(tool) is None]
    if missing or os.geteuid() != 0:
        print(
            "image-check: needs root and Debian's buildah and debootstrap "
            f"(missing: {', '.join(missing) or 'root'}); apt-get install buildah debootstrap",
            file=sys.stderr,
        )
        return 2
    build(base_image())
    run_inside()
    say(f"OK: {IMAGE} builds, tests its policy, and serves a call")
    return 0


if __name__ == "__main__":
    sys.exit(main())
