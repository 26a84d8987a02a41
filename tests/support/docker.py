"""Whether a Docker daemon can be used here; tests that need one skip with the reason."""

from __future__ import annotations


def docker_unavailable(purpose: str) -> str | None:
    """None when Docker answers; otherwise why not, naming what needed it."""
    try:
        import docker

        docker.from_env(timeout=3).ping()
    except Exception as exc:  # no daemon, no socket, no permission: all mean "cannot run"
        return f"no Docker daemon here ({type(exc).__name__}); {purpose} needs one"
    return None
