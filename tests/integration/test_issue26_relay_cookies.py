"""Found while profiling the relay client (issue 26 item 3): aiohttp's default cookie jar kept
what an upstream set with ``Set-Cookie`` and sent it back on every later call to that host,
whichever agent task or user the call was for. The relay now keeps no cookies: each call
carries only what the sidecar built for it."""

from __future__ import annotations

from examples.demo.tools_server import Reply, ToolServer


def test_item3_relay_never_replays_an_upstream_cookie(start_sidecar):
    def ticket(request):
        return Reply(
            body={"id": "7"},
            headers={"Set-Cookie": "session=user-a-secret; Path=/; Max-Age=3600"},
        )

    with ToolServer({("GET", "/tickets/"): ticket}) as upstream:
        port = upstream.url.rsplit(":", 1)[1]
        # A host name, not an IP: aiohttp's default jar refuses cookies from IP hosts only.
        running = start_sidecar(f"http://localhost:{port}")
        with running.client() as client:
            for _ in range(3):
                client.call_tool("tickets.get", {"id": "7"})
        assert len(upstream.received) == 3
        assert [r.headers.get("cookie") for r in upstream.received] == [None, None, None]
