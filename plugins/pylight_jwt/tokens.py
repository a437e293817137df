"""JSON Web Tokens (PyJWT), configured by the ``[plugin:jwt]`` section.

Without a ``[plugin:jwt]`` section this plugin does nothing at all: it
registers no auth hook, so an open server is unaffected. With one, every
request and WebSocket upgrade needs a valid token (anonymous callers get a
401), a token's permissions decide what it may do (403 naming the missing
permission otherwise), and row filters narrow what a caller sees.

Configuration::

    [plugin:jwt]
    algorithm = HS256                  ; or RS256, ES256, ...; or a list of one family: RS256, PS256
    secret = a-long-random-secret...   ; HS*: the shared secret (>= the hash size: 32 bytes for HS256)
    ; secret_file = /etc/pylight/jwt.secret     ; HS*: or read it from a file (whitespace stripped)
    ; public_key_file = /etc/pylight/jwt.pem    ; RS*/PS*/ES*/EdDSA: the PEM public key (or certificate)
    audience = https://api.example.com ; required "aud" (a token's aud must contain one of these; comma list)
    issuer = https://auth.example.com  ; required "iss" (comma list: any of them)
    leeway = 30                        ; seconds of clock skew allowed on exp, nbf and iat
    require = exp                      ; claims every token must carry (comma list; empty: none)
    permissions_claim = permissions    ; claim {"products": ["read"], "orders": ["read", "create"]}
    default_permissions = *: read      ; granted to every valid token (with the claim's, if any)
    filter.orders = user_id=eq.{user_id}   ; row filter: a query-language filter per table

Tokens come as ``Authorization: Bearer <jwt>``, as ``?token=<jwt>`` where
headers cannot be set (a browser's WebSocket; never logged), or on an open
WebSocket as ``{"type": "auth", "token": "<jwt>"}`` to replace one before it
expires (a socket whose token expires is closed with code 4401).

Checks: the signature with exactly the configured algorithms and key type
(``alg: none`` and algorithm switching — say an HS256 token signed with the
RSA public key as HMAC secret — are refused because an RS* server only ever
accepts RS* with an RSA key), ``exp``, ``nbf`` and ``iat`` (with ``leeway``),
``aud`` when ``audience`` is set (a token carrying ``aud`` is refused when it
is not), and ``iss`` when ``issuer`` is set. Any failure is a 401 saying
which. A bearer token that is not shaped like a JWT is left to other plugins
(API keys).

Permissions: ``permissions_claim`` names a claim (a dotted path reaches into
nested objects: ``app.permissions``) holding an object of table names to
action lists (``"read, create"`` strings also work; ``*`` as table or action
is a wildcard); ``default_permissions`` (the ini syntax ``products: read;
orders: read, create``) is granted to every valid token. At least one of the
two must be set.

Row filters: ``filter.TABLE = <filter>`` in the REST query language, with
``{claim}`` placeholders replaced by the token's claim (URL-encoded; dotted
paths reach nested claims). The filter is ANDed into every REST read and
WebSocket subscription of that table and checked on every row a create or
update stores, so a caller sees and changes only their own rows. A token
lacking a claim the filter needs sees nothing: it is refused with 403.

The identity's ``subject`` is the token's ``sub`` claim, ``claims`` the
verified claims, and ``expires_at`` its ``exp``. Files are read at start-up;
relative paths resolve against the working directory. Any bad or missing
setting stops start-up with one line.
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import parse_qs, quote

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.algorithms import get_default_algorithms

from pylight import StartupError, hookimpl
from pylight.auth import Identity, Permissions, forbidden, unauthorized
from pylight.errors import ApiError

SECTION = "jwt"
PROVIDER = "jwt"
WHERE = f"[plugin:{SECTION}]"
SETTINGS = ("algorithm", "secret", "secret_file", "public_key_file", "audience", "issuer",
            "leeway", "require", "permissions_claim", "default_permissions")

# The key type each algorithm needs: one family per server, so a token can
# never choose how its own signature is checked.
FAMILIES = {
    "HS256": "hmac", "HS384": "hmac", "HS512": "hmac",
    "RS256": "rsa", "RS384": "rsa", "RS512": "rsa", "PS256": "rsa", "PS384": "rsa", "PS512": "rsa",
    "ES256": "ec", "ES256K": "ec", "ES384": "ec", "ES512": "ec",
    "EdDSA": "okp",
}
HMAC_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
EC_CURVES = {"ES256": "secp256r1", "ES256K": "secp256k1", "ES384": "secp384r1",
             "ES512": "secp521r1"}
KEY_TYPES = {"rsa": (rsa.RSAPublicKey,), "ec": (ec.EllipticCurvePublicKey,),
             "okp": (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)}
_JWT_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_CLAIM_NAME = re.compile(r"[A-Za-z_][\w:-]*(\.[A-Za-z_][\w:-]*)*")
_LOGIC = ("or", "and")


def _list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def claim(claims: dict[str, Any], path: str) -> Any:
    """A claim by name, or by a dotted path into nested objects; None when absent."""
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


_TIME_CLAIMS = ("exp", "nbf", "iat")


class RowFilter:
    """``filter.TABLE``: a query-language filter with ``{claim}`` placeholders."""

    def __init__(self, table: str, template: str) -> None:
        self.table = table
        self.template = template
        self.claims = _PLACEHOLDER.findall(template)

    def render(self, claims: dict[str, Any]) -> str:
        """The filter for these claims; 403 when one is missing (the caller sees nothing)."""
        def value(match: re.Match[str]) -> str:
            name = match.group(1)
            found = claim(claims, name)
            if isinstance(found, bool):
                found = "true" if found else "false"
            if found is None or not isinstance(found, (str, int, float)):
                raise forbidden(
                    f"the token has no usable {name!r} claim, which the row filter of table "
                    f"{self.table!r} needs", table=self.table, claim=name)
            return quote(str(found), safe="")
        return _PLACEHOLDER.sub(value, self.template)


class JwtAuth:
    """The hooks of a configured ``[plugin:jwt]``, registered for one server."""

    def __init__(self, algorithms: list[str], key: Any, audience: list[str] | None,
                 issuer: list[str] | None, leeway: float, require: list[str],
                 permissions_claim: str | None, default_permissions: Permissions | None,
                 filters: dict[str, RowFilter]) -> None:
        self.algorithms = algorithms
        self.key = key
        self.audience = audience
        self.issuer = issuer
        self.leeway = leeway
        self.require = require
        self.permissions_claim = permissions_claim
        self.default_permissions = default_permissions or Permissions()
        self.filters = filters

    # -- authentication ------------------------------------------------------------
    def verify(self, token: str) -> dict[str, Any]:
        """The verified claims of ``token``; a 401 saying why when it is not acceptable."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise unauthorized("malformed token: not a JWT") from None
        alg = header.get("alg")
        if alg not in self.algorithms:
            # alg=none, or an attempt to switch algorithm (e.g. HS256 signed with
            # the RSA public key as its HMAC secret): never checked at all.
            raise unauthorized(f"token algorithm {str(alg)[:20]!r} is not accepted "
                               f"(accepted: {', '.join(self.algorithms)})")
        try:
            claims = jwt.decode(
                token, self.key, algorithms=self.algorithms,
                audience=self.audience, issuer=self.issuer, leeway=self.leeway,
                options={"require": self.require, "verify_signature": True},
            )
        except jwt.ExpiredSignatureError:
            raise unauthorized("token expired") from None
        except jwt.ImmatureSignatureError:
            raise unauthorized("token not yet valid (nbf or iat is in the future)") from None
        except jwt.InvalidAudienceError:
            raise unauthorized("token audience (aud) is not accepted") from None
        except jwt.InvalidIssuerError:
            raise unauthorized("token issuer (iss) is not accepted") from None
        except jwt.MissingRequiredClaimError as exc:
            raise unauthorized(f"token lacks the required {exc.claim!r} claim") from None
        except jwt.InvalidSignatureError:
            raise unauthorized("token signature is invalid") from None
        except jwt.InvalidAlgorithmError:
            raise unauthorized("token algorithm is not accepted") from None
        except jwt.DecodeError:
            raise unauthorized("malformed token") from None
        except jwt.PyJWTError as exc:
            raise unauthorized(f"invalid token: {str(exc)[:100]}") from None
        for name in _TIME_CLAIMS:
            # RFC 7519 NumericDate. PyJWT reads "exp": "1700000000" as a number, but a
            # socket's expiry must be read the same way: such a token is refused.
            value = claims.get(name)
            if value is not None and (isinstance(value, bool)
                                      or not isinstance(value, (int, float))):
                raise unauthorized(f"token claim {name!r} must be a number (seconds since "
                                   "the epoch)")
        return claims

    def permissions(self, claims: dict[str, Any]) -> Permissions:
        granted = self.default_permissions
        if self.permissions_claim is not None:
            value = claim(claims, self.permissions_claim)
            if value is not None:
                try:
                    granted = granted | Permissions.from_mapping(value)
                except ValueError as exc:
                    raise unauthorized(f"token claim {self.permissions_claim!r}: {exc}") from None
        return granted

    @hookimpl
    def pylight_authenticate(self, request: Any, token: str | None, app: Any) -> Identity | None:
        if token is None or _JWT_SHAPE.fullmatch(token) is None:
            return None  # no JWT (an API key, perhaps): not ours to judge
        claims = self.verify(token)
        exp = claims.get("exp")
        subject = claims.get("sub")
        return Identity(
            subject=str(subject) if subject is not None else "(token without sub)",
            provider=PROVIDER,
            expires_at=float(exp) if isinstance(exp, (int, float)) else None,
            claims=claims,
            data={"permissions": self.permissions(claims)},
        )

    # -- authorisation and rows ----------------------------------------------------
    @hookimpl
    def pylight_authorize(self, identity: Identity | None, action: str, table: str,
                          record: dict[str, Any] | None, app: Any) -> bool | None:
        if identity is None:
            return False  # with JWT enabled, anonymous callers may do nothing
        if identity.provider != PROVIDER:
            return None  # another plugin's identity: its plugin decides
        if not identity.data["permissions"].allows(table, action):
            return False
        row_filter = self.filters.get(table)
        if row_filter is not None and record is None:
            # Before a request or subscription touches the table: a filter this
            # token cannot fill (a missing claim, a claim that does not fit the
            # column) refuses it here, rather than silently showing every row.
            self._parse(app, table, row_filter.render(identity.claims))
        return True

    @hookimpl
    def pylight_row_filter(self, identity: Identity | None, table: str, app: Any) -> str | None:
        row_filter = self.filters.get(table)
        if row_filter is None or identity is None or identity.provider != PROVIDER:
            return None
        return row_filter.render(identity.claims)

    @staticmethod
    def _parse(app: Any, table: str, text: str) -> None:
        from pylight import query as ql

        info = app.tables.get(table)
        if info is None:
            return
        try:
            ql.parse_filters(info, parse_qs(text, keep_blank_values=True))
        except ApiError as exc:
            raise forbidden(f"the row filter of table {table!r} does not fit this token: "
                            f"{exc.message}", table=table) from None


