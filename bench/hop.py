"""The copy-only hop: an asyncio/uvloop process that only copies bytes between each client
and a target, the floor any proxy written this way pays (bench/router.py, bench/memcached.py)."""

from __future__ import annotations

import asyncio


def copy_hop(listen_port: int, target_port: int, target_host: str = "127.0.0.1") -> None:
    """Serve `listen_port`, copying bytes both ways between each client and the target."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(target_host, target_port)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def serve() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", listen_port)
        async with server:
            await server.serve_forever()

    try:
        import uvloop
    except ImportError:
        asyncio.run(serve())
    else:
        uvloop.run(serve())
