"""A real OAuth 2.0 / OpenID Connect authorization server for the user-context tests.

Built on Authlib (its authorization server, client authentication and grant framework) with
Flask, served over real TLS on loopback. It speaks the wire protocols the sidecar uses:

* OIDC discovery (``/.well-known/openid-configuration``) and a JWKS (``/jwks``) whose keys
  the test can rotate;
* the token endpoint with the RFC 8693 token-exchange grant, added to Authlib as a custom
  grant (Authlib has none), and client authentication by a SPIFFE JWT-SVID as the client
  assertion (``client_assertion_type`` ``...:jwt-spiffe``, the OAuth SPIFFE Client
  Authentication draft; RFC 7523 wire format), verified against the SPIFFE JWT bundle.

``user_token(...)`` plays the user's login: a token signed by the server's current key.
Every exchange request is recorded (``exchanges``) with its form, secrets left out.
"""

from __future__ import annotations

import json
import secrets
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
from authlib.integrations.flask_oauth2 import AuthorizationServer as FlaskAuthorizationServer
from authlib.oauth2.rfc6749 import ClientMixin, InvalidClientError
from authlib.oauth2.rfc6749.errors import InvalidGrantError, InvalidRequestError, InvalidScopeError
from authlib.oauth2.rfc6749.grants import BaseGrant, TokenEndpointMixin
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask, jsonify
from werkzeug.serving import make_server

from sidecar.identity.dev_authority import DevAuthority

__all__ = ["AuthorizationServer"]

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_SPIFFE = "urn:ietf:params:oauth:client-assertion-type:jwt-spiffe"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
USER_AUDIENCE = "agent-app"  # what user tokens are issued for (the agent application)


class SpiffeClient(ClientMixin):
    """A workload client: its client_id is its SPIFFE ID; it may use the exchange grant."""

    def __init__(self, spiffe_id: str, scopes: set[str], audiences: set[str]) -> None:
        self.client_id = spiffe_id
        self.scopes = scopes
        self.audiences = audiences

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str:  # pragma: no cover - no redirects here
        return ""

    def get_allowed_scope(self, scope: str) -> str:
        return " ".join(s for s in scope.split() if s in self.scopes)

    def check_redirect_uri(self, redirect_uri: str) -> bool:  # pragma: no cover
        return False

    def check_client_secret(self, client_secret: str) -> bool:
        return False  # no secrets: SVIDs only

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == "jwt_spiffe" and endpoint == "token"

    def check_response_type(self, response_type: str) -> bool:  # pragma: no cover
        return False

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == EXCHANGE


class TokenExchangeGrant(BaseGrant, TokenEndpointMixin):
    """RFC 8693 token exchange: a user's token in, a token for one audience out, whose
    ``act`` claim names the client (the agent's workload) acting for the user."""

    GRANT_TYPE = EXCHANGE
    TOKEN_ENDPOINT_AUTH_METHODS = ["jwt_spiffe"]

    def validate_token_request(self) -> None:
        client = self.authenticate_token_endpoint_client()
        data = self.request.payload.data
        server: AuthorizationServer = self.server.owner
        if server.refuse is not None:
            raise InvalidGrantError(description=server.refuse)
        token = data.get("subject_token")
        if not token or data.get("subject_token_type") not in (ACCESS_TOKEN, JWT_TYPE):
            raise InvalidRequestError(description="subject_token and its type are required")
        try:
            user = server.verify_own(token, USER_AUDIENCE)
        except jwt.PyJWTError as exc:
            raise InvalidGrantError(description="the subject_token is not valid") from exc
        audience = data.get("audience") or ""
        if audience not in client.audiences:
            raise InvalidRequestError(description="audience not allowed for this client")
        scope = data.get("scope") or ""
        if any(s not in client.scopes for s in scope.split()):
            raise InvalidScopeError()
        actor = None
        if data.get("actor_token"):
            actor = server.verify_svid(data["actor_token"], server.token_endpoint)
            if actor["sub"] != client.client_id:
                raise InvalidGrantError(description="the actor_token is not the client's")
        self.request.client = client
        self.request.user = user
        self.request.exchange = {
            "audience": audience,
            "resource": data.get("resource"),
            "scope": scope,
            "actor": actor is not None,
        }

    def create_token_response(self):
        server: AuthorizationServer = self.server.owner
        request = self.request
        exchange = request.exchange
        now = int(time.time())
        claims = {
            "iss": server.issuer,
            "sub": request.user["sub"],
            "aud": exchange["audience"],
            "scope": exchange["scope"],
            "iat": now,
            "exp": now + server.issued_ttl_s,
            "jti": secrets.token_hex(8),
            "act": {"sub": request.client.client_id},
        }
        issued = server.sign(claims)
        server.exchanges.append({**exchange, "client_id": request.client.client_id,
                                 "user": request.user["sub"], "token": issued})  # fmt: skip
        body = {
            "access_token": issued,
            "issued_token_type": ACCESS_TOKEN,
            "token_type": "Bearer",
            "expires_in": server.issued_ttl_s,
            "scope": exchange["scope"],
        }
        return 200, body, self.TOKEN_RESPONSE_HEADER


