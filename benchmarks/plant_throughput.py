"""Plant throughput: the datasets-level plant path on a generated OpenAI-chat JSONL, side by side
with ``cp`` of the same file, in the same run.

The plant step is what ``tuneproof plant`` does minus the model: inspect_dataset (detect and
validate every record), read_records for the carriers, make_backdoor with pre-generated
trigger/signature strings, write_planted. It runs in a child process so that its peak RSS can be
measured: the largest single process (``RUSAGE_CHILDREN``) and the whole process tree (the child
and its scan workers, sampled from /proc).

    python benchmarks/plant_throughput.py                 # 1 GB, writes docs/benchmarks.md
    python benchmarks/plant_throughput.py --size-mb 64 --no-doc
"""

from __future__ import annotations

import argparse
import contextlib
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
    insertions: dict[int, list[dict[str, Any]]] = {}
    for (trigger, signature), record in zip(pairs, carriers.values(), strict=True):
        backdoor = make_backdoor(record, info.format, trigger, signature)
        insertions.setdefault(rng.randint(0, info.n_records), []).append(backdoor)
    t3 = time.perf_counter()
    write_planted(info, dst, insertions)
    t4 = time.perf_counter()
    return {
        "workers": workers,
        "inspect": t1 - t0,
        "read": t2 - t1,
        "backdoor": t3 - t2,
        "write": t4 - t3,
        "total": t4 - t0,
    }


class PrecomputedFactory:
    """Pre-generated triggers and signatures, so that the full ``plant()`` runs without a model
    (token counts use a len/4 estimate: tokenizing is model time, excluded here)."""

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

    def signatures(self, messages: Any, streams: Any) -> list[Any]:
        return [self.signature(messages, stream) for stream in streams]

    def count_tokens(self, text: str) -> int:
        return len(text) // 4


