"""Snapshot encryption at rest (AES-256-GCM in chunks): round trips, and every way a sealed
file can be wrong is refused by name."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cachefleet import sealing
from cachefleet.sealing import Key, SealError


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sealing, "CHUNK", 1000)


def key_file(tmp_path: Path, content: bytes, mode: int = 0o600) -> Path:
    path = tmp_path / f"key-{len(content)}-{mode:o}"
    path.write_bytes(content)
    path.chmod(mode)
    return path


@pytest.mark.parametrize("size", [0, 1, 999, 1000, 1001, 5500])
def test_round_trip_over_chunk_boundaries(tmp_path: Path, small_chunks: None, size: int) -> None:
    key = Key(os.urandom(32))
    plain = os.urandom(size)
    (tmp_path / "p").write_bytes(plain)
    key.seal(tmp_path / "p", tmp_path / "s")
    sealed = (tmp_path / "s").read_bytes()
    assert sealed.startswith(sealing.MAGIC) and (size < 16 or plain[:16] not in sealed)
    key.open(tmp_path / "s", tmp_path / "o")
    assert (tmp_path / "o").read_bytes() == plain


def sealed_chunks(tmp_path: Path, key: Key) -> tuple[bytes, list[bytes]]:
    (tmp_path / "p").write_bytes(os.urandom(3500))
    key.seal(tmp_path / "p", tmp_path / "s")
    data = (tmp_path / "s").read_bytes()
    head, rest = data[: len(sealing.MAGIC) + 8], data[len(sealing.MAGIC) + 8 :]
    chunks = []
    while rest:
        n = int.from_bytes(rest[:4], "big")
        chunks.append(rest[: 4 + n])
        rest = rest[4 + n :]
    return head, chunks


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda h, c: h + b"".join(c[:-1]), "cut short"),  # the last chunk dropped
        (lambda h, c: h + b"".join([c[1], c[0], *c[2:]]), "does not decrypt"),  # reordered
        (lambda h, c: h + b"".join(c)[:-5], "cut short"),  # truncated inside a chunk
        (lambda h, c: h + b"".join(c)[:50] + b"X" + b"".join(c)[51:], "does not decrypt"),
        (lambda h, c: b"REDIS0011" + b"".join(c), "not an encrypted snapshot file"),
    ],
)
def test_damaged_files_are_refused_by_name(
    tmp_path: Path, small_chunks: None, damage: object, message: str
) -> None:
    key = Key(os.urandom(32))
    head, chunks = sealed_chunks(tmp_path, key)
    bad = tmp_path / "bad.rdb.enc"
    bad.write_bytes(damage(head, chunks))  # type: ignore[operator]
    with pytest.raises(SealError, match=message) as info:
        key.open(bad, tmp_path / "o")
    assert str(bad) in str(info.value)


def test_another_key_does_not_open_it(tmp_path: Path) -> None:
    (tmp_path / "p").write_bytes(b"data")
    Key(os.urandom(32)).seal(tmp_path / "p", tmp_path / "s")
    with pytest.raises(SealError, match="does not decrypt with this key"):
        Key(os.urandom(32)).open(tmp_path / "s", tmp_path / "o")


def test_key_files(tmp_path: Path) -> None:
    raw = os.urandom(32)
    assert Key.from_file(key_file(tmp_path, raw)).id == Key(raw).id
    assert Key.from_file(key_file(tmp_path, raw.hex().encode() + b"\n")).id == Key(raw).id
    with pytest.raises(SealError, match="chmod 600"):
        Key.from_file(key_file(tmp_path, raw, 0o644))
    with pytest.raises(SealError, match="32 bytes or 64 hex digits"):
        Key.from_file(key_file(tmp_path, b"short"))
    with pytest.raises(SealError, match="No such file"):
        Key.from_file(tmp_path / "absent")
