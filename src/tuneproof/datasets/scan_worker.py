"""Entry point of a worker process that checks one part of a JSONL file for
:func:`tuneproof.datasets.jsonl_scan.scan`: ``python -m tuneproof.datasets.scan_worker PATH START
END FORMAT DETECTED`` writes the pickled result of ``scan_part`` to standard output."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

from tuneproof.datasets.jsonl_scan import scan_part
from tuneproof.datasets.records import DatasetFormat


def main(argv: list[str]) -> None:
    """Check ``argv = [path, start, end, format, detected]``; write the pickled result."""
    path, start, end, fmt, detected = argv
    part = scan_part(Path(path), int(start), int(end), DatasetFormat(fmt), detected == "1")
    sys.stdout.buffer.write(pickle.dumps(part, protocol=pickle.HIGHEST_PROTOCOL))


if __name__ == "__main__":
    main(sys.argv[1:])
