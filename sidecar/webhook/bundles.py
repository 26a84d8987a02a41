"""Injection with a bundle server: the sidecar downloads its policy as an OPA bundle
(``policy.bundle``, set by ``--set``) instead of mounting the policy ConfigMap. The bearer
token (a Secret) is mounted into the sidecar container only; the last good bundle is kept on
the state volume, so a restarted container serves it even while the server is down."""

from __future__ import annotations

from typing import Any

from sidecar.webhook.names import BUNDLE_VOLUMES, SIDECAR, VOL_BUNDLE_TOKEN, VOL_POLICY
from sidecar.webhook.settings import WebhookSettings

__all__ = [
    "BUNDLE_SERVER",
    "CONFIGMAP",
    "SOURCE",
    "VOL_BUNDLE_CA",
    "VOL_BUNDLE_KEY",
    "VOL_BUNDLE_TOKEN",
    "policy_source",
    "use_bundle_server",
]

SOURCE = "agent-sidecar.io/policy-source"
CONFIGMAP = "configmap"
BUNDLE_SERVER = "bundle-server"
VOL_BUNDLE_CA, VOL_BUNDLE_KEY = BUNDLE_VOLUMES[1:]
BUNDLE_DIR = "/etc/agent-sidecar/bundle"
SERVICE = "bundles"  # the service's name in the injected policy.bundle.services


def policy_source(annotations: dict[str, Any], settings: WebhookSettings) -> str:
    """The pod's policy source; ValueError (an admission error) for a value not allowed."""
    server = settings.bundle_server
    default = BUNDLE_SERVER if server.default or server.required else CONFIGMAP
    value = annotations.get(SOURCE, default)
    if value not in (CONFIGMAP, BUNDLE_SERVER):
        raise ValueError(
            f"{SOURCE}: {value!r} is not one of {CONFIGMAP}, {BUNDLE_SERVER}; fix the "
            "annotation or remove it"
        )
    if value == CONFIGMAP and server.required:
        raise ValueError(
            f"{SOURCE}: {CONFIGMAP} is not allowed here: this cluster requires the policy "
            f"from its bundle server (bundle_server.required); remove the annotation"
        )
    if value == BUNDLE_SERVER and not server.url:
        raise ValueError(
            f"{SOURCE}: {BUNDLE_SERVER} asked for, but this cluster's webhook has no "
            "bundle_server.url; use the policy ConfigMap or ask the platform team"
        )
    return value


def use_bundle_server(
    spec: dict[str, Any], volumes: list[dict[str, Any]], settings: WebhookSettings, bundle: str
) -> None:
    """Rewrite the injected sidecar (in ``spec``) and ``volumes``: no policy ConfigMap; the
    bundle service, its credentials, and optionally status and decision logs, instead."""
    server = settings.bundle_server
    container = next(
        c for c in (*spec.get("initContainers", []), *spec["containers"]) if c["name"] == SIDECAR
    )
    args = container["args"]
    at = args.index("policy.dir=/etc/agent-sidecar/policy")
    del args[at - 1 : at + 1]
    prefix = f"policy.bundle.services.{SERVICE}"
    sets = [
        f"{prefix}.url={server.url}",
        f"policy.bundle.bundles.{bundle}.service={SERVICE}",
        f"policy.bundle.bundles.{bundle}.resource={server.resource.format(bundle=bundle)}",
        f"policy.bundle.bundles.{bundle}.polling.min_delay_seconds={server.min_delay_seconds}",
        f"policy.bundle.bundles.{bundle}.polling.max_delay_seconds={server.max_delay_seconds}",
        # On the state volume: a restarted container serves the last good bundle.
        "policy.bundle.persistence_directory=/var/lib/agent-sidecar/bundles",
    ]
    mounts = [m for m in container["volumeMounts"] if m["name"] != VOL_POLICY]
    volumes[:] = [v for v in volumes if v["name"] != VOL_POLICY]
    if server.token_secret:
        sets.append(f"{prefix}.credentials.bearer.token_path={BUNDLE_DIR}/token/token")
        mounts.append(
            {"name": VOL_BUNDLE_TOKEN, "mountPath": f"{BUNDLE_DIR}/token", "readOnly": True}
        )
        volumes.append(_item_volume(VOL_BUNDLE_TOKEN, "secret", server.token_secret, "token"))
    if server.ca_config_map:
        sets.append(f"{prefix}.tls.ca_cert={BUNDLE_DIR}/ca/ca.crt")
        mounts.append({"name": VOL_BUNDLE_CA, "mountPath": f"{BUNDLE_DIR}/ca", "readOnly": True})
        volumes.append(_item_volume(VOL_BUNDLE_CA, "configMap", server.ca_config_map, "ca.crt"))
    if server.signing_key_config_map:
        sets += [
            f"policy.bundle.keys.signer.key_path={BUNDLE_DIR}/key/key.pem",
            f"policy.bundle.keys.signer.algorithm={server.signing_algorithm}",
            f"policy.bundle.bundles.{bundle}.signing.keyid=signer",
        ]
        mounts.append({"name": VOL_BUNDLE_KEY, "mountPath": f"{BUNDLE_DIR}/key", "readOnly": True})
        volumes.append(
            _item_volume(VOL_BUNDLE_KEY, "configMap", server.signing_key_config_map, "key.pem")
        )
    if server.status:
        sets.append(f"policy.status.service={SERVICE}")
    if server.decision_logs:
        sets.append(f"policy.decision_logs.service={SERVICE}")
    for value in sets:
        args += ["--set", value]
    container["volumeMounts"] = mounts


def _item_volume(name: str, kind: str, source: str, key: str) -> dict[str, Any]:
    ref = {"secretName": source} if kind == "secret" else {"name": source}
    return {"name": name, kind: {**ref, "defaultMode": 0o444, "items": [{"key": key, "path": key}]}}
