"""One model, many clients: requests wait in a bounded queue and run one at a time in a worker thread."""

from __future__ import annotations

import asyncio
import collections
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from qwq_local.app.reply import Cancelled
from qwq_local.serve.api import ApiError

Work = Callable[[Callable[[], bool]], Any]  # work(cancelled) -> result, run in the worker thread


class Job:
    """A queued piece of work: its cancel flag (checked between tokens) and the future of its result."""

    def __init__(self, work: Work, future: "asyncio.Future[Any]") -> None:
        self.work = work
        self.future = future
        self.cancel_flag = threading.Event()

    def cancel(self) -> None:
        self.cancel_flag.set()

    def cancelled(self) -> bool:
        return self.cancel_flag.is_set()


class GenerationQueue:
    """Runs jobs one at a time on a single thread; a cancelled job is skipped or stopped at its next token."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.waiting: collections.deque[Job] = collections.deque()
        self.running: Job | None = None
        self.closed = False
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="qwq-generate")
        self._task = asyncio.create_task(self._run())

    def submit(self, work: Work) -> Job:
        """Queue `work`; 503 when the server is stopping, 429 when the queue is full."""
        if self.closed or self._wake is None:
            raise ApiError(503, "the server is shutting down", type="server_error", code="unavailable")
        self.waiting = collections.deque(job for job in self.waiting if not job.cancelled())
        if len(self.waiting) >= self.limit + (self.running is None):
            raise ApiError(429, f"the server is busy: {len(self.waiting)} requests are waiting; try again soon",
                           type="rate_limit_error", code="queue_full")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda f: f.cancelled() or f.exception())  # never "exception was never retrieved"
        job = Job(work, future)
        self.waiting.append(job)
        self._wake.set()
        return job

    async def _run(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            while not self.waiting:
                if self.closed:
                    return
                self._wake.clear()
                await self._wake.wait()
            job = self.waiting.popleft()
            if job.cancelled():
                job.future.set_exception(Cancelled())
                continue
            self.running = job
            try:
                result = await asyncio.shield(loop.run_in_executor(self._executor, job.work, job.cancelled))
            except BaseException as exc:  # the work's own failure goes to its caller
                if not job.future.done():
                    job.future.set_exception(exc if isinstance(exc, Exception) else Cancelled())
                if isinstance(exc, asyncio.CancelledError):
                    raise
            else:
                if not job.future.done():
                    job.future.set_result(result)
            finally:
                self.running = None

    async def close(self) -> None:
        """Stop taking work, cancel what waits and what runs, and wait for the worker thread to finish."""
        self.closed = True
        for job in list(self.waiting):
            job.cancel()
        if self.running is not None:
            self.running.cancel()
        if self._wake is not None:
            self._wake.set()
        if self._task is not None:
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._executor is not None:
            self._executor.shutdown(wait=True)
