"""The mirror: threads, runs, run steps and messages of the remote service, and each run's timeline.

Rows are keyed by the remote id, unique per connection. Every field of the protocol's objects has a
column or a JSON field; the latest full remote object is kept in ``raw`` so fields the service adds
later are never lost. Rows are written only by ``runs_app.mirror.upsert`` (the one upsert) and
``runs_app.services``.
"""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.db import models, transaction
from django.db.models import F, Q
from django.utils import timezone


class RunStatus(models.TextChoices):
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    REQUIRES_ACTION = "requires_action"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    FAILED = "failed"
    COMPLETED = "completed"
    INCOMPLETE = "incomplete"
    EXPIRED = "expired"


TERMINAL_RUN_STATUSES = frozenset({
    RunStatus.CANCELLED, RunStatus.FAILED, RunStatus.COMPLETED, RunStatus.INCOMPLETE, RunStatus.EXPIRED,
})
ACTIVE_RUN_STATUSES = frozenset(set(RunStatus.values) - TERMINAL_RUN_STATUSES)
#: A run that has stopped, for now or for good: waiting for tool outputs, or terminal. Its steps and messages
#: stand still: they are fetched at these statuses, and its messages can no longer change.
STOPPED_RUN_STATUSES = frozenset(TERMINAL_RUN_STATUSES | {RunStatus.REQUIRES_ACTION})


class StepStatus(models.TextChoices):
    IN_PROGRESS = "in_progress"
    CANCELLED = "cancelled"
    FAILED = "failed"
    COMPLETED = "completed"
    EXPIRED = "expired"


TERMINAL_STEP_STATUSES = frozenset(set(StepStatus.values) - {StepStatus.IN_PROGRESS})


class MessageStatus(models.TextChoices):
    IN_PROGRESS = "in_progress"
    INCOMPLETE = "incomplete"
    COMPLETED = "completed"


class Source(models.TextChoices):
    POLL = "poll"
    LIST = "list"
    STREAM = "stream"
    ACTION = "action"
    IMPORT = "import"


class AmbiguousRemoteId(Exception):
    """A remote id the mirror holds on more than one connection: the caller must name the connection."""


class MirrorQuerySet(models.QuerySet):
    def by_remote_id(self, remote_id: str, *, connection: str | None = None):
        """The row with this remote id (on ``connection`` when given). Raises the model's ``DoesNotExist`` when the
        mirror does not hold it, ``AmbiguousRemoteId`` when several connections do — the same for every door."""
        rows = self.filter(remote_id=remote_id)
        if connection:
            rows = rows.filter(connection=connection)
        found = list(rows[:2])
        name = self.model._meta.verbose_name
        if not found:
            where = f" on connection {connection!r}" if connection else ""
            raise self.model.DoesNotExist(f"The {name} {remote_id} is not in the mirror{where}; import its thread "
                                          "first.")
        if len(found) > 1:
            raise AmbiguousRemoteId(f"The {name} {remote_id} is in the mirror on several connections; name one "
                                    "with connection=NAME.")
        return found[0]


class MirrorRow(models.Model):
    """What every mirrored object has: its connection and remote id, the raw object, when it was synced."""

    connection = models.CharField(max_length=64, default="default")
    remote_id = models.CharField(max_length=128)
    raw = models.JSONField(default=dict, blank=True, help_text="The latest full object from the service.")
    created_at = models.DateTimeField(null=True, blank=True, help_text="The service's created_at.")
    metadata = models.JSONField(default=dict, blank=True)
    # When the state stored here was observed: the request behind it was sent at observed_from and its
    # answer received at observed_to (a stream event: the stream's start and the event's arrival).
    observed_from = models.DateTimeField(null=True, blank=True)
    observed_to = models.DateTimeField(null=True, blank=True)
    synced_at = models.DateTimeField(null=True, blank=True, help_text="Last time any payload was applied.")
    first_seen_at = models.DateTimeField(default=timezone.now)

    objects = MirrorQuerySet.as_manager()

    class Meta:
        abstract = True

    def __str__(self):
        return self.remote_id


