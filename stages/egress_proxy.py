"""A loopback HTTP forward proxy that checks every address a download connects to.

img2dataset fetches with urllib, which honours `http_proxy`/`https_proxy`/`ftp_proxy` from the
environment (its spawned download processes inherit it). With them pointing here, every hop is a
new request to this proxy — the first one and each redirect urllib follows — and the proxy
resolves the host once, refuses what the `UrlGuard` refuses, and connects to the very address it
checked: no second lookup, so DNS cannot rebind between the check and the fetch. Plain http is
forwarded (absolute-form request line, `Connection: close`); https arrives as CONNECT and is
tunnelled after the same check. Refusals are HTTP errors whose reason phrase carries
`GUARD_MARK`, which urllib puts in the error message img2dataset records for the row.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from typing import Iterator
from urllib.parse import urlsplit

from stages.download_errors import GUARD_MARK, UNKNOWN_HOST_MARK
from stages.netguard import UrlGuard

PROXY_ENV = ("http_proxy", "https_proxy", "ftp_proxy", "HTTP_PROXY", "HTTPS_PROXY", "FTP_PROXY")
NO_PROXY_ENV = ("no_proxy", "NO_PROXY")
_HOP_HEADERS = {"connection", "proxy-connection", "keep-alive", "proxy-authorization", "te", "upgrade"}
_MAX_HEAD = 64 * 1024


class EgressProxy:
    """`with EgressProxy(guard) as url:` serves on 127.0.0.1 (ephemeral port) until the block ends."""

    def __init__(self, guard: UrlGuard, timeout: float = 10.0):
        self.guard, self.timeout = guard, timeout
        self.refused: list[str] = []  # why, for each refusal (tests and logs)

    def __enter__(self) -> str:
        self._loop = asyncio.new_event_loop()
        started = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(self._loop)
            self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
            started.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, name="egress-proxy", daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("egress proxy did not start")
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    def __exit__(self, *exc) -> None:
        async def stop() -> None:
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            await self._serve_one(client_r, client_w)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ValueError):
            pass  # the client went away or spoke nonsense: nothing to answer
        finally:
            client_w.close()

    async def _serve_one(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(client_r.readuntil(b"\r\n\r\n"), self.timeout)
        if len(head) > _MAX_HEAD:
            return await self._answer(client_w, 431, "egress proxy: request head too large")
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, target, _version = request_line.split(" ", 2)
        if method == "CONNECT":
            host, _, port_s = target.rpartition(":")
            host, port, path = host.strip("[]"), int(port_s), None
        else:
            parts = urlsplit(target)
            if parts.scheme != "http" or not parts.hostname:  # e.g. a redirect to ftp://
                return await self._refuse(client_w, f"scheme {parts.scheme or 'none'!r} of {target[:200]}")
            host, port = parts.hostname, parts.port or 80
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        loop = asyncio.get_running_loop()
        try:
            address, why = await loop.run_in_executor(None, self.guard.checked_address, host, port)
        except OSError as err:  # EAI_AGAIN: the resolver, not the name, failed (transient)
            return await self._answer(client_w, 504, f"egress proxy: temporary failure resolving {host}: {err}")
        if why:
            return await self._refuse(client_w, why)
        if address is None:
            return await self._answer(client_w, 502, f"{UNKNOWN_HOST_MARK} {host}")
        try:  # the address just checked, not the name: nothing is looked up again
            up_r, up_w = await asyncio.wait_for(asyncio.open_connection(str(address), port), self.timeout)
        except asyncio.TimeoutError:
            return await self._answer(client_w, 504, f"egress proxy: connecting to {host} timed out")
        except OSError as err:  # keep the words urllib would have used ("Connection refused")
            said = f"[Errno {err.errno}] {os.strerror(err.errno)}" if err.errno else str(err)
            return await self._answer(client_w, 502, f"egress proxy: cannot connect to {host}: {said}")
        try:
            if method == "CONNECT":
                client_w.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                kept = [h for h in header_lines if h and h.split(":", 1)[0].strip().lower() not in _HOP_HEADERS]
                up_w.write(("\r\n".join([f"{method} {path} HTTP/1.1", *kept, "Connection: close", "", ""])).encode("latin-1"))
            await asyncio.gather(_pipe(client_r, up_w), _pipe(up_r, client_w))
        finally:
            up_w.close()

    async def _refuse(self, client_w: asyncio.StreamWriter, why: str) -> None:
        self.refused.append(why)
        await self._answer(client_w, 403, f"{GUARD_MARK}: {why}")

    @staticmethod
    async def _answer(client_w: asyncio.StreamWriter, code: int, reason: str) -> None:
        reason = " ".join(reason.split())[:300]  # one line: it is the HTTP reason phrase
        client_w.write(f"HTTP/1.1 {code} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode("latin-1", "replace"))
        await client_w.drain()


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    """Copy until EOF, then close `dst` (which also ends the copy the other way)."""
    try:
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
    except OSError:
        pass
    finally:
        dst.close()


@contextlib.contextmanager
def proxy_environment(proxy_url: str) -> Iterator[None]:
    """Route urllib (in this process and the ones it spawns) through `proxy_url`, bypassing nothing."""
    saved = {k: os.environ.get(k) for k in PROXY_ENV + NO_PROXY_ENV}
    try:
        for k in PROXY_ENV:
            os.environ[k] = proxy_url
        for k in NO_PROXY_ENV:
            os.environ.pop(k, None)
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
