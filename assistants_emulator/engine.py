"""In-memory store and run lifecycle engine.

Concurrency design: one RLock (``Store.lock``) guards every object; each run has a Condition on that
same lock so streams wake only for their own run; a single scheduler thread (a heap of timed
callbacks) advances every run, so there is no thread per run.

Objects are stored in their wire shape. Nested values are *replaced*, never mutated in place, so a
shallow ``dict(obj)`` is a consistent snapshot that can be serialised outside the lock.
"""

from __future__ import annotations

import heapq
import itertools
import random
import string
import sys
import threading
import time
import traceback

from . import model
from .errors import ApiError

ALNUM = string.ascii_letters + string.digits
TERMINAL = frozenset({"completed", "failed", "cancelled", "expired", "incomplete"})
ACTIVE = frozenset({"queued", "in_progress", "requires_action", "cancelling"})
STREAM_END_EVENTS = frozenset({"thread.run.requires_action", "thread.run.completed", "thread.run.failed",
                               "thread.run.cancelled", "thread.run.expired", "thread.run.incomplete"})
PARK = None   # a run script yields PARK to wait for submit_tool_outputs


def usage_obj(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_token_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}}


class Scheduler(threading.Thread):
    """A heap of (due, seq, fn, args); runs callbacks in order on one daemon thread."""

    def __init__(self):
        super().__init__(name="emulator-scheduler", daemon=True)
        self._heap: list = []
        self._cond = threading.Condition(threading.Lock())
        self._seq = itertools.count()
        self._stopped = False

    def call_later(self, delay: float, fn, *args) -> None:
        due = time.monotonic() + max(0.0, delay)
        with self._cond:
            heapq.heappush(self._heap, (due, next(self._seq), fn, args))
            if self._heap[0][0] == due:
                self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def clear(self) -> None:
        with self._cond:
            self._heap.clear()

    def run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._stopped:
                        return
                    if not self._heap:
                        self._cond.wait()
                        continue
                    wait = self._heap[0][0] - time.monotonic()
                    if wait > 0:
                        self._cond.wait(wait)
                        continue
                    _, _, fn, args = heapq.heappop(self._heap)
                    break
            try:
                fn(*args)
            except Exception:  # pragma: no cover - keep the scheduler alive whatever a callback does
                traceback.print_exc(file=sys.stderr)


class RunRuntime:
    """Internal, non-wire state of one run."""

    def __init__(self, run_id: str, lock):
        self.run_id = run_id
        self.cond = threading.Condition(lock)
        self.log: list = []          # [(event_name, snapshot_dict)] in emission order
        self.epoch = 0
        self.gen = None
        self.dead = False
        self.include_content = False
        self.text = ""
        self.triggers = model.Triggers()
        self.called: set = set()
        self.calls: list = []
        self.tool_step_id = None
        self.tool_outputs: list = []
        self.code_logs = None
        self.searched = False
        self.cite_file_id = None
        self.prompt_tokens = 0
        self.created = 0.0           # wall-clock creation time (expires_at is counted from it)
        self.action_expiry_factor = 0.0
        self.expiry_gen = 0          # bumped whenever expires_at moves: older expiry timers do nothing
        self.usage_prompt = 0
        self.usage_completion = 0
        self.file_ids: list = []


