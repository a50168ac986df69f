"""The Query API's wire format, without sockets: parameters, XML read back by botocore's own
parser (what boto3 and awscli run), the error envelope, pagination markers, names."""

from __future__ import annotations

from typing import Any

import botocore.session
import pytest
from botocore.parsers import QueryParser

from cachefleet.api import wire
from cachefleet.api.names import Account, group_id, node_group_id, node_memory, node_size, shard_of
from cachefleet.api.wire import ApiError, Params, XmlList

MODEL = botocore.session.get_session().get_service_model("elasticache")


def parse(action: str, body: str, status: int = 200) -> dict[str, Any]:
    """What a botocore client makes of a response body."""
    shape = MODEL.operation_model(action).output_shape
    response = {"body": body.encode(), "status_code": status, "headers": {}}
    return QueryParser().parse(response, shape)


def test_a_response_is_read_by_botocore_with_lists_and_request_id() -> None:
    result = {
        "Marker": "next",
        "ReplicationGroups": XmlList(
            "ReplicationGroup",
            [
                {
                    "ReplicationGroupId": "shop",
                    "MemberClusters": XmlList("ClusterId", ["shop-0001-001", "shop-0001-002"]),
                    "NodeGroups": XmlList(
                        "NodeGroup",
                        [{"NodeGroupId": "0001", "PrimaryEndpoint": {"Address": "a", "Port": 7}}],
                    ),
                    "ClusterEnabled": True,
                    "ConfigurationEndpoint": None,
                }
            ],
        ),
    }
    body = wire.render_response("DescribeReplicationGroups", result, "rid-1")
    assert f'xmlns="{wire.NAMESPACE}"' in body
    got = parse("DescribeReplicationGroups", body)
    assert got["ResponseMetadata"]["RequestId"] == "rid-1"
    assert got["Marker"] == "next"
    group = got["ReplicationGroups"][0]
    assert group["MemberClusters"] == ["shop-0001-001", "shop-0001-002"]
    assert group["NodeGroups"][0]["PrimaryEndpoint"] == {"Address": "a", "Port": 7}
    assert group["ClusterEnabled"] is True
    assert "ConfigurationEndpoint" not in group  # None leaves the element out


def test_text_is_escaped() -> None:
    body = wire.render_response(
        "ListTagsForResource", {"TagList": XmlList("Tag", [{"Key": "a<b", "Value": "&"}])}, "r"
    )
    assert parse("ListTagsForResource", body)["TagList"] == [{"Key": "a<b", "Value": "&"}]


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        ("ReplicationGroupNotFoundFault", 404, "Sender"),
        ("ReplicationGroupAlreadyExists", 400, "Sender"),
        ("InvalidParameterCombination", 400, "Sender"),
        ("CacheClusterNotFound", 404, "Sender"),
        ("AccessDenied", 403, "Sender"),
        ("InternalFailure", 500, "Receiver"),
    ],
)
def test_the_error_envelope_carries_code_status_and_request_id(
    code: str, status: int, kind: str
) -> None:
    error = ApiError(code, "it <failed>")
    assert error.status == status
    body = wire.render_error(error, "rid-9")
    assert f"<Type>{kind}</Type>" in body
    got = QueryParser().parse({"body": body.encode(), "status_code": status, "headers": {}}, None)
    assert got["Error"]["Code"] == code
    assert got["Error"]["Message"] == "it <failed>"
    assert got["ResponseMetadata"]["RequestId"] == "rid-9"


def test_params_read_members_structures_and_types() -> None:
    p = Params(
        {
            "Action": "CreateReplicationGroup",
            "NumNodeGroups": "3",
            "AutomaticFailoverEnabled": "true",
            "PreferredCacheClusterAZs.AvailabilityZone.2": "b",
            "PreferredCacheClusterAZs.AvailabilityZone.1": "a",
            "Tags.Tag.1.Key": "team",
            "Tags.Tag.1.Value": "x",
            "Tags.Tag.2.Key": "env",
            "StartTime": "2026-01-02T03:04:05Z",
            "Stray": "1",
        }
    )
    assert p.integer("NumNodeGroups", lo=1, hi=500) == 3
    assert p.boolean("AutomaticFailoverEnabled") is True
    assert p.strings("PreferredCacheClusterAZs", "AvailabilityZone") == ["a", "b"]
    tags = p.structs("Tags", "Tag")
    assert [t.fields for t in tags] == [{"Key": "team", "Value": "x"}, {"Key": "env"}]
    assert p.time("StartTime") == 1767323045.0
    assert p.unread() == ["Stray"]