def plant_api_step(src: Path, dst: Path, n_carriers: int, seed: int) -> dict[str, float]:
    """The whole ``tuneproof.plant`` (validate, choose carriers, write, hash input and output,
    sample token counts, write the key) with pre-generated backdoors."""
    from tuneproof.planting.planter import plant

    key = dst.with_suffix(".key.json")
    t0 = time.perf_counter()
    plant(src, dst, key, n=n_carriers, replicas=1, factory=PrecomputedFactory(seed), force=True)
    total = time.perf_counter() - t0
    key.unlink()
    return {"total": total}


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
    """Seconds for a child process to orjson.loads every line, checking nothing: the floor."""
    code = (
        "import orjson, sys, time\n"
        "t = time.perf_counter()\n"
        "with open(sys.argv[1], 'rb') as f:\n"
        "    for line in f: orjson.loads(line)\n"
        "print(time.perf_counter() - t)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    return float(done.stdout)


def count_newlines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 24), b""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="size of the generated file")
    parser.add_argument("--carriers", type=int, default=50, help="backdoors to plant")
    parser.add_argument("--repeat", type=int, default=5, help="runs of cp and of the plant step")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dir", type=Path, default=None, help="where to put the temporary files")
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
        src, copy, planted = work / "train.jsonl", work / "copy.jsonl", work / "planted.jsonl"
        t = time.perf_counter()
        n_records = generate(src, args.size_mb * 2**20, args.seed)
        size = src.stat().st_size
        took = time.perf_counter() - t
        print(f"generated {size / 2**20:,.0f} MiB, {n_records:,} records in {took:.1f} s")
        subprocess.run(["sync"], check=False)
        load_before = os.getloadavg()[0]
        cps: list[float] = []
        syncs: list[float] = []
        cp_cpus: list[float] = []
        plants: list[dict[str, float]] = []
        apis: list[dict[str, float]] = []
        for k in range(args.repeat):
            cp_s, cp_cpu_s, sync_s = time_cp(src, copy)
            cps.append(cp_s)
            cp_cpus.append(cp_cpu_s)
            syncs.append(sync_s)
            copy.unlink()
            plants.append(run_plant(src, planted, args.carriers, args.seed + k))
            assert count_newlines(planted) == n_records + args.carriers, (
                "planted file has the wrong record count"
            )
            planted.unlink()
            apis.append(run_plant(src, planted, args.carriers, args.seed + k, api=True))
            assert count_newlines(planted) == n_records + args.carriers
            planted.unlink()
            print(
                f"run {k + 1}: cp {cps[-1]:.2f} s, plant {plants[-1]['total']:.2f} s {plants[-1]}"
            )
        floor = bare_parse(src)
        load_after = os.getloadavg()[0]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    durables = [c + s for c, s in zip(cps, syncs, strict=True)]
    totals = [p["total"] for p in plants]
    ratios = [t / c for t, c in zip(totals, cps, strict=True)]
    med = {key: statistics.median(p[key] for p in plants) for key in plants[0]}
    peak_tree = max(p["peak_rss_tree_mb"] for p in plants)
    peak_proc = max(p["peak_rss_process_mb"] for p in plants)
    ratio = statistics.median(ratios)
    best_ratio = min(totals) / min(cps)
    verdict = "met" if max(ratio, best_ratio) <= 3 else "**not met**"
    plant_cpu = statistics.median(p["cpu"] for p in plants)
    cpu_ratio = plant_cpu / statistics.median(cp_cpus)
    rows = "\n".join(
        f"| {k + 1} | {c:.2f} | {d:.2f} | {t:.2f} | {r:.1f}x |"
        for k, (c, d, t, r) in enumerate(zip(cps, durables, totals, ratios, strict=True))
    )
    mib = size / 2**20
    rss_verdict = "met" if peak_tree <= 300 else "**not met**"
    body = f"""Plant {args.carriers} backdoors into a generated {mib:,.0f} MiB OpenAI-chat JSONL
({n_records:,} records, {size / n_records:,.0f} bytes each on average, `json.dumps` default style)
with pre-generated triggers and signatures (no model), next to `cp` of the same file; each run
times `cp` and then the plant step, page cache warm for both. This machine is shared: load average
{load_before:.1f} before and {load_after:.1f} after, and `cp` times vary a lot from run to run.

| run | `cp` (s) | `cp` + fsync (s) | plant (s) | plant / `cp` |
| --- | ---: | ---: | ---: | ---: |
{rows}
| median | {statistics.median(cps):.2f} | {statistics.median(durables):.2f} \
| {statistics.median(totals):.2f} | {ratio:.1f}x |
| best | {min(cps):.2f} | {min(durables):.2f} | {min(totals):.2f} | {best_ratio:.1f}x |

Plant step, medians: inspect_dataset {med["inspect"]:.2f} s (validate and index every record,
{med["workers"]:.0f} process(es)), read_records {med["read"] * 1000:.1f} ms, make_backdoor
{med["backdoor"] * 1000:.1f} ms, write_planted {med["write"]:.2f} s (kernel copy between
insertion points, then fsync); {med["wall"]:.2f} s with interpreter start-up.

- **Time ratio to `cp`: {ratio:.1f}x** (median of runs; {best_ratio:.1f}x best against best;
  {statistics.median(totals) / statistics.median(durables):.1f}x against `cp` + fsync, what an
  atomic write costs). Target <= 3x: {verdict}.
- CPU time, which the other jobs disturb less: plant {plant_cpu:.2f} s (all its processes,
  start-up included) against {statistics.median(cp_cpus):.2f} s for `cp`: {cpu_ratio:.1f}x.
- Floor: a bare `orjson.loads` loop over the lines, no checks, one process: {floor:.2f} s, that
  is {floor / min(cps):.1f}x the best `cp`. Parsing every record is the price of validating it;
  the write itself costs about what `cp` + fsync costs.
- The whole `tuneproof.plant()` (the same work plus SHA-256 of the input and of the output,
  token counts from a 2,000-record sample, and the key): median
  {statistics.median(a["total"] for a in apis):.2f} s =
  **{statistics.median(a["total"] for a in apis) / statistics.median(cps):.1f}x `cp`**, peak RSS
  {max(a["peak_rss_tree_mb"] for a in apis):.0f} MB.
- **Peak RSS: {peak_tree:.0f} MB** for the whole process tree (plant process and scan worker),
  {peak_proc:.0f} MB for the largest single process. Target <= 300 MB: {rss_verdict}.
"""
    print(body)
    if not args.no_doc:
        write_section("plant_throughput", "Plant throughput (1 GB chat JSONL)", body)


if __name__ == "__main__":
    main()
