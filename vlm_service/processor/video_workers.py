"""The parallel segment decoder's worker threads, started before the segments are known (video_frames.py runs them).

Each worker opens a container of its own over the video's bytes: av.open probes the stream (find_stream_info
decodes its first frame), a few milliseconds per worker that used to come after the caller's own open, demux and
sampling. decode_video starts them right after the header check, so those opens overlap its demux; the workers
then wait for their job. How many to start is guessed from the container's index (MP4 / MOV hold one, read at
open; WebM's is empty then, and its workers start after the demux as before): the distinct keyframes before
evenly spaced timestamps, at most a worker per core. A wrong guess costs nothing but time: extra workers stop
unused, missing ones are added when the job is posted.
"""

from __future__ import annotations

import io
import queue
import threading
from typing import Callable

# job(container or None, the error av.open raised or None): what each worker runs once its container is open
Job = Callable[[object, "BaseException | None"], None]


class DecodeWorkers:
    """Threads with an open container each, waiting for one job; run() or close() must follow (decode_video's
    finally), or they wait for ever (daemon threads: they do not hold the process up)."""

    def __init__(self, data: bytes, index: int, count: int = 0):
        self._data, self._index = data, index
        self._threads: list[threading.Thread] = []
        self._jobs: list[queue.SimpleQueue] = []
        self._errors: list[BaseException] = []
        self._posted = False
        self.grow(count)

    def __len__(self) -> int:
        return len(self._threads)

    def grow(self, count: int) -> None:
        """At least `count` workers (the new ones start opening their containers now)."""
        while len(self._threads) < count and not self._posted:
            jobs: queue.SimpleQueue = queue.SimpleQueue()
            thread = threading.Thread(target=self._work, args=(jobs,), name="video-decode", daemon=True)
            self._threads.append(thread)
            self._jobs.append(jobs)
            thread.start()

    def run(self, job: Job) -> None:
        """Run job on every worker, wait for them all, re-raise the first error one of them raised."""
        self._post(job)
        self._join()
        if self._errors:
            raise self._errors[0]

    def close(self) -> None:
        """Stop workers that got no job (idempotent; after run() it only waits)."""
        self._post(None)
        self._join()

    def _post(self, job: Job | None) -> None:
        if not self._posted:
            self._posted = True
            for jobs in self._jobs:
                jobs.put(job)

    def _join(self) -> None:
        for thread in self._threads:
            thread.join()

    def _work(self, jobs: queue.SimpleQueue) -> None:
        import av

        container, error = None, None
        try:
            container = av.open(io.BytesIO(self._data), mode="r")
        except BaseException as exc:  # raised only if a segment needs this worker (the caller's open worked)
            error = exc
        try:
            job = jobs.get()
            if job is not None:
                job(container, error)
        except BaseException as exc:
            self._errors.append(exc)  # list.append is atomic; run() re-raises the first
        finally:
            if container is not None:
                container.close()


def expected_segments(stream, probes: int) -> int:
    """A guess of the keyframe segments before the demux: distinct index keyframes at or before `probes` evenly
    spaced timestamps of the container's index (0 when it has none)."""
    entries = stream.index_entries
    n = len(entries)
    if n == 0 or probes <= 0:
        return 0
    first, last = entries[0].timestamp, entries[n - 1].timestamp
    steps = max(probes - 1, 1)
    found = {entries.search_timestamp(first + (last - first) * k // steps) for k in range(probes)}
    return len(found - {-1})
