"""A model of PyTorch's CUDA caching allocator, replayed over a simulated run's allocation log: the
smallest memory pool the run fits in (what the card must give torch beyond the CUDA context).

Modelled after c10/cuda/CUDACachingAllocator.cpp (default settings, no expandable segments):
requests rounded up to 512 B; requests of at most 1 MiB come from 2 MiB segments (small pool), up
to 10 MiB from 20 MiB segments, larger ones from a segment of their size rounded up to 2 MiB; the
best-fitting cached free block is used and split when the rest is big enough (>= 512 B in the
small pool, > 1 MiB in the large one); freed blocks merge with free neighbours; when a new segment
would pass the limit, all wholly free segments are released and the request retried, else OOM.
Light: no torch."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

KB, MB = 1024, 1024**2
MIN_BLOCK = 512
SMALL_SIZE = 1 * MB
SMALL_BUFFER = 2 * MB
LARGE_BUFFER = 20 * MB
MIN_LARGE_ALLOC = 10 * MB
ROUND_LARGE = 2 * MB


def round_size(size: int) -> int:
    return MIN_BLOCK if size < MIN_BLOCK else -(-size // MIN_BLOCK) * MIN_BLOCK


def segment_size(size: int) -> int:
    if size <= SMALL_SIZE:
        return SMALL_BUFFER
    if size < MIN_LARGE_ALLOC:
        return LARGE_BUFFER
    return -(-size // ROUND_LARGE) * ROUND_LARGE


@dataclass
class _Block:
    segment: int
    offset: int
    size: int
    free: bool = True
    prev: "_Block | None" = None
    next: "_Block | None" = None


@dataclass
class _Pool:
    free: list = field(default_factory=list)  # sorted (size, segment, offset, block id)
    blocks: dict = field(default_factory=dict)

    def add(self, b: _Block) -> None:
        bisect.insort(self.free, (b.size, b.segment, b.offset, id(b)))
        self.blocks[id(b)] = b

    def remove(self, b: _Block) -> None:
        i = bisect.bisect_left(self.free, (b.size, b.segment, b.offset, id(b)))
        del self.free[i]
        del self.blocks[id(b)]

    def best_fit(self, size: int) -> _Block | None:
        i = bisect.bisect_left(self.free, (size, -1, -1, -1))
        return self.blocks[self.free[i][3]] if i < len(self.free) else None


class OutOfMemory(Exception):
    pass


class CachingAllocator:
    def __init__(self, limit: int | None = None):
        self.limit = limit
        self.reserved = self.peak_reserved = self.allocated = 0
        self.pools = {True: _Pool(), False: _Pool()}  # small?
        self.segments: dict[int, tuple[bool, int, _Block]] = {}  # id -> (small, size, first block)
        self.live: dict[int, _Block] = {}
        self._next_segment = 0

    def malloc(self, handle: int, nbytes: int) -> None:
        size = round_size(nbytes)
        small = size <= SMALL_SIZE
        pool = self.pools[small]
        block = pool.best_fit(size)
        if block is None:
            block = self._new_segment(small, segment_size(size))
            pool.add(block)
        pool.remove(block)
        rest = block.size - size
        if rest >= MIN_BLOCK if small else rest > SMALL_SIZE:
            tail = _Block(block.segment, block.offset + size, rest, True, block, block.next)
            if block.next:
                block.next.prev = tail
            block.next, block.size = tail, size
            pool.add(tail)
        block.free = False
        self.live[handle] = block
        self.allocated += block.size

    def free(self, handle: int) -> None:
        block = self.live.pop(handle)
        self.allocated -= block.size
        pool = self.pools[self.segments[block.segment][0]]
        block.free = True
        for neighbour in (block.prev, block.next):
            if neighbour is not None and neighbour.free:
                pool.remove(neighbour)
                first, second = (neighbour, block) if neighbour is block.prev else (block, neighbour)
                first.size += second.size
                first.next = second.next
                if second.next:
                    second.next.prev = first
                block = first
        pool.add(block)

    def _new_segment(self, small: bool, size: int) -> _Block:
        if self.limit is not None and self.reserved + size > self.limit:
            self.release_cached()
            if self.reserved + size > self.limit:
                raise OutOfMemory(f"{size} more bytes with {self.reserved} reserved of {self.limit}")
        seg = self._next_segment
        self._next_segment += 1
        block = _Block(seg, 0, size)
        self.segments[seg] = (small, size, block)
        self.reserved += size
        self.peak_reserved = max(self.peak_reserved, self.reserved)
        return block

    def release_cached(self) -> None:
        for seg, (small, size, _) in list(self.segments.items()):
            pool = self.pools[small]
            whole = [b for b in pool.blocks.values() if b.segment == seg and b.offset == 0 and b.size == size]
            if whole:
                pool.remove(whole[0])
                del self.segments[seg]
                self.reserved -= size


def replay(events: list[tuple[int, int]], limit: int | None = None) -> CachingAllocator:
    """Run an allocation log through the allocator: (handle, bytes) allocates, (handle, -1) frees.
    Raises OutOfMemory when a request cannot be served within `limit` bytes of segments."""
    alloc = CachingAllocator(limit)
    for index, (handle, nbytes) in enumerate(events):
        try:
            if nbytes >= 0:
                alloc.malloc(handle, nbytes)
            else:
                alloc.free(handle)
        except OutOfMemory as e:
            e.event, e.allocated = index, alloc.allocated
            raise
    return alloc


def first_unserved_request(events: list[tuple[int, int]]) -> tuple[int, int] | None:
    """The first request a pool as large as the peak of allocated bytes (rounded up to 2 MiB)
    cannot serve, because its cached segments are split by live blocks: (its event index, bytes
    allocated when it came); None when such a pool runs the whole log."""
    try:
        replay(events, -(-peak_allocated(events) // ROUND_LARGE) * ROUND_LARGE)
    except OutOfMemory as e:
        return e.event, e.allocated
    return None


def smallest_pool(events: list[tuple[int, int]]) -> int:
    """The smallest segment limit under which the log replays without OOM. Exact: every segment
    is a multiple of 2 MiB, so the search runs over multiples of 2 MiB, from the peak of allocated
    bytes (a smaller pool cannot hold it) to what the unlimited replay reserved."""
    unit = ROUND_LARGE
    lo = -(-peak_allocated(events) // unit) - 1  # fails: below the peak of allocated bytes
    hi = -(-replay(events).peak_reserved // unit)  # runs
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            replay(events, mid * unit)
            hi = mid
        except OutOfMemory:
            lo = mid
    return hi * unit


def peak_allocated(events: list[tuple[int, int]]) -> int:
    """Peak of the rounded allocated bytes (what torch.cuda.max_memory_allocated reports)."""
    live, now, peak = {}, 0, 0
    for handle, nbytes in events:
        if nbytes >= 0:
            live[handle] = round_size(nbytes)
            now += live[handle]
            peak = max(peak, now)
        else:
            now -= live.pop(handle)
    return peak
