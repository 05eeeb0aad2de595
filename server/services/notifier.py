"""Wakes the SSE streams of a run when its rows change, so a stream reads the database when there is
something to read instead of polling it (3 queries per stream every 0.25 s before).

One per API process. Streams subscribe to a run and wait on an asyncio.Event; the sources that set it:
- in-process commits (`server.core.notify` listeners): a transition made by the API, an in-process worker;
- PostgreSQL: ONE connection that LISTENs on `obow_run` in a thread; the worker's reporter notifies in its
  flush transaction, so a stream wakes at the commit of the rows it will read. After a reconnect every
  stream is woken once (a notification sent while nobody listened is gone);
- SQLite across processes (the embedded worker is another process; SQLite has no notifications): a thread
  stats the database file and its WAL every `SQLITE_WATCH_S` and wakes every stream when they changed.
  One stat per tick for the whole process, instead of 3 queries per stream.
A stream still re-reads every `OBOW_LAB_SSE_POLL_S` (2 s) on its own: a safety net, not the mechanism.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections import defaultdict
from pathlib import Path

from sqlalchemy.engine import make_url

from server.core import notify

SQLITE_WATCH_S = 0.1
log = logging.getLogger("obow.lab.notifier")


class RunNotifier:
    def __init__(self, db_url: str) -> None:
        self._db_url = db_url
        self._lock = threading.Lock()
        self._subscribers: dict[int, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = defaultdict(set)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.listening = threading.Event()  # PostgreSQL: the LISTEN connection is up (tests wait for it)

    # -- streams ---------------------------------------------------------------------------------------
    def subscribe(self, run_id: int) -> asyncio.Event:
        """An event set whenever the run may have new rows; call from the stream's event loop. Starts the
        watcher on first use (so an app that never streams opens no listening connection)."""
        woken = asyncio.Event()
        with self._lock:
            self._subscribers[run_id].add((asyncio.get_running_loop(), woken))
            if self._thread is None and not self._stopping.is_set():
                self._start()
        return woken

    def unsubscribe(self, run_id: int, woken: asyncio.Event) -> None:
        with self._lock:
            subscribers = self._subscribers.get(run_id)
            if subscribers is None:
                return
            subscribers.difference_update({s for s in subscribers if s[1] is woken})
            if not subscribers:
                del self._subscribers[run_id]

    def wake(self, run_id: int | None) -> None:
        """Thread-safe: wake the streams of `run_id` (None: every stream)."""
        with self._lock:
            if run_id is None:
                targets = [s for subscribers in self._subscribers.values() for s in subscribers]
            else:
                targets = list(self._subscribers.get(run_id, ()))
        for loop, woken in targets:
            with contextlib.suppress(RuntimeError):  # a loop that has closed (a test client that ended)
                loop.call_soon_threadsafe(woken.set)

    # -- sources ---------------------------------------------------------------------------------------
    def _start(self) -> None:
        notify.add_listener(self.wake)
        backend = make_url(self._db_url).get_backend_name()
        target = self._listen_postgres if backend == "postgresql" else self._watch_sqlite
        self._thread = threading.Thread(target=target, name="run-notifier", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        notify.remove_listener(self.wake)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _listen_postgres(self) -> None:
        import psycopg

        conninfo = make_url(self._db_url).set(drivername="postgresql").render_as_string(hide_password=False)
        backoff = 0.5
        while not self._stopping.is_set():
            try:
                with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as conn:
                    conn.execute(f"LISTEN {notify.CHANNEL}")
                    self.listening.set()
                    self.wake(None)  # whatever was sent while nobody listened
                    backoff = 0.5
                    while not self._stopping.is_set():
                        for message in conn.notifies(timeout=1.0):
                            with contextlib.suppress(ValueError):
                                self.wake(int(message.payload))
            except Exception as err:  # the database restarted: listen again; streams poll meanwhile
                self.listening.clear()
                if self._stopping.is_set():
                    return
                log.warning("run notifications: %s; listening again in %.1f s", err, backoff)
                self._stopping.wait(backoff)
                backoff = min(30.0, backoff * 2)
        self.listening.clear()

    def _watch_sqlite(self) -> None:
        database = make_url(self._db_url).database
        if not database or database == ":memory:":
            return  # nothing another process could write
        files = [Path(database), Path(database + "-wal")]

        def signature() -> tuple:
            out = []
            for path in files:
                try:
                    st = os.stat(path)
                    out.append((st.st_ino, st.st_size, st.st_mtime_ns))
                except OSError:
                    out.append(None)
            return tuple(out)

        last = signature()
        while not self._stopping.wait(SQLITE_WATCH_S):
            now = signature()
            if now != last:
                last = now
                self.wake(None)
