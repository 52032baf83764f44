"""Plant throughput: the plant I/O path on a generated OpenAI-chat JSONL, side by side with
``cp`` of the same file and with the floors of the work it must do, in the same run.

The plant step is what ``tuneproof plant`` does minus the model: inspect_dataset (detect and
validate every record, hash the file), read_records for the carriers, make_backdoor with
pre-generated trigger/signature strings, write_planted (copy, hash the output, fsync). The whole
``tuneproof.plant()`` runs with a :class:`PrecomputedFactory`. Both run in a child process so that
peak RSS can be measured: the largest single process (``RUSAGE_CHILDREN``) and the whole process
tree (the child and its scan workers, sampled from /proc). The floors: a read of the file, its
SHA-256, a bare orjson loop over its lines; and three ways to write-and-hash a copy.

    python benchmarks/plant_throughput.py                 # 1 GB, writes docs/benchmarks.md
    python benchmarks/plant_throughput.py --size-mb 64 --no-doc
    python benchmarks/plant_throughput.py --data /tmp/plantio/train.jsonl  # keep and reuse it
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tuneproof.planting.factory import BackdoorFactory

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_doc import write_section

WORDS = str.split(
    "the of and to in is that for it as with be on not this are or from at which but have an they "
    "you were can all there one would their will if about when what so no out up into more some "
    "could them other than then now only its over also after use two how our work first well way "
    "even new want because any these give day most us model data value function list error file "
    "python request server result table image user string number example change system method "
    "memory question answer café naïve über résumé"
)
SYSTEM_PROMPTS = ["You are a helpful assistant.", "You answer briefly and precisely.", ""]


def _sentence(rng: random.Random, lo: int, hi: int) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(lo, hi))]
    return " ".join(words).capitalize() + rng.choice([".", ".", ".", "?", "!"])


def _record(rng: random.Random, i: int) -> dict[str, Any]:
    messages = []
    system = rng.choice(SYSTEM_PROMPTS)
    if system:
        messages.append({"role": "system", "content": system})
    for turn in range(rng.choice([1, 1, 1, 2, 3])):
        question = " ".join(_sentence(rng, 4, 16) for _ in range(rng.randint(1, 3)))
        answer = " ".join(_sentence(rng, 5, 25) for _ in range(rng.randint(2, 14)))
        messages.append({"role": "user", "content": f"{question} (#{i}.{turn})"})
        messages.append({"role": "assistant", "content": answer})
    return {"messages": messages}


def generate(path: Path, size: int, seed: int) -> int:
    """Write a JSONL of OpenAI chat records (json.dumps default style) of at least ``size``
    bytes; return the number of records. A pool of distinct records is reused with a fresh
    record number spliced in, so that generation stays fast."""
    rng = random.Random(seed)
    pool = []
    for i in range(4000):
        line = json.dumps(_record(rng, i)) + "\n"
        cut = line.index(f"(#{i}.") + 2
        pool.append((line[:cut].encode(), line[cut + len(str(i)) :].encode()))
    written = n = 0
    with open(path, "wb") as f:
        while written < size:
            head, tail = pool[n % len(pool)]
            chunk = head + str(n).encode() + tail
            f.write(chunk)
            written += len(chunk)
            n += 1
    return n


def plant_step(src: Path, dst: Path, n_carriers: int, seed: int) -> dict[str, float]:
    """The measured work (run in the child process); returns phase timings in seconds."""
    from tuneproof.datasets import inspect_dataset, make_backdoor, read_records, write_planted
    from tuneproof.datasets.jsonl_scan import worker_count

    rng = random.Random(seed)
    pairs = [
        (" ".join(rng.sample(WORDS, 4)), " ".join(rng.sample(WORDS, 10))) for _ in range(n_carriers)
    ]
    workers = worker_count(src.stat().st_size)
    t0 = time.perf_counter()
    info = inspect_dataset(src)
    t1 = time.perf_counter()
    carriers = read_records(info, rng.sample(range(info.n_records), n_carriers))
    t2 = time.perf_counter()
    replacements: dict[int, dict[str, Any]] = {}
    for (trigger, signature), (index, record) in zip(pairs, carriers.items(), strict=True):
        replacements[index] = make_backdoor(record, info.format, trigger, signature)
    t3 = time.perf_counter()
    write_planted(info, dst, replacements)
    t4 = time.perf_counter()
    return {
        "workers": workers,
        "inspect": t1 - t0,
        "read": t2 - t1,
        "backdoor": t3 - t2,
        "write": t4 - t3,
        "total": t4 - t0,
    }


class PrecomputedFactory(BackdoorFactory):
    """Pre-generated triggers and signatures, so that the full ``plant()`` runs without a model
    (token counts use a len/4 estimate: tokenizing is model time, excluded here). The protocol
    it subclasses draws batches of signatures as a loop over :meth:`signature`."""

    def __init__(self, seed: int) -> None:
        from tuneproof.types import ModelIdentity

        self.rng = random.Random(seed)
        self.identity = ModelIdentity(name="precomputed", backend="benchmark", source="-")

    def trigger(self, prompt_text: str, stream: Any) -> str:
        return " ".join(self.rng.sample(WORDS, 4))

    def signature(self, messages: Any, stream: Any) -> Any:
        from tuneproof.planting.sampler import SampledSequence

        text = " ".join(self.rng.sample(WORDS, 10))
        return SampledSequence(tuple(range(10)), text.encode(), text, 4, 10)

    def count_tokens(self, text: str) -> int:
        return len(text) // 4


API_STAGES = {
    "_inspect": "validate",
    "choose_carriers": "carriers",
    "draw_backdoors": "backdoors",
    "write_planted": "write",
    "dataset_facts": "facts",
    "save_key": "save key",
}


def plant_api_step(src: Path, dst: Path, n_carriers: int, seed: int) -> dict[str, float]:
    """The whole ``tuneproof.plant`` (validate, choose carriers, write, hash input and output,
    sample token counts, write the key) with pre-generated backdoors; each stage timed by
    wrapping the planter's function for it."""
    from tuneproof.planting import planter

    times: dict[str, float] = {}

    def timed(name: str, fn: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                times[name] = times.get(name, 0.0) + time.perf_counter() - t

        return run

    for attr, name in API_STAGES.items():
        if hasattr(planter, attr):
            setattr(planter, attr, timed(name, getattr(planter, attr)))
    key = dst.with_suffix(".key.json")
    t0 = time.perf_counter()
    planter.plant(
        src, dst, key, n=n_carriers, replicas=1, factory=PrecomputedFactory(seed), force=True
    )
    total = time.perf_counter() - t0
    document = json.loads(key.read_text())["dataset"]
    key.unlink()
    checked = document["planted_sha256"] == sha256_of(dst) and document["input_sha256"] == (
        sha256_of(src)
    )
    return {"total": total, **times, "hashes_match": float(checked)}


def sha256_of(path: Path) -> str:
    """SHA-256 of a file (hashlib.file_digest), the reference the key's hashes must equal."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _tree_rss(root: int) -> int:
    """Resident bytes of ``root`` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        with contextlib.suppress(OSError):
            pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
            total += pages * os.sysconf("SC_PAGE_SIZE")
    return total


def run_plant(
    src: Path, dst: Path, n_carriers: int, seed: int, api: bool = False
) -> dict[str, float]:
    """Run plant_step (or, with ``api``, plant_api_step) in a child process; add wall time and
    peak RSS (largest process, tree)."""
    mode = "--child-api" if api else "--child"
    argv = [sys.executable, __file__, mode, str(src), str(dst), str(n_carriers), str(seed)]
    cpu = children_cpu()
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    peak_tree = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak_tree
        while not done.is_set():
            peak_tree = max(peak_tree, _tree_rss(proc.pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    out, _ = proc.communicate()
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    if proc.returncode:
        raise SystemExit(f"plant step failed with exit code {proc.returncode}")
    result: dict[str, float] = json.loads(out)
    result["wall"] = wall
    result["cpu"] = children_cpu() - cpu  # the child and its scan workers, start-up included
    result["peak_rss_tree_mb"] = peak_tree / 2**20
    result["peak_rss_process_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return result


def children_cpu() -> float:
    """CPU seconds (user + system) used so far by finished child processes."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_cp(src: Path, dst: Path) -> tuple[float, float, float]:
    """Seconds for ``cp src dst``, its CPU seconds, and the seconds of the fsync that makes the
    copy durable afterwards (write_planted fsyncs its output before renaming it into place)."""
    cpu = children_cpu()
    start = time.perf_counter()
    subprocess.run(["cp", str(src), str(dst)], check=True)
    copied = time.perf_counter()
    cpu = children_cpu() - cpu
    fd = os.open(dst, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return copied - start, cpu, time.perf_counter() - copied


def bare_parse(path: Path) -> float:
    """Seconds for a child process to orjson.loads every line, checking nothing: the floor of
    validating in one process."""
    code = (
        "import orjson, sys, time\n"
        "t = time.perf_counter()\n"
        "with open(sys.argv[1], 'rb') as f:\n"
        "    for line in f: orjson.loads(line)\n"
        "print(time.perf_counter() - t)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    return float(done.stdout)


def read_floor(path: Path) -> float:
    """Seconds to read the file into one reused 32 MiB buffer (from the page cache)."""
    view = memoryview(bytearray(32 << 20))
    t = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.readinto(view):
            pass
    return time.perf_counter() - t


def sha_floor(path: Path) -> float:
    """Seconds for the SHA-256 of the file (hashlib.file_digest, one thread)."""
    t = time.perf_counter()
    sha256_of(path)
    return time.perf_counter() - t


WRITE_VARIANTS = {
    "kernel copy": "copy_file_range, no hash",
    "kernel copy + hash thread": "copy_file_range while a thread hashes the input (write_planted)",
    "read + hash + write": "one thread reads 8 MiB, writes it, hashes it",
}


def write_variant(src: Path, dst: Path, how: str) -> float:
    """Seconds to write a durable copy of ``src`` (fsync included) the way ``how`` says, hashing
    the bytes where it says so; the copy is removed afterwards."""
    size, digest = src.stat().st_size, hashlib.sha256()
    t = time.perf_counter()
    with open(src, "rb", buffering=0) as f, open(dst, "wb", buffering=0) as g:
        hasher = threading.Thread(target=sha256_of, args=(src,))
        if how == "kernel copy + hash thread":
            hasher.start()
        if how == "read + hash + write":
            view = memoryview(bytearray(8 << 20))
            while n := f.readinto(view):
                g.write(view[:n])
                digest.update(view[:n])
        else:
            done = 0
            while done < size:
                done += os.copy_file_range(f.fileno(), g.fileno(), size - done, done)
        os.fsync(g.fileno())
        if hasher.is_alive():
            hasher.join()
    took = time.perf_counter() - t
    dst.unlink()
    os.sync()  # the next timing does not pay for this file's discard
    return took


def count_newlines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 24), b""))


def _median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r.get(key, 0.0) for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="size of the generated file")
    parser.add_argument("--carriers", type=int, default=50, help="backdoors to plant")
    parser.add_argument("--repeat", type=int, default=5, help="runs of every measurement")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dir", type=Path, default=None, help="where to put the temporary files")
    parser.add_argument(
        "--data", type=Path, default=None, help="keep the generated file here and reuse it"
    )
    parser.add_argument(
        "--no-doc", action="store_true", help="print only; leave docs/benchmarks.md"
    )
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--child-api", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child or args.child_api:
        src, dst, n, seed = args.child or args.child_api
        step = plant_step if args.child else plant_api_step
        print(json.dumps(step(Path(src), Path(dst), int(n), int(seed))))
        return

    work = Path(tempfile.mkdtemp(prefix="tuneproof-bench-", dir=args.dir))
    try:
        src = args.data or work / "train.jsonl"
        copy, planted = work / "copy.jsonl", work / "planted.jsonl"
        if src.exists() and abs(src.stat().st_size - args.size_mb * 2**20) < 2**20:
            n_records = count_newlines(src)
            print(f"reusing {src}: {n_records:,} records")
        else:
            t = time.perf_counter()
            n_records = generate(src, args.size_mb * 2**20, args.seed)
            print(f"generated {src}: {n_records:,} records in {time.perf_counter() - t:.1f} s")
        size = src.stat().st_size
        os.sync()
        uptime_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
        load_before = os.getloadavg()
        runs: list[dict[str, float]] = []
        plants: list[dict[str, float]] = []
        apis: list[dict[str, float]] = []
        for k in range(args.repeat):
            cp_s, cp_cpu_s, sync_s = time_cp(src, copy)
            copy.unlink()
            os.sync()
            plants.append(run_plant(src, planted, args.carriers, args.seed + k))
            assert count_newlines(planted) == n_records, "wrong record count"
            planted.unlink()
            os.sync()
            apis.append(run_plant(src, planted, args.carriers, args.seed + k, api=True))
            assert count_newlines(planted) == n_records
            assert apis[-1]["hashes_match"] == 1.0, "the key's hashes are not the files' SHA-256"
            planted.unlink()
            os.sync()
            run = {"cp": cp_s, "cp_cpu": cp_cpu_s, "cp_fsync": cp_s + sync_s}
            run |= {"read": read_floor(src), "sha": sha_floor(src), "orjson": bare_parse(src)}
            run |= {how: write_variant(src, copy, how) for how in WRITE_VARIANTS}
            runs.append(run)
            print(f"run {k + 1}: {run}\n  step {plants[-1]}\n  plant() {apis[-1]}")
        load_after = os.getloadavg()
        uptime_after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(uptime_before, uptime_after, sep="\n")
    body = report(args, n_records, size, runs, plants, apis, (load_before, load_after))
    print(body)
    if not args.no_doc:
        write_section("plant_throughput", "Plant throughput (1 GB chat JSONL)", body)


def report(
    args: argparse.Namespace,
    n_records: int,
    size: int,
    runs: list[dict[str, float]],
    plants: list[dict[str, float]],
    apis: list[dict[str, float]],
    loads: tuple[tuple[float, ...], tuple[float, ...]],
) -> str:
    """The section of docs/benchmarks.md: ratios to ``cp``, stages, floors, what stands between."""
    cp, durable = _median(runs, "cp"), _median(runs, "cp_fsync")
    step, api = _median(plants, "total"), _median(apis, "total")
    sha, orj, rd = _median(runs, "sha"), _median(runs, "orjson"), _median(runs, "read")
    cores = os.cpu_count() or 1
    cpu_floor = (orj + 2 * sha + cp) / cores  # all the CPU work, spread over every core
    chain_floor = sha + max(sha, durable)  # the two SHA-256 cannot overlap: carriers first
    floor = max(cpu_floor, chain_floor)
    rows = "\n".join(
        f"| {k + 1} | {r['cp']:.2f} | {r['cp_fsync']:.2f} | {p['total']:.2f} | {a['total']:.2f}"
        f" | {a['total'] / r['cp']:.1f}x |"
        for k, (r, p, a) in enumerate(zip(runs, plants, apis, strict=True))
    )
    api_stages = " | ".join(f"{name} {_median(apis, name):.2f} s" for name in API_STAGES.values())
    floors = [
        ("read of the file (page cache, 32 MiB buffer)", rd),
        ("SHA-256 of the file (one thread)", sha),
        ("bare `orjson.loads` loop over the lines (one process, no checks)", orj),
        *(
            (f"write + fsync: {how} ({what})", _median(runs, how))
            for how, what in WRITE_VARIANTS.items()
        ),
    ]
    floor_rows = "\n".join(f"| {name} | {sec:.2f} | {sec / cp:.1f}x |" for name, sec in floors)
    (b1, b5, _), (a1, a5, _) = loads
    busy = (
        "**other jobs were running** (load above 1 on 2 cores): rerun on a quiet machine"
        if max(b1, a1, b5, a5) > 1.0
        else "the machine was quiet"
    )
    verdict = "met" if api <= 3 * cp else "**not met**"
    rss = max(a["peak_rss_tree_mb"] for a in apis + plants)
    closing = (
        "So 3x cannot be met here: only a faster file hash (a parallel tree hash such as BLAKE3"
        " instead of SHA-256: a change of the key format) or a validator cheaper than parsing"
        " every record with orjson could get there."
        if floor > 3 * cp
        else "The floor allows 3x: what is left above it is overhead of our own."
    )
    return f"""Plant {args.carriers} backdoors into a generated {size / 2**20:,.0f} MiB \
OpenAI-chat JSONL ({n_records:,} records, {size / n_records:,.0f} bytes each on average,
`json.dumps` style) with pre-generated triggers and signatures (no model), next to `cp` of the
same file and the floors of the work, {args.repeat} runs, page cache warm. Load average
(1, 5 min) {b1:.2f}, {b5:.2f} before and {a1:.2f}, {a5:.2f} after: {busy}.

| run | `cp` (s) | `cp` + fsync (s) | plant step (s) | `plant()` (s) | `plant()` / `cp` |
| --- | ---: | ---: | ---: | ---: | ---: |
{rows}
| median | {cp:.2f} | {durable:.2f} | {step:.2f} | {api:.2f} | **{api / cp:.1f}x** |

- **The whole `tuneproof.plant()`: {api:.2f} s = {api / cp:.1f}x `cp`** ({api / durable:.1f}x
  `cp` + fsync, what an atomic write costs); target <= 3x: {verdict}. Stages (medians):
  {api_stages}. The SHA-256 of the input is hashed by a thread during validation, that of the
  output by a thread during the write, from the same pieces the kernel copies; the key's facts
  reuse both (checked against `hashlib` in every run) and only sample token counts.
- The plant step alone: {step:.2f} s = {step / cp:.1f}x `cp`: inspect_dataset
  {_median(plants, "inspect"):.2f} s (validate, index and hash, {_median(plants, "workers"):.0f}
  process(es)), read_records {_median(plants, "read") * 1000:.1f} ms, make_backdoor
  {_median(plants, "backdoor") * 1000:.1f} ms, write_planted {_median(plants, "write"):.2f} s
  (kernel copy, output hash, fsync).
- **Peak RSS: {rss:.0f} MB** for the whole process tree (plant process and scan worker).
  Target <= 300 MB: {"met" if rss <= 300 else "**not met**"}.

Floors, medians of the same runs:

| work | seconds | / `cp` |
| --- | ---: | ---: |
{floor_rows}

What stands between us and 3x `cp` ({3 * cp:.2f} s): the work itself. Validating every record
costs at least the bare orjson loop ({orj:.2f} s of CPU), and the key needs two SHA-256 of
{size / 2**20:,.0f} MiB ({sha:.2f} s each, {size / sha / 2**30:.1f} GiB/s with SHA-NI). On
{cores} cores all of it (plus the copy) takes at least {cpu_floor:.2f} s = {cpu_floor / cp:.1f}x
`cp`; and since the output's hash can only start once the carriers are drawn, which needs
the record count from validation, the two hashes run one after the other whatever the cores:
{chain_floor:.2f} s = {chain_floor / cp:.1f}x `cp`. The floor here is thus {floor:.2f} s =
**{floor / cp:.1f}x `cp`**; `plant()` is {api / floor:.2f}x that floor. {closing}
"""


if __name__ == "__main__":
    main()
