"""PEER FIXTURE for vm-tests/bench — NOT product code, not shipped.

The Python alternative to an agent: a watchdog Observer (inotify, recursive) whose handler queues
every event as a JSON line, and a boto3 thread that ships the queue with PutLogEvents. Written the
way such a shipper usually is — fairly (batches of up to 10,000 events / 1 MiB counting 26 bytes
per event, shipped when full or 1 s after the batch's first event; a failed put is retried 3 times
with backoff), not heroically (an in-memory queue only, nothing persisted, no rescan after an
inotify overflow: watchdog does not report one).

Usage: python watchdog_shipper.py DIR LOG_GROUP LOG_STREAM
Environment: AWS_* credentials and region; ENDPOINT_URL (moto) optional.
Prints READY on stdout once the watches are in place.
"""

import json
import os
import queue
import signal
import sys
import threading
import time

import boto3
from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer

MAX_EVENTS = 10_000
MAX_BYTES = 1_048_576
EVENT_OVERHEAD = 26
FLUSH_SECS = 1.0

events: "queue.Queue[tuple[int, str]]" = queue.Queue()


class Handler(FileSystemEventHandler):
    def on_any_event(self, event):
        # Opening a file or closing it unwritten is not a change worth auditing.
        if event.event_type in ("opened", "closed_no_write"):
            return
        record = {"event": event.event_type, "path": event.src_path,
                  "is_directory": event.is_directory}
        if getattr(event, "dest_path", ""):
            record["dest_path"] = event.dest_path
        events.put((int(time.time() * 1000), json.dumps(record)))


def put(client, group, stream, batch):
    for attempt in range(4):
        try:
            client.put_log_events(logGroupName=group, logStreamName=stream, logEvents=batch)
            return
        except Exception as e:  # noqa: BLE001 - log and retry whatever went wrong
            print(f"watchdog-shipper: put_log_events failed ({e}), attempt {attempt + 1}",
                  file=sys.stderr, flush=True)
            time.sleep(0.5 * 2 ** attempt)
    print(f"watchdog-shipper: {len(batch)} events dropped", file=sys.stderr, flush=True)


def ship_forever(client, group, stream):
    while True:
        ts, msg = events.get()
        batch = [{"timestamp": ts, "message": msg}]
        size = len(msg.encode()) + EVENT_OVERHEAD
        deadline = time.monotonic() + FLUSH_SECS
        while len(batch) < MAX_EVENTS:
            try:
                ts, msg = events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            n = len(msg.encode()) + EVENT_OVERHEAD
            if size + n > MAX_BYTES:
                put(client, group, stream, batch)
                batch, size = [], 0
            batch.append({"timestamp": ts, "message": msg})
            size += n
        put(client, group, stream, batch)


def main():
    path, group, stream = sys.argv[1:4]
    client = boto3.client("logs", endpoint_url=os.environ.get("ENDPOINT_URL") or None)
    for create in (lambda: client.create_log_group(logGroupName=group),
                   lambda: client.create_log_stream(logGroupName=group, logStreamName=stream)):
        try:
            create()
        except client.exceptions.ResourceAlreadyExistsException:
            pass
    threading.Thread(target=ship_forever, args=(client, group, stream), daemon=True).start()
    observer = Observer()
    observer.schedule(Handler(), path, recursive=True)
    observer.start()
    print("READY", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.wait(1):
        pass
    observer.stop()
    observer.join()


if __name__ == "__main__":
    main()