class Store:
    def __init__(self, *, speed: float = 1.0, expire_after: float = 600, seed: int = 0):
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self.lock = threading.RLock()
        self.speed = float(speed)
        self.expire_after = float(expire_after)
        self.seed = seed
        self.scheduler = Scheduler()
        self.scheduler.start()
        self._reset_state()

    # ------------------------------------------------------------------ bookkeeping
    def _reset_state(self) -> None:
        self.rng = random.Random(self.seed)
        self.assistants: dict = {}
        self.threads: dict = {}
        self.messages: dict = {}
        self.runs: dict = {}
        self.steps: dict = {}
        self.thread_messages: dict = {}
        self.thread_runs: dict = {}
        self.run_steps: dict = {}
        self.rt: dict = {}
        self.owner_files: dict = {}   # thread/assistant id -> file ids behind its vector stores
        self.record: list = []
        self.seq = 0
        self.record_cond = threading.Condition(self.lock)

    def reset(self) -> None:
        with self.lock:
            old = list(self.rt.values())
            self.scheduler.clear()
            self._reset_state()
            for rt in old:
                rt.dead = True
                rt.epoch += 1
                rt.cond.notify_all()

    def close(self) -> None:
        self.scheduler.stop()
        with self.lock:
            for rt in self.rt.values():
                rt.dead = True
                rt.cond.notify_all()

    def new_id(self, prefix: str) -> str:
        return prefix + "".join(self.rng.choices(ALNUM, k=24))

    def d(self, seconds: float) -> float:
        """Scale a model delay by --speed."""
        return seconds / self.speed

    def _record(self, obj: dict, frm, to) -> None:
        self.seq += 1
        kind = obj["object"]
        self.record.append({
            "seq": self.seq, "object": kind, "id": obj["id"],
            "thread_id": obj.get("thread_id") if kind != "thread" else obj["id"],
            "run_id": obj["id"] if kind == "thread.run" else obj.get("run_id"),
            "from": frm, "to": to, "monotonic": time.monotonic(), "wall": time.time(),
        })
        self.record_cond.notify_all()

    def events_since(self, since: int = 0, limit: int | None = None, wait: float = 0.0) -> list:
        """Events with seq > since; with ``wait``, block up to that many seconds for the first one."""
        with self.lock:
            if wait > 0 and self.seq <= since:
                deadline = time.monotonic() + wait
                cond = self.record_cond
                while self.seq <= since:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    cond.wait(left)
            # seq is 1-based and dense, so index arithmetic finds the slice directly.
            start = max(0, since - self.record[0]["seq"] + 1) if self.record else 0
            out = self.record[start:]
            if limit is not None:
                out = out[:limit]
            return [dict(e) for e in out]

    def _emit(self, rt: RunRuntime, name: str, obj: dict, copy: bool = True) -> None:
        rt.log.append((name, dict(obj) if copy else obj))
        rt.cond.notify_all()

    # ------------------------------------------------------------------ lookups
    def get_assistant(self, aid: str) -> dict:
        a = self.assistants.get(aid)
        if a is None:
            raise ApiError(404, f"No assistant found with id '{aid}'.")
        return a

    def get_thread(self, tid: str) -> dict:
        t = self.threads.get(tid)
        if t is None:
            raise ApiError(404, f"No thread found with id '{tid}'.")
        return t

    def get_run(self, tid: str, rid: str) -> dict:
        self.get_thread(tid)
        r = self.runs.get(rid)
        if r is None or r["thread_id"] != tid:
            raise ApiError(404, f"No run found with id '{rid}'.")
        return r

    def get_step(self, tid: str, rid: str, sid: str) -> dict:
        self.get_run(tid, rid)
        s = self.steps.get(sid)
        if s is None or s["run_id"] != rid:
            raise ApiError(404, f"No run step found with id '{sid}'.")
        return s

    def get_message(self, tid: str, mid: str) -> dict:
        self.get_thread(tid)
        m = self.messages.get(mid)
        if m is None or m["thread_id"] != tid:
            raise ApiError(404, f"No message found with id '{mid}'.")
        return m

    def active_run(self, tid: str):
        for rid in reversed(self.thread_runs.get(tid, ())):
            r = self.runs[rid]
            if r["status"] in ACTIVE:
                return r
        return None

    # ------------------------------------------------------------------ creation
    def add_thread(self, *, metadata: dict, tool_resources: dict | None) -> dict:
        tid = self.new_id("thread_")
        t = {"id": tid, "object": "thread", "created_at": int(time.time()), "metadata": metadata,
             "tool_resources": tool_resources}
        self.threads[tid] = t
        self.thread_messages[tid] = []
        self.thread_runs[tid] = []
        return t

    def add_message(self, tid: str, msg: dict, *, assistant_id=None, run_id=None, status="completed") -> dict:
        now = int(time.time())
        m = {"id": self.new_id("msg_"), "object": "thread.message", "created_at": now,
             "assistant_id": assistant_id, "thread_id": tid, "run_id": run_id, "status": status,
             "incomplete_details": None, "incomplete_at": None,
             "completed_at": now if status == "completed" else None,
             "role": msg["role"], "content": msg["content"], "attachments": msg.get("attachments", []),
             "metadata": msg.get("metadata", {})}
        self.messages[m["id"]] = m
        self.thread_messages[tid].append(m["id"])
        self._record(m, None, status)
        return m

    def delete_thread(self, tid: str) -> None:
        self.get_thread(tid)
        for rid in self.thread_runs.pop(tid, ()):
            rt = self.rt.pop(rid, None)
            if rt is not None:
                rt.dead = True
                rt.epoch += 1
                rt.cond.notify_all()
            for sid in self.run_steps.pop(rid, ()):
                self.steps.pop(sid, None)
            self.runs.pop(rid, None)
        for mid in self.thread_messages.pop(tid, ()):
            self.messages.pop(mid, None)
        del self.threads[tid]

    def create_run(self, thread: dict, assistant: dict, params: dict, *, include_content: bool,
                   flavor_tool_resources: dict, action_expiry_factor: float = 0.0) -> dict:
        """params: already-validated run fields. Returns the run (status queued).

        action_expiry_factor > 0: while the run waits in requires_action its expires_at is moved to
        now + factor × expire_after (Foundry), then back once tool outputs arrive.
        """
        now_f = time.time()
        now = int(now_f)
        rid = self.new_id("run_")
        run = {
            "id": rid, "object": "thread.run", "created_at": now, "assistant_id": assistant["id"],
            "thread_id": thread["id"], "status": "queued", "started_at": None,
            "expires_at": int(now_f + self.expire_after), "cancelled_at": None, "failed_at": None,
            "completed_at": None, "required_action": None, "last_error": None,
            "model": params["model"], "instructions": params["instructions"], "tools": params["tools"],
            "tool_resources": flavor_tool_resources, "metadata": params["metadata"],
            "temperature": params["temperature"], "top_p": params["top_p"],
            "reasoning_effort": params.get("reasoning_effort"),
            "max_completion_tokens": params["max_completion_tokens"],
            "max_prompt_tokens": params["max_prompt_tokens"],
            "truncation_strategy": params["truncation_strategy"], "incomplete_details": None, "usage": None,
            "response_format": params["response_format"], "tool_choice": params["tool_choice"],
            "parallel_tool_calls": params["parallel_tool_calls"],
        }
        self.runs[rid] = run
        self.thread_runs[thread["id"]].append(rid)
        self.run_steps[rid] = []
        rt = RunRuntime(rid, self.lock)
        rt.include_content = include_content
        rt.created = now_f
        rt.action_expiry_factor = action_expiry_factor
        self.rt[rid] = rt
        # The model reads the latest user message (after additional_messages were added).
        last_user = next((self.messages[mid] for mid in reversed(self.thread_messages[thread["id"]])
                          if self.messages[mid]["role"] == "user"), None)
        rt.text = model.message_text(last_user) if last_user else ""
        rt.triggers = model.parse_triggers(rt.text)
        if rt.triggers.fail is None and model.is_undeployed(run["model"]):
            rt.triggers.fail = "invalid_engine_error"
        rt.prompt_tokens = self._prompt_tokens(run)
        rt.file_ids = self._file_ids(thread, assistant)
        self._record(run, None, "queued")
        self._emit(rt, "thread.run.created", run)
        self._emit(rt, "thread.run.queued", run)
        rt.gen = self._script(run, rt)
        self._advance(rt, rt.epoch)
        self.scheduler.call_later(self.expire_after, self._expire, rt, rt.expiry_gen)
        return run

    def _file_ids(self, thread: dict, assistant: dict) -> list:
        ids = []
        for holder in (thread, assistant):
            ids.extend(self.owner_files.get(holder["id"], ()))
            ids.extend(((holder.get("tool_resources") or {}).get("code_interpreter") or {}).get("file_ids", ()))
        return ids

    def _prompt_tokens(self, run: dict) -> int:
        mids = self.thread_messages[run["thread_id"]]
        ts = run["truncation_strategy"]
        if ts["type"] == "last_messages" and ts["last_messages"]:
            mids = mids[-ts["last_messages"]:]
        words = sum(model.count_tokens(model.message_text(self.messages[m])) for m in mids)
        return words + model.count_tokens(run["instructions"] or "") + 5 * len(run["tools"])

    # ------------------------------------------------------------------ state changes
    def _run_set(self, run: dict, status: str, **fields) -> None:
        frm = run["status"]
        run["status"] = status
        run.update(fields)
        self._record(run, frm, status)
        self._emit(self.rt[run["id"]], "thread.run." + status, run)

    def _finish_run(self, run: dict, rt: RunRuntime, status: str, **fields) -> None:
        """Move a run to a terminal status: expires_at becomes null on the run and its steps."""
        rt.epoch += 1
        rt.gen = None
        fields.setdefault("usage", usage_obj(rt.usage_prompt, rt.usage_completion))
        for sid in self.run_steps[run["id"]]:
            self.steps[sid]["expires_at"] = None
        self._run_set(run, status, expires_at=None, required_action=None, **fields)

    def _move_expiry(self, run: dict, rt: RunRuntime, at: float) -> int:
        """Move the run's expiry to wall time ``at``: open steps follow, and only the new timer counts."""
        rt.expiry_gen += 1
        self.scheduler.call_later(at - time.time(), self._expire, rt, rt.expiry_gen)
        expires_at = int(at)
        for sid in self.run_steps[run["id"]]:
            if self.steps[sid]["status"] == "in_progress":
                self.steps[sid]["expires_at"] = expires_at
        return expires_at

    def _new_step(self, run: dict, rt: RunRuntime, stype: str, details: dict) -> dict:
        step = {"id": self.new_id("step_"), "object": "thread.run.step", "created_at": int(time.time()),
                "run_id": run["id"], "assistant_id": run["assistant_id"], "thread_id": run["thread_id"],
                "type": stype, "status": "in_progress", "cancelled_at": None, "completed_at": None,
                "expires_at": run["expires_at"], "failed_at": None, "last_error": None,
                "step_details": details, "usage": None}
        self.steps[step["id"]] = step
        self.run_steps[run["id"]].append(step["id"])
        self._record(step, None, "in_progress")
        self._emit(rt, "thread.run.step.created", step)
        self._emit(rt, "thread.run.step.in_progress", step)
        return step

    def _step_set(self, rt: RunRuntime, step: dict, status: str, **fields) -> None:
        frm = step["status"]
        step["status"] = status
        step.update(fields)
        self._record(step, frm, status)
        self._emit(rt, "thread.run.step." + status, step)

    def _message_set(self, rt: RunRuntime, msg: dict, status: str, **fields) -> None:
        frm = msg["status"]
        msg["status"] = status
        msg.update(fields)
        self._record(msg, frm, status)
        self._emit(rt, "thread.message." + status, msg)

    def _complete_step(self, rt: RunRuntime, step: dict, prompt: int, completion: int, **fields) -> None:
        rt.usage_prompt += prompt
        rt.usage_completion += completion
        self._step_set(rt, step, "completed", completed_at=int(time.time()), usage=usage_obj(prompt, completion),
                       **fields)

    # ------------------------------------------------------------------ the scheduler side
    def _advance(self, rt: RunRuntime, epoch: int) -> None:
        with self.lock:
            if rt.dead or rt.epoch != epoch or rt.gen is None or self.rt.get(rt.run_id) is not rt:
                return
            try:
                delay = next(rt.gen)
            except StopIteration:
                rt.gen = None
                return
            except Exception:
                traceback.print_exc(file=sys.stderr)
                rt.gen = None
                run = self.runs.get(rt.run_id)
                if run is not None and run["status"] not in TERMINAL:
                    self._finish_run(run, rt, "failed", failed_at=int(time.time()),
                                     last_error={"code": "server_error", "message": "Sorry, something went wrong."})
                return
            if delay is not PARK:
                self.scheduler.call_later(delay, self._advance, rt, epoch)

    def _resume(self, rt: RunRuntime, delay: float) -> None:
        self.scheduler.call_later(delay, self._advance, rt, rt.epoch)

    def _script(self, run: dict, rt: RunRuntime):
        """The scripted model, one generator per run; yields delays (seconds) or PARK."""
        yield self.d(0.5)
        self._run_set(run, "in_progress", started_at=int(time.time()))
        trig = rt.triggers
        if trig.expire:
            yield PARK   # never resumed: the expiry timer ends the run
            return
        yield self.d(0.3)
        if trig.fail in ("invalid_prompt", "invalid_engine_error"):
            self._fail(run, rt, trig.fail)
            return
        if run["max_prompt_tokens"] is not None and rt.prompt_tokens > run["max_prompt_tokens"]:
            self._finish_run(run, rt, "incomplete", incomplete_details={"reason": "max_prompt_tokens"})
            return
        for kind in model.plan_hosted(run["tools"], run["tool_choice"], rt.text):
            yield from self._hosted_step(run, rt, kind)
        first_turn = True
        while True:
            names = model.plan_functions(run["tools"], run["tool_choice"], rt.text,
                                         run["parallel_tool_calls"] is not False, rt.called, first_turn)
            first_turn = False
            if not names:
                break
            yield from self._function_step(run, rt, names)
            yield PARK   # requires_action: submit_tool_outputs resumes us with the run queued
            self._run_set(run, "in_progress", started_at=int(time.time()))
            yield self.d(0.3)
        yield from self._message_step(run, rt)

    def _hosted_step(self, run: dict, rt: RunRuntime, kind: str):
        call_id = self.new_id("call_")
        step = self._new_step(run, rt, "tool_calls", {"type": "tool_calls", "tool_calls": []})
        yield self.d(0.3)
        sid = step["id"]
        if kind == "code_interpreter":
            code, logs = model.code_for(rt.text)
            self._emit(rt, "thread.run.step.delta", {"id": sid, "object": "thread.run.step.delta", "delta": {
                "step_details": {"type": "tool_calls", "tool_calls": [
                    {"index": 0, "id": call_id, "type": "code_interpreter",
                     "code_interpreter": {"input": "", "outputs": []}}]}}}, copy=False)
            typed = ""
            for line in code.splitlines(keepends=True):
                yield self.d(0.05)
                typed += line
                self._emit(rt, "thread.run.step.delta", {"id": sid, "object": "thread.run.step.delta", "delta": {
                    "step_details": {"type": "tool_calls", "tool_calls": [
                        {"index": 0, "type": "code_interpreter", "code_interpreter": {"input": line}}]}}},
                    copy=False)
                step["step_details"] = {"type": "tool_calls", "tool_calls": [
                    {"id": call_id, "type": "code_interpreter",
                     "code_interpreter": {"input": typed, "outputs": []}}]}
            yield self.d(0.3)
            self._emit(rt, "thread.run.step.delta", {"id": sid, "object": "thread.run.step.delta", "delta": {
                "step_details": {"type": "tool_calls", "tool_calls": [
                    {"index": 0, "type": "code_interpreter",
                     "code_interpreter": {"outputs": [{"index": 0, "type": "logs", "logs": logs}]}}]}}},
                copy=False)
            rt.code_logs = logs
            details = {"type": "tool_calls", "tool_calls": [
                {"id": call_id, "type": "code_interpreter",
                 "code_interpreter": {"input": code, "outputs": [{"type": "logs", "logs": logs}]}}]}
            completion = model.count_tokens(code)
        else:
            fs_tool = next((t for t in run["tools"] if t["type"] == "file_search"), {})
            opts = (fs_tool.get("file_search") or {}).get("ranking_options") or {}
            ranking = {"ranker": opts.get("ranker", "default_2024_08_21"),
                       "score_threshold": opts.get("score_threshold", 0.0)}
            self._emit(rt, "thread.run.step.delta", {"id": sid, "object": "thread.run.step.delta", "delta": {
                "step_details": {"type": "tool_calls", "tool_calls": [
                    {"index": 0, "id": call_id, "type": "file_search",
                     "file_search": {"ranking_options": ranking, "results": []}}]}}}, copy=False)
            yield self.d(0.4)
            file_ids = rt.file_ids or ["assistant-" + "".join(random.Random(run["thread_id"]).choices(ALNUM, k=22))]
            max_results = (fs_tool.get("file_search") or {}).get("max_num_results") or 2
            results = []
            for i, fid in enumerate(file_ids[:max_results]):
                results.append({"file_id": fid, "file_name": "source", "score": round(0.82 - 0.07 * i, 4),
                                 "attributes": {},
                                 "content": [{"type": "text", "text": "The emulator's reference document: "
                                              "the answer to the question is forty-two."}]})
            rt.searched = True
            rt.cite_file_id = file_ids[0]
            details = {"type": "tool_calls", "tool_calls": [
                {"id": call_id, "type": "file_search", "file_search": {"ranking_options": ranking,
                                                                          "results": results}}]}
            completion = 20
        self._complete_step(rt, step, rt.prompt_tokens, completion, step_details=details)
        yield self.d(0.2)

    def _function_step(self, run: dict, rt: RunRuntime, names: list):
        step = self._new_step(run, rt, "tool_calls", {"type": "tool_calls", "tool_calls": []})
        sid = step["id"]
        calls = []
        for index, name in enumerate(names):
            call_id = self.new_id("call_")
            arguments = model.function_arguments(run["tools"], name)
            yield self.d(0.2)
            self._emit(rt, "thread.run.step.delta", {"id": sid, "object": "thread.run.step.delta", "delta": {
                "step_details": {"type": "tool_calls", "tool_calls": [
                    {"index": index, "id": call_id, "type": "function",
                     "function": {"name": name, "arguments": "", "output": None}}]}}}, copy=False)
            for fragment in model.split_arguments(arguments):
                yield self.d(0.05)
                self._emit(rt, "thread.run.step.delta", {"id": sid, "object": "thread.run.step.delta", "delta": {
                    "step_details": {"type": "tool_calls", "tool_calls": [
                        {"index": index, "type": "function", "function": {"arguments": fragment}}]}}}, copy=False)
            calls.append((call_id, name, arguments))
            step["step_details"] = {"type": "tool_calls", "tool_calls": [
                {"id": c, "type": "function", "function": {"name": n, "arguments": a, "output": None}}
                for c, n, a in calls]}
        rt.called.update(names)
        rt.calls = calls
        rt.tool_step_id = sid
        yield self.d(0.1)
        expiry = {}
        if rt.action_expiry_factor:
            expiry["expires_at"] = self._move_expiry(run, rt, time.time() + rt.action_expiry_factor * self.expire_after)
        self._run_set(run, "requires_action", **expiry, required_action={
            "type": "submit_tool_outputs", "submit_tool_outputs": {"tool_calls": [
                {"id": c, "type": "function", "function": {"name": n, "arguments": a}} for c, n, a in calls]}})

    def _message_step(self, run: dict, rt: RunRuntime):
        trig = rt.triggers
        pieces = model.answer(user_text=rt.text, triggers=trig, tool_outputs=rt.tool_outputs,
                              code_logs=rt.code_logs, searched=rt.searched, response_format=run["response_format"])
        truncated = False
        limit = run["max_completion_tokens"]
        if trig.incomplete:
            limit = min(limit, rt.usage_completion + 3) if limit is not None else rt.usage_completion + 3
        if limit is not None:
            allowed = max(0, limit - rt.usage_completion)
            if len(pieces) > allowed:
                pieces = pieces[:allowed]
                truncated = True
        msg_id = self.new_id("msg_")
        step = self._new_step(run, rt, "message_creation",
                              {"type": "message_creation", "message_creation": {"message_id": msg_id}})
        now = int(time.time())
        msg = {"id": msg_id, "object": "thread.message", "created_at": now, "assistant_id": run["assistant_id"],
               "thread_id": run["thread_id"], "run_id": run["id"], "status": "in_progress",
               "incomplete_details": None, "incomplete_at": None, "completed_at": None, "role": "assistant",
               "content": [], "attachments": [], "metadata": {}}
        self.messages[msg_id] = msg
        self.thread_messages[run["thread_id"]].append(msg_id)
        self._record(msg, None, "in_progress")
        self._emit(rt, "thread.message.created", msg)
        self._emit(rt, "thread.message.in_progress", msg)
        per_piece = self.d(0.04) + (trig.slow / max(1, len(pieces)))
        fail_at = min(3, len(pieces)) if trig.fail else None
        text = ""
        annotations: list = []
        for i, (piece, is_citation) in enumerate(pieces):
            yield per_piece
            if fail_at is not None and i == fail_at:
                break
            tdelta = {"value": piece}
            if i == 0:
                tdelta["annotations"] = []
            if is_citation:
                start = len(text)
                tdelta["annotations"] = [{"index": len(annotations), "type": "file_citation", "text": piece,
                                          "start_index": start, "end_index": start + len(piece),
                                          "file_citation": {"file_id": rt.cite_file_id, "quote": ""}}]
                annotations = annotations + [{"type": "file_citation", "text": piece, "start_index": start,
                                              "end_index": start + len(piece),
                                              "file_citation": {"file_id": rt.cite_file_id}}]
            self._emit(rt, "thread.message.delta", {"id": msg_id, "object": "thread.message.delta", "delta": {
                "content": [{"index": 0, "type": "text", "text": tdelta}]}}, copy=False)
            text += piece
            msg["content"] = [{"type": "text", "text": {"value": text, "annotations": annotations}}]
        if fail_at is not None:
            if fail_at >= len(pieces):
                yield per_piece
            self._fail(run, rt, trig.fail, step=step, msg=msg)
            return
        yield self.d(0.1)
        now = int(time.time())
        if truncated:
            self._message_set(rt, msg, "incomplete", incomplete_at=now, incomplete_details={"reason": "max_tokens"})
        else:
            self._message_set(rt, msg, "completed", completed_at=now)
        self._complete_step(rt, step, rt.prompt_tokens + model.count_tokens(" ".join(o for _, o in rt.tool_outputs)),
                            len(pieces))
        if truncated:
            self._finish_run(run, rt, "incomplete", incomplete_details={"reason": "max_completion_tokens"})
        else:
            self._finish_run(run, rt, "completed", completed_at=now)

    def _fail(self, run: dict, rt: RunRuntime, code: str, *, step=None, msg=None) -> None:
        now = int(time.time())
        error = {"code": code, "message": model.FAIL_MESSAGES[code].format(model=run["model"])}
        if msg is not None and msg["status"] == "in_progress":
            self._message_set(rt, msg, "incomplete", incomplete_at=now, incomplete_details={"reason": "run_failed"})
        if step is not None and step["status"] == "in_progress":
            step_code = code if code in ("server_error", "rate_limit_exceeded") else "server_error"
            self._step_set(rt, step, "failed", failed_at=now,
                           last_error={"code": step_code, "message": model.FAIL_MESSAGES[step_code]})
        self._finish_run(run, rt, "failed", failed_at=now, last_error=error)

    # ------------------------------------------------------------------ client actions (lock held)
    def submit_tool_outputs(self, run: dict, outputs: list) -> None:
        """outputs: [(tool_call_id, output)] already validated against the pending calls."""
        rt = self.rt[run["id"]]
        by_id = dict(outputs)
        step = self.steps[rt.tool_step_id]
        step_details = {"type": "tool_calls", "tool_calls": [
            {"id": c, "type": "function", "function": {"name": n, "arguments": a, "output": by_id[c]}}
            for c, n, a in rt.calls]}
        rt.tool_outputs = rt.tool_outputs + [(n, by_id[c]) for c, n, _ in rt.calls]
        completion = sum(model.count_tokens(a) for _, _, a in rt.calls) + 2 * len(rt.calls)
        self._complete_step(rt, step, rt.prompt_tokens, completion, step_details=step_details)
        rt.calls = []
        rt.tool_step_id = None
        expiry = {}
        if rt.action_expiry_factor:
            # Back to created_at + expire_after, unless the outputs came later than that.
            now = time.time()
            due = rt.created + self.expire_after
            expiry["expires_at"] = self._move_expiry(run, rt, due if due > now else now + self.expire_after)
        self._run_set(run, "queued", required_action=None, **expiry)
        self._resume(rt, self.d(0.3))

    def cancel(self, run: dict) -> None:
        status = run["status"]
        if status in TERMINAL or status == "cancelling":
            raise ApiError(400, f"Cannot cancel run with status '{status}'.")
        rt = self.rt[run["id"]]
        rt.epoch += 1
        rt.gen = None
        self._run_set(run, "cancelling")
        self.scheduler.call_later(self.d(0.3), self._finish_cancel, rt, rt.epoch)

    def _end_open_children(self, run: dict, rt: RunRuntime, step_status: str, msg_reason: str, **step_fields):
        now = int(time.time())
        for mid in self.thread_messages.get(run["thread_id"], ()):
            m = self.messages[mid]
            if m["run_id"] == run["id"] and m["status"] == "in_progress":
                self._message_set(rt, m, "incomplete", incomplete_at=now, incomplete_details={"reason": msg_reason})
        for sid in self.run_steps[run["id"]]:
            s = self.steps[sid]
            if s["status"] == "in_progress":
                self._step_set(rt, s, step_status, **step_fields)

    def _finish_cancel(self, rt: RunRuntime, epoch: int) -> None:
        with self.lock:
            run = self.runs.get(rt.run_id)
            if rt.dead or rt.epoch != epoch or run is None or run["status"] != "cancelling":
                return
            now = int(time.time())
            self._end_open_children(run, rt, "cancelled", "run_cancelled", cancelled_at=now)
            self._finish_run(run, rt, "cancelled", cancelled_at=now)

    def _expire(self, rt: RunRuntime, gen: int) -> None:
        with self.lock:
            run = self.runs.get(rt.run_id)
            if (rt.dead or gen != rt.expiry_gen or run is None or self.rt.get(rt.run_id) is not rt
                    or run["status"] not in ACTIVE):
                return
            self._end_open_children(run, rt, "expired", "run_expired")
            self._finish_run(run, rt, "expired")
