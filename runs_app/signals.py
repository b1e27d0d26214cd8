"""Signals for embedding sites. All are sent after the transaction that caused them commits.

- ``run_status_changed(sender=Run, run, old_status, new_status, source)``: the mirror saw a new status
  (``old_status`` is None for a run seen for the first time; ``source`` is poll, list, stream, action or import).
- ``run_requires_action(sender=Run, run)``: the run waits for tool outputs.
- ``run_stuck(sender=Run, run, status, since)``: the run stayed queued, in_progress or cancelling past
  ``RUNS_APP["STUCK_AFTER"]``.
- ``run_expiring(sender=Run, run, expires_at)``: a run waiting in requires_action expires within
  ``RUNS_APP["EXPIRING_WITHIN"]`` seconds.
"""

from django.dispatch import Signal

run_status_changed = Signal()
run_requires_action = Signal()
run_stuck = Signal()
run_expiring = Signal()

#: Internal: a run entered the mirror, or was handed back, and needs polling (sent after commit by the mirror's
#: upsert and by the services; the poller, higher up, listens and makes sure its lanes run).
polling_needed = Signal()
