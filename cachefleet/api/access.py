"""The server's access control and audit log, around the pure rules of ``auth``.

``<state-dir>/credentials.yaml`` is re-read when it changes; without it every request is
accepted (local development, said at start). Every call is appended to
``<state-dir>/audit.jsonl``: time, action, parameters (secrets redacted), access key id,
source address, request id, outcome and error code.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from cachefleet.api import auth
from cachefleet.api.names import Account
from cachefleet.api.wire import ApiError
from cachefleet.events import EventTail, append_event

CREDENTIALS_FILE = "credentials.yaml"
AUDIT_FILE = "audit.jsonl"


class Access:
    def __init__(self, home: Path) -> None:
        self.path = home / CREDENTIALS_FILE
        self.audit_path = home / AUDIT_FILE
        self._stamp: float | None = None
        self._keys: dict[str, auth.Key] | None = None

    def keys(self) -> dict[str, auth.Key] | None:
        """The keys of credentials.yaml (None when there is no file); reloaded when the file
        changes. A file that does not parse raises CredentialsError: nothing is accepted on
        a broken policy."""
        try:
            stamp = self.path.stat().st_mtime
        except FileNotFoundError:
            self._stamp, self._keys = None, None
            return None
        if stamp != self._stamp:
            try:
                data = yaml.safe_load(self.path.read_text())
            except yaml.YAMLError as exc:
                raise auth.CredentialsError(f"{self.path}: invalid YAML: {exc}") from None
            self._keys = auth.parse_credentials(data)
            self._stamp = stamp
        return self._keys

    def check(self, req: auth.SignedRequest, action: str, resource: str, now: float) -> str | None:
        """The access key id that signed the request (None in open mode), or the error."""
        try:
            keys = self.keys()
        except auth.CredentialsError as exc:
            raise ApiError("InternalFailure", f"credentials.yaml is invalid: {exc}") from None
        if keys is None:
            return auth.claimed_key(req.headers.get("authorization", ""))
        key = auth.verify(req, keys, now)
        if not key.allowed(action, resource):
            raise ApiError(
                "AccessDenied",
                f"User: {key.access_key_id} is not authorized to perform: "
                f"elasticache:{action} on resource: {resource}",
            )
        return key.access_key_id

    def audit(self, record: Mapping[str, Any]) -> None:
        append_event(self.audit_path, dict(record))


def resource_of(action: str, fields: Mapping[str, str], account: Account) -> str:
    """The ARN a request acts on, for the policy; ``*`` when it names none."""
    if "ResourceName" in fields:
        return fields["ResourceName"]
    if fields.get("ReplicationGroupId"):
        return account.arn("replicationgroup", fields["ReplicationGroupId"].lower())
    if fields.get("CacheClusterId"):
        return account.arn("cluster", fields["CacheClusterId"].lower())
    return "*"


def audit_line(record: Mapping[str, Any]) -> str:
    """One audit record for a terminal."""
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(float(record.get("ts", 0))))
    outcome = record.get("outcome", "?")
    if record.get("error_code"):
        outcome = f"{outcome} {record['error_code']}"
    params = json.dumps(record.get("params", {}), separators=(",", ":"))
    return (
        f"{ts}Z {record.get('action', '?'):<28} {outcome:<30} "
        f"key={record.get('access_key_id') or '-'} from={record.get('source') or '-'} {params}"
    )


def follow_audit(
    path: Path, *, follow: bool, as_json: bool, out: Callable[[str], None], poll_s: float = 0.2
) -> int:
    """Print the audit log; with `follow`, keep printing new records until interrupted."""
    tail = EventTail(path)
    try:
        while True:
            for record in tail.read():
                out(json.dumps(record) if as_json else audit_line(record))
            if not follow:
                return 0
            time.sleep(poll_s)
    except KeyboardInterrupt:
        return 0
