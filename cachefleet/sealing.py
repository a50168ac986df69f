"""Encryption at rest for snapshot files: AES-256-GCM, streamed in chunks.

A sealed file is ``MAGIC``, an 8-byte random nonce prefix, then chunks of at most
``CHUNK`` plaintext bytes, each stored as its 4-byte length and its ciphertext with tag. Chunk
``i`` is sealed with nonce ``prefix + i`` and, as associated data, its index and whether it
is the last one: chunks cannot be reordered, dropped or cut off without the open failing.
The key is 32 bytes read from a file that only its owner may read (mode 0600); its id (the
first 16 hex digits of its SHA-256) is recorded in the snapshot's manifest, so a snapshot
opened with another key is refused by name before any byte is decrypted.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cachefleet.errors import CachefleetError

MAGIC = b"CFSEAL1\n"
CHUNK = 1 << 20
_TAG = 16


class SealError(CachefleetError):
    """A key that cannot be used, or a sealed file that does not open with it."""


class Key:
    def __init__(self, secret: bytes) -> None:
        if len(secret) != 32:
            raise SealError("an AES-256 key is 32 bytes")
        self._aead = AESGCM(secret)
        self.id = hashlib.sha256(secret).hexdigest()[:16]

    @classmethod
    def from_file(cls, path: str | Path) -> Key:
        """32 raw bytes, or 64 hex digits (a trailing newline allowed); mode 0600 or
        stricter, as the managed service's customer keys are guarded."""
        p = Path(path)
        try:
            mode = p.stat().st_mode
            data = p.read_bytes()
        except OSError as exc:
            raise SealError(f"encryption key {p}: {exc.strerror or exc}") from exc
        if stat.S_IMODE(mode) & 0o077:
            raise SealError(
                f"encryption key {p}: mode {stat.S_IMODE(mode):04o}; it must be readable by "
                "its owner only (chmod 600)"
            )
        text = data.strip()
        if len(text) == 64:
            try:
                return cls(bytes.fromhex(text.decode("ascii")))
            except (UnicodeDecodeError, ValueError):
                pass
        if len(data) == 32:
            return cls(data)
        raise SealError(f"encryption key {p}: expected 32 bytes or 64 hex digits")

    def seal(self, source: Path, dest: Path) -> None:
        prefix = os.urandom(8)
        with source.open("rb") as src, dest.open("wb") as out:
            out.write(MAGIC + prefix)
            index = 0
            chunk = src.read(CHUNK)
            while True:
                following = src.read(CHUNK)
                last = not following
                sealed = self._aead.encrypt(_nonce(prefix, index), chunk, _aad(index, last))
                out.write(len(sealed).to_bytes(4, "big") + sealed)
                if last:
                    return
                chunk, index = following, index + 1

    def open(self, source: Path, dest: Path) -> None:
        """Decrypt `source` into `dest`; SealError naming `source` if it does not open."""
        with source.open("rb") as src, dest.open("wb") as out:
            head = src.read(len(MAGIC) + 8)
            if head[: len(MAGIC)] != MAGIC or len(head) != len(MAGIC) + 8:
                raise SealError(f"{source}: not an encrypted snapshot file")
            prefix = head[len(MAGIC) :]
            index = 0
            while True:
                size_bytes = src.read(4)
                if len(size_bytes) != 4:
                    raise SealError(f"{source}: cut short (no final chunk)")
                size = int.from_bytes(size_bytes, "big")
                if not _TAG <= size <= CHUNK + _TAG:
                    raise SealError(f"{source}: damaged (chunk {index} has length {size})")
                sealed = src.read(size)
                if len(sealed) != size:
                    raise SealError(f"{source}: cut short in chunk {index}")
                last = src.peek(1) == b""
                try:
                    plain = self._aead.decrypt(_nonce(prefix, index), sealed, _aad(index, last))
                except InvalidTag:
                    if last and self._opens(prefix, index, sealed):
                        raise SealError(f"{source}: cut short (no final chunk)") from None
                    raise SealError(
                        f"{source}: does not decrypt with this key (wrong key or damaged)"
                    ) from None
                out.write(plain)
                if last:
                    return
                index += 1

    def _opens(self, prefix: bytes, index: int, sealed: bytes) -> bool:
        """Whether the chunk opens as a chunk that is not the last one."""
        try:
            self._aead.decrypt(_nonce(prefix, index), sealed, _aad(index, False))
        except InvalidTag:
            return False
        return True


def _nonce(prefix: bytes, index: int) -> bytes:
    return prefix + index.to_bytes(4, "big")


def _aad(index: int, last: bool) -> bytes:
    return index.to_bytes(4, "big") + (b"\x01" if last else b"\x00")
