"""The layout of a job's data.pickle: item-aligned blocks (whole tasks for a fixed
chunksize) of at most BLOCK_BYTES unless one task alone is bigger, each as large as that
allows; and data.pickle holds the payloads' bytes in order, whatever their kind."""
import random

from cloudbutton_executor import protocol, serialize
from cloudbutton_executor.jobdata import BLOCK_BYTES, JobInputs
from cloudbutton_executor.storage import LocalStorage


def test_blocks_are_whole_tasks_as_large_as_the_limit_allows():
    rng = random.Random(7)
    for _ in range(400):
        n = rng.randint(1, 200)
        top = rng.choice([10, 2000, 60_000, 300_000])
        sizes = [rng.randint(1, top) for _ in range(n)]
        chunksize = rng.choice(["auto", 1, 2, 3, 16, 250])
        step = 1 if chunksize == "auto" else chunksize
        blocks = JobInputs.from_payloads([b"x" * s for s in sizes], chunksize).blocks
        assert blocks[0][0] == 0 and blocks[-1][1] == n
        for (a, b, _), (c, _d, _) in zip(blocks, blocks[1:]):
            assert b == c  # contiguous
        for a, b, _ in blocks:
            size = sum(sizes[a:b])
            assert a % step == 0 and (b % step == 0 or b == n)
            assert size <= BLOCK_BYTES or b - a <= step  # only one task may be bigger
            if b < n:  # maximal: the next task would not fit
                assert size + sum(sizes[b:b + step]) > BLOCK_BYTES


def test_data_pickle_holds_the_payloads_in_order(tmp_path):
    storage = LocalStorage(str(tmp_path))
    big = bytes(range(256)) * 1000
    pieces = serialize._dump_plain_pieces(((big,), {}), 5)
    assert isinstance(pieces, serialize.Pieces)
    payloads = [b"%d" % i for i in range(10_000)] + [pieces] + [b"tail"] * 5000 + [big * 20]
    inputs = JobInputs.from_payloads(payloads, "auto")
    inputs.upload(storage, "p", "j")
    assert storage.get(protocol.data_key("p", "j")) == serialize.join(payloads)
    assert serialize.join(payloads) == b"".join(b"".join(p.parts) if isinstance(p, serialize.Pieces)
                                                 else p for p in payloads)
