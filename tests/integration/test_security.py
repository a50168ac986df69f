"""Security against real clusters: the AUTH token and its online rotation under load, users
with access strings (NOPERM through the router exactly as from the engine), the commands no
client may run, and secrets kept out of `status`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import redis
import yaml
from helpers import RunningCluster, assert_all_gone, base_topology, cli, wait_for
from redis.cluster import RedisCluster

from cachefleet.ops import firewall
from cachefleet.ops.certs import served_serial
from cachefleet.proc import live_processes
from cachefleet.slots import key_slot
from cachefleet.state import ClusterDir
from cachefleet.tls import certificate_serial, engine_has_tls

pytestmark = pytest.mark.integration

TLS_ENGINE = shutil.which("redis-server")
needs_tls_engine = pytest.mark.skipif(
    TLS_ENGINE is None or not engine_has_tls(TLS_ENGINE),
    reason="needs an engine built with TLS (Debian's redis-server)",
)


TOKEN_A = "tokenA-0123456789abcdef"
TOKEN_B = "tokenB-fedcba9876543210"
APP_PW = "app-password-0123456789"


def secured(tmp_path: Path, cluster_factory: Any, **overrides: Any) -> RunningCluster:
    (tmp_path / "token").write_text(TOKEN_A + "\n")
    (tmp_path / "app.pw").write_text(APP_PW + "\n")
    security = {
        "auth_token_file": "token",
        "users": [
            {
                "name": "app",
                "password_files": ["app.pw"],
                "access": "on ~app:* &* +@all -@dangerous",
            }
        ],
    }
    overrides.setdefault("shards", 2)
    c: RunningCluster = cluster_factory(security=security, **overrides)
    return c


def auth_change(c: RunningCluster, token_file: Path, strategy: str) -> str:
    out = cli(
        "auth", c.name, "--token-file", str(token_file), "--strategy", strategy,
        "--state-dir", str(c.state_dir),
    )  # fmt: skip
    return out.stdout


def accepts(host: str, port: int, password: str, username: str | None = None) -> bool:
    r = redis.Redis(host=host, port=port, username=username, password=password, socket_timeout=5)
    try:
        return bool(r.ping())
    except redis.AuthenticationError:
        return False
    finally:
        r.close()


def addresses(c: RunningCluster) -> list[tuple[str, int]]:
    return [c.router, *((n.host, n.port) for n in c.plan.nodes)]


def test_token_rotation_under_load_fails_no_request(tmp_path: Path, cluster_factory: Any) -> None:
    c = secured(tmp_path, cluster_factory)
    host, port = c.router
    current = {"token": TOKEN_A}
    stop = threading.Event()
    done: list[int] = []
    failures: list[str] = []

    def router_worker(w: int) -> None:
        """A client of the router that reconnects every 50 requests with the token it
        currently holds (each new connection authenticates)."""
        n = 0
        while not stop.is_set():
            r = redis.Redis(host=host, port=port, password=current["token"], socket_timeout=10)
            try:
                for _ in range(50):
                    key = f"k{w}:{n % 100}"
                    r.set(key, n)
                    if r.get(key) != str(n).encode():
                        failures.append(f"router read of {key}")
                    n += 1
            except redis.RedisError as exc:
                failures.append(f"router: {exc!r}")
            finally:
                r.close()
        done.append(n)

    def cluster_worker() -> None:
        """A cluster-aware client (bootstraps at the router, then talks to the nodes)."""
        n = 0
        while not stop.is_set():
            rc = RedisCluster(host=host, port=port, password=current["token"], socket_timeout=10)
            try:
                for _ in range(100):
                    rc.set(f"{{d{n % 7}}}:x", n)
                    n += 1
            except redis.RedisError as exc:
                failures.append(f"cluster client: {exc!r}")
            finally:
                rc.close()
        done.append(n)

    threads = [threading.Thread(target=router_worker, args=(w,)) for w in range(3)]
    threads.append(threading.Thread(target=cluster_worker))
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        (tmp_path / "token.b").write_text(TOKEN_B + "\n")
        assert "old and the new token" in auth_change(c, tmp_path / "token.b", "rotate")
        for h, p in addresses(c):
            assert accepts(h, p, TOKEN_A) and accepts(h, p, TOKEN_B), (h, p)
        time.sleep(0.5)
        current["token"] = TOKEN_B  # clients move to the new token
        time.sleep(1.0)
        assert "only the new token" in auth_change(c, tmp_path / "token.b", "set")
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not failures, failures[:5]
    assert len(done) == 4 and sum(done) > 500, done
    for h, p in addresses(c):
        assert accepts(h, p, TOKEN_B) and not accepts(h, p, TOKEN_A), (h, p)

    # A node started later (the agent restarts a killed replica) takes the current token.
    replica = next(n for n in c.plan.nodes if n.member == 1)
    pid = int(c.cdir.pid_file(f"node.{replica.name}").read_text())
    os.kill(pid, signal.SIGKILL)

    def restarted() -> bool:
        try:
            new_pid = int(c.cdir.pid_file(f"node.{replica.name}").read_text())
            return new_pid != pid and accepts(replica.host, replica.port, TOKEN_B)
        except (OSError, ValueError, redis.ConnectionError):
            return False

    wait_for(restarted, 30, "the killed replica back with the new token")
    assert not accepts(replica.host, replica.port, TOKEN_A)


def engine_error(call: Any) -> str:
    try:
        call()
    except redis.ResponseError as exc:
        return str(exc)
    return "no error"


def test_users_get_the_engines_noperm_through_the_router(
    tmp_path: Path, cluster_factory: Any
) -> None:
    c = secured(tmp_path, cluster_factory)
    host, port = c.router
    status = c.status()
    shard = status["shards"][0]
    node_host, node_port = shard["primary"]["address"].rsplit(":", 1)

    via_router = redis.Redis(host=host, port=port, username="app", password=APP_PW)
    # a key of the first shard, so the direct client below holds it too
    key = next(f"other:{i}" for i in range(1000) if _in(status, 0, f"other:{i}"))
    direct = redis.Redis(host=node_host, port=int(node_port), username="app", password=APP_PW)
    assert via_router.set("app:1", "v") and via_router.get("app:1") == b"v"
    router_err = engine_error(lambda: via_router.set(key, "v"))
    direct_err = engine_error(lambda: direct.set(key, "v"))
    assert router_err == direct_err and "No permissions to access a key" in router_err
    assert "no permissions to run the 'flushall'" in engine_error(via_router.flushall)
    assert engine_error(via_router.flushall) == engine_error(direct.flushall)

    # unauthenticated: the engine's NOAUTH, from the router and from a node alike
    raw_router = redis.Redis(host=host, port=port, protocol=2)
    raw_node = redis.Redis(host=node_host, port=int(node_port), protocol=2)
    for r in (raw_router, raw_node):
        with pytest.raises(redis.AuthenticationError):
            r.get("app:1")
    # HELLO 3 AUTH user pass authenticates, as with the engine
    r3 = redis.Redis(host=host, port=port, protocol=3, username="app", password=APP_PW)
    assert r3.get("app:1") == b"v"
    # commands run on the engines as the client's own user
    token = redis.Redis(host=host, port=port, password=TOKEN_A)
    assert token.acl_whoami() == "default" and via_router.acl_whoami() == "app"

    # commands no client may run: refused by the engine itself to every declared user and
    # to the token's `default` user (direct connections, where no router filters)
    blocked: list[list[str]] = [
        ["CONFIG", "SET", "maxmemory", "1"],
        ["CONFIG", "REWRITE"],
        ["DEBUG", "SLEEP", "0"],
        ["SHUTDOWN", "NOSAVE"],
        ["MODULE", "LIST"],
        ["REPLICAOF", "NO", "ONE"],
        ["SLAVEOF", "NO", "ONE"],
        ["SYNC"],
        ["CLUSTER", "SETSLOT", "0", "STABLE"],
        ["CLUSTER", "RESET"],
        ["ACL", "SETUSER", "x"],
        ["ACL", "DELUSER", "x"],
        ["SAVE"],
        ["BGSAVE"],
        ["BGREWRITEAOF"],
        ["MIGRATE", "127.0.0.1", "1", "k", "0", "100"],
        ["MONITOR"],
    ]
    as_default = redis.Redis(host=node_host, port=int(node_port), password=TOKEN_A)
    for client in (direct, as_default):
        for command in blocked:
            text = engine_error(lambda: client.execute_command(*command)).lower()  # noqa: B023
            # DEBUG and MODULE are off for every connection (enable-*-command), before ACLs
            assert "no permissions" in text or "command not allowed" in text, (command, text)
    assert as_default.config_get("maxmemory")  # CONFIG GET stays allowed
    for r in (via_router, direct, raw_router, raw_node, r3, token, as_default):
        r.close()


def _in(status: dict[str, Any], shard_index: int, key: str) -> bool:
    slot = key_slot(key.encode())
    return any(a <= slot <= b for a, b in status["shards"][shard_index]["slots"])


def test_status_never_shows_a_secret_and_secret_files_are_private(
    tmp_path: Path, cluster_factory: Any
) -> None:
    c = secured(tmp_path, cluster_factory, shards=1, replicas_per_shard=0)
    outputs = [
        cli("status", c.name, "--json", "--state-dir", str(c.state_dir)).stdout,
        cli("status", c.name, "--state-dir", str(c.state_dir)).stdout,
        c.up_output,
        c.cdir.plan_path.read_text(),
    ]
    admin = c.cdir.admin().password
    sec = json.loads(outputs[0])["security"]
    assert sec == {"tls": False, "ca": None, "auth": True, "users": ["app"], "allowed_sources": []}
    assert "security: no TLS; AUTH required; users app" in outputs[1]
    assert "connect: redis-cli -c --askpass -h 127.0.0.1" in outputs[1]
    for text in outputs:
        for secret in (TOKEN_A, APP_PW, admin):
            assert secret not in text
    for path in (c.cdir.root / "secrets.json", c.cdir.admin_secret_path):
        assert path.stat().st_mode & 0o077 == 0, path
    for conf in c.cdir.root.glob("nodes/*/node.conf"):
        assert conf.stat().st_mode & 0o077 == 0, conf


def test_a_bad_token_file_is_refused_before_anything_starts(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("too short\n")
    topo = base_topology("badtoken", security={"auth_token_file": "token"})
    path = tmp_path / "badtoken.yaml"
    path.write_text(yaml.safe_dump(topo))
    out = cli("up", str(path), "--detach", "--state-dir", str(tmp_path / "state"), check=False)
    assert out.returncode == 2
    assert "security.auth_token_file" in out.stderr and "16-128" in out.stderr
    assert not (tmp_path / "state" / "badtoken").exists()


async def _bus_checks(c: RunningCluster) -> tuple[str, bool, bool]:
    """(why an anonymous client was refused, whether a sentinel's publish on an agent's
    topic arrived, whether its publish on its own topic arrived)."""
    plan = c.plan
    host, port = plan.bus_host, plan.bus_port
    roles = json.loads((c.cdir.root / "bus.secrets").read_text())
    refused = ""
    try:
        async with aiomqtt.Client(host, port, identifier="anonymous-test", timeout=5):
            pass
    except aiomqtt.MqttError as exc:
        refused = str(exc)
    agent_topic = f"cachefleet/{c.name}/nodes/forged-node/state"
    hello_topic = f"cachefleet/{c.name}/sentinels/s9/hello"
    got: set[str] = set()
    async with aiomqtt.Client(host, port, username="cli", password=roles["cli"]) as reader:
        await reader.subscribe(agent_topic, qos=1)
        await reader.subscribe(hello_topic, qos=1)
        async with aiomqtt.Client(
            host, port, username="sentinel", password=roles["sentinel"]
        ) as forger:
            await forger.publish(agent_topic, b'{"v":1}', qos=1)
            await forger.publish(hello_topic, b'{"v":1}', qos=1)

        async def collect() -> None:
            async for msg in reader.messages:
                got.add(str(msg.topic))
                if hello_topic in got:
                    await asyncio.sleep(0.5)  # the forged one, had it passed, came first
                    return

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(collect(), 5.0)
    return refused, agent_topic in got, hello_topic in got


def test_the_bus_admits_only_the_clusters_roles_each_on_its_own_topics(
    cluster_factory: Any,
) -> None:
    c: RunningCluster = cluster_factory(shards=1, replicas_per_shard=1)
    secrets_file = c.cdir.root / "bus.secrets"
    assert secrets_file.stat().st_mode & 0o077 == 0
    refused, forged_arrived, own_arrived = asyncio.run(_bus_checks(c))
    assert "Not authorized" in refused, refused
    assert not forged_arrived
    assert own_arrived
    # the cluster's own processes still talk over it: status sees every sentinel and router
    st = c.status()
    assert st["state"] == "available"
    assert all(s["online"] for s in st["sentinels"])


def _ping_from(source: str, router: tuple[str, int]) -> bytes:
    """PING the router from `source` (a loopback address): its reply, b"" when closed."""
    with socket.create_connection(router, timeout=5, source_address=(source, 0)) as sock:
        sock.sendall(b"*1\r\n$4\r\nPING\r\n")
        try:
            return sock.recv(64)
        except ConnectionResetError:
            return b""


def test_allowed_sources_refuse_another_loopback_address(cluster_factory: Any) -> None:
    c: RunningCluster = cluster_factory(
        shards=1, replicas_per_shard=1, security={"allowed_sources": ["127.0.0.1/32"]}
    )
    assert _ping_from("127.0.0.1", c.router) == b"+PONG\r\n"
    assert _ping_from("127.0.0.2", c.router) == b""
    assert _ping_from("127.0.0.1", c.router) == b"+PONG\r\n"  # the router serves on
    if firewall.available() is not None:
        assert "nodes rely on their zone address binding" in c.up_output
        return
    # as root: tagged iptables rules on the node ports refuse 127.0.0.2 too, while the
    # cluster's own addresses (replication between zones, the CLI) still get through
    assert "iptables rules on every node port" in c.up_output
    node = c.plan.nodes[0]
    assert _ping_from("127.0.0.1", (node.host, node.port)) == b"+PONG\r\n"
    with pytest.raises(OSError):
        _ping_from("127.0.0.2", (node.host, node.port))
    assert c.status()["state"] == "available"
    c.down()
    listed = subprocess.run(["iptables", "-S", "INPUT"], capture_output=True, text=True)
    assert firewall.tag(c.name) not in listed.stdout


def test_a_killed_primary_fails_over_with_auth_on(tmp_path: Path, cluster_factory: Any) -> None:
    """Sentinels probe and promote as the control plane's user; the router's per-user
    connections follow the new primary; the old primary returns as a replica that syncs
    (masteruser) and still takes only the token."""
    c = secured(tmp_path, cluster_factory)
    before = c.status()
    old = before["shards"][0]["primary"]
    replica = before["shards"][0]["replicas"][0]
    key = next(f"app:{i}" for i in range(1000) if _in(before, 0, f"app:{i}"))
    host, port = c.router
    app = redis.Redis(host=host, port=port, username="app", password=APP_PW, socket_timeout=10)
    assert app.set(key, "before")
    os.kill(int(c.cdir.pid_file(f"node.{old['name']}").read_text()), signal.SIGKILL)

    def new_primary() -> bool:
        shard = c.status()["shards"][0]
        return shard["primary"] is not None and shard["primary"]["name"] == replica["name"]

    wait_for(new_primary, 20, "the replica promoted")

    def writes() -> bool:
        try:
            return bool(app.set(key, "after"))
        except redis.RedisError:
            return False

    wait_for(writes, 20, "writes through the router as app")
    assert app.get(key) == b"after"
    assert "No permissions" in engine_error(lambda: app.set("other", "x"))

    def old_back_as_replica() -> bool:
        h, p = old["address"].rsplit(":", 1)
        r = redis.Redis(host=h, port=int(p), password=TOKEN_A, socket_timeout=5)
        try:
            rep = r.info("replication")
        except redis.RedisError:
            return False
        finally:
            r.close()
        return rep["role"] == "slave" and rep.get("master_link_status") == "up"

    wait_for(old_back_as_replica, 30, "the old primary back as a linked replica")
    h, p = old["address"].rsplit(":", 1)
    assert not accepts(h, int(p), "not-the-token-0123456789")
    app.close()


@pytest.mark.parametrize("tls", [False, pytest.param(True, marks=needs_tls_engine)])
def test_kill_primary_chaos_passes_with_auth_on(tmp_path: Path, tls: bool) -> None:
    """The kill-primary scenario on a secured cluster: the workload's clients (a cluster
    client bootstrapped at the router, then the nodes) log in with the token, over TLS
    where the cluster speaks it."""
    (tmp_path / "token").write_text(TOKEN_A + "\n")
    security = {"auth_token_file": "token", "tls": tls}
    topo = base_topology("chaosauth", security=security, engine="redis" if tls else "valkey")
    topo_path = tmp_path / "chaosauth.yaml"
    topo_path.write_text(yaml.safe_dump(topo))
    scenario = {
        "name": "kill-primary-auth",
        "topology": str(topo_path),
        "trials": 1,
        "seed": 5,
        "duration_s": 6,
        "workload": {"via": "direct", "writers": 2, "readers": 1, "keys": 200, "wait": 1},
        "faults": [{"at_s": 2, "kind": "kill", "target": "primary:random"}],
        "expect": {"lost_writes": 0},
    }
    path = tmp_path / "kill-primary-auth.yaml"
    path.write_text(yaml.safe_dump(scenario))
    state = tmp_path / "state"
    cdir = ClusterDir(state, "chaosauth")
    try:
        proc = cli("chaos", str(path), "--state-dir", str(state), check=False, timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        run_dir = Path(proc.stdout.strip().rsplit("report in ", 1)[1])
        result = json.loads((run_dir / "result.json").read_text())
        (trial,) = result["trials"]
        assert result["aggregate"]["lost_writes"] == 0
        assert trial["writes_ok"] > 100 and trial["failovers"]
    finally:
        pids = live_processes(cdir) if cdir.exists() else {}
        cli("down", "chaosauth", "--purge", "--state-dir", str(state), check=False)
        assert_all_gone(pids)


def test_a_token_set_while_stopped_is_what_the_restarted_cluster_takes(
    tmp_path: Path, cluster_factory: Any
) -> None:
    c = secured(tmp_path, cluster_factory, shards=1, replicas_per_shard=1)
    c.down(purge=False)
    (tmp_path / "token.b").write_text(TOKEN_B + "\n")
    started = time.monotonic()
    out = auth_change(c, tmp_path / "token.b", "set")
    assert "not running" in out and time.monotonic() - started < 15
    cli("up", str(c.topology_path), "--detach", "--state-dir", str(c.state_dir))
    c.remember_pids()
    for h, p in addresses(c):
        assert accepts(h, p, TOKEN_B) and not accepts(h, p, TOKEN_A), (h, p)


@needs_tls_engine
def test_tls_end_to_end_with_redis_cli_redis_py_and_a_failover(
    tmp_path: Path, cluster_factory: Any
) -> None:
    (tmp_path / "token").write_text(TOKEN_A + "\n")
    c: RunningCluster = cluster_factory(
        engine="redis", shards=2, security={"tls": True, "auth_token_file": "token"}
    )
    ca = c.cdir.root / "tls" / "ca.pem"
    assert (c.cdir.root / "tls" / "server.key").stat().st_mode & 0o077 == 0
    assert f"redis-cli -c --tls --cacert {ca} --askpass" in c.up_output
    assert "AUTH token required" in c.up_output
    text = cli("status", c.name, "--state-dir", str(c.state_dir)).stdout
    assert f"connect: redis-cli -c --tls --cacert {ca} --askpass -h" in text
    host, port = c.router
    tls: dict[str, Any] = {"ssl": True, "ssl_ca_certs": str(ca), "password": TOKEN_A}

    # redis-cli through the router, and following redirects from a node
    cli_args = ["redis-cli", "--tls", "--cacert", str(ca), "-a", TOKEN_A, "--no-auth-warning"]
    out = subprocess.run([*cli_args, "-h", host, "-p", str(port), "set", "k", "v"],
                         capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    assert out.stdout.strip() == "OK", out.stderr
    node = c.plan.nodes[0]
    out = subprocess.run([*cli_args, "-c", "-h", node.host, "-p", str(node.port), "get", "k"],
                         capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    assert out.stdout.strip() == "v", out.stderr

    # redis-py: a plain client of the router and a cluster client that goes to the nodes
    r = redis.Redis(host=host, port=port, socket_timeout=10, **tls)
    assert r.get("k") == b"v"
    rc = RedisCluster(host=host, port=port, socket_timeout=10, **tls)
    for i in range(200):
        rc.set(f"tls:{i}", i)
    assert rc.get("tls:150") == b"150"

    # nothing speaks plain TCP any more: the router and the nodes close on a plaintext PING
    for h, p in addresses(c):
        with socket.create_connection((h, p), timeout=5) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            with contextlib.suppress(ConnectionResetError):
                assert b"PONG" not in sock.recv(64)

    # the bus speaks MQTT over TLS only: a plaintext client with valid credentials gets
    # nowhere, while the cluster's processes talk over it (status sees every sentinel)
    roles = json.loads((c.cdir.root / "bus.secrets").read_text())

    async def plaintext_bus() -> str:
        plan = c.plan
        try:
            async with aiomqtt.Client(
                plan.bus_host, plan.bus_port, username="cli", password=roles["cli"], timeout=3
            ):
                return "connected"
        except aiomqtt.MqttError as exc:
            return f"refused: {exc}"

    assert asyncio.run(plaintext_bus()).startswith("refused")

    # a failover under TLS: sentinels probe and promote over TLS, the router follows
    before = c.status()
    assert all(s["online"] for s in before["sentinels"])
    old = before["shards"][0]["primary"]
    replica = before["shards"][0]["replicas"][0]
    key = next(f"tls:{i}" for i in range(200) if _in(before, 0, f"tls:{i}"))
    os.kill(int(c.cdir.pid_file(f"node.{old['name']}").read_text()), signal.SIGKILL)

    def promoted() -> bool:
        primary = c.status()["shards"][0]["primary"]
        return primary is not None and primary["name"] == replica["name"]

    wait_for(promoted, 30, "the replica promoted")

    def writes() -> bool:
        try:
            return bool(r.set(key, "after"))
        except redis.RedisError:
            return False

    wait_for(writes, 20, "writes through the router after the failover")
    assert rc.get(key) == b"after"
    r.close()
    rc.close()

    # a snapshot streams each shard's RDB over TLS too
    cli("snapshot", "create", c.name, "--id", "tlssnap", "--state-dir", str(c.state_dir))
    manifest = json.loads((c.state_dir / "snapshots" / "tlssnap" / "manifest.json").read_text())
    assert sum(s["keys"] for s in manifest["shards"]) >= 200


def test_tls_on_an_engine_without_it_is_refused_and_names_the_fix(tmp_path: Path) -> None:
    topo = base_topology("notls", security={"tls": True})
    path = tmp_path / "notls.yaml"
    path.write_text(yaml.safe_dump(topo))
    out = cli("up", str(path), "--detach", "--state-dir", str(tmp_path / "state"), check=False)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "security.tls" in out.stderr and "engine: redis" in out.stderr
    assert not (tmp_path / "state" / "notls").exists()


@needs_tls_engine
def test_certs_rotate_renews_every_certificate_without_a_failed_request(
    tmp_path: Path, cluster_factory: Any
) -> None:
    c: RunningCluster = cluster_factory(engine="redis", shards=1, security={"tls": True})
    ca = c.cdir.root / "tls" / "ca.pem"
    before = certificate_serial((c.cdir.root / "tls" / "server.pem").read_bytes())
    host, port = c.router
    stop = threading.Event()
    failures: list[str] = []
    done: list[int] = []

    def writer() -> None:
        """Reconnects every 20 requests: new handshakes all through the rotation."""
        n = 0
        while not stop.is_set():
            r = redis.Redis(host=host, port=port, ssl=True, ssl_ca_certs=str(ca), socket_timeout=10)
            try:
                for _ in range(20):
                    r.set(f"rot:{n % 50}", n)
                    n += 1
            except redis.RedisError as exc:
                failures.append(repr(exc))
            finally:
                r.close()
        done.append(n)

    t = threading.Thread(target=writer)
    t.start()
    try:
        time.sleep(0.5)
        out = cli("certs", "rotate", c.name, "--state-dir", str(c.state_dir)).stdout
        time.sleep(0.5)
    finally:
        stop.set()
        t.join(timeout=60)
    assert not failures, failures[:3]
    assert done and done[0] > 50
    after = certificate_serial((c.cdir.root / "tls" / "server.pem").read_bytes())
    assert after != before and f"{after:x}" in out
    for h, p in addresses(c):
        assert served_serial(h, p) == after, (h, p)