class Thread(MirrorRow):
    tool_resources = models.JSONField(null=True, blank=True)
    tracked = models.BooleanField(
        default=True, help_text="Discover runs created elsewhere on this thread by listing its runs."
    )
    next_discovery_at = models.DateTimeField(null=True, blank=True)
    discovery_interval = models.FloatField(null=True, blank=True, help_text="Seconds between run listings.")
    # The thread's messages are listed from here on (order=asc&after=cursor): the newest message that can no
    # longer change, and its place in the thread (services.thread_messages_sync).
    messages_cursor = models.CharField(max_length=128, blank=True)
    messages_synced_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["connection", "remote_id"], name="runs_app_thread_remote_id")]
        ordering = ["-created_at"]


class RunQuerySet(MirrorQuerySet):
    def active(self):
        # IN over the few active statuses, not NOT IN over the terminal ones: the former uses the status
        # index, the latter scans the table on PostgreSQL.
        return self.filter(status__in=ACTIVE_RUN_STATUSES)

    def terminal(self):
        return self.filter(status__in=TERMINAL_RUN_STATUSES)

    def needing_action(self):
        return self.filter(status=RunStatus.REQUIRES_ACTION)

    def due_for_poll(self, now=None):
        now = now or timezone.now()
        # Active runs, and terminal runs still owed their steps and messages (services.run_details_sync leaves
        # next_poll_at set when fetching them failed); a terminal run is otherwise never due.
        return self.filter(next_poll_at__lte=now).filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))

    def stuck(self):
        return self.active().filter(stuck_since__isnull=False)

    def expiring_soon(self):
        return self.needing_action().filter(expiring_flagged_at__isnull=False)


class Run(MirrorRow):
    thread = models.ForeignKey(Thread, on_delete=models.CASCADE, related_name="runs")
    assistant_id = models.CharField(max_length=128, blank=True, db_index=True)
    status = models.CharField(max_length=20, choices=RunStatus.choices, default=RunStatus.QUEUED)
    started_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    required_action = models.JSONField(null=True, blank=True)
    last_error = models.JSONField(null=True, blank=True)
    last_error_code = models.CharField(max_length=64, blank=True, db_index=True)
    incomplete_details = models.JSONField(null=True, blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    total_tokens = models.PositiveIntegerField(null=True, blank=True)
    model = models.CharField(max_length=128, blank=True, db_index=True)
    instructions = models.TextField(blank=True)
    tools = models.JSONField(default=list, blank=True)
    tool_resources = models.JSONField(null=True, blank=True)
    tool_choice = models.JSONField(null=True, blank=True)
    response_format = models.JSONField(null=True, blank=True)
    truncation_strategy = models.JSONField(null=True, blank=True)
    temperature = models.FloatField(null=True, blank=True)
    top_p = models.FloatField(null=True, blank=True)
    max_prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    max_completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    parallel_tool_calls = models.BooleanField(null=True, blank=True)

    # Sync bookkeeping.
    status_changed_at = models.DateTimeField(null=True, blank=True, help_text="When the mirror saw the change.")
    answered_call_ids = models.JSONField(
        default=list, blank=True, help_text="Tool call ids whose outputs were submitted (seen or sent)."
    )
    next_poll_at = models.DateTimeField(null=True, blank=True)
    claimed_by = models.CharField(max_length=64, blank=True)
    claimed_until = models.DateTimeField(null=True, blank=True)
    polls = models.PositiveIntegerField(default=0)
    steps_synced_for = models.CharField(max_length=200, blank=True,
                                        help_text="The run state whose steps and messages were last fetched.")
    stuck_since = models.DateTimeField(null=True, blank=True)
    expiring_flagged_at = models.DateTimeField(null=True, blank=True)

    objects = RunQuerySet.as_manager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["connection", "remote_id"], name="runs_app_run_remote_id")]
        indexes = [
            models.Index(fields=["status", "-created_at"], name="runs_app_run_status_created"),
            models.Index(fields=["-created_at"], name="runs_app_run_created"),
            models.Index(fields=["connection", "status"], name="runs_app_run_conn_status"),
            models.Index(fields=["next_poll_at"], name="runs_app_run_next_poll",
                         condition=Q(next_poll_at__isnull=False)),
        ]
        ordering = ["-created_at"]
        permissions = [
            ("cancel_run", "Can cancel runs"),
            ("submit_tool_outputs", "Can submit tool outputs"),
            ("change_run_metadata", "Can modify run metadata"),
            ("refresh_run", "Can refresh runs from the service"),
        ]

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_RUN_STATUSES

    @property
    def pending_tool_calls(self) -> list[dict]:
        if self.status != RunStatus.REQUIRES_ACTION or not self.required_action:
            return []
        return (self.required_action.get("submit_tool_outputs") or {}).get("tool_calls") or []

    @property
    def thread_remote_id(self) -> str:
        return self.raw.get("thread_id") or self.thread.remote_id