# -- start-up: validate the section into a JwtAuth ---------------------------------------

def _read(path: str, what: str) -> bytes:
    try:
        with open(os.path.abspath(path), "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise StartupError(f"{WHERE} {what} {path!r}: cannot read it "
                           f"({exc.strerror or exc})") from None


def _algorithms(settings: dict[str, str]) -> tuple[list[str], str]:
    names = _list(settings.get("algorithm", ""))
    if not names:
        raise StartupError(f"{WHERE} needs algorithm (e.g. algorithm = HS256 or RS256)")
    available = get_default_algorithms()
    for name in names:
        if name.lower() == "none":
            raise StartupError(f"{WHERE} algorithm: 'none' (unsigned tokens) is never accepted")
        if name not in FAMILIES or name not in available:
            known = ", ".join(a for a in FAMILIES if a in available)
            raise StartupError(f"{WHERE} algorithm: unknown algorithm {name!r} (known: {known})")
    families = {FAMILIES[name] for name in names}
    if len(families) > 1:
        raise StartupError(f"{WHERE} algorithm: {', '.join(names)} mix key types; list "
                           "algorithms of one family only (all HS*, all RS*/PS*, or all ES*)")
    return names, families.pop()


def _hmac_key(settings: dict[str, str], names: list[str]) -> bytes:
    secret, secret_file = settings.get("secret", ""), settings.get("secret_file", "").strip()
    if settings.get("public_key_file", "").strip():
        raise StartupError(f"{WHERE} public_key_file is for RS*/PS*/ES*/EdDSA; "
                           f"{names[0]} uses secret or secret_file")
    if secret and secret_file:
        raise StartupError(f"{WHERE} set secret or secret_file, not both")
    if secret_file:
        key = _read(secret_file, "secret_file").strip()
    elif secret:
        key = secret.strip().encode("utf-8")
    else:
        raise StartupError(f"{WHERE} needs secret or secret_file for {', '.join(names)}")
    need = max(HMAC_MIN_BYTES[name] for name in names)
    if len(key) < need:
        raise StartupError(f"{WHERE} the secret is {len(key)} bytes; {', '.join(names)} needs at "
                           f"least {need} random bytes")
    return key


