"""Operations: ``/healthz`` (``health``), ``/metrics`` (``metrics``), the sync engine's state (``sync_status``,
``runs_sync_status``), and their views. They read what the poller and its watchdogs recorded; none calls the
service while serving a request.

May use: errors and everything below it.
"""