class AuthorizationServer:
    """Starts on a free loopback port over TLS; ``issuer`` is its https URL."""

    def __init__(
        self,
        tmp: Path,
        *,
        spiffe: DevAuthority,
        clients: dict[str, tuple[set[str], set[str]]],
    ) -> None:
        self._spiffe = spiffe
        self._keys: list[tuple[str, rsa.RSAPrivateKey]] = []
        self.rotate()
        self.exchanges: list[dict[str, Any]] = []
        self.refuse: str | None = None  # set to make every exchange fail (invalid_grant)
        self.issued_ttl_s = 300
        self.requests = 0
        tls = DevAuthority("idp.test")
        issued = tls.issue_x509("spiffe://idp.test/idp", dns_names=("localhost",))
        (tmp / "idp.crt").write_bytes(issued.chain_pem)
        (tmp / "idp.key").write_bytes(issued.key_pem)
        self.ca_file = tmp / "idp-ca.pem"
        self.ca_file.write_bytes(tls.x509_bundle_pem)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tmp / "idp.crt", tmp / "idp.key")
        app = Flask("test-authorization-server")
        oauth = FlaskAuthorizationServer(
            app,
            query_client=lambda cid: SpiffeClient(cid, *clients[cid]) if cid in clients else None,
            save_token=lambda token, request: None,
        )
        oauth.owner = self
        oauth.register_client_auth_method("jwt_spiffe", self._authenticate_client)
        oauth.register_grant(TokenExchangeGrant)
        self._routes(app, oauth)
        self._httpd = make_server("127.0.0.1", 0, app, threaded=True, ssl_context=context)
        self.port = self._httpd.server_port
        self.issuer = f"https://localhost:{self.port}"
        self.token_endpoint = f"{self.issuer}/token"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def _routes(self, app: Flask, oauth: FlaskAuthorizationServer) -> None:
        @app.before_request
        def count() -> None:
            self.requests += 1

        @app.get("/.well-known/openid-configuration")
        def discovery():
            return jsonify(
                issuer=self.issuer,
                jwks_uri=f"{self.issuer}/jwks",
                token_endpoint=self.token_endpoint,
                grant_types_supported=[EXCHANGE],
                token_endpoint_auth_methods_supported=["jwt_spiffe"],
                id_token_signing_alg_values_supported=["RS256"],
            )

        @app.get("/jwks")
        def jwks():
            keys = []
            for kid, key in self._keys:
                entry = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
                keys.append(entry | {"kid": kid, "use": "sig", "alg": "RS256"})
            return jsonify(keys=keys)

        @app.post("/token")
        def token():
            return oauth.create_token_response()

    # --- the server's own tokens ------------------------------------------------------------

    def rotate(self, *, keep_old: bool = True) -> str:
        """A new signing key (the JWKS keeps the old one unless told not to); its kid."""
        kid = secrets.token_hex(6)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._keys = ([*self._keys] if keep_old else []) + [(kid, key)]
        return kid

    def sign(self, claims: dict[str, Any], *, key: Any = None, kid: str | None = None,
             alg: str = "RS256") -> str:  # fmt: skip
        current_kid, current = self._keys[-1]
        return jwt.encode(
            claims, key or current, algorithm=alg, headers={"kid": kid or current_kid}
        )

    def user_token(self, sub: str = "alice", *, ttl_s: int = 300, audience: str = USER_AUDIENCE,
                   issuer: str | None = None, **extra: Any) -> str:  # fmt: skip
        now = int(time.time())
        claims = {"iss": issuer or self.issuer, "sub": sub, "aud": audience,
                  "iat": now, "exp": now + ttl_s} | extra  # fmt: skip
        return self.sign(claims)

    def verify_own(self, token: str, audience: str) -> dict[str, Any]:
        kid = jwt.get_unverified_header(token).get("kid")
        keys = dict(self._keys)
        if kid not in keys:
            raise jwt.InvalidKeyError("unknown kid")
        return jwt.decode(
            token, keys[kid].public_key(), algorithms=["RS256"], audience=audience,
            issuer=self.issuer,
        )  # fmt: skip

    # --- SPIFFE client authentication --------------------------------------------------------

    def verify_svid(self, token: str, audience: str) -> dict[str, Any]:
        """A JWT-SVID checked against the SPIFFE JWT bundle, for ``audience``."""
        bundle = json.loads(self._spiffe.jwt_bundle_json)
        kid = jwt.get_unverified_header(token).get("kid")
        for entry in bundle["keys"]:
            if entry["kid"] == kid:
                key = jwt.PyJWK.from_dict({k: v for k, v in entry.items() if k != "use"}).key
                claims = jwt.decode(token, key, algorithms=["ES256"], audience=audience,
                                    options={"require": ["sub", "aud", "exp"]})  # fmt: skip
                return claims
        raise jwt.InvalidKeyError("kid not in the SPIFFE bundle")

    def _authenticate_client(self, query_client: Callable[[str], Any], request: Any) -> Any:
        data = request.payload.data
        if data.get("client_assertion_type") != JWT_SPIFFE or not data.get("client_assertion"):
            return None
        try:
            claims = self.verify_svid(data["client_assertion"], self.token_endpoint)
        except jwt.PyJWTError as exc:
            raise InvalidClientError(description="the client assertion does not verify") from exc
        if data.get("client_id") not in (None, claims["sub"]):
            raise InvalidClientError(description="client_id is not the assertion's subject")
        client = query_client(claims["sub"])
        if client is None:
            raise InvalidClientError(description="unknown client")
        return client

    def start(self) -> AuthorizationServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