def _public_key(settings: dict[str, str], names: list[str], family: str) -> Any:
    if settings.get("secret", "") or settings.get("secret_file", "").strip():
        raise StartupError(f"{WHERE} secret and secret_file are for HS*; {names[0]} uses "
                           "public_key_file")
    path = settings.get("public_key_file", "").strip()
    if not path:
        raise StartupError(f"{WHERE} needs public_key_file (a PEM public key) for "
                           f"{', '.join(names)}")
    data = _read(path, "public_key_file")
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            key = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = load_pem_public_key(data)
    except ValueError:
        raise StartupError(f"{WHERE} public_key_file {path!r}: not a PEM public key or "
                           "certificate") from None
    if not isinstance(key, KEY_TYPES[family]):
        raise StartupError(f"{WHERE} public_key_file {path!r} holds a {type(key).__name__}, "
                           f"which cannot verify {', '.join(names)}")
    if family == "ec":
        for name in names:
            if key.curve.name != EC_CURVES[name]:
                raise StartupError(f"{WHERE} public_key_file {path!r} is a {key.curve.name} key; "
                                   f"{name} needs {EC_CURVES[name]}")
    return key


def _filters(settings: dict[str, str], tables: Any) -> dict[str, RowFilter]:
    filters = {}
    for option, template in settings.items():
        if not option.startswith("filter."):
            continue
        table = option[len("filter."):]
        where = f"{WHERE} {option}"
        if table not in tables:
            raise StartupError(f"{where}: {table!r} is not an exposed table "
                               f"(exposed: {', '.join(sorted(tables)) or 'none'})")
        template = template.strip()
        if not template:
            raise StartupError(f"{where}: empty filter; write e.g. user_id=eq.{{user_id}}")
        for name in _PLACEHOLDER.findall(template):
            if not _CLAIM_NAME.fullmatch(name):
                raise StartupError(f"{where}: {{{name}}} is not a claim name")
        if "{" in _PLACEHOLDER.sub("", template) or "}" in _PLACEHOLDER.sub("", template):
            raise StartupError(f"{where}: unbalanced braces in {template!r}")
        info = tables[table]
        for param in parse_qs(_PLACEHOLDER.sub("x", template), keep_blank_values=True):
            if param in _LOGIC:
                continue
            if param not in info.columns:
                reason = "is hidden" if param in info.hidden else "is not a column"
                raise StartupError(f"{where}: {param!r} {reason} of {table!r}; a filter is "
                                   "column=op.value, joined with &")
        filters[table] = RowFilter(table, template)
    return filters


