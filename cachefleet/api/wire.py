"""The Query API's wire format, pure: form parameters in, XML documents out.

A request is a flat map of form fields (``Action``, ``Version``, ``Tags.Tag.1.Key`` …) read
through :class:`Params`, which parses each field once into its type and raises
:class:`ApiError` with the service's code for anything malformed. Responses are the
service's ``<ActionResponse>`` documents in its namespace; errors its ``<ErrorResponse>``
envelope with the HTTP status the service uses for that code.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


def escape(text: str) -> str:
    """Character data for an XML element: what xml.sax.saxutils.escape does, without its
    import of urllib (every CLI command loads this module to build its parser)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


API_VERSION = "2015-02-02"
NAMESPACE = f"http://elasticache.amazonaws.com/doc/{API_VERSION}/"
MIN_MAX_RECORDS, MAX_MAX_RECORDS = 20, 100

#: Error code -> HTTP status, as the service answers them.
STATUS: dict[str, int] = {
    "ReplicationGroupNotFoundFault": 404,
    "ReplicationGroupAlreadyExists": 400,
    "InvalidReplicationGroupState": 400,
    "CacheClusterNotFound": 404,
    "CacheClusterAlreadyExists": 400,
    "InvalidCacheClusterState": 400,
    "NodeGroupNotFoundFault": 404,
    "CacheParameterGroupNotFound": 404,
    "SnapshotNotFoundFault": 404,
    "SnapshotAlreadyExistsFault": 400,
    "InvalidSnapshotState": 400,
    "TestFailoverNotAvailableFault": 400,
    "InvalidParameterValue": 400,
    "InvalidParameterCombination": 400,
    "MissingParameter": 400,
    "InvalidARN": 400,
    "TagNotFound": 404,
    "TagQuotaPerResourceExceeded": 400,
    "InvalidAction": 400,
    "MissingAction": 400,
    "MalformedQueryString": 404,
    "AccessDenied": 403,
    "InvalidClientTokenId": 403,
    "SignatureDoesNotMatch": 403,
    "IncompleteSignature": 400,
    "MissingAuthenticationToken": 403,
    "RequestExpired": 400,
    "InternalFailure": 500,
}


class ApiError(Exception):
    """An error answered to the client: the service's code, a message, its HTTP status."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")

    @property
    def status(self) -> int:
        return STATUS.get(self.code, 400)

    @property
    def sender_fault(self) -> bool:
        return self.status < 500


@dataclass(frozen=True)
class XmlList:
    """A list in a response: each item is wrapped in an element named `member`."""

    member: str
    items: Sequence[Any]


def timestamp(ts: float) -> str:
    """The service's timestamps: ISO 8601 in UTC with milliseconds."""
    when = datetime.fromtimestamp(ts, UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return escape(str(value))


def _render(name: str, value: Any, out: list[str]) -> None:
    if value is None:
        return
    if isinstance(value, XmlList):
        out.append(f"<{name}>")
        for item in value.items:
            _render(value.member, item, out)
        out.append(f"</{name}>")
    elif isinstance(value, Mapping):
        out.append(f"<{name}>")
        for key, sub in value.items():
            _render(key, sub, out)
        out.append(f"</{name}>")
    else:
        out.append(f"<{name}>{_value(value)}</{name}>")


def render_response(action: str, result: Mapping[str, Any] | None, request_id: str) -> str:
    """``<ActionResponse><ActionResult>…</ActionResult><ResponseMetadata>…``; a None result
    (actions that return nothing) leaves the Result element out."""
    out = [f'<?xml version="1.0" encoding="UTF-8"?>\n<{action}Response xmlns="{NAMESPACE}">']
    if result is not None:
        _render(f"{action}Result", result, out)
    out.append(f"<ResponseMetadata><RequestId>{escape(request_id)}</RequestId></ResponseMetadata>")
    out.append(f"</{action}Response>")
    return "".join(out)


def render_error(error: ApiError, request_id: str) -> str:
    kind = "Sender" if error.sender_fault else "Receiver"
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<ErrorResponse xmlns="{NAMESPACE}">'
        f"<Error><Type>{kind}</Type><Code>{escape(error.code)}</Code>"
        f"<Message>{escape(error.message)}</Message></Error>"
        f"<RequestId>{escape(request_id)}</RequestId></ErrorResponse>"
    )


_TRUE, _FALSE = ("true", "1"), ("false", "0")


