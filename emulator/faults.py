"""Fault injection, deterministic for a given seed and request order.

Spec string: ``429=0.1,5xx=0.05,latency=0.05-0.2,reset=0.02,cut=0.1@3,malformed=0.01``
or the same as JSON: ``{"429": 0.1, "5xx": 0.05, "latency": [0.05, 0.2], "reset": 0.02,
"cut": {"p": 0.1, "after": 3}, "malformed": 0.01}``.

When each fault strikes:
- ``429``, ``5xx``, ``reset`` are decided *before* the request is applied: the request did not happen.
- ``latency`` is added before the request is applied (real seconds, not scaled by --speed).
- ``malformed`` is applied *after* the request: state changed, only the JSON body is corrupted.
- ``cut`` ends an SSE stream abruptly after N events: the run keeps going in the background.
"""

from __future__ import annotations

import json
import random
import threading
from dataclasses import dataclass

FAULT_KEYS = ("429", "5xx", "latency", "reset", "cut", "malformed")


@dataclass
class Decision:
    kind: str | None = None      # None | "429" | "500" | "503" | "reset"
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
    cfg = {"429": 0.0, "5xx": 0.0, "latency": (0.0, 0.0), "reset": 0.0, "cut": (0.0, 3), "malformed": 0.0}
    if spec is None or spec == "" or spec == {}:
        return cfg
    if isinstance(spec, (bytes, str)):
        text = spec.decode() if isinstance(spec, bytes) else spec
        text = text.strip()
        if text.startswith("{"):
            spec = json.loads(text)
        else:
            items = {}
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
        if key == "latency":
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
            "cut": {"p": cfg["cut"][0], "after": cfg["cut"][1]}, "malformed": cfg["malformed"]}


class FaultInjector:
    def __init__(self, spec=None, seed: int = 0):
        self._lock = threading.Lock()
        self._seed = seed
        self._initial = parse_faults(spec)
        self.config = dict(self._initial)
        self._rng = random.Random(seed)

    def set(self, spec) -> dict:
        cfg = parse_faults(spec)
        with self._lock:
            self.config = cfg
            self._rng = random.Random(self._seed)
        return cfg

    def reset(self) -> None:
        with self._lock:
            self.config = dict(self._initial)
            self._rng = random.Random(self._seed)

    @property
    def active(self) -> bool:
        c = self.config
        return bool(c["429"] or c["5xx"] or c["latency"][1] or c["reset"] or c["cut"][0] or c["malformed"])

    def decide(self, streaming_possible: bool = True) -> Decision:
        """One decision per API request; always the same number of draws, so runs are reproducible."""
        c = self.config
        d = Decision()
        with self._lock:
            r = self._rng.random
            draws = [r() for _ in range(7)]
        if draws[0] < c["429"]:
            d.kind = "429"
        elif draws[1] < c["5xx"]:
            d.kind = "500" if draws[2] < 0.5 else "503"
        elif draws[3] < c["reset"]:
            d.kind = "reset"
        lo, hi = c["latency"]
        if hi > 0:
            d.latency = lo + (hi - lo) * draws[4]
        p_cut, after = c["cut"]
        if draws[5] < p_cut:
            d.cut_after = after
        if draws[6] < c["malformed"]:
            d.malformed = True
        return d
