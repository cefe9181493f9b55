"""The overwrite rule for explain and video (issue 23 item 6, issue 24 item 3): an existing
file is not replaced unless --overwrite is given, an input never is (even with --overwrite),
and names are unique within a job. Each refusal is one line, before any work."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest
from PIL import Image

from kerascope.cam.save import save_explanations
from kerascope.cli import main
from kerascope.errors import KerascopeError


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _jpeg(path, chelsea: np.ndarray, shift: int = 0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(chelsea[shift : shift + 200, shift : shift + 300]).save(path, quality=90)
    return path


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def test_an_existing_picture_is_kept_unless_overwrite(tiny_clf, chelsea, tmp_path):
    photo = _jpeg(tmp_path / "in" / "pic.jpg", chelsea)
    out = tmp_path / "out"
    out.mkdir()
    earlier = out / "pic-output.jpg"
    earlier.write_bytes(b"someone else's file")
    with pytest.raises(
        FileExistsError, match=r"pic-output.jpg' already exists.*overwrite=True"
    ) as e:
        save_explanations(photo, out, tiny_clf)
    assert isinstance(e.value, KerascopeError)  # the CLI prints it as one line
    assert "--overwrite" not in str(e.value) and "(-o" not in str(e.value)  # the API's words
    assert earlier.read_bytes() == b"someone else's file"
    saved = save_explanations(photo, out, tiny_clf, overwrite=True)
    assert saved[0].path == earlier
    with Image.open(earlier) as picture:
        assert picture.format == "JPEG"


def test_the_cli_refuses_an_existing_picture_in_one_line(chelsea, tmp_path, capsys):
    photo = _jpeg(tmp_path / "pic.jpg", chelsea)
    out = tmp_path / "out"
    out.mkdir()
    (out / "pic-output.jpg").write_bytes(b"keep me")
    assert main(["explain", str(photo), "-o", str(out)]) != 0  # refused before the model loads
    line = _one_line(capsys.readouterr().err)
    assert "already exists" in line and "add --overwrite" in line and "(-o)" in line
    assert "overwrite=True" not in line and "output_dir" not in line  # before: both wordings
    assert (out / "pic-output.jpg").read_bytes() == b"keep me"


def test_an_input_is_never_replaced_even_with_overwrite(tiny_clf, chelsea, tmp_path):
    """Input folder = output folder, holding pic.jpg and pic-output.jpg (an earlier picture,
    now an input): pic.jpg's picture would replace an input of the same job."""
    folder = tmp_path / "photos"
    _jpeg(folder / "pic.jpg", chelsea)
    second = _jpeg(folder / "pic-output.jpg", chelsea, shift=20)
    before = _digest(second)
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="is the input .* never replaced"):
            save_explanations(folder, folder, tiny_clf, overwrite=overwrite)
        assert _digest(second) == before
    assert sorted(p.name for p in folder.iterdir()) == ["pic-output.jpg", "pic.jpg"]


def test_an_input_reached_through_a_link_is_not_replaced(tiny_clf, chelsea, tmp_path):
    photo = _jpeg(tmp_path / "in" / "pic.jpg", chelsea)
    out = tmp_path / "out"
    out.mkdir()
    (out / "pic-output.jpg").symlink_to(photo)
    before = _digest(photo)
    with pytest.raises(FileExistsError, match="is the input"):
        save_explanations(photo, out, tiny_clf, overwrite=True)
    assert _digest(photo) == before


def test_output_that_is_the_input_file_is_one_line(chelsea, tmp_path, capsys):
    """`explain x.jpg -o x.jpg`: -o is a folder; naming the photo is one line, the photo kept."""
    photo = _jpeg(tmp_path / "x.jpg", chelsea)
    before = _digest(photo)
    for extra in ([], ["--overwrite"]):
        assert main(["explain", str(photo), "-o", str(photo), *extra]) != 0
        line = _one_line(capsys.readouterr().err)
        assert "is a file (it is one of the inputs)" in line
    assert _digest(photo) == before


def test_same_names_in_different_folders_get_distinct_pictures(tiny_clf, chelsea, tmp_path):
    a = _jpeg(tmp_path / "a" / "pic.jpg", chelsea)
    c = _jpeg(tmp_path / "c" / "pic.jpg", chelsea, shift=30)
    saved = save_explanations([a, c], tmp_path / "out", tiny_clf)
    paths = [s.path for s in saved]
    assert len(set(paths)) == 2 and all(p.is_file() for p in paths)
    assert [p.relative_to(tmp_path / "out").parts[0] for p in paths] == ["a", "c"]


def test_a_picture_that_appears_during_the_job_is_kept(tiny_clf, chelsea, tmp_path):
    """Publishing is exclusive (a hard link of the finished temp file): a file created at the
    name after the check is not replaced."""
    from kerascope.cam.outputs import write_new_jpeg

    target = tmp_path / "late-output.jpg"
    target.write_bytes(b"arrived first")
    with pytest.raises(FileExistsError, match="appeared while the job ran") as e:
        write_new_jpeg(np.zeros((8, 8, 3), np.uint8), target)
    assert "overwrite=True" in str(e.value) and "--overwrite" in e.value.cli
    assert "--overwrite" not in str(e.value) and "overwrite=True" not in e.value.cli
    assert target.read_bytes() == b"arrived first"
    assert [p.name for p in tmp_path.iterdir()] == ["late-output.jpg"]  # no temp file left