def load(settings: dict[str, str], tables: Any) -> JwtAuth:
    """Validate the section; StartupError with one line when anything is wrong."""
    for option in settings:
        if option not in SETTINGS and not option.startswith("filter."):
            raise StartupError(f"{WHERE} unknown setting {option!r} (known: {', '.join(SETTINGS)}, "
                               "filter.TABLE)")
    names, family = _algorithms(settings)
    key = _hmac_key(settings, names) if family == "hmac" else _public_key(settings, names, family)
    leeway_text = settings.get("leeway", "30").strip() or "30"
    try:
        leeway = float(leeway_text)
    except ValueError:
        leeway = -1.0
    if not 0 <= leeway < float("inf"):
        raise StartupError(f"{WHERE} leeway: expected seconds >= 0, got {leeway_text!r}")
    claim_name = settings.get("permissions_claim", "").strip() or None
    defaults = None
    if settings.get("default_permissions", "").strip():
        try:
            defaults = Permissions.parse(settings["default_permissions"], tables)
        except ValueError as exc:
            raise StartupError(f"{WHERE} default_permissions: {exc}") from None
    if claim_name is None and defaults is None:
        raise StartupError(f"{WHERE} needs permissions_claim (e.g. permissions) or "
                           "default_permissions (e.g. *: read); otherwise no token may do anything")
    require = _list(settings.get("require", "exp")) if "require" in settings else ["exp"]
    return JwtAuth(
        algorithms=names, key=key,
        audience=_list(settings.get("audience", "")) or None,
        issuer=_list(settings.get("issuer", "")) or None,
        leeway=leeway, require=require, permissions_claim=claim_name,
        default_permissions=defaults, filters=_filters(settings, tables),
    )
