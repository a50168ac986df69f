"""Access control, pure: SigV4 signatures checked against ``credentials.yaml`` and
IAM-style policies (explicit deny wins, otherwise an allow is needed).

``<state-dir>/credentials.yaml``::

    keys:
      AKIDOPERATOR:
        secret: "…"
        policy:
          Statement:
            - Effect: Allow
              Action: ["elasticache:Describe*", "elasticache:List*"]
              Resource: "*"
            - Effect: Deny
              Action: elasticache:DeleteReplicationGroup
              Resource: arn:aws:elasticache:*:*:replicationgroup:prod-*

Actions and resources take ``*`` and ``?`` wildcards. A request that names no resource is
checked against ``*`` (as the service does for its list calls).
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from cachefleet.api.wire import ApiError
from cachefleet.errors import CachefleetError

ALGORITHM = "AWS4-HMAC-SHA256"
MAX_SKEW_S = 15 * 60
_CRED = re.compile(r"Credential=([^,\s]+)")
_SIGNED = re.compile(r"SignedHeaders=([^,\s]+)")
_SIG = re.compile(r"Signature=([0-9a-fA-F]+)")


@dataclass(frozen=True)
class Statement:
    allow: bool
    actions: tuple[str, ...]
    resources: tuple[str, ...]

    def matches(self, action: str, resource: str) -> bool:
        return any(fnmatch.fnmatchcase(action, a) for a in self.actions) and any(
            fnmatch.fnmatchcase(resource, r) for r in self.resources
        )


@dataclass(frozen=True)
class Key:
    access_key_id: str
    secret: str
    statements: tuple[Statement, ...]

    def allowed(self, action: str, resource: str) -> bool:
        """IAM's rule: an explicit Deny wins; otherwise some Allow must match."""
        name = f"elasticache:{action}"
        hits = [s for s in self.statements if s.matches(name, resource)]
        return bool(hits) and all(s.allow for s in hits)


class CredentialsError(CachefleetError):
    """credentials.yaml does not fit its schema (the message names the field)."""


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise CredentialsError(f"{where} must be a string or a list of strings")


def parse_credentials(data: Any) -> dict[str, Key]:
    if not isinstance(data, Mapping) or not isinstance(data.get("keys"), Mapping):
        raise CredentialsError("`keys` must map access key ids to {secret, policy}")
    keys: dict[str, Key] = {}
    for key_id, spec in data["keys"].items():
        where = f"keys.{key_id}"
        if not isinstance(spec, Mapping) or not isinstance(spec.get("secret"), str):
            raise CredentialsError(f"{where}.secret must be a string")
        policy = spec.get("policy") or {}
        raw = policy.get("Statement", []) if isinstance(policy, Mapping) else None
        if not isinstance(raw, list):
            raise CredentialsError(f"{where}.policy.Statement must be a list")
        statements = []
        for i, st in enumerate(raw):
            at = f"{where}.policy.Statement[{i}]"
            if not isinstance(st, Mapping) or st.get("Effect") not in ("Allow", "Deny"):
                raise CredentialsError(f"{at}.Effect must be Allow or Deny")
            statements.append(
                Statement(
                    allow=st["Effect"] == "Allow",
                    actions=_strings(st.get("Action"), f"{at}.Action"),
                    resources=_strings(st.get("Resource", "*"), f"{at}.Resource"),
                )
            )
        keys[str(key_id)] = Key(str(key_id), spec["secret"], tuple(statements))
    return keys


@dataclass(frozen=True)
class SignedRequest:
    """What a signature covers: the request as it arrived."""

    method: str
    path: str
    query: list[tuple[str, str]]
    headers: Mapping[str, str]  # case-insensitive lookup expected (lower-case names)
    body: bytes


def _uri(value: str) -> str:
    return quote(value, safe="-_.~")


def canonical_request(req: SignedRequest, signed_headers: list[str]) -> str:
    query = "&".join(f"{_uri(k)}={_uri(v)}" for k, v in sorted(req.query))
    headers = "".join(
        f"{h}:{' '.join(req.headers.get(h, '').strip().split())}\n" for h in signed_headers
    )
    payload = req.headers.get("x-amz-content-sha256") or hashlib.sha256(req.body).hexdigest()
    path = quote(req.path or "/", safe="/-_.~")
    return "\n".join([req.method, path, query, headers, ";".join(signed_headers), payload])


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def signature(secret: str, amz_date: str, scope: str, canonical: str) -> str:
    date, region, service, terminal = scope.split("/")
    key = _hmac(("AWS4" + secret).encode(), date)
    key = _hmac(_hmac(_hmac(key, region), service), terminal)
    to_sign = "\n".join(
        [ALGORITHM, amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


def verify(req: SignedRequest, keys: Mapping[str, Key], now: float) -> Key:
    """The key that signed `req`, or the service's error: MissingAuthenticationToken,
    IncompleteSignature, InvalidClientTokenId, SignatureDoesNotMatch, RequestExpired."""
    auth = req.headers.get("authorization")
    if not auth:
        raise ApiError("MissingAuthenticationToken", "Request is missing Authentication Token")
    cred, signed, sig = _CRED.search(auth), _SIGNED.search(auth), _SIG.search(auth)
    if not auth.startswith(ALGORITHM) or not (cred and signed and sig):
        raise ApiError(
            "IncompleteSignature",
            f"Authorization header requires {ALGORITHM} with "
            "Credential, SignedHeaders and Signature",
        )
    parts = cred.group(1).split("/")
    if len(parts) != 5 or parts[4] != "aws4_request":
        raise ApiError(
            "IncompleteSignature", "Credential must be KEY/date/region/service/aws4_request"
        )
    key = keys.get(parts[0])
    if key is None:
        raise ApiError(
            "InvalidClientTokenId", "The security token included in the request is invalid."
        )
    amz_date = req.headers.get("x-amz-date", "")
    try:
        when = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        raise ApiError("IncompleteSignature", "X-Amz-Date is missing or malformed") from None
    if abs(now - when) > MAX_SKEW_S:
        raise ApiError("RequestExpired", f"Request has expired: X-Amz-Date {amz_date}")
    signed_headers = signed.group(1).split(";")
    if "host" not in signed_headers:
        raise ApiError("IncompleteSignature", "SignedHeaders must include host")
    expected = signature(
        key.secret, amz_date, "/".join(parts[1:]), canonical_request(req, signed_headers)
    )
    if not hmac.compare_digest(expected, sig.group(1).lower()):
        raise ApiError(
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided.",
        )
    return key


def claimed_key(header: str) -> str | None:
    """The access key id an Authorization header claims (unverified)."""
    m = _CRED.search(header)
    return m.group(1).split("/")[0] if m else None


REDACTED = "*** redacted ***"
_SECRET = re.compile(r"(AuthToken|Password|Secret)", re.IGNORECASE)


def redact(fields: Mapping[str, str]) -> dict[str, str]:
    """Request parameters for the audit log: secrets replaced, signing fields left out."""
    return {
        k: (REDACTED if _SECRET.search(k) else v)
        for k, v in fields.items()
        if not k.startswith("X-Amz-")
    }
