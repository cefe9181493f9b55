"""Progressive JPEGs with far more scans than encoders write are refused before decoding.

Before, a 476 KB 8000x8000 file with one scan repeated 3,000 times passed the pixel limit and
took ~100 s to decode (each scan walks every block again), in `load_image` and in the server.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from kerascope.images import ImageError, decode_image, load_image
from kerascope.images.jpeg import MAX_SCANS, count_scans
from tests.jpeg_bombs import scan_bomb


def _jpeg(picture: np.ndarray, **options) -> bytes:
    out = io.BytesIO()
    Image.fromarray(picture).save(out, "JPEG", **options)
    return out.getvalue()


def test_scans_are_counted_from_the_markers(chelsea):
    assert count_scans(_jpeg(chelsea)) == 1  # baseline, interleaved
    assert count_scans(_jpeg(chelsea, progressive=True)) == 10  # libjpeg's own script
    assert count_scans(_jpeg(chelsea[..., 0], progressive=True)) == 6  # greyscale
    assert count_scans(scan_bomb(64, 64, 40)) == 41
    assert count_scans(scan_bomb(64, 64, 400)) == MAX_SCANS + 1  # stops once it is over


def test_a_thumbnail_inside_exif_is_not_counted(chelsea):
    thumb = _jpeg(chelsea[:32, :32], progressive=True)  # 10 scans of its own
    app1 = b"\xff\xe1" + (len(thumb) + 8).to_bytes(2, "big") + b"Exif\0\0" + thumb
    data = _jpeg(chelsea)
    assert count_scans(data[:2] + app1 + data[2:]) == 1


def test_a_scan_bomb_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.jpg"
    path.write_bytes(scan_bomb(4000, 4000, 3000))  # ~2 s per 100 scans to decode here
    with pytest.raises(ImageError) as caught:
        load_image(path, min_size=(224, 224))
    assert str(path) in str(caught.value) and f"over {MAX_SCANS} scans" in caught.value.reason
    assert "\n" not in str(caught.value)
    with pytest.raises(ImageError, match="scans"):  # an upload (bytes in memory) too
        decode_image(io.BytesIO(path.read_bytes()), "upload")


def test_a_bomb_with_a_multi_picture_index_or_a_segment_flood_is_refused(tmp_path, chelsea):
    """Pillow opens a JPEG carrying an MPF index of two pictures as "MPO", which the check
    skipped (decoded in 9 s); millions of tiny COM segments made the count itself take 7 s."""
    from kerascope.images.jpeg import MAX_SEGMENTS
    from kerascope.serve.decode import read_header

    mpo = io.BytesIO()
    picture = Image.fromarray(chelsea)
    picture.save(mpo, "MPO", save_all=True, append_images=[picture])
    data = mpo.getvalue()
    at = data.find(b"\xff\xe2")  # the APP2 "MPF" segment
    app2 = data[at : at + 2 + int.from_bytes(data[at + 2 : at + 4], "big")]
    assert app2[4:8] == b"MPF\0"
    bomb = scan_bomb(2000, 2000, 400)
    wrapped = bomb[:2] + app2 + bomb[2:]
    assert Image.open(io.BytesIO(wrapped)).format == "MPO"
    with pytest.raises(ImageError, match="scans"):
        decode_image(io.BytesIO(wrapped), "upload")
    assert read_header(wrapped).scans == MAX_SCANS + 1  # the server weighs it as a JPEG too
    progressive = _jpeg(chelsea, progressive=True)
    second = progressive.find(b"\xff\xda", progressive.find(b"\xff\xda") + 2)
    flood = progressive[:second] + b"\xff\xfe\x00\x02" * (MAX_SEGMENTS + 10) + progressive[second:]
    assert count_scans(flood) == MAX_SCANS + 1
    assert count_scans(_jpeg(chelsea, progressive=True)) == 10


def test_ordinary_progressive_and_few_scans_still_decode(tmp_path, chelsea):
    path = tmp_path / "progressive.jpg"
    path.write_bytes(_jpeg(chelsea, progressive=True, quality=95))
    out = load_image(path)
    assert out.shape == chelsea.shape and np.abs(out.astype(int) - chelsea).mean() < 3
    small = tmp_path / "many.jpg"
    small.write_bytes(scan_bomb(64, 64, MAX_SCANS - 1))  # at the limit: decoded
    assert load_image(small).shape == (64, 64, 3)


def test_the_cli_names_the_file_in_one_line(tmp_path, capsys):
    from kerascope.cli import main

    path = tmp_path / "bomb.jpg"
    path.write_bytes(scan_bomb(2000, 2000, 1000))
    main(["classify", str(path), "--model", "efficientnet_lite0", "--format", "csv"])
    out = capsys.readouterr()
    text = out.out + out.err
    assert "bomb.jpg" in text and f"over {MAX_SCANS} scans" in text, text
    assert "Traceback" not in text, text
