"""A video's input side: open and probe it (PyAV), and read its frames in a thread.

`FrameReader` demuxes, decodes and prepares frames (`FramePipeline.prepare`: RGB, the model's
view, the frame's time) ahead of the model, so that the next batch is ready when the model is
done; audio goes on to the pipeline's encoder from the same thread. Input errors are
`VideoError`, naming the file and what a user can do.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import threading
from fractions import Fraction

from kerascope.errors import KerascopeError
from kerascope.images import file_problem
from kerascope.output import counted
from kerascope.video_frames import _PENDING_BYTES, Budget, FramePipeline


class VideoError(KerascopeError):
    """A video that cannot be used, with the path and a reason a user can act on."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read video '{self.path}': {reason}")

    def __reduce__(self):
        return (type(self), (self.path, self.reason))


def open_video(path: str | os.PathLike):
    """Open ``path`` with PyAV and return ``(container, video_stream)``, or raise VideoError.

    The file is checked first because FFmpeg's messages for a missing file, a folder or an
    empty file name neither the file nor the fix.
    """
    p = os.fspath(path)
    try:
        import av
    except ImportError:
        raise VideoError(p, "video support needs PyAV: pip install av") from None
    problem = file_problem(p, "a video file")
    if problem and problem.startswith("is a directory"):
        problem += " (for a folder of pictures: `kerascope explain FOLDER -o OUT`)"
    if problem:
        raise VideoError(p, problem)
    try:
        container = av.open(p, metadata_errors="ignore")
    except av.error.InvalidDataError:
        raise VideoError(p, "not a video file, or its header is corrupt or truncated") from None
    except av.error.EOFError:  # "[Errno 541478725] End of file": no frame before the end
        raise VideoError(p, "the file ends before its first frame (empty or truncated)") from None
    except (av.error.FFmpegError, OSError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise VideoError(p, f"cannot open ({reason})") from None
    if not container.streams.video:
        container.close()
        raise VideoError(p, "no video stream in the file (audio only?)")
    stream = container.streams.video[0]
    if stream.codec_context is None or not stream.codec_context.width:
        container.close()
        raise VideoError(p, "video stream has no decodable picture (unknown codec or size)")
    stream.thread_type = "AUTO"
    return container, stream


def frame_rate(stream) -> Fraction:
    """The stream's average rate, falling back to the guessed one and then 25 fps."""
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return Fraction(rate)
    return Fraction(25)


def estimate_frames(path: str | os.PathLike) -> int:
    """Frame count from the header (or duration x rate), for a progress bar's total; 0 if
    unknown. Headers can be off by a few frames, so use it for display only."""
    container, stream = open_video(path)
    with contextlib.closing(container):
        found = promised_frames(stream)
        end = stated_end(stream)  # the video's own end, not the longest stream's
        if found or (end is None and not container.duration):
            return found
        if end is None:
            end = (container.duration or 0) / 1_000_000  # the longest stream's
        begin = float((stream.start_time or 0) * (stream.time_base or 0))
        return max(0, round((end - begin) * float(frame_rate(stream))))


def promised_frames(stream) -> int:
    """The video stream's own frame count, or its own duration x rate; 0 if it states
    neither. Never the container's duration, which covers the longest stream: an MKV whose
    audio runs past its video would read as a truncated video. FFmpeg copies that duration
    into a track that states none (a Matroska video of a few frames under longer sound), so
    a stream's duration equal to the container's counts only in a one-stream file."""
    if stream.frames:
        return int(stream.frames)
    seconds = (stream.duration or 0) * (stream.time_base or 0)
    if not seconds or (len(stream.container.streams) > 1 and _copied(stream)):
        return 0
    return round(float(seconds * frame_rate(stream)))


def stated_end(stream) -> float | None:
    """Where the file says ``stream`` ends, in seconds on its clock, or None: Matroska's
    DURATION tag (FFmpeg writes the track's end there, mkvmerge its length, no later; it
    survives truncation), else the stream's start + duration (MP4's track header)."""
    for key, value in stream.metadata.items():
        if key.upper() == "DURATION" or key.upper().startswith("DURATION-"):
            found = re.fullmatch(r"\s*(\d+):(\d+):(\d+(?:\.\d*)?)\s*", value)
            if found:
                hours, minutes, seconds = found.groups()
                return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    if not stream.duration or not stream.time_base:
        return None
    return float(((stream.start_time or 0) + stream.duration) * stream.time_base)


def _copied(stream) -> bool:
    """Whether the stream's duration is only the container's (FFmpeg's fill for a track
    that states none)."""
    container, tick = stream.container, float(stream.time_base or 0)
    if not container.duration or not tick:
        return False
    return abs((stream.duration or 0) * tick - container.duration / 1_000_000) <= tick + 1e-6


class FrameReader:
    """Demux, decode and prepare the frames in a thread, up to `_PENDING_BYTES` (frames and
    the model's views) ahead of the model. What ends the thread (an input error) is raised by
    `frames`, in the model's thread."""

    def __init__(self, container, vstream, astream, pipeline: FramePipeline, path):
        self.ahead = Budget(_PENDING_BYTES)
        self.ready: queue.SimpleQueue = queue.SimpleQueue()
        self.stopping = threading.Event()
        self.count = 0
        self.reach = Reach((vstream, astream))
        args = (container, vstream, astream, pipeline, path)
        self.thread = threading.Thread(target=self._work, args=args, daemon=True,
                                       name="kerascope-video-read")  # fmt: skip
        self.thread.start()

    def _work(self, container, vstream, astream, pipeline: FramePipeline, path) -> None:
        try:
            for packet, frame in _read(container, vstream, astream, self.reach):
                if self.stopping.is_set():
                    return
                if frame is None:
                    pipeline.audio_packet(packet)
                    continue
                item = pipeline.prepare(frame, self.count)
                self.count += 1
                self.ahead.take(_held(item), self.stopping.is_set)
                self.ready.put(item)
            self.ready.put(None)
        except BaseException as exc:  # noqa: BLE001 - raised again by `frames`
            self.ready.put(exc)

    def frames(self):
        """The prepared frames in order, as the thread makes them."""
        while (item := self.ready.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            self.ahead.give(_held(item))
            yield item

    def stop(self) -> None:
        """End the thread (at once, or after the packet it decodes) and wait for it."""
        self.stopping.set()
        self.ahead.wake()
        while self.thread.is_alive():
            with contextlib.suppress(KeyboardInterrupt):  # a second Ctrl-C: still wait
                self.thread.join()


def _held(item: tuple) -> int:
    """Bytes a prepared frame holds: its picture and, for a key frame, the model's view."""
    return item[0].nbytes + (item[1].nbytes if item[1] is not None else 0)


class Reach:
    """How far reading got, in seconds of the input, and what failed on the way: the ends of
    the video packets read, of the frames decoded from them and of the audio packets; the
    packets the decoder refused. A damaged video is written as far as it can be read (as the
    ffmpeg tool does: a refused packet is skipped, its neighbours until the next key frame are
    lost) and `problem` says so. Ends matter because with frame threading FFmpeg drops a
    packet it cannot decode without an error (a corrupt MKV read as 27 frames of 200, exit 0)
    and a truncated MKV demuxes to its end without one."""

    def __init__(self, streams=()) -> None:
        self.streams = [s for s in streams if s is not None]  # those read: video, first audio
        self.packets: float | None = None  # end of the last video packet read
        self.frames: float | None = None  # end of the last frame decoded
        self.audio: float | None = None  # end of the last audio packet read
        self.refused = 0  # video packets the decoder refused
        self.error: str | None = None  # the first refusal (or what ended demuxing), in words

    def packet(self, packet, video: bool) -> None:
        end = _end(packet.pts if packet.pts is not None else packet.dts, packet.duration,
                   packet.time_base)  # fmt: skip
        if end is None or not packet.size:
            return
        if video:
            self.packets = end if self.packets is None else max(self.packets, end)
        else:
            self.audio = end if self.audio is None else max(self.audio, end)

    def frame(self, frame, step: Fraction) -> None:
        end = _end(frame.pts, getattr(frame, "duration", None), frame.time_base)
        if end is None:
            return
        if not getattr(frame, "duration", None):
            end += float(step)
        self.frames = end if self.frames is None else max(self.frames, end)

    def failed(self, err: Exception, when: float | None, refused: bool) -> None:
        """A packet the decoder refused (``refused``), or the error that ended demuxing."""
        self.refused += refused
        if self.error is None:  # "Invalid data found when processing input", not its errno
            said = getattr(err, "strerror", None) or str(err) or type(err).__name__
            at = "" if when is None else f"near {when:.2f} s: "
            self.error = f"{at}{said.splitlines()[0]}"

    def problem(self, container, step: Fraction, promised: int = 0, read: int = 0) -> str | None:
        """Why the ``read`` frames look like less than the whole video, in words, or None:
        packets refused, fewer frames than the header's ``promised`` count (a truncated MP4),
        reading ended before the header's length, or decoding before reading. Gaps under two
        frames and 2 % of the length are not counted (rounded times, a last frame's guessed
        duration)."""
        if self.frames is None:
            return None
        if self.refused:
            refused = counted(self.refused, "packet")
            return (f"{refused} could not be decoded (the first {self.error}), so frames are "
                    "missing: the file looks corrupt")  # fmt: skip
        if promised - read > max(2, promised // 50):
            return (f"its header promises {promised} frames but only {read} could be read: "
                    "the file looks truncated")  # fmt: skip
        start = (container.start_time or 0) / 1_000_000
        slack = 2 * float(step)
        ends = [x for x in (self.packets, self.audio) if x is not None]
        length = self.length(container)
        cause = f" ({self.error})" if self.error else ""  # the first refusal
        if length and length - (max(ends, default=self.frames) - start) > max(slack, length / 50):
            return (f"only its first {self.frames - start:.2f} s of {length:.2f} s could be "
                    f"read{cause}: the file looks truncated or corrupt")  # fmt: skip
        if self.packets is not None:
            lost = self.packets - self.frames
            if lost > max(slack, (self.packets - start) / 50):
                return (f"its frames from {self.frames - start:.2f} s to "
                        f"{self.packets - start:.2f} s could not be decoded: the file looks "
                        "corrupt")  # fmt: skip
        return None

    def length(self, container) -> float:
        """Seconds from the file's start to the end of the streams read, as the file states
        them (`stated_end`), never past the container's end; the container's length (its
        longest stream's: a subtitle, a second sound track or video not read) only where
        they state none. 0 if unknown."""
        start = (container.start_time or 0) / 1_000_000
        whole = (container.duration or 0) / 1_000_000
        ends = [end for end in map(stated_end, self.streams) if end is not None]
        return min(max(ends) - start, whole) if ends and whole else whole


def _end(pts, duration, time_base) -> float | None:
    if pts is None or not time_base:
        return None
    return float((pts + (duration or 0)) * time_base)


def _read(container, vstream, astream, reach: Reach):
    """Yield ``(audio_packet, None)`` or ``(None, video_frame)``. A packet the decoder refuses
    is skipped, and an error that ends demuxing ends reading, both told to ``reach``
    (`Reach`), which says after the run what is missing (before, the first refusal ended the
    run with no video: an hour's frames lost to one bad packet).

    Only reading is guarded, so an encoder or disk error on the output is not blamed on
    the input file.
    """
    import av

    demux = container.demux([vstream] if astream is None else [vstream, astream])
    step = 1 / frame_rate(vstream)
    while True:
        packet = None
        try:
            packet = next(demux)
            video = packet.stream is not astream
            reach.packet(packet, video)
            decoded = packet.decode() if video else None
        except StopIteration:
            return
        except av.error.FFmpegError as err:
            when = None if packet is None else _end(packet.pts, 0, packet.time_base)
            reach.failed(err, when if when is not None else reach.frames, packet is not None)
            if packet is None:  # the demuxer gave up: the frames so far are kept
                return
            continue
        if decoded is None:
            yield packet, None
            continue
        for frame in decoded:
            reach.frame(frame, step)
            yield None, frame
