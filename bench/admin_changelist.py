"""Admin run changelist at scale: response times of /admin/runs_app/run/ with 1,000,000 runs on PostgreSQL.

Creates its own database (``bench_admin_changelist`` by default) on the PostgreSQL server given by
--server-url, migrates it, fills it with SQL (``INSERT ... SELECT generate_series``: threads, runs in every
status with a realistic spread, error codes, metadata and a small raw object), ANALYZEs and VACUUMs it, then
requests a set of changelist URLs in-process with Django's test client as a logged-in superuser (warm-up
once, then --repeat timed requests each) and prints p50/max per URL, the number of SQL queries per page and
the slowest query. It also prints ``EXPLAIN (ANALYZE, BUFFERS)`` of the page's main query (the LIMITed
select of runs) for the unfiltered and a filtered list. The database is dropped at the end unless --keep.

    .venv/bin/python bench/admin_changelist.py                        # 1,000,000 runs, ~2-4 minutes
    .venv/bin/python bench/admin_changelist.py --runs 1000000 --record bench/RESULTS.md
    .venv/bin/python bench/admin_changelist.py --runs 20000 --repeat 3   # smoke size

Target: every listed page under 300 ms at 1,000,000 runs (the metadata text search is listed but not a target:
it is a LIKE over every row by design).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench.emulator_throughput import machine  # noqa: E402

TARGET_MS = 300.0


def admin_connect(server_url: str, dbname: str):
    import psycopg

    return psycopg.connect(f"{server_url.rstrip('/')}/{dbname}", autocommit=True)


def recreate_database(server_url: str, name: str) -> None:
    with admin_connect(server_url, "postgres") as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')


def drop_database(server_url: str, name: str) -> None:
    from django.db import connections

    connections.close_all()
    with admin_connect(server_url, "postgres") as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def setup_django(database_url: str) -> None:
    os.environ["DATABASE_URL"] = database_url
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    os.environ.setdefault("DJANGO_LOG_LEVEL", "WARNING")
    import django

    django.setup()
    from django.test.utils import setup_test_environment

    setup_test_environment()  # ALLOWED_HOSTS gets "testserver" for the test client


def fill_defaults(cursor, table: str, given: dict[str, str]) -> dict[str, str]:
    """SQL expressions for every NOT NULL column without a default that ``given`` does not cover."""
    cursor.execute(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = %s "
        "AND is_nullable = 'NO' AND column_default IS NULL AND is_identity = 'NO'", [table])
    filled = dict(given)
    for column, data_type in cursor.fetchall():
        if column in filled:
            continue
        filled[column] = {"jsonb": "'{}'::jsonb", "boolean": "false", "integer": "0", "bigint": "0",
                          "smallint": "0", "double precision": "0",
                          "timestamp with time zone": "now()"}.get(data_type, "''")
    return filled


def insert_select(cursor, table: str, columns: dict[str, str], series: str) -> None:
    names = ", ".join(f'"{c}"' for c in columns)
    cursor.execute(f'INSERT INTO "{table}" ({names}) SELECT {", ".join(columns.values())} FROM {series}')


def generate(runs: int) -> dict:
    from django.db import connection

    threads = max(runs // 10, 1)
    # Status mix of a busy service: mostly finished; a thin active edge at the newest runs.
    status = ("CASE WHEN g <= 300 THEN 'requires_action' WHEN g <= 800 THEN 'in_progress' "
              "WHEN g <= 1000 THEN 'queued' WHEN g % 100 < 5 THEN 'failed' WHEN g % 100 < 8 THEN 'cancelled' "
              "WHEN g % 100 < 10 THEN 'expired' WHEN g % 100 < 12 THEN 'incomplete' ELSE 'completed' END")
    created = "now() - make_interval(secs => g * 8)"  # one run every 8 s: 1M runs span about 92 days
    started = time.monotonic()
    with connection.cursor() as cursor:
        insert_select(cursor, "runs_app_thread", fill_defaults(cursor, "runs_app_thread", {
            "connection": "'default'", "remote_id": "'thread_' || lpad(g::text, 24, '0')",
            "raw": "jsonb_build_object('id', 'thread_' || lpad(g::text, 24, '0'), 'object', 'thread')",
            "created_at": created, "metadata": "jsonb_build_object('team', 'team-' || (g % 40))",
            "first_seen_at": created, "tracked": "g <= 1000",
        }), f"generate_series(1, {threads}) AS g")
        cursor.execute("SELECT min(id) FROM runs_app_thread")
        first_thread = cursor.fetchone()[0]
        insert_select(cursor, "runs_app_run", fill_defaults(cursor, "runs_app_run", {
            "connection": "'default'", "remote_id": "'run_' || lpad(g::text, 24, '0')",
            "thread_id": f"{first_thread} + (g % {threads})",
            "raw": ("jsonb_build_object('id', 'run_' || lpad(g::text, 24, '0'), 'object', 'thread.run', "
                    "'thread_id', 'thread_' || lpad((1 + g % " + str(threads) + ")::text, 24, '0'), "
                    "'instructions', 'You are a helpful assistant for team ' || (g % 40), "
                    "'tools', jsonb_build_array(jsonb_build_object('type', 'function', 'function', "
                    "jsonb_build_object('name', 'get_weather'))))"),
            "created_at": created, "first_seen_at": created, "started_at": created,
            "metadata": "jsonb_build_object('ticket', 'T-' || g, 'team', 'team-' || (g % 40))",
            "assistant_id": "'asst_' || lpad((g % 25)::text, 24, '0')",
            "model": "CASE WHEN g % 3 = 0 THEN 'gpt-4o-mini' ELSE 'gpt-4o' END",
            "status": status,
            "last_error_code": ("CASE WHEN g > 1000 AND g % 100 < 5 THEN (ARRAY['server_error', "
                                "'rate_limit_exceeded', 'invalid_prompt'])[1 + g % 3] ELSE '' END"),
            "last_error": ("CASE WHEN g > 1000 AND g % 100 < 5 THEN jsonb_build_object('code', 'server_error', "
                           "'message', 'Sorry, something went wrong.') END"),
            "completed_at": f"CASE WHEN g > 1000 AND g % 100 >= 12 THEN {created} + interval '7 seconds' END",
            "failed_at": f"CASE WHEN g > 1000 AND g % 100 < 5 THEN {created} + interval '3 seconds' END",
            "expires_at": "CASE WHEN g <= 1000 THEN now() + interval '10 minutes' - make_interval(secs => g) END",
            "status_changed_at": f"{created} + interval '7 seconds'",
            "synced_at": f"{created} + interval '8 seconds'",
            "next_poll_at": "CASE WHEN g <= 1000 THEN now() END",
            "prompt_tokens": "100 + g % 400", "completion_tokens": "20 + g % 300", "total_tokens": "120 + g % 700",
            "instructions": "''", "tools": "'[]'::jsonb",
            "stuck_since": "CASE WHEN g BETWEEN 301 AND 320 THEN now() - interval '20 minutes' END",
            "expiring_flagged_at": "CASE WHEN g <= 10 THEN now() END",
        }), f"generate_series(1, {runs}) AS g")
    inserted = time.monotonic() - started
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE runs_app_thread")
        cursor.execute("VACUUM ANALYZE runs_app_run")
    return {"threads": threads, "runs": runs, "insert_s": round(inserted, 1),
            "vacuum_s": round(time.monotonic() - started - inserted, 1)}


def measure(client, url: str, repeat: int) -> dict:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    response = client.get(url)  # warm-up (templates, caches)
    assert response.status_code == 200, (url, response.status_code)
    timings, queries = [], None
    for _ in range(repeat):
        with CaptureQueriesContext(connection) as captured:
            started = time.perf_counter()
            response = client.get(url)
            timings.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, (url, response.status_code)
        queries = captured.captured_queries
    slowest = max(queries, key=lambda q: float(q["time"]))
    return {"url": url, "p50_ms": statistics.median(timings), "max_ms": max(timings), "queries": len(queries),
            "slowest_query_ms": float(slowest["time"]) * 1000, "slowest_sql": slowest["sql"],
            "main_sql": next((q["sql"] for q in queries if 'FROM "runs_app_run" INNER JOIN' in q["sql"]
                              and "LIMIT" in q["sql"]), None),
            "shown": response.context["cl"].result_count if response.context else None}


def explain(sql: str) -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql)
        return "\n".join(row[0] for row in cursor.fetchall())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--server-url", default=os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432"))
    parser.add_argument("--database", default="bench_admin_changelist")
    parser.add_argument("--keep", action="store_true", help="keep the database (skip the fill next time with --reuse)")
    parser.add_argument("--reuse", action="store_true", help="use the kept database as it is")
    parser.add_argument("--record", help="append the results as a section of this markdown file")
    args = parser.parse_args()
    if not args.database.startswith("bench_admin_"):
        parser.error("--database must start with bench_admin_ (never a shared database)")

    if not args.reuse:
        recreate_database(args.server_url, args.database)
    setup_django(f"{args.server_url.rstrip('/')}/{args.database}")
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.test import Client

    try:
        fill = {"reused": True}
        if not args.reuse:
            call_command("migrate", verbosity=0)
            fill = generate(args.runs)
        print("data:", fill, flush=True)
        user = get_user_model().objects.filter(username="bench").first() or \
            get_user_model().objects.create_superuser("bench", "bench@example.com", "bench")
        client = Client()
        client.force_login(user)
        last_week = (datetime.now(UTC).date().toordinal() - 7)
        since = datetime.fromordinal(last_week).strftime("%Y-%m-%d")
        urls = [
            ("unfiltered, first page", "/admin/runs_app/run/"),
            ("page 100", "/admin/runs_app/run/?p=100"),
            ("status = requires_action", "/admin/runs_app/run/?status__exact=requires_action"),
            ("status = completed", "/admin/runs_app/run/?status__exact=completed"),
            ("needs action", "/admin/runs_app/run/?attention=needs_action"),
            ("stuck", "/admin/runs_app/run/?attention=stuck"),
            ("failed with error code", "/admin/runs_app/run/?error_code=rate_limit_exceeded"),
            ("assistant", "/admin/runs_app/run/?assistant=asst_000000000000000000000007"),
            ("model", "/admin/runs_app/run/?model=gpt-4o-mini"),
            ("created in the last 7 days", f"/admin/runs_app/run/?created_at__gte={since}+00%3A00%3A00%2B00%3A00"),
            ("search: exact run id", "/admin/runs_app/run/?q=run_000000000000000000500000"),
            ("search: thread id", "/admin/runs_app/run/?q=thread_000000000000000000012345"),
            ("search: metadata text (not a target)", "/admin/runs_app/run/?q=T-777777"),
        ]
        results = []
        for label, url in urls:
            result = measure(client, url, args.repeat)
            result["label"] = label
            results.append(result)
            print(f"{label:40s} p50 {result['p50_ms']:8.1f} ms  max {result['max_ms']:8.1f} ms  "
                  f"{result['queries']:2d} queries, slowest {result['slowest_query_ms']:.1f} ms", flush=True)
        plans = {label: explain(r["main_sql"]) for label, r in
                 ((r["label"], r) for r in results if r["label"] in ("unfiltered, first page",
                                                                    "status = requires_action",
                                                                    "status = completed")) if r["main_sql"]}
        for label, plan in plans.items():
            print(f"\nEXPLAIN (ANALYZE, BUFFERS) — {label}:\n{plan}")
        slow = [r for r in results if "not a target" not in r["label"] and r["p50_ms"] > TARGET_MS]
        print(f"\nTarget p50 < {TARGET_MS:.0f} ms on every page except the metadata text search: "
              f"{'met' if not slow else 'MISSED on ' + ', '.join(r['label'] for r in slow)}")
        if args.record:
            record(args, fill, results, plans, slow)
    finally:
        if not args.keep:
            drop_database(args.server_url, args.database)
    return 0


def record(args, fill, results, plans, slow) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        server_version = cursor.fetchone()[0]
    box = machine()
    lines = [
        f"\n### Admin run changelist — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n",
        f"- Machine: {box['nproc']} CPUs, {box['cpu']}; Python {box['python']}; {box['os']}; "
        f"PostgreSQL {server_version} on the same machine",
        f"- Command: `python bench/admin_changelist.py --runs {args.runs} --repeat {args.repeat}"
        f"{' --record ' + args.record if args.record else ''}`",
        f"- Data: {fill}",
        "",
        "| page | p50 (ms) | max (ms) | SQL queries | slowest query (ms) |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r['label']} | {r['p50_ms']:.1f} | {r['max_ms']:.1f} | {r['queries']} | "
                     f"{r['slowest_query_ms']:.1f} |")
    lines.append("")
    lines.append(f"Target p50 < {TARGET_MS:.0f} ms (all pages but the metadata text search): "
                 f"{'met' if not slow else 'MISSED on ' + ', '.join(r['label'] for r in slow)}.")
    for label, plan in plans.items():
        lines += ["", f"EXPLAIN (ANALYZE, BUFFERS) of the main query — {label}:", "", "```", plan, "```"]
    with open(args.record, "a") as handle:
        handle.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
