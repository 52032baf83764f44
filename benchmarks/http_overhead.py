"""HTTP client overhead of the OpenAI-compatible backend: 1,000 chat queries, a local server.

Writes the section "http_overhead" of docs/benchmarks.md. Usage:
    .venv/bin/python benchmarks/http_overhead.py [--requests 1000] [--service-ms 20]
        [--concurrency 8] [--repeats 3]

Design. A server that answers instantly has no busy time to compare with, so the server (an
asyncio HTTP/1.1 keep-alive server in its own process, on 127.0.0.1) emulates model time: it
sleeps ``--service-ms`` per request before sending a fixed chat completion, and records for every
request the interval from "request read" to "answer written". The client is
:class:`tuneproof.backends.openai.chat.OpenAIChatModel` (``concurrency`` requests in flight, the
``openai`` SDK, JSON parsing, bookkeeping; with and without a journal that fsyncs every answer).

- *server busy time* = total service time / concurrency: the wall time a perfect client, always
  keeping ``concurrency`` requests in flight at zero cost, would need.
- *overhead* = (client wall time - server busy time) / server busy time; target < 5%.
- also shown: the time the server had at least one request in service (the union of the
  intervals), and the client's cost per request, (wall - busy) * concurrency / requests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_doc import write_section

ANSWER = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "model": "bench",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "A fixed answer of a few words."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 20, "completion_tokens": 8, "total_tokens": 28},
    }
).encode()


# --------------------------------------------------------------------------- the server


class Recorder:
    """Service intervals (perf_counter seconds) of every chat request since the last reset."""

    def __init__(self) -> None:
        self.intervals: list[tuple[float, float]] = []

    def stats(self) -> dict[str, float]:
        spans = sorted(self.intervals)
        union, end = 0.0, float("-inf")
        for a, b in spans:
            if b > end:
                union += b - max(a, end)
                end = b
        return {
            "requests": len(spans),
            "service_total": sum(b - a for a, b in spans),
            "busy_union": union,
            "first_start": spans[0][0] if spans else 0.0,
            "last_end": max((b for _, b in spans), default=0.0),
        }


async def serve(service_s: float, spread: float) -> None:
    recorder = Recorder()
    draw = random.Random(0)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1]
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                if length:
                    await reader.readexactly(length)
                start = time.perf_counter()
                if path == "/stats":
                    body = json.dumps(recorder.stats()).encode()
                elif path == "/reset":
                    recorder.intervals.clear()
                    body = b"{}"
                else:
                    await asyncio.sleep(service_s * (1 + spread * (2 * draw.random() - 1)))
                    body = ANSWER
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n%s" % (len(body), body)
                )
                await writer.drain()
                if path.endswith("/chat/completions"):
                    recorder.intervals.append((start, time.perf_counter()))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=256)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


# --------------------------------------------------------------------------- the client


def get(root: str, path: str) -> Any:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(root + path, timeout=10) as response:
        return json.load(response)


def run_once(
    root: str, requests: int, concurrency: int, journal: Path | None, tag: str
) -> dict[str, float]:
    """One batch of ``requests`` distinct chat queries; timings of the client and the server."""
    from tuneproof.backends.openai.chat import OpenAIChatModel

    model = OpenAIChatModel(root + "/v1", "bench", concurrency=concurrency, journal=journal)
    chats = [[("user", f"{tag} question number {i}")] for i in range(requests)]
    get(root, "/reset")
    cpu, start = time.process_time(), time.perf_counter()
    answers = model.generate(chats, 16)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    served = get(root, "/stats")
    assert len(answers) == requests and model.stats.failed == 0 and served["requests"] == requests
    busy = served["service_total"] / concurrency
    return {
        "wall": wall,
        "busy": busy,
        "overhead": (wall - busy) / busy,
        "idle": (wall - served["busy_union"]) / served["busy_union"],
        "cpu_ms": 1000 * cpu / requests,
        # perf_counter is CLOCK_MONOTONIC, shared by both processes on Linux
        "lead": served["first_start"] - start,
        "tail": start + wall - served["last_end"],
    }


def start_server(service_ms: float, spread: float = 0.0) -> tuple[subprocess.Popen[str], str]:
    """The server in its own process; its root URL once it listens."""
    command = [sys.executable, __file__, "--serve", "--service-ms", str(service_ms)]
    command += ["--spread", str(spread)]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    return server, f"http://127.0.0.1:{int(server.stdout.readline())}"


def label(service_ms: float, spread: float) -> str:
    return f"{service_ms:g} ms" + (f" +-{spread:.0%}" if spread else "")


def measure(
    service_ms: float, spread: float, journaled: bool, args: argparse.Namespace, folder: Path
) -> list[dict[str, float]]:
    """``args.repeats`` runs of ``args.requests`` queries against a fresh server."""
    server, root = start_server(service_ms, spread)
    try:
        run_once(root, 50, args.concurrency, None, "warm-up")
        runs = []
        for repeat in range(args.repeats):
            journal = folder / f"{service_ms}-{repeat}.jsonl" if journaled else None
            tag = f"{service_ms} {spread} {journaled} {repeat}"
            runs.append(run_once(root, args.requests, args.concurrency, journal, tag))
        return runs
    finally:
        server.terminate()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument(
        "--service-ms", type=float, nargs="+", default=[20.0, 100.0, 250.0],
        help="server time per request; the first is the headline (also run with a journal)",
    )  # fmt: skip
    parser.add_argument(
        "--spread", type=float, default=0.5,
        help="an extra headline row whose server times are uniform in +-spread of the first",
    )  # fmt: skip
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.service_ms[0] / 1000, args.spread))
        return

    first = args.service_ms[0]
    configs = [
        (first, 0.0, False),
        (first, 0.0, True),
        (first, args.spread, False),
        *((ms, 0.0, False) for ms in args.service_ms[1:]),
    ]
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder:
        results = {c: measure(*c, args, Path(folder)) for c in configs}
    load_after = os.getloadavg()[0]

    rows = [
        "| server time per request | client | wall (s) | server busy (s) | overhead, median "
        "(min-max) | server idle | client CPU per request (ms) | c x CPU / service time |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for (ms, spread, journaled), runs in results.items():
        mid = sorted(runs, key=lambda r: r["overhead"])[len(runs) // 2]
        low, high = min(r["overhead"] for r in runs), max(r["overhead"] for r in runs)
        cpu = statistics.median(r["cpu_ms"] for r in runs)
        client = "journal (fsync per answer)" if journaled else "no journal"
        rows.append(
            f"| {label(ms, spread)} | {client} | {mid['wall']:.2f} | {mid['busy']:.2f} "
            f"| **{mid['overhead']:.1%}** ({low:.1%}-{high:.1%}) | {mid['idle']:.1%} "
            f"| {cpu:.2f} | {args.concurrency * cpu / ms:.1%} |"
        )
    table = "\n".join(rows)
    cpu_ms = statistics.median(r["cpu_ms"] for r in results[first, 0.0, False])
    needed = args.concurrency * cpu_ms / 0.05
    verdicts = ", ".join(
        f"{label(ms, spread)}: {statistics.median(r['overhead'] for r in runs):.1%}"
        for (ms, spread, journaled), runs in results.items()
        if not journaled
    )
    body = (
        f"{args.requests:,} distinct chat queries through `OpenAIChatModel` (concurrency "
        f"{args.concurrency}, `openai.AsyncOpenAI`) against a local asyncio HTTP/1.1 server in its "
        "own process that spends a fixed time per request, emulating model time (an instant "
        f"server has no busy time to compare with); {args.repeats} runs per row, the median run "
        f"shown. Load average {load_before:.1f} before, {load_after:.1f} after (2 cores, shared "
        "with other work: figures vary between runs).\n\n"
        "- *server busy* = total service time / concurrency: the wall time of a perfect client "
        "that always keeps the server's slots full at no cost;\n"
        "- *overhead* = (client wall - server busy) / server busy (target < 5%);\n"
        "- *server idle* = (client wall - time with at least one request in service) / the "
        "latter;\n"
        "- *client CPU per request*: CPU time of the client process / requests (SDK, httpx, "
        "JSON, our bookkeeping); a bare `AsyncOpenAI.post` loop costs about the same, and bare "
        "`httpx` about 0.8-1.1 ms.\n\n"
        f"{table}\n\n"
        "With a fixed server time, requests started together finish together, and one Python "
        "thread handles the answers of such a wave one after the other, so the overhead is of "
        "the order of (and measured below) concurrency x client CPU per request / server time "
        "(last column). By that estimate the target (< 5%) needs a fixed server time of "
        f"{needed:.0f} ms or more per request at concurrency {args.concurrency}. Server times "
        f"that vary (+-{args.spread:.0%}, uniform; real answers vary in length) break the waves "
        "up. "
        f"Median overhead without a journal by server time: {verdicts}.\n"
    )
    print(body)
    if not args.no_write:
        write_section("http_overhead", "HTTP client overhead", body)


if __name__ == "__main__":
    main()
