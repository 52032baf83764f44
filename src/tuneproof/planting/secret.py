"""The secret randomness of a plant run: one stream keyed by the key's 256-bit seed.

Everything random in a plant run (carriers, positions, triggers, signatures, decoys) comes from
one :class:`SecretStream` keyed by the seed, so the key alone reproduces the run.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import secrets
from collections.abc import Iterator

SEED_BYTES = 32


class SecretStream:
    """A deterministic random stream: HMAC-SHA256(seed, label || counter) in counter mode.

    Independent sub-streams are derived by label with :meth:`child`, so that adding a draw in one
    part of a run never shifts the draws of another part.
    """

    def __init__(self, seed: bytes, label: bytes = b"") -> None:
        if len(seed) < 16:
            raise ValueError("the secret seed must be at least 128 bits")
        self._key = hmac.new(seed, b"tuneproof/v1/" + label, hashlib.sha256).digest()
        self._counter = 0
        self._buffer = b""

    def child(self, label: str) -> SecretStream:
        """Return an independent stream derived from this one's key and ``label``."""
        return SecretStream(self._key, label.encode())

    def random_bytes(self, n: int) -> bytes:
        """Return the next ``n`` bytes of the stream."""
        while len(self._buffer) < n:
            block = hmac.new(self._key, self._counter.to_bytes(16, "big"), hashlib.sha256).digest()
            self._counter += 1
            self._buffer += block
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out

    def randbelow(self, n: int) -> int:
        """Return an integer uniform on ``range(n)`` (rejection sampling: exactly uniform)."""
        if n <= 0:
            raise ValueError("randbelow needs n >= 1")
        if n == 1:
            return 0
        n_bytes = (n - 1).bit_length() // 8 + 1
        limit = (256**n_bytes // n) * n
        while True:
            value = int.from_bytes(self.random_bytes(n_bytes), "big")
            if value < limit:
                return value % n

    def random(self) -> float:
        """Return a float uniform on [0, 1) with 53 random bits."""
        return (int.from_bytes(self.random_bytes(7), "big") >> 3) / 2**53

    def sample(self, population: int, count: int) -> list[int]:
        """Return ``count`` distinct integers drawn uniformly from ``range(population)``."""
        if count > population:
            raise ValueError(f"cannot draw {count} distinct items from {population}")
        return list(itertools.islice(self.permutation(population), count))

    def permutation(self, population: int) -> Iterator[int]:
        """Yield ``range(population)`` in a uniformly random order, lazily: the first ``count``
        are exactly :meth:`sample` (``population``, ``count``), and each next one is uniform
        among those not yet yielded."""
        chosen: dict[int, int] = {}
        for i in range(population):  # partial Fisher-Yates on a sparse permutation
            j = i + self.randbelow(population - i)
            yield chosen.get(j, j)
            chosen[j] = chosen.get(i, i)


def new_seed() -> bytes:
    """Return a fresh 256-bit secret seed from the operating system's CSPRNG."""
    return secrets.token_bytes(SEED_BYTES)