# --- video ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip(tmp_path_factory, photo_paths):
    av = pytest.importorskip("av")
    from kerascope.images import resize

    from .conftest import load_rgb

    cat = resize(load_rgb(photo_paths["chelsea"]), (120, 160))
    path = tmp_path_factory.mktemp("clip") / "cat.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for i in range(4):
            frame = av.VideoFrame.from_ndarray(np.roll(cat, 4 * i, axis=1), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def test_video_keeps_an_existing_output_unless_overwrite(clip, tmp_path, capsys):
    from kerascope.video import VideoOutputError, explain_video

    source = tmp_path / "cat.mp4"
    shutil.copy(clip, source)
    default = tmp_path / "cat-output.mp4"
    default.write_bytes(b"an earlier video")
    with pytest.raises(VideoOutputError, match="already exists; add --overwrite"):
        explain_video(source)  # refused before the model loads
    chosen = tmp_path / "mine.mp4"
    chosen.write_bytes(b"my video")
    assert main(["video", str(source), "-o", str(chosen)]) != 0
    assert "already exists" in _one_line(capsys.readouterr().err)
    assert default.read_bytes() == b"an earlier video" and chosen.read_bytes() == b"my video"


def test_video_overwrite_replaces_the_output_never_the_input(clip, tmp_path, capsys, tiny_clf):
    from kerascope.video import VideoOutputError, explain_video, open_video

    source = tmp_path / "cat.mp4"
    shutil.copy(clip, source)
    before = _digest(source)
    for overwrite in (False, True):
        with pytest.raises(VideoOutputError, match="is the input video"):
            explain_video(source, source, clf=tiny_clf, overwrite=overwrite)
    assert _digest(source) == before
    chosen = tmp_path / "mine.mp4"
    chosen.write_bytes(b"my video")
    report = explain_video(source, chosen, clf=tiny_clf, overwrite=True, batch_size=3)
    assert report.frames == 4 and report.precision == "float32"
    container, stream = open_video(chosen)
    container.close()
    frames = tmp_path / "frames"
    frames.mkdir()
    (frames / "frame_00001.jpg").write_bytes(b"an earlier frame")
    with pytest.raises(VideoOutputError, match="already holds 1 frame file"):
        explain_video(source, tmp_path / "new.mp4", clf=tiny_clf, frames_dir=frames)
    assert (frames / "frame_00001.jpg").read_bytes() == b"an earlier frame"


def test_explain_into_its_input_folder_runs_again(tmp_path, capsys):
    """Before: `explain photos -o photos` run twice took the first run's pictures as inputs,
    and refused itself ("the output ... is the input"), even with --overwrite."""
    from kerascope.testing import skimage_data

    shutil.copy(skimage_data() / "chelsea.png", tmp_path / "cat.png")
    assert main(["explain", str(tmp_path), "-o", str(tmp_path)]) == 0
    first = _digest(tmp_path / "cat-output.jpg")
    capsys.readouterr()
    assert main(["explain", str(tmp_path), "-o", str(tmp_path), "--overwrite"]) == 0
    err = capsys.readouterr().err
    assert "left out 1 picture(s) of an earlier explain" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat-output.jpg", "cat.png"]
    assert _digest(tmp_path / "cat-output.jpg") == first  # the same picture, drawn again


def test_skip_existing_explains_only_the_images_without_a_picture(tiny_clf, chelsea, tmp_path):
    """Before: an interrupted explain could only be run again whole (--overwrite). The names
    stay those of the whole input list (a/pic and c/pic keep their sub-folders)."""
    a = _jpeg(tmp_path / "a" / "pic.jpg", chelsea)
    c = _jpeg(tmp_path / "c" / "pic.jpg", chelsea, shift=30)
    out = tmp_path / "out"
    first = save_explanations([a, c], out, tiny_clf)
    kept = first[0].path
    stamp = _digest(kept)
    first[1].path.unlink()
    again = save_explanations([a, c], out, tiny_clf, skip_existing=True)
    assert [s.path for s in again] == [first[1].path] and first[1].path.is_file()
    assert _digest(kept) == stamp


def test_the_cli_skip_existing_says_what_it_kept(chelsea, tmp_path, capsys):
    photos = [_jpeg(tmp_path / "in" / f"p{i}.jpg", chelsea, shift=10 * i) for i in range(3)]
    out = tmp_path / "out"
    out.mkdir()
    (out / "p0-output.jpg").write_bytes(b"kept")
    args = ["explain", *map(str, photos), "-o", str(out), "--skip-existing"]
    assert main([*args, "--score"]) == 0  # the review found --score zipping the whole list
    err = capsys.readouterr().err
    assert (
        f"1 picture(s) already in '{out}' are kept (--skip-existing): explaining the other 2" in err
    )
    assert (out / "p0-output.jpg").read_bytes() == b"kept" and (out / "p2-output.jpg").is_file()
    assert main(args) == 0
    assert f"every picture is already in '{out}' (--skip-existing)" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) != 0
    assert "not with --overwrite" in _one_line(capsys.readouterr().err)
