"""The identity path against a real SPIRE server and agent (official images), when Docker is
available. Where it is not (CI here has no Docker daemon), the test is skipped with the reason.

The agent attests the test process with the unix workload attestor (``unix:uid``), so it runs
with the host's PID namespace; its Workload API socket is bind-mounted to a host directory.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.support.docker import docker_unavailable

SPIRE_VERSION = "1.13.3"
TRUST_DOMAIN = "demo.example"
WORKLOAD_ID = f"spiffe://{TRUST_DOMAIN}/agent/support"


pytestmark = pytest.mark.skipif(
    (reason := docker_unavailable("the SPIRE server+agent test")) is not None, reason=reason or ""
)

SERVER_CONF = f"""
server {{
  bind_address = "0.0.0.0"
  bind_port = "8081"
  trust_domain = "{TRUST_DOMAIN}"
  data_dir = "/tmp/spire-server/data"
  log_level = "INFO"
}}
plugins {{
  DataStore "sql" {{
    plugin_data {{
      database_type = "sqlite3"
      connection_string = "/tmp/spire-server/data/datastore.sqlite3"
    }}
  }}
  NodeAttestor "join_token" {{ plugin_data {{}} }}
  KeyManager "memory" {{ plugin_data {{}} }}
}}
"""

AGENT_CONF = f"""
agent {{
  data_dir = "/tmp/spire-agent/data"
  log_level = "INFO"
  server_address = "spire-server"
  server_port = "8081"
  socket_path = "/run/spire/sockets/agent.sock"
  trust_domain = "{TRUST_DOMAIN}"
  insecure_bootstrap = true
}}
plugins {{
  NodeAttestor "join_token" {{ plugin_data {{}} }}
  KeyManager "memory" {{ plugin_data {{}} }}
  WorkloadAttestor "unix" {{ plugin_data {{}} }}
}}
"""


def test_sidecar_gets_its_svid_from_a_real_spire_agent(tmp_path, start_sidecar, tools):
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.network import Network
    from testcontainers.core.waiting_utils import wait_for_logs

    (tmp_path / "server.conf").write_text(SERVER_CONF)
    (tmp_path / "agent.conf").write_text(AGENT_CONF)
    sockets = tmp_path / "sockets"
    sockets.mkdir(mode=0o777)
    with Network() as network:
        server = (
            DockerContainer(f"ghcr.io/spiffe/spire-server:{SPIRE_VERSION}")
            .with_network(network)
            .with_network_aliases("spire-server")
            .with_volume_mapping(str(tmp_path / "server.conf"), "/etc/spire/server.conf", "ro")
            .with_command("-config /etc/spire/server.conf")
        )
        with server:
            wait_for_logs(server, "Starting Server APIs", timeout=60)
            bin_ = "/opt/spire/bin/spire-server"
            token_out = server.exec(
                [bin_, "token", "generate", "-spiffeID", f"spiffe://{TRUST_DOMAIN}/node"]
            ).output.decode()
            token = token_out.split("Token:")[1].split()[0]
            server.exec(
                [
                    bin_,
                    "entry",
                    "create",
                    "-parentID",
                    f"spiffe://{TRUST_DOMAIN}/node",
                    "-spiffeID",
                    WORKLOAD_ID,
                    "-selector",
                    f"unix:uid:{os.getuid()}",
                ]
            )
            agent = (
                DockerContainer(f"ghcr.io/spiffe/spire-agent:{SPIRE_VERSION}")
                .with_network(network)
                .with_volume_mapping(str(tmp_path / "agent.conf"), "/etc/spire/agent.conf", "ro")
                .with_volume_mapping(str(sockets), "/run/spire/sockets", "rw")
                .with_kwargs(pid_mode="host", user="0")
                .with_command(f"-config /etc/spire/agent.conf -joinToken {token}")
            )
            with agent:
                socket_path = Path(sockets / "agent.sock")
                deadline = time.monotonic() + 60
                while not socket_path.exists() and time.monotonic() < deadline:
                    time.sleep(0.5)
                running = start_sidecar(
                    tools.url, identity={"mode": "pod", "socket": f"unix://{socket_path}"}
                )
                assert running.sidecar.identity.wait_ready(60)
                assert running.sidecar.identity.snapshot().spiffe_id == WORKLOAD_ID
                with running.client() as client:
                    assert client.call_tool("tickets.get", {"id": "1"}).status == 200
