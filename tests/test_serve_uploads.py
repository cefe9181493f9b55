"""Explain's uploads are weighed once: `weigh` reads each header once for the picture's decode
and the model's, and hands `decode_all` which uploads need the second decode. Before, the
header of an explained upload was read four times (`pixel_cost` and `_prepare`, twice each)."""

from __future__ import annotations

import asyncio
import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

SIZE = (224, 224)


def jpeg(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (10, 20, 30)).save(out, "JPEG")
    return out.getvalue()


@pytest.fixture
def opened(monkeypatch):
    """A list that gains one entry per header Pillow parses (every ``Image.open``)."""
    calls, real = [], Image.open

    def counting(fp, *args, **kwargs):
        calls.append(fp)
        return real(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", counting)
    return calls


def test_decode_costs_are_the_sizes_the_decode_gives(photo_paths):
    """One header read for every floor, and each size is the real decode's (the draft is
    computed, not run: `kerascope.images.jpeg.draft_scale`, as the decode does)."""
    from kerascope.serve.decode import decode_bytes, decode_cost, decode_costs

    floors = [None, SIZE, (300, 300), (512, 512), (1200, 1200)]
    for data in (jpeg(4001, 2999), jpeg(2400, 1800), photo_paths["chelsea"].read_bytes()):
        costs = decode_costs(data, floors)
        assert costs == [decode_cost(data, f) for f in floors]
        for floor, (pixels, width, height) in zip(floors, costs, strict=True):
            shape = decode_bytes(data, floor).shape
            assert shape[:2] == (height, width) and pixels == width * height, (floor, shape)
    assert decode_costs(b"not an image", floors) == [(0, 0, 0)] * len(floors)


def test_explain_reads_each_header_once_before_decoding(photo_paths, opened):
    from kerascope.serve.uploads import decode_all, pixel_cost, weigh

    big, cat = jpeg(4000, 3000), photo_paths["chelsea"].read_bytes()
    uploads = [("big.jpg", big), ("chelsea.png", cat), ("junk", b"not an image")]
    weighed = weigh(uploads, SIZE, True, 1024)
    assert len(opened) == 3  # one header each
    # the picture (2000x1500), drawn at 1024 px, and the model's own decode (1000x750)
    drawn = 2000 * 1500 + 1024 * 768 + 1000 * 750 + 2 * 451 * 300
    assert weighed.pixels == pytest.approx(drawn, abs=1)
    assert weighed.pixels == pixel_cost(uploads, SIZE, True, 1024)
    assert weighed.again == (True, False, False)

    del opened[:]
    with ThreadPoolExecutor(2) as pool:
        items = asyncio.run(decode_all(uploads, SIZE, pool, True, None, 1024, weighed))
    assert len(opened) == 3 + 1  # decodes only: the big JPEG twice, the cat once, the junk
    assert [it.original.shape[:2] for it in items[:2]] == [(1500, 2000), (300, 451)]
    assert items[2].error is not None and items[2].status == 415

    del opened[:]  # without the weighing, the same result from one more header read each
    with ThreadPoolExecutor(2) as pool:
        alone = asyncio.run(decode_all(uploads, SIZE, pool, True, None, 1024))
    assert len(opened) == 4 + 3
    for a, b in zip(items[:2], alone[:2], strict=True):
        assert np.array_equal(a.pixels, b.pixels) and np.array_equal(a.original, b.original)


def test_classify_needs_no_second_decode(opened):
    from kerascope.serve.uploads import weigh

    weighed = weigh([("big.jpg", jpeg(4000, 3000))], SIZE)
    assert weighed.pixels == 1000 * 750 and weighed.again == (False,) and len(opened) == 1
