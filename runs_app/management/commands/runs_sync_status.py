"""``manage.py runs_sync_status [--json]``: what the poller follows and how far behind it is
(``runs_app.ops.sync_status``), as tables or as JSON."""

import json

from django.core.management.base import BaseCommand

from runs_app.ops.sync_status import sync_status


class Command(BaseCommand):
    help = "Show the sync engine's state: active runs, due and claimed, lag, connections, poll lanes."

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", dest="as_json", help="print the snapshot as JSON")

    def handle(self, *args, as_json: bool = False, **options):
        status = sync_status()
        if as_json:
            self.stdout.write(json.dumps(status, indent=2, sort_keys=True))
            return
        active, lag = status["active_runs"], status["lag_seconds"]
        self.stdout.write(f"Active runs: {active['total']}  due now: {active['due_now']}  claimed: "
                          f"{active['claimed']}  never synced: {active['never_synced']}")
        self.stdout.write(f"Lag (now - synced_at): max {_seconds(lag['max'])}  p50 {_seconds(lag['p50'])}")
        self.stdout.write(f"Stuck: {status['stuck']}  expiring soon: {status['expiring']}")
        rows = [(conn, st, str(n)) for conn, statuses in active["by_connection"].items() for st, n in statuses.items()]
        self._table("Active runs by connection", ("connection", "status", "runs"), rows)
        self._table("Connections", ("connection", "requests", "rate limited", "paused until", "last success",
                                    "last error"),
                    [(c["connection"], str(c["requests"]), str(c["rate_limited"]), c["paused_until"] or "-",
                      c["last_success_at"] or "-", (c["last_error"] or "-")[:60]) for c in status["connections"]])
        self._table("Request budget", ("connection", "per second", "throttle", "granted"),
                    [(c["connection"], str(c["max_requests_per_second"] or "-"), f"{c['throttle']:.0%}",
                      str(c["budget_granted"])) for c in status["connections"]])
        self._table("Thread discovery", ("connection", "on", "requests", "threads found", "next listing"),
                    [(c["connection"], "yes" if c["discover_threads"] else "no", str(c["discovery_requests"]),
                      str(c["threads_discovered"]), c["next_thread_discovery_at"] or "-")
                     for c in status["connections"]])
        self._table("Poll lanes", ("lane", "alive", "heartbeat age", "cycles", "runs polled"),
                    [(str(lane["lane"]), "yes" if lane["alive"] else "no", _seconds(lane["heartbeat_age"]),
                      str(lane["cycles"]), str(lane["runs_polled"])) for lane in status["lanes"]])

    def _table(self, title: str, header: tuple, rows: list[tuple]) -> None:
        self.stdout.write("")
        self.stdout.write(self.style.MIGRATE_HEADING(title))
        if not rows:
            self.stdout.write("  (none)")
            return
        widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=False)]
        for row in (header, *rows):
            cells = (str(cell).ljust(width) for cell, width in zip(row, widths, strict=True))
            self.stdout.write(("  " + "  ".join(cells)).rstrip())


def _seconds(value) -> str:
    return "-" if value is None else f"{value:.1f} s"
