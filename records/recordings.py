"""Call recordings: one stereo WAV per call, written off the hot path, and their retention.

    CallRecorder     one per call, fed by the call's TwilioActor: it only appends bytes to
                     the call's tracks (media.recording) and, every few seconds of audio,
                     hands the final part to the writer's queue. No I/O, no waiting.
    RecordingWriter  one per process: a bounded queue, one writer greenlet that runs each
                     append in a worker thread of gevent's pool (a slow or stuck disk stalls
                     that thread, never the hub and its calls), and a retention greenlet
                     (at start and then hourly) that deletes old recordings, in a thread too.

A file is `<CallSid>.wav` in the recordings directory: a valid WAV after every append
(the header is rewritten each time), so a crash loses only the last few seconds.

Nothing here raises into a call. A write that fails (full disk, the directory gone or
replaced by a file, an I/O error) is counted in `write_errors` and logged as a
`recording_write_failed` WARNING, rate-limited; a full queue drops the chunk (counted in
`chunks_dropped`; the next append fills its place with silence, so the file stays
time-aligned). A recorder that hits a bug disables itself and logs it, and the call goes on.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import gevent
import gevent.event
import gevent.queue
import structlog

from media.recording import WAV_HEADER_BYTES, Chunk, StereoTracks, stereo_pcm, wav_header
from observability.logging import Logger
from observability.ratelimit import LogLimiter

__all__ = [
    "FILE_PATTERN",
    "CallRecorder",
    "RecordingWriter",
    "append_chunk",
    "delete_older_than",
    "prepare_directory",
]

# The files this module writes, and the only ones retention ever deletes.
FILE_PATTERN = re.compile(r"CA[0-9a-fA-F]{32}\.wav")
SAMPLE_RATE = 8000
# A call's final audio goes to the writer in pieces of this many seconds: the memory a call's
# recording holds, and the most a crash can lose.
FLUSH_S = 5.0
# Chunks waiting for the disk, in bytes of mu-law (both tracks): ~2000 call-seconds. A disk
# slower than the calls fill it loses chunks (counted) rather than the process's memory.
QUEUE_BYTES = 32 * 1024 * 1024
RETENTION_EVERY_S = 3600.0
_STOP_GRACE_S = 0.5
_SILENT_FRAME = b"\xff" * 160  # 20 ms of mu-law silence
_HOLE_PIECE = 64 * 1024  # silence for a dropped chunk is written in pieces this big

Writer = Callable[[str, Chunk], None]


def _in_thread(work: Callable[[], object]) -> tuple[object, Exception | None]:
    """Run `work` in a worker thread of the hub's pool; its result, or the exception it raised.

    The exception comes back as a value: raised in the thread, gevent would print its
    traceback on stderr, once per failed write, past any rate limit.
    """

    def guarded() -> tuple[object, Exception | None]:
        try:
            return work(), None
        except Exception as exc:  # noqa: BLE001 - handed back to the greenlet, which reports it
            return None, exc

    result: tuple[object, Exception | None] = gevent.get_hub().threadpool.apply(guarded)
    return result


def prepare_directory(path: str) -> None:
    """Create the recordings directory if needed; ValueError saying why it cannot be used."""
    directory = Path(path)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ValueError("a directory (it is a file)") from None
    except OSError as exc:
        raise ValueError(f"a directory this process can create ({exc.strerror or exc})") from None
    if not directory.is_dir():
        raise ValueError("a directory (it is a file)")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ValueError(f"a writable directory ({path} is not writable)")


def append_chunk(path: str, chunk: Chunk) -> None:
    """Append `chunk` (mixed to stereo) to the WAV at `path`, creating it; then fix its header.

    A chunk that starts past the file's end (one before it was dropped) is preceded by
    silence, so sample n of the file stays sample n of the stream. Blocking file I/O:
    run it in a worker thread.
    """
    pcm = stereo_pcm(chunk.left, chunk.right)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
    with os.fdopen(fd, "r+b") as file:
        size = file.seek(0, os.SEEK_END)
        if size < WAV_HEADER_BYTES:
            file.seek(0)
            file.write(wav_header(0))
            size = WAV_HEADER_BYTES
        at = WAV_HEADER_BYTES + 4 * chunk.start
        if at > size:
            hole = at - size
            while hole > 0:
                piece = min(hole, _HOLE_PIECE)
                file.write(bytes(piece))
                hole -= piece
        else:
            file.seek(at)
        file.write(pcm)
        end = max(size, file.tell())
        file.seek(0)
        file.write(wav_header(end - WAV_HEADER_BYTES))


def delete_older_than(directory: str, cutoff: float) -> list[str]:
    """Delete the recordings in `directory` last written before `cutoff` (unix time); their names.

    Only files named like a recording (`FILE_PATTERN`) are touched. Blocking: run it in a thread.
    """
    deleted: list[str] = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if not FILE_PATTERN.fullmatch(entry.name):
                continue
            try:
                if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    os.unlink(entry.path)
                    deleted.append(entry.name)
            except FileNotFoundError:
                pass  # gone meanwhile
    return deleted


class CallRecorder:
    """One call's recording. The call's TwilioActor is its only caller; every method is cheap.

    `path` is where the file is written; `failed` turns True when a write for this call
    failed (the call record then links no recording).
    """

    def __init__(self, writer: RecordingWriter, call_sid: str, path: str, max_samples: int) -> None:
        self.call_sid = call_sid
        self.path = path
        self.failed = False
        self.closed = False
        self._writer = writer
        self._tracks = StereoTracks(max_samples)
        self._flush_samples = int(FLUSH_S * SAMPLE_RATE)

    def caller(self, ulaw: bytes, silent_frames_before: int = 0) -> None:
        """The caller's audio as admitted, after `silent_frames_before` frames of filled gap."""
        if self.closed:
            return
        try:
            tracks = self._tracks
            if silent_frames_before:
                self._note(tracks.caller(_SILENT_FRAME * silent_frames_before))
            self._note(tracks.caller(ulaw))
            if tracks.pending >= self._flush_samples:
                chunk = tracks.take()
                if chunk is not None:
                    self._writer.submit(self, chunk)
        except Exception as exc:  # noqa: BLE001 - a recording bug must not fail the call's actor
            self._broken(exc)

    def assistant(self, ulaw: bytes) -> None:
        """Assistant audio just sent to Twilio."""
        if self.closed:
            return
        try:
            self._note(self._tracks.assistant(ulaw))
        except Exception as exc:  # noqa: BLE001 - a recording bug must not fail the call's actor
            self._broken(exc)

    def clear(self) -> None:
        """A `clear` was just sent to Twilio: what it had not played yet was never heard."""
        if self.closed:
            return
        try:
            self._tracks.clear()
        except Exception as exc:  # noqa: BLE001 - a recording bug must not fail the call's actor
            self._broken(exc)

    def close(self) -> None:
        """The call ended: the rest goes to the writer. Idempotent."""
        if self.closed:
            return
        self.closed = True
        try:
            chunk = self._tracks.take(final=True)
        except Exception as exc:  # noqa: BLE001 - a recording bug must not fail the call's end
            self._broken(exc)
            return
        if chunk is not None:
            self._writer.submit(self, chunk)

    @property
    def limited(self) -> bool:
        return self._tracks.limited

    def _note(self, first_limit: bool) -> None:
        if first_limit:
            self._writer.limit_reached(self)

    def _broken(self, exc: Exception) -> None:
        self.closed = True
        self.failed = True
        self._writer.recorder_broken(self, exc)


