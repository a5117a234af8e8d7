"""A TCP relay that delays every chunk by 500 ms ± 200 ms, in order, each way.

The kernel here has no netem, so the uplink chaos test puts this between the box and the
cloud to give the link its latency; nftables drops 30 % of packets underneath it.

Usage: delay_proxy.py LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT [MEAN_MS JITTER_MS]
"""

import asyncio
import random
import sys


async def pipe(reader, writer, mean, jitter):
    """Copies reader to writer, each chunk held back by mean ± jitter seconds, in order."""
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()

    async def deliver():
        while True:
            due, data = await queue.get()
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if data is None:
                break
            writer.write(data)
            await writer.drain()
        writer.close()

    task = asyncio.create_task(deliver())
    last = 0.0
    try:
        while True:
            data = await reader.read(65536)
            due = max(last, loop.time() + mean + random.uniform(-jitter, jitter))
            last = due
            await queue.put((due, data or None))
            if not data:
                break
    except (ConnectionError, OSError):
        await queue.put((last, None))
    try:
        await task
    except (ConnectionError, OSError):
        pass


async def main():
    host, port, target_host, target_port = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    mean = (int(sys.argv[5]) if len(sys.argv) > 5 else 500) / 1000
    jitter = (int(sys.argv[6]) if len(sys.argv) > 6 else 200) / 1000

    async def handle(client_reader, client_writer):
        try:
            server_reader, server_writer = await asyncio.open_connection(target_host, target_port)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(
            pipe(client_reader, server_writer, mean, jitter),
            pipe(server_reader, client_writer, mean, jitter),
        )

    server = await asyncio.start_server(handle, host, port)
    print("relaying", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
