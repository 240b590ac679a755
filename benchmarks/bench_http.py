"""HTTP latency of `spermhead serve` on loopback: one image per request.

Starts the real command (`spermhead serve`, untrained spermnet bundle, 64 px) on 127.0.0.1 at
a free port in a subprocess, then measures
    sequential   one client, one image per request, no Grad-CAM: p50/p90/p99 (target p50 <= 15 ms)
    gradcam      the same with ?gradcam=true
    concurrent   50 clients sending 2000 requests in total (a bounded loop): errors, p50/p99
Everything stays on 127.0.0.1.

    .venv/bin/python benchmarks/bench_http.py [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from spermhead.data.synthetic import render_head
from spermhead.serving.predictor import untrained_bundle

HOST = "127.0.0.1"  # loopback only


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def image_bytes() -> bytes:
    rgb, _ = render_head("normal", "hushem", np.random.default_rng(0))
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "BMP")  # HuSHeM's own format, 131 x 131
    return buf.getvalue()


def stats(latencies_s: list[float]) -> dict[str, float]:
    ms = np.array(latencies_s) * 1000
    return {"n": len(ms), "p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean())}


class Connection:
    """A minimal keep-alive HTTP/1.1 client on asyncio streams. The request is built once;
    httpx spends ~2 ms of CPU per request, which on a small machine starves the server
    being measured and made the client, not the server, set the tail latencies."""

    def __init__(self, port: int, request: bytes) -> None:
        self.port, self.request = port, request
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        assert self.reader is not None
        self.writer.write(self.request)
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = next(int(v) for k, _, v in (ln.partition(":") for ln in lines[1:]) if k.lower() == "content-length")
        return status, await self.reader.readexactly(length)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def build_request(port: int, data: bytes, query: str = "") -> bytes:
    boundary = "spermheadbench"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"head.bmp\"\r\n"
            f"Content-Type: image/bmp\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    head = (f"POST /api/predict{query} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def sequential(port: int, data: bytes, n: int, query: str = "") -> dict[str, float]:
    conn = Connection(port, build_request(port, data, query))
    lat = []
    try:
        for i in range(n + 10):
            t0 = time.perf_counter()
            status, body = await conn.post()
            dt = time.perf_counter() - t0
            if status != 200:
                raise RuntimeError(f"HTTP {status}: {body[:200]!r}")
            if i >= 10:  # the first few warm the server up
                lat.append(dt)
    finally:
        await conn.close()
    return stats(lat)


async def concurrent(port: int, data: bytes, clients: int, total: int) -> dict[str, Any]:
    lat: list[float] = []
    errors: list[str] = []
    issued = 0
    request = build_request(port, data)

    async def client() -> None:
        nonlocal issued
        conn = Connection(port, request)
        try:
            while issued < total:  # bounded: exactly `total` requests across all clients
                issued += 1
                t0 = time.perf_counter()
                try:
                    status, _ = await conn.post()
                    if status != 200:
                        errors.append(f"HTTP {status}")
                except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    errors.append(type(exc).__name__)
                    await conn.close()
                    conn = Connection(port, request)
                lat.append(time.perf_counter() - t0)
        finally:
            await conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - t0
    return {"clients": clients, "requests": len(lat), "errors": len(errors), "error_kinds": sorted(set(errors)),
            "requests_per_s": len(lat) / wall, **stats(lat)}


def start_server(bundle: Path, port: int, threads: int = 0) -> subprocess.Popen[bytes]:
    exe = Path(sys.executable).with_name("spermhead")
    cmd = [str(exe), "serve", "--model", str(bundle), "--host", HOST, "--port", str(port), "--threads", str(threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        try:
            if httpx.get(f"http://{HOST}:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not answer /health within 60 s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="bundle to serve (default: untrained spermnet, 64 px)")
    ap.add_argument("--sequential", type=int, default=300, help="requests for the one-client figure")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--total", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=0, help="server's torch threads (serve --threads)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="spermhead-http-") as tmp:
        bundle = args.model or untrained_bundle(Path(tmp) / "bundle", "spermnet", image_size=64)
        port = free_port()
        url = f"http://{HOST}:{port}"
        proc = start_server(bundle, port, args.threads)
        try:
            data = image_bytes()
            seq = asyncio.run(sequential(port, data, args.sequential))
            print(f"sequential  p50 {seq['p50_ms']:.1f} ms  p90 {seq['p90_ms']:.1f}  p99 {seq['p99_ms']:.1f}", flush=True)
            cam = asyncio.run(sequential(port, data, max(20, args.sequential // 5), "?gradcam=true"))
            print(f"gradcam     p50 {cam['p50_ms']:.1f} ms  p99 {cam['p99_ms']:.1f}", flush=True)
            conc = asyncio.run(concurrent(port, data, args.clients, args.total))
            print(f"concurrent  {conc['clients']} clients, {conc['requests']} requests, {conc['errors']} errors, "
                  f"p50 {conc['p50_ms']:.1f} ms, p99 {conc['p99_ms']:.1f} ms, {conc['requests_per_s']:.0f} req/s",
                  flush=True)
            health = httpx.get(url + "/health").status_code
        finally:
            proc.terminate()
            proc.wait(10)
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0],
              "server_threads": args.threads,
              "image": "131x131 BMP", "sequential": seq, "gradcam": cam, "concurrent": conc,
              "health_after": health}
    print(f"{result['cpus']} CPUs, load {result['load_avg_1m']:.1f}; /health after: {health}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