@pytest.mark.parametrize(
    ("fields", "call", "code"),
    [
        ({}, lambda p: p.required("ReplicationGroupId"), "MissingParameter"),
        ({"N": "x"}, lambda p: p.integer("N"), "InvalidParameterValue"),
        ({"N": "7"}, lambda p: p.integer("N", lo=0, hi=5), "InvalidParameterValue"),
        ({"B": "yes"}, lambda p: p.boolean("B"), "InvalidParameterValue"),
        ({"T": "yesterday"}, lambda p: p.time("T"), "InvalidParameterValue"),
    ],
)
def test_bad_parameters_are_the_services_errors(
    fields: dict[str, str], call: Any, code: str
) -> None:
    with pytest.raises(ApiError) as err:
        call(Params(fields))
    assert err.value.code == code


def test_pages_follow_markers_to_the_end() -> None:
    items = list(range(45))
    seen: list[int] = []
    marker: str | None = None
    pages = 0
    while True:
        chunk, marker = wire.page(items, marker, 20)
        seen += chunk
        pages += 1
        if marker is None:
            break
    assert seen == items and pages == 3
    assert wire.page(items, None, None) == (items, None)  # default 100


@pytest.mark.parametrize("bad", [19, 101])
def test_max_records_is_20_to_100(bad: int) -> None:
    with pytest.raises(ApiError, match="MaxRecords"):
        wire.page([1], None, bad)


@pytest.mark.parametrize("marker", ["garbage!", wire.encode_marker(-1), "e30="])
def test_a_forged_marker_is_invalid(marker: str) -> None:
    with pytest.raises(ApiError) as err:
        wire.page([1, 2], marker, 20)
    assert err.value.code == "InvalidParameterValue"


def test_node_types_real_names_and_short_names() -> None:
    assert node_size("cache.t4g.micro") == "cache.micro"
    assert node_size("cache.m7g.large") == "cache.large"
    assert node_size("cache.small") == "cache.small"
    assert node_memory("cache.t4g.micro") < node_memory("cache.t4g.small")
    assert node_memory("cache.t4g.small") < node_memory("cache.t4g.medium")
    assert node_memory("cache.t4g.medium") < node_memory("cache.m7g.large")
    with pytest.raises(ApiError, match=r"cache\.x9\.huge"):
        node_size("cache.x9.huge")


@pytest.mark.parametrize("raw", ["Shop", "a-b-1"])
def test_group_ids_are_lower_cased(raw: str) -> None:
    assert group_id(raw) == raw.lower()


@pytest.mark.parametrize("raw", ["1shop", "a--b", "shop-", "x" * 41, "sh_op", ""])
def test_bad_group_ids(raw: str) -> None:
    with pytest.raises(ApiError):
        group_id(raw)


def test_node_group_ids_are_four_digits() -> None:
    assert node_group_id(2) == "0002"
    assert shard_of("0002") == 2 and shard_of("2") == 2
    for bad in ("0000", "x1", "12345"):
        with pytest.raises(ApiError):
            shard_of(bad)


def test_arns_use_the_configured_region_and_account() -> None:
    acct = Account(region="eu-west-3", account="123456789012")
    arn = acct.arn("replicationgroup", "shop")
    assert arn == "arn:aws:elasticache:eu-west-3:123456789012:replicationgroup:shop"
    assert acct.parse_arn(arn) == ("replicationgroup", "shop")
    for bad in ("shop", "arn:aws:s3:::b", Account().arn("replicationgroup", "shop")):
        with pytest.raises(ApiError) as err:
            acct.parse_arn(bad)
        assert err.value.code == "InvalidARN"