class RunStep(MirrorRow):
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="steps")
    type = models.CharField(max_length=32)
    status = models.CharField(max_length=20, choices=StepStatus.choices, default=StepStatus.IN_PROGRESS)
    step_details = models.JSONField(default=dict, blank=True)
    last_error = models.JSONField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="expires_at (real traffic) or expired_at (spec)")
    cancelled_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    total_tokens = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["connection", "remote_id"], name="runs_app_step_remote_id")]
        ordering = ["created_at", "id"]

    @property
    def tool_calls(self) -> list[dict]:
        return (self.step_details or {}).get("tool_calls") or []


#: ``Message.position`` of a message no listing has placed yet (one that arrived by a stream): after every
#: listed message of the same second, which it follows in the thread.
UNLISTED_POSITION = 2**62


class Message(MirrorRow):
    thread = models.ForeignKey(Thread, on_delete=models.CASCADE, related_name="messages")
    run = models.ForeignKey(Run, on_delete=models.SET_NULL, null=True, blank=True, related_name="messages")
    run_remote_id = models.CharField(max_length=128, blank=True, db_index=True)
    assistant_id = models.CharField(max_length=128, blank=True)
    role = models.CharField(max_length=16)
    status = models.CharField(max_length=16, choices=MessageStatus.choices, blank=True)
    content = models.JSONField(default=list, blank=True, help_text="Content blocks with annotations.")
    attachments = models.JSONField(default=list, blank=True)
    incomplete_details = models.JSONField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    incomplete_at = models.DateTimeField(null=True, blank=True)
    # The protocol's created_at has one-second resolution: the place in the thread's listing orders messages
    # of the same second (a prompt and its answer often are).
    position = models.PositiveBigIntegerField(default=UNLISTED_POSITION,
                                              help_text="Place in the thread as the service lists it.")

    #: The thread's order, oldest first.
    THREAD_ORDER = ("created_at", "position", "id")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["connection", "remote_id"], name="runs_app_message_remote_id")]
        indexes = [models.Index(fields=["thread", "created_at", "position"], name="runs_app_message_thread_order")]
        ordering = ["created_at", "position", "id"]

    @property
    def text(self) -> str:
        """The message's text blocks joined: what a person reads (annotations stay in ``content``)."""
        return "\n".join(
            block.get("text", {}).get("value", "")
            for block in self.content or []
            if isinstance(block, dict) and block.get("type") == "text"
        )


class RunEvent(models.Model):
    """The run's timeline: status changes as the mirror observed them, and operator actions."""

    class Kind(models.TextChoices):
        STATUS = "status", "status change"
        ACTION = "action", "operator action"

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.STATUS)
    from_status = models.CharField(max_length=20, blank=True)
    to_status = models.CharField(max_length=20, blank=True)
    source = models.CharField(max_length=16, choices=Source.choices)
    observed_at = models.DateTimeField(default=timezone.now, db_index=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                             related_name="+")
    operator_action = models.ForeignKey("OperatorAction", null=True, blank=True, on_delete=models.CASCADE,
                                        related_name="run_events")

    class Meta:
        ordering = ["observed_at", "id"]
        indexes = [models.Index(fields=["run", "observed_at"], name="runs_app_event_run_time")]

    def __str__(self):
        if self.kind == self.Kind.ACTION and self.operator_action_id:
            return str(self.operator_action)
        return f"{self.from_status or '∅'} → {self.to_status} ({self.source})"


