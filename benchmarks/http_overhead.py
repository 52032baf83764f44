"""HTTP client overhead of the OpenAI-compatible backend: 1,000 chat queries, a local server.

Writes the section "http_overhead" of docs/benchmarks.md. Usage:
    .venv/bin/python benchmarks/http_overhead.py [--requests 1000] [--service-ms 20 100]
        [--spread 0.5] [--slots 8] [--concurrency 16] [--repeats 3]

Design. A server that answers instantly has no busy time to compare with, so the server (an
asyncio HTTP/1.1 keep-alive server in its own process, on 127.0.0.1) emulates model time, and
serves like llama.cpp, vLLM or TGI: it has ``--slots`` parallel slots (an ``asyncio.Semaphore``)
and queues the requests beyond them. In a slot it sleeps ``--service-ms`` (or a time uniform in
+-``--spread`` of it) before sending a fixed chat completion, and records for every request the
interval from "slot acquired" to "answer written". The clients, side by side in one run:

- :class:`tuneproof.backends.openai.chat.OpenAIChatModel` (the ``openai`` SDK, the per-attempt
  limits, JSON parsing, bookkeeping) with as many requests in flight as the server has slots,
  and with ``--concurrency`` in flight (the default of ``verify``, more than the slots: the
  server queues the rest); each with and without a journal that makes every answer durable
  before it counts;
- a bare ``httpx`` loop (one ``AsyncClient``, a semaphore, ``response.json()``): the floor of
  what a Python asyncio client can do.

- *server busy* = total service time / slots: the wall time of a perfect client that keeps every
  slot full at no cost;
- *overhead* = (client wall time - server busy) / server busy; target < 5% at 20 ms;
- *server idle* = (client wall - time with at least one request in service) / the latter;
- *client CPU per request* = CPU time of the client process / requests.
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
from dataclasses import dataclass
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
HERE = Path(__file__).resolve().parent


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


async def serve(service_s: float, spread: float, slots: int) -> None:
    """Serve chat completions in ``slots`` parallel slots, queueing the rest; print the port."""
    recorder = Recorder()
    draw = random.Random(0)
    slot = asyncio.Semaphore(slots)

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
                if path == "/stats":
                    await answer(writer, json.dumps(recorder.stats()).encode())
                elif path == "/reset":
                    recorder.intervals.clear()
                    await answer(writer, b"{}")
                else:
                    async with slot:  # queued until a slot is free, like a model server
                        start = time.perf_counter()
                        await asyncio.sleep(service_s * (1 + spread * (2 * draw.random() - 1)))
                        await answer(writer, ANSWER)
                        recorder.intervals.append((start, time.perf_counter()))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=512)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


async def answer(writer: asyncio.StreamWriter, body: bytes) -> None:
    writer.write(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(body), body)
    )
    await writer.drain()


# --------------------------------------------------------------------------- the clients


@dataclass(frozen=True)
class Setting:
    """One row: the server's time per request and the client's way of asking."""

    service_ms: float
    spread: float
    client: str  # "tuneproof" or "httpx"
    concurrency: int
    journaled: bool = False

    def server_label(self) -> str:
        return f"{self.service_ms:g} ms" + (f" +-{self.spread:.0%}" if self.spread else "")

    def client_label(self) -> str:
        if self.client == "httpx":
            return f"bare httpx, {self.concurrency} in flight"
        journal = "journal" if self.journaled else "no journal"
        return f"`OpenAIChatModel`, {self.concurrency} in flight, {journal}"


def get(root: str, path: str) -> Any:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(root + path, timeout=10) as response:
        return json.load(response)


def ask_tuneproof(root: str, chats: list[Any], concurrency: int, journal: Path | None) -> int:
    """Answers through :class:`OpenAIChatModel`; the number that came back answered."""
    from tuneproof.backends.openai.chat import OpenAIChatModel

    model = OpenAIChatModel(root + "/v1", "bench", concurrency=concurrency, journal=journal)
    answers = model.generate(chats, 16)
    assert model.stats.failed == 0
    return len(answers)


def ask_httpx(root: str, chats: list[Any], concurrency: int) -> int:
    """Answers through a bare ``httpx.AsyncClient`` loop: the floor of a Python client."""
    import httpx2

    async def run() -> int:
        limits = httpx2.Limits(max_connections=concurrency)
        # plain http: verify=False only skips loading the CA bundle (no TLS here)
        options: dict[str, Any] = {"limits": limits, "timeout": 60, "verify": False}
        async with httpx2.AsyncClient(base_url=root, **options) as client:
            semaphore = asyncio.Semaphore(concurrency)

            async def one(chat: Any) -> str:
                messages = [{"role": r, "content": c} for r, c in chat]
                body = {"model": "bench", "messages": messages, "max_tokens": 16}
                async with semaphore:
                    response = await client.post("/v1/chat/completions", json=body)
                payload = response.raise_for_status().json()
                return str(payload["choices"][0]["message"]["content"])

            return len(await asyncio.gather(*(one(chat) for chat in chats)))

    return asyncio.run(run())


def run_once(
    root: str, setting: Setting, requests: int, slots: int, folder: Path, tag: str
) -> dict[str, float]:
    """One batch of ``requests`` distinct chat queries; timings of the client and the server."""
    chats = [[("user", f"{tag} question number {i}")] for i in range(requests)]
    journal = folder / f"{tag}.jsonl" if setting.journaled else None
    get(root, "/reset")
    cpu, start = time.process_time(), time.perf_counter()
    if setting.client == "httpx":
        answered = ask_httpx(root, chats, setting.concurrency)
    else:
        answered = ask_tuneproof(root, chats, setting.concurrency, journal)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    served = get(root, "/stats")
    assert answered == requests and served["requests"] == requests
    busy = served["service_total"] / slots
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


def start_server(service_ms: float, spread: float, slots: int) -> tuple[subprocess.Popen[str], str]:
    """The server in its own process; its root URL once it listens."""
    command = [sys.executable, __file__, "--serve", "--service-ms", str(service_ms)]
    command += ["--spread", str(spread), "--slots", str(slots)]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    return server, f"http://127.0.0.1:{int(server.stdout.readline())}"


def measure(
    server_setting: tuple[float, float],
    settings: list[Setting],
    args: argparse.Namespace,
    folder: Path,
) -> dict[Setting, list[dict[str, float]]]:
    """``args.repeats`` runs of every client setting against one fresh server, interleaved
    (repeat by repeat) so that a change of load on the machine hits every row alike."""
    server, root = start_server(*server_setting, args.slots)
    try:
        warm = Setting(*server_setting, "tuneproof", args.slots)
        run_once(root, warm, 50, args.slots, folder, "warm-up")
        runs: dict[Setting, list[dict[str, float]]] = {s: [] for s in settings}
        for repeat in range(args.repeats):
            for number, setting in enumerate(settings):
                tag = f"{server_setting} {number} {repeat}"
                runs[setting].append(
                    run_once(root, setting, args.requests, args.slots, folder, tag)
                )
        return runs
    finally:
        server.terminate()
        server.wait()


def median_run(runs: list[dict[str, float]]) -> dict[str, float]:
    return sorted(runs, key=lambda r: r["overhead"])[len(runs) // 2]


def table(results: dict[Setting, list[dict[str, float]]], slots: int) -> str:
    rows = [
        "| server time per request | client | wall (s) | server busy (s) | overhead, median "
        "(min-max) | server idle | start-up (ms) | client CPU per request (ms) "
        "| slots x CPU / server time |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for setting, runs in results.items():
        mid = median_run(runs)
        low, high = min(r["overhead"] for r in runs), max(r["overhead"] for r in runs)
        cpu = statistics.median(r["cpu_ms"] for r in runs)
        rows.append(
            f"| {setting.server_label()} | {setting.client_label()} | {mid['wall']:.2f} "
            f"| {mid['busy']:.2f} | **{mid['overhead']:.1%}** ({low:.1%}-{high:.1%}) "
            f"| {mid['idle']:.1%} | {1000 * mid['lead']:.0f} | {cpu:.2f} "
            f"| {slots * cpu / setting.service_ms:.1%} |"
        )
    return "\n".join(rows)


def main() -> None:
    from tuneproof.backends.openai.requests import DEFAULT_CONCURRENCY

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument(
        "--service-ms", type=float, nargs="+", default=[20.0, 100.0],
        help="server time per request; the first is the headline (also run with --spread)",
    )  # fmt: skip
    parser.add_argument(
        "--spread", type=float, default=0.5,
        help="an extra server whose times are uniform in +-spread of the first",
    )  # fmt: skip
    parser.add_argument("--slots", type=int, default=8, help="the server's parallel slots")
    parser.add_argument(
        "--concurrency", type=int, default=DEFAULT_CONCURRENCY,
        help="requests in flight of the second client (default: verify's default)",
    )  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.service_ms[0] / 1000, args.spread, args.slots))
        return

    first = args.service_ms[0]
    servers = [(first, 0.0), (first, args.spread), *((ms, 0.0) for ms in args.service_ms[1:])]
    load_before = os.getloadavg()
    results: dict[Setting, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(dir=HERE) as folder:  # the project's disk: real fsyncs
        for ms, spread in servers:
            settings = [
                Setting(ms, spread, "tuneproof", c, journaled)
                for c in (args.slots, args.concurrency)
                for journaled in (False, True)
            ]
            settings += [Setting(ms, spread, "httpx", c) for c in (args.slots, args.concurrency)]
            results.update(measure((ms, spread), settings, args, Path(folder)))
    load_after = os.getloadavg()

    def overhead(client: str, concurrency: int, journaled: bool = False) -> str:
        return ", ".join(
            f"{s.server_label()}: {statistics.median(r['overhead'] for r in runs):.1%}"
            for s, runs in results.items()
            if (s.client, s.concurrency, s.journaled) == (client, concurrency, journaled)
        )

    cpu_ms = statistics.median(
        r["cpu_ms"]
        for s, runs in results.items()
        if s.client == "tuneproof" and not s.journaled
        for r in runs
    )
    loads = " / ".join(f"{x:.2f}" for x in load_before), " / ".join(f"{x:.2f}" for x in load_after)
    body = (
        f"{args.requests:,} distinct chat queries against a local asyncio HTTP/1.1 server in its "
        f"own process that serves like a model server: {args.slots} parallel slots, requests "
        "beyond them queued, a fixed time per request in a slot (emulating model time: an "
        f"instant server has no busy time to compare with); {args.repeats} runs per row, rows "
        "of one server interleaved run by run, the median run shown. Clients: "
        "`OpenAIChatModel` (the `openai` SDK's `AsyncOpenAI`, with the per-attempt deadline and "
        "size cap) with as many requests in flight as the server has slots and with "
        f"{args.concurrency} (the default of `verify`), each without and with a journal (every "
        "answer fsynced before it counts, on the project's ext4 disk); and a bare `httpx` "
        "loop (one `AsyncClient`, a semaphore, `response.json()`) as the floor of a Python "
        f"client. Load average (1 / 5 / 15 min) {loads[0]} before, {loads[1]} after, on 2 "
        "cores.\n\n"
        f"- *server busy* = total service time / {args.slots} slots: the wall time of a perfect "
        "client that keeps every slot full at no cost;\n"
        "- *overhead* = (client wall - server busy) / server busy (target < 5% at 20 ms);\n"
        "- *server idle* = (client wall - time with at least one request in service) / the "
        "latter;\n"
        "- *start-up*: from the client's call to the first request in service (building "
        "the requests, the client, the first connections);\n"
        "- *client CPU per request*: CPU time of the client process / requests (SDK, httpx, "
        "JSON, our bookkeeping, the journal's writes);\n"
        "- *slots x CPU / server time*: the client's work on one wave of answers (all slots "
        "finishing together) against one server time.\n\n"
        f"{table(results, args.slots)}\n\n"
        f"With exactly {args.slots} requests in flight for {args.slots} slots, every slot waits "
        "while the client reads the answer and sends the next request: with a fixed server time "
        "the requests of a wave finish together and the one Python thread handles them one "
        "after the other, so the overhead is about slots x client CPU per request / server time "
        "(last column), and no Python client gets under 5% at "
        f"20 ms that way (bare `httpx`: {overhead('httpx', args.slots)}). With more requests "
        "in flight than slots, the server starts a queued request the moment a slot frees and "
        "the client's work overlaps the server's; it keeps the slots full as long as it handles "
        "a wave within one server time (last column below 100%). Median overhead of "
        f"`OpenAIChatModel` without a journal, {args.slots} in flight: "
        f"{overhead('tuneproof', args.slots)}; {args.concurrency} in flight: "
        f"{overhead('tuneproof', args.concurrency)}; {args.concurrency} in flight with the "
        f"journal: {overhead('tuneproof', args.concurrency, True)}. Client CPU per request "
        f"(median over the rows without a journal): {cpu_ms:.2f} ms.\n"
    )
    print(body)
    if not args.no_write:
        write_section("http_overhead", "HTTP client overhead", body)


if __name__ == "__main__":
    main()