class Params:
    """The form fields of one request, read by name with the service's member conventions
    (``Name.member.N``, ``Name.Tag.N.Key``). Every getter marks the fields it read, so
    :meth:`unread` names what the request carried that the action does not take."""

    def __init__(self, fields: Mapping[str, str]) -> None:
        self.fields = dict(fields)
        self.read: set[str] = {"Action", "Version"}

    def _get(self, name: str) -> str | None:
        self.read.add(name)
        return self.fields.get(name)

    def string(self, name: str, *, required: bool = False) -> str | None:
        value = self._get(name)
        if value is None and required:
            raise ApiError("MissingParameter", f"The request must contain the parameter {name}")
        return value

    def required(self, name: str) -> str:
        value = self.string(name, required=True)
        assert value is not None
        return value

    def integer(self, name: str, *, lo: int | None = None, hi: int | None = None) -> int | None:
        raw = self._get(name)
        if raw is None:
            return None
        try:
            value = int(raw)
        except ValueError:
            raise ApiError("InvalidParameterValue", f"{name}: {raw!r} is not an integer") from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            bounds = f"{lo if lo is not None else '-inf'}..{hi if hi is not None else 'inf'}"
            raise ApiError(
                "InvalidParameterValue", f"{name}: {value} is out of the allowed range {bounds}"
            )
        return value

    def boolean(self, name: str) -> bool | None:
        raw = self._get(name)
        if raw is None:
            return None
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise ApiError("InvalidParameterValue", f"{name}: {raw!r} is not a boolean")

    def time(self, name: str) -> float | None:
        """A timestamp parameter (ISO 8601, or seconds since the epoch) as a Unix time."""
        raw = self._get(name)
        if raw is None:
            return None
        try:
            return float(raw)
        except ValueError:
            pass
        try:
            text = raw[:-1] + "+00:00" if raw.endswith("Z") else raw
            when = datetime.fromisoformat(text)
        except ValueError:
            raise ApiError("InvalidParameterValue", f"{name}: {raw!r} is not a time") from None
        return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()

    def _indexed(self, prefix: str) -> list[int]:
        """The 1-based indexes N present under ``prefix.N`` (in order, gaps allowed)."""
        found: set[int] = set()
        for key in self.fields:
            if key.startswith(prefix + "."):
                head = key[len(prefix) + 1 :].split(".", 1)[0]
                if head.isdigit():
                    found.add(int(head))
                    self.read.add(key)
        return sorted(found)

    def strings(self, name: str, member: str = "member") -> list[str]:
        """``Name.member.1``, ``Name.member.2`` … (the member element's name varies)."""
        self.read.add(name)  # an empty list is sent as the bare name
        prefix = f"{name}.{member}"
        return [self.fields[f"{prefix}.{i}"] for i in self._indexed(prefix)]

    def structs(self, name: str, member: str) -> list[Params]:
        """A list of structures: ``Name.Member.N.Field`` -> one Params per N."""
        self.read.add(name)
        prefix = f"{name}.{member}"
        out = []
        for i in self._indexed(prefix):
            head = f"{prefix}.{i}."
            out.append(
                Params({k[len(head) :]: v for k, v in self.fields.items() if k.startswith(head)})
            )
        return out

    def unread(self) -> list[str]:
        """Fields present and never read, minus the signing fields of a query-string request."""
        signing = {"X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires"}
        signing |= {"X-Amz-SignedHeaders", "X-Amz-Signature", "X-Amz-Security-Token"}
        return sorted(k for k in self.fields if k not in self.read and k not in signing)


def page(
    items: Sequence[Any],
    marker: str | None,
    max_records: int | None,
    most: int = MAX_MAX_RECORDS,
) -> tuple[list[Any], str | None]:
    """One page of `items` from `marker` (an opaque token this function made) and the marker
    of the next page, or None on the last. MaxRecords is 20..`most` (default `most`: 100,
    50 for snapshots), as the service allows."""
    size = most if max_records is None else max_records
    if not MIN_MAX_RECORDS <= size <= most:
        raise ApiError(
            "InvalidParameterValue",
            f"MaxRecords: {size} is out of the allowed range {MIN_MAX_RECORDS}..{most}",
        )
    start = decode_marker(marker) if marker else 0
    end = start + size
    return list(items[start:end]), (encode_marker(end) if end < len(items) else None)


def encode_marker(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"o": offset}).encode()).decode()


def decode_marker(marker: str) -> int:
    try:
        data = json.loads(base64.urlsafe_b64decode(marker.encode()))
        offset = data["o"]
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise ApiError(
            "InvalidParameterValue", f"Marker: {marker!r} is not a valid marker"
        ) from None
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ApiError("InvalidParameterValue", f"Marker: {marker!r} is not a valid marker")
    return offset