class OperatorAction(models.Model):
    """The audit log: every operator action, who did it, what was sent (secrets redacted) and the answer."""

    at = models.DateTimeField(default=timezone.now, db_index=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                             related_name="+")
    action = models.CharField(max_length=64, db_index=True)
    connection = models.CharField(max_length=64)
    target = models.CharField(max_length=128, help_text="Remote id of the run or thread acted on.")
    thread = models.ForeignKey(Thread, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    run = models.ForeignKey(Run, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    sent = models.JSONField(default=dict, blank=True)
    succeeded = models.BooleanField(default=False)
    answer = models.JSONField(null=True, blank=True, help_text="The service's answer, or its error.")
    error = models.TextField(blank=True)
    request_id = models.CharField(max_length=128, blank=True)

    class Meta:
        ordering = ["-at", "-id"]

    def __str__(self):
        outcome = "ok" if self.succeeded else "failed"
        return f"{self.action} {self.target} by {self.user or 'system'}: {outcome}"


class ConnectionStateQuerySet(models.QuerySet):
    """Every write to a connection's sync health, one per concern (the poller, discovery and the health probe use
    these; nothing else writes ``ConnectionState``)."""

    def for_connection(self, name: str) -> ConnectionState:
        state, _ = self.get_or_create(connection=name)
        return state

    def record(self, name: str, *, ok: int = 0, failed: int = 0, error: str = "", discovery: int = 0,
               threads_discovered: int = 0, newest_thread_id: str | None = None, budget_unused: int = 0) -> None:
        """Count requests: ``ok`` answered, ``failed`` failed (``error`` the last one's text); ``discovery`` of them
        made by thread discovery; ``budget_unused`` tokens taken from the request budget and not spent go back."""
        now = timezone.now()
        changes = {"requests": F("requests") + ok + failed}
        if budget_unused:
            changes.update(budget_tokens=F("budget_tokens") + budget_unused,
                           budget_granted=F("budget_granted") - budget_unused)
        if ok:
            changes["last_success_at"] = now
        if failed:
            changes.update(last_error_at=now, last_error=error[:500], failed_requests=F("failed_requests") + failed)
        if discovery:
            changes["discovery_requests"] = F("discovery_requests") + discovery
        if threads_discovered:
            changes["threads_discovered"] = F("threads_discovered") + threads_discovered
        if newest_thread_id:
            changes["newest_thread_id"] = newest_thread_id
        self.filter(pk=self.for_connection(name).pk).update(**changes)

    def pause(self, name: str, seconds: float | None, reason: str) -> dt.datetime:
        """A 429: the connection's polling waits until its Retry-After has passed."""
        now = timezone.now()
        until = now + dt.timedelta(seconds=seconds if seconds is not None else 5)
        self.filter(pk=self.for_connection(name).pk).update(
            paused_until=until, pause_reason=reason[:300], rate_limited=F("rate_limited") + 1,
            last_error_at=now, last_error=reason[:500], requests=F("requests") + 1)
        return until

    def paused(self, now: dt.datetime) -> list[str]:
        return list(self.filter(paused_until__gt=now).values_list("connection", flat=True))

    def take_budget(self, name: str, want: int, *, rate: float, burst: float, recovery: float) -> int:
        """Up to ``want`` requests from the connection's token bucket (``rate`` per second times the throttle, at most
        ``burst`` saved up), shared by every process through this row. Returns how many were granted (maybe 0)."""
        with transaction.atomic():
            state = self.select_for_update().filter(connection=name).first() or self.for_connection(name)
            now = timezone.now()
            throttle = state.throttle_at(now, recovery)
            tokens = burst if state.budget_at is None else min(
                burst, state.budget_tokens + rate * throttle * max(0.0, (now - state.budget_at).total_seconds()))
            granted = max(0, min(want, int(tokens)))
            self.filter(pk=state.pk).update(budget_tokens=tokens - granted, budget_at=now, throttle=throttle,
                                            throttled_at=now, budget_granted=F("budget_granted") + granted)
            return granted

    def give_back_budget(self, name: str, unused: int) -> None:
        """Requests taken from the bucket but not made."""
        if unused > 0:
            self.filter(connection=name).update(budget_tokens=F("budget_tokens") + unused,
                                                budget_granted=F("budget_granted") - unused)

    def throttle_down(self, name: str, step: float, *, floor: float, recovery: float) -> float:
        """A 429: the connection's request rate is lowered by ``step`` (a share of it), never below ``floor``; it
        recovers by ``recovery`` per second. Returns the new throttle."""
        with transaction.atomic():
            state = self.select_for_update().filter(connection=name).first() or self.for_connection(name)
            now = timezone.now()
            throttle = max(floor, state.throttle_at(now, recovery) - step)
            self.filter(pk=state.pk).update(throttle=throttle, throttled_at=now, rate_limited=F("rate_limited") + 1,
                                            last_error_at=now, last_error="rate limited (429): throttled")
            return throttle

    def take_probe(self, name: str, now: dt.datetime, after: float) -> bool:
        """True (for one caller) when the connection made no call and had no probe for ``after`` seconds."""
        state = self.for_connection(name)
        since = now - dt.timedelta(seconds=after)
        last = max([t for t in (state.last_success_at, state.last_error_at, state.probed_at) if t], default=None)
        if last is not None and last > since:
            return False
        return bool(self.filter(pk=state.pk, probed_at=state.probed_at).update(probed_at=now))

    def take_thread_discovery(self, name: str, now: dt.datetime, next_at: dt.datetime) -> ConnectionState | None:
        """The connection's thread discovery, if due, for this caller alone (compare-and-set on its due time)."""
        state = self.for_connection(name)
        due = state.next_thread_discovery_at
        if due is not None and due > now:
            return None
        if not self.filter(pk=state.pk, next_thread_discovery_at=due).update(next_thread_discovery_at=next_at):
            return None  # another lane took it
        return state


class ConnectionState(models.Model):
    """Per-connection sync health: pauses after rate limits, last success, counters."""

    connection = models.CharField(max_length=64, unique=True)
    paused_until = models.DateTimeField(null=True, blank=True)
    pause_reason = models.CharField(max_length=300, blank=True)
    last_success_at = models.DateTimeField(null=True, blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    requests = models.PositiveBigIntegerField(default=0)
    failed_requests = models.PositiveBigIntegerField(default=0, help_text="Requests that failed (not 429s).")
    rate_limited = models.PositiveBigIntegerField(default=0)
    # Thread discovery (DISCOVER_THREADS): when the next listing of the connection's threads is due, the newest
    # thread it has seen (listings stop there), and what discovery has cost and found.
    next_thread_discovery_at = models.DateTimeField(null=True, blank=True)
    newest_thread_id = models.CharField(max_length=128, blank=True)
    discovery_requests = models.PositiveBigIntegerField(
        default=0, help_text="Requests made by thread discovery (thread listings, first message listings).")
    threads_discovered = models.PositiveBigIntegerField(default=0)
    probed_at = models.DateTimeField(null=True, blank=True, help_text="The last health probe of an idle connection.")
    # The request budget (MAX_REQUESTS_PER_SECOND): a token bucket every process takes from, and the throttle
    # (a share of the rate, lowered by 429s, recovering with time).
    budget_tokens = models.FloatField(default=0.0)
    budget_at = models.DateTimeField(null=True, blank=True)
    budget_granted = models.PositiveBigIntegerField(default=0, help_text="Requests the budget granted the poller.")
    throttle = models.FloatField(default=1.0, help_text="The share of MAX_REQUESTS_PER_SECOND in use (429s lower it).")
    throttled_at = models.DateTimeField(null=True, blank=True)

    objects = ConnectionStateQuerySet.as_manager()

    def __str__(self):
        return self.connection

    #: The share of the rate the throttle climbs back by per second after a 429 lowered it.
    THROTTLE_RECOVERY = 0.2

    def throttle_at(self, now: dt.datetime, recovery: float = THROTTLE_RECOVERY) -> float:
        """The throttle now: it climbs back towards 1 by ``recovery`` per second since it was last set."""
        if self.throttled_at is None:
            return self.throttle
        return min(1.0, self.throttle + recovery * max(0.0, (now - self.throttled_at).total_seconds()))


class PollerLane(models.Model):
    """One self-re-enqueuing poll loop; the watchdog schedule restarts a lane whose heartbeat is stale."""

    lane = models.PositiveSmallIntegerField(unique=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    token = models.CharField(max_length=64, blank=True)
    cycles = models.PositiveBigIntegerField(default=0)
    runs_polled = models.PositiveBigIntegerField(default=0)

    def __str__(self):
        return f"lane {self.lane}"
