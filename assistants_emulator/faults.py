"""Fault injection, deterministic for a given seed and request order.

Spec string: ``429=0.1,5xx=0.05,latency=0.05-0.2,reset=0.02,drop=0.01,cut=0.1@3,malformed=0.01``
or the same as JSON: ``{"429": 0.1, "5xx": 0.05, "latency": [0.05, 0.2], "reset": 0.02, "drop": 0.01,
"cut": {"p": 0.1, "after": 3}, "malformed": 0.01}``.

When each fault strikes:
- ``429``, ``5xx``, ``reset`` are decided *before* the request is applied: the request did not happen.
- ``drop`` applies the request (state changes, e.g. the run is created) and then resets the connection
  without sending anything: "the response was lost after the service acted".
- ``latency`` is added before the request is applied (real seconds, not scaled by --speed).
- ``malformed`` is applied *after* the request: state changed, only the JSON body is corrupted.
- ``cut`` ends an SSE stream abruptly after N events (no terminating zero-length chunk): the run
  keeps going in the background.

Targeting: ``match`` (a regex searched in ``"METHOD /path"``, the path without query string and
without the ``/openai``, ``/v1`` or ``/api/projects/{p}`` prefix) limits faults to matching requests;
``times`` (N) switches the faults off after N faulted requests. In the spec string ``match`` must come
last (it may contain commas): ``drop=1,times=1,match=POST /threads/[^/]+/runs$``.
Only API requests that pass routing and authentication are candidates; each candidate consumes the
same number of random draws, so a seed reproduces the same faults for the same request sequence.
"""

from __future__ import annotations

import json
import random
import re
import threading
from dataclasses import dataclass

FAULT_KEYS = ("429", "5xx", "latency", "reset", "drop", "cut", "malformed", "match", "times")


@dataclass
class Decision:
    kind: str | None = None      # None | "429" | "500" | "503" | "reset"
    drop: bool = False
    latency: float = 0.0
    cut_after: int | None = None
    malformed: bool = False


def _prob(key: str, value) -> float:
    try:
        p = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"fault {key!r}: expected a probability, got {value!r}") from None
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"fault {key!r}: probability must be within 0..1, got {p}")
    return p


def parse_faults(spec) -> dict:
    """Normalise a spec string / dict / None into {"429": p, "5xx": p, "latency": (lo, hi), ...}."""
    cfg = {"429": 0.0, "5xx": 0.0, "latency": (0.0, 0.0), "reset": 0.0, "drop": 0.0, "cut": (0.0, 3),
           "malformed": 0.0, "match": None, "times": None}
    if spec is None or spec == "" or spec == {}:
        return cfg
    if isinstance(spec, (bytes, str)):
        text = spec.decode() if isinstance(spec, bytes) else spec
        text = text.strip()
        if text.startswith("{"):
            spec = json.loads(text)
        else:
            items = {}
            head, sep, match = text.partition("match=")
            if sep and (not head or head.rstrip().endswith(",")):
                items["match"] = match
                text = head.rstrip().rstrip(",")
            for part in text.split(","):
                part = part.strip()
                if not part:
                    continue
                key, sep, value = part.partition("=")
                if not sep:
                    raise ValueError(f"fault spec item {part!r} needs key=value")
                items[key.strip()] = value.strip()
            spec = items
    if not isinstance(spec, dict):
        raise ValueError("faults must be a spec string or a JSON object")
    for key, value in spec.items():
        key = str(key)
        if key in ("500", "503", "5XX"):
            key = "5xx"
        if key not in FAULT_KEYS:
            raise ValueError(f"unknown fault {key!r}; known: {', '.join(FAULT_KEYS)}")
        if key == "match":
            if value is not None:
                try:
                    re.compile(str(value))
                except re.error as exc:
                    raise ValueError(f"fault 'match': bad regex {value!r}: {exc}") from None
            cfg["match"] = str(value) if value is not None else None
        elif key == "times":
            cfg["times"] = int(value) if value is not None else None
            if cfg["times"] is not None and cfg["times"] < 0:
                raise ValueError("fault 'times' must be >= 0")
        elif key == "latency":
            if isinstance(value, (list, tuple)):
                lo, hi = float(value[0]), float(value[-1])
            elif isinstance(value, (int, float)):
                lo = hi = float(value)
            else:
                lo_s, _, hi_s = str(value).partition("-")
                lo = float(lo_s)
                hi = float(hi_s) if hi_s else lo
            if lo < 0 or hi < lo:
                raise ValueError(f"fault 'latency': bad range {value!r}")
            cfg["latency"] = (lo, hi)
        elif key == "cut":
            if isinstance(value, dict):
                p, after = value.get("p", value.get("probability", 0)), value.get("after", 3)
            elif isinstance(value, (list, tuple)):
                p, after = value[0], value[1]
            else:
                p_s, _, after_s = str(value).partition("@")
                p, after = p_s, (after_s or 3)
            cfg["cut"] = (_prob("cut", p), int(after))
        else:
            cfg[key] = _prob(key, value)
    return cfg


