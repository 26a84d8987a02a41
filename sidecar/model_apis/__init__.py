"""The model APIs the sidecar serves, one module each (base.py says what an API supplies):
chat completions, the Responses API and embeddings (OpenAI format); ``APIS`` by name."""

from __future__ import annotations

from sidecar.model_apis.anthropic import COUNT_TOKENS, MESSAGES
from sidecar.model_apis.base import ModelApi
from sidecar.model_apis.chat import CHAT
from sidecar.model_apis.embeddings import EMBEDDINGS
from sidecar.model_apis.responses import RESPONSES

__all__ = ["APIS", "ModelApi", "register"]

APIS: dict[str, ModelApi] = {}


def register(api: ModelApi) -> None:
    """Serve ``api``: the guarded path finds it by its ``key`` (``ModelCall.api``; default
    ``api.name``), the front door by ``api.route``."""
    APIS[getattr(api, "key", api.name)] = api  # key: when two routes share a policy name


register(CHAT)
register(RESPONSES)
register(EMBEDDINGS)
register(MESSAGES)
register(COUNT_TOKENS)
