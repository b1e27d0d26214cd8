"""gunicorn settings for the demo site in production (`gunicorn -c project/gunicorn.conf.py project.wsgi`).

Threaded workers: every open live stream (relay or mirror feed) holds a thread for as long as it is open.
Environment: WEB_CONCURRENCY (worker processes, default 2), GUNICORN_THREADS (threads each, default 64),
PORT / GUNICORN_BIND (default 127.0.0.1:8000).
"""

import os
import sys

bind = os.environ.get("GUNICORN_BIND") or f"127.0.0.1:{os.environ.get('PORT', '8000')}"
worker_class = "gthread"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "64"))
timeout = 120  # a worker thread busy longer than this is restarted; streams keep writing (heartbeats)
graceful_timeout = 20
keepalive = 5
accesslog = "-"
errorlog = "-"


def post_fork(server, worker):
    # The relay hands each event between threads (reader -> response writer, applier beside them). Python's
    # default GIL switch interval (5 ms) becomes the tail of the per-event latency; 1 ms keeps it low.
    sys.setswitchinterval(0.001)
