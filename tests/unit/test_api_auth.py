"""Access control without sockets: requests signed by botocore's own SigV4 signer are
verified (or refused with the service's codes), IAM-style policies, audit redaction."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from cachefleet.api import auth
from cachefleet.api.access import resource_of
from cachefleet.api.names import Account
from cachefleet.api.wire import ApiError

POLICY: dict[str, Any] = {
    "keys": {
        "AKIDREADER": {
            "secret": "reader-secret",
            "policy": {
                "Statement": [
                    {"Effect": "Allow", "Action": ["elasticache:Describe*"], "Resource": "*"}
                ]
            },
        },
        "AKIDOPS": {
            "secret": "ops-secret",
            "policy": {
                "Statement": [
                    {"Effect": "Allow", "Action": "elasticache:*", "Resource": "*"},
                    {
                        "Effect": "Deny",
                        "Action": "elasticache:DeleteReplicationGroup",
                        "Resource": "arn:aws:elasticache:*:*:replicationgroup:prod-*",
                    },
                ]
            },
        },
    }
}
KEYS = auth.parse_credentials(POLICY)
BODY = b"Action=DescribeReplicationGroups&Version=2015-02-02"


def signed(
    key: str, secret: str, body: bytes = BODY, url: str = "http://127.0.0.1:9470/"
) -> auth.SignedRequest:
    req = AWSRequest(
        method="POST",
        url=url,
        data=body,
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
    )
    SigV4Auth(Credentials(key, secret), "elasticache", "us-east-1").add_auth(req)
    parts = urlsplit(url)
    headers = {k.lower(): v for k, v in req.headers.items()}
    headers["host"] = parts.netloc
    query = parse_qsl(parts.query, keep_blank_values=True)  # decoded, as the server reads it
    return auth.SignedRequest("POST", parts.path or "/", query, headers, body)


def test_a_request_signed_by_botocore_verifies() -> None:
    assert (
        auth.verify(signed("AKIDOPS", "ops-secret"), KEYS, time.time()).access_key_id == "AKIDOPS"
    )


def test_query_parameters_are_part_of_the_signature() -> None:
    req = signed("AKIDOPS", "ops-secret", url="http://127.0.0.1:9470/?Marker=a%2Fb&Z=1")
    assert auth.verify(req, KEYS, time.time()).access_key_id == "AKIDOPS"


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        (lambda: signed("AKIDOPS", "wrong-secret"), "SignatureDoesNotMatch"),
        (lambda: signed("AKIDNOBODY", "x"), "InvalidClientTokenId"),
        (
            lambda: auth.SignedRequest(
                "POST", "/", [], {**signed("AKIDOPS", "ops-secret").headers}, BODY + b"&x=1"
            ),
            "SignatureDoesNotMatch",
        ),
        (lambda: auth.SignedRequest("POST", "/", [], {}, BODY), "MissingAuthenticationToken"),
        (
            lambda: auth.SignedRequest("POST", "/", [], {"authorization": "Basic abc"}, BODY),
            "IncompleteSignature",
        ),
    ],
)
def test_bad_signatures_get_the_services_codes(request_: Any, code: str) -> None:
    with pytest.raises(ApiError) as err:
        auth.verify(request_(), KEYS, time.time())
    assert err.value.code == code


def test_an_old_signature_has_expired() -> None:
    with pytest.raises(ApiError) as err:
        auth.verify(signed("AKIDOPS", "ops-secret"), KEYS, time.time() + 3600)
    assert err.value.code == "RequestExpired"


@pytest.mark.parametrize(
    ("key", "action", "resource", "allowed"),
    [
        ("AKIDREADER", "DescribeReplicationGroups", "*", True),
        ("AKIDREADER", "DescribeEvents", "*", True),
        ("AKIDREADER", "CreateReplicationGroup", "*", False),  # no Allow matches
        ("AKIDOPS", "CreateReplicationGroup", "*", True),
        ("AKIDOPS", "DeleteReplicationGroup", "arn:aws:elasticache:r:1:replicationgroup:dev", True),
        (
            "AKIDOPS",
            "DeleteReplicationGroup",
            "arn:aws:elasticache:r:1:replicationgroup:prod-a",
            False,
        ),
    ],
)
def test_explicit_deny_wins_and_an_allow_is_needed(
    key: str, action: str, resource: str, allowed: bool
) -> None:
    assert KEYS[key].allowed(action, resource) is allowed


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({}, "keys"),
        ({"keys": {"A": {}}}, "keys.A.secret"),
        (
            {"keys": {"A": {"secret": "s", "policy": {"Statement": [{"Effect": "Maybe"}]}}}},
            "Effect",
        ),
        (
            {"keys": {"A": {"secret": "s", "policy": {"Statement": [{"Effect": "Allow"}]}}}},
            "Action",
        ),
    ],
)
def test_a_bad_credentials_file_names_the_field(data: Any, words: str) -> None:
    with pytest.raises(auth.CredentialsError, match=words):
        auth.parse_credentials(data)


def test_the_resource_a_request_names() -> None:
    acct = Account()
    assert resource_of("TestFailover", {"ReplicationGroupId": "Shop"}, acct).endswith(
        ":replicationgroup:shop"
    )
    assert resource_of("ListTagsForResource", {"ResourceName": "arn:x"}, acct) == "arn:x"
    assert resource_of("DescribeEvents", {}, acct) == "*"


def test_secrets_are_redacted_for_the_audit_log() -> None:
    fields = {"ReplicationGroupId": "s", "AuthToken": "hunter2hunter2", "X-Amz-Signature": "ab"}
    assert auth.redact(fields) == {"ReplicationGroupId": "s", "AuthToken": auth.REDACTED}