class RecordingWriter:
    """Recordings for the whole process: `open` one per call, `start()`, `stop()` at shutdown.

    Counters (`chunks_written`, `chunks_dropped`, `write_errors`, `files_deleted`) are
    plain attributes. `write` (append_chunk) and `clock` (time.time) are injectable for tests.
    """

    def __init__(
        self,
        directory: str,
        *,
        max_seconds: int,
        retention_days: float,
        log: Logger | None = None,
        write: Writer = append_chunk,
        queue_bytes: int = QUEUE_BYTES,
        retention_every_s: float = RETENTION_EVERY_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self.max_seconds = max_seconds
        self.retention_days = retention_days
        self._log: Logger = log if log is not None else structlog.get_logger("recordings")
        self._limiter = LogLimiter(self._log)
        self._write = write
        self._queue_bytes = queue_bytes
        self._retention_every_s = retention_every_s
        self._clock = clock
        self._queue: gevent.queue.Queue[tuple[CallRecorder, Chunk]] = gevent.queue.Queue()
        self._queued = 0  # bytes of mu-law waiting
        self._accepted = 0
        self._settled = 0
        self._progress = gevent.event.Event()
        self._greenlets: list[gevent.Greenlet[[], None]] = []
        self._stopped = False
        self.chunks_written = 0
        self.chunks_dropped = 0
        self.write_errors = 0
        self.files_deleted = 0

    def start(self) -> None:
        """Spawn the writer and the retention greenlets (retention runs at once, then hourly)."""
        if self._greenlets or self._stopped:
            raise RuntimeError("RecordingWriter.start() may be called once, before stop()")
        self._greenlets = [gevent.spawn(self._run), gevent.spawn(self._retain)]
        self._log.info(
            "recordings_enabled",
            directory=self.directory,
            max_seconds=self.max_seconds,
            retention_days=self.retention_days,
        )

    def open(self, call_sid: str) -> CallRecorder:
        """The recorder of a new call, writing to `<directory>/<call_sid>.wav`."""
        # CallSids are checked at the webhook (CA + 32 hex); this keeps the name a plain file name anyway.
        name = re.sub(r"[^A-Za-z0-9_-]", "_", call_sid) or "call"
        path = os.path.join(self.directory, f"{name}.wav")
        return CallRecorder(self, call_sid, path, self.max_seconds * SAMPLE_RATE)

    def submit(self, recorder: CallRecorder, chunk: Chunk) -> None:
        """Queue a chunk for the disk; never blocks. Dropped (counted, logged) when the queue is full."""
        size = 2 * chunk.samples
        if self._stopped or self._queued + size > self._queue_bytes:
            self.chunks_dropped += 1
            self._limiter.warning(
                "recording_chunk_dropped",
                source="recordings",
                kind="stopped" if self._stopped else "queue_full",
                call_sid=recorder.call_sid,
                dropped=self.chunks_dropped,
            )
            return
        self._queued += size
        self._accepted += 1
        self._queue.put_nowait((recorder, chunk))

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until every chunk queued so far is written or given up on; False on timeout."""
        target = self._accepted
        deadline = time.monotonic() + timeout_s
        while self._settled < target:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._greenlets:
                return False
            self._progress.clear()
            self._progress.wait(remaining)
        return True

    def stop(self, timeout_s: float = 5.0) -> None:
        """Write what is queued (for up to `timeout_s`), then end the greenlets. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self._greenlets:
            self.flush(timeout_s)
            gevent.killall(self._greenlets, block=True, timeout=_STOP_GRACE_S)
            self._greenlets = []
        lost = self._queue.qsize()
        if lost:
            self.chunks_dropped += lost
            self._log.warning("recording_chunks_lost_at_stop", count=lost)
        self._limiter.flush()

    # -- told by recorders ------------------------------------------------------------

    def limit_reached(self, recorder: CallRecorder) -> None:
        self._log.warning(
            "recording_limit_reached",
            call_sid=recorder.call_sid,
            max_seconds=self.max_seconds,
            detail="the recording stops growing here; the call goes on",
        )

    def recorder_broken(self, recorder: CallRecorder, exc: Exception) -> None:
        self.write_errors += 1
        self._log.error("recording_failed", call_sid=recorder.call_sid, error=repr(exc), exc_info=True)

    # -- greenlets --------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            recorder, chunk = self._queue.get()
            self._queued -= 2 * chunk.samples
            write, path = self._write, recorder.path
            # In a worker thread: this greenlet waits for it cooperatively, the hub runs on.
            _, exc = _in_thread(lambda: write(path, chunk))  # noqa: B023 - called before the loop moves on
            if exc is not None:  # any failure of the disk: counted, logged, the call goes on
                self.write_errors += 1
                recorder.failed = True
                self._limiter.warning(
                    "recording_write_failed",
                    source="recordings",
                    kind=type(exc).__name__,
                    call_sid=recorder.call_sid,
                    path=recorder.path,
                    error=str(exc),
                    write_errors=self.write_errors,
                )
            else:
                self.chunks_written += 1
            self._settled += 1
            self._progress.set()

    def _retain(self) -> None:
        if self.retention_days <= 0:
            return  # kept forever
        while True:
            cutoff = self._clock() - self.retention_days * 86400.0
            deleted, exc = _in_thread(lambda: delete_older_than(self.directory, cutoff))  # noqa: B023 - called at once
            if exc is not None:  # the next round tries again
                self._limiter.warning(
                    "recordings_retention_failed", source="recordings", kind=type(exc).__name__, error=str(exc)
                )
            elif isinstance(deleted, list) and deleted:
                self.files_deleted += len(deleted)
                self._log.info("recordings_deleted", count=len(deleted), retention_days=self.retention_days)
            gevent.sleep(self._retention_every_s)