def describe(cfg: dict) -> dict:
    """JSON form of a normalised config (what GET /_emulator/faults returns)."""
    return {"429": cfg["429"], "5xx": cfg["5xx"], "latency": list(cfg["latency"]), "reset": cfg["reset"],
            "drop": cfg["drop"], "cut": {"p": cfg["cut"][0], "after": cfg["cut"][1]},
            "malformed": cfg["malformed"], "match": cfg["match"], "times": cfg["times"]}


class FaultInjector:
    def __init__(self, spec=None, seed: int = 0):
        self._lock = threading.Lock()
        self._seed = seed
        self._initial = parse_faults(spec)
        self._rng = random.Random(seed)
        self._apply(dict(self._initial))

    def _apply(self, cfg: dict) -> None:
        self.config = cfg
        self.injected: dict[str, int] = {}  # faults decided since this configuration, by kind
        self._match = re.compile(cfg["match"]) if cfg["match"] else None
        self._left = cfg["times"]
        self.active = bool(cfg["429"] or cfg["5xx"] or cfg["latency"][1] or cfg["reset"] or cfg["drop"]
                           or cfg["cut"][0] or cfg["malformed"]) and self._left != 0

    def set(self, spec) -> dict:
        cfg = parse_faults(spec)
        with self._lock:
            self._rng = random.Random(self._seed)
            self._apply(cfg)
        return cfg

    def reset(self) -> None:
        with self._lock:
            self._rng = random.Random(self._seed)
            self._apply(dict(self._initial))

    def decide(self, method: str = "GET", path: str = "/", streaming: bool = True) -> Decision | None:
        """One decision per candidate request; always the same number of draws, so runs are reproducible."""
        c = self.config
        if self._match is not None and not self._match.search(f"{method} {path}"):
            return None
        d = Decision()
        with self._lock:
            if not self.active:
                return None
            r = self._rng.random
            draws = [r() for _ in range(8)]
        if draws[0] < c["429"]:
            d.kind = "429"
        elif draws[1] < c["5xx"]:
            d.kind = "500" if draws[2] < 0.5 else "503"
        elif draws[3] < c["reset"]:
            d.kind = "reset"
        elif draws[7] < c["drop"]:
            d.drop = True
        lo, hi = c["latency"]
        if hi > 0:
            d.latency = lo + (hi - lo) * draws[4]
        p_cut, after = c["cut"]
        if streaming and draws[5] < p_cut:
            d.cut_after = after
        if draws[6] < c["malformed"]:
            d.malformed = True
        if not (d.kind or d.drop or d.latency or d.cut_after is not None or d.malformed):
            return None
        with self._lock:
            if self._left is not None:
                if self._left <= 0:
                    return None
                self._left -= 1
                if self._left == 0:
                    self.active = False
            for kind, happened in ((d.kind, bool(d.kind)), ("drop", d.drop), ("latency", bool(d.latency)),
                                   ("cut", d.cut_after is not None), ("malformed", d.malformed)):
                if happened:
                    self.injected[kind] = self.injected.get(kind, 0) + 1
        return d
