"""``python -m assistants_emulator`` (or the ``assistants-emulator`` console script)
``[--host H] [--port P] [--api-key K] [--speed F] [--expire-after S] [--faults SPEC] [--seed N] [--control]``"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from . import serve_in_thread


def main(argv=None) -> int:
    # The console script names itself in --help; `python -m` would otherwise show "__main__.py".
    invoked_as = os.path.basename(sys.argv[0])
    prog = invoked_as if invoked_as == "assistants-emulator" else "python -m assistants_emulator"
    parser = argparse.ArgumentParser(prog=prog,
                                     description="Assistants-protocol emulator (Azure OpenAI, Foundry, OpenAI).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--api-key", default=None,
                        help="the only credential accepted; without it any non-empty credential is accepted")
    parser.add_argument("--speed", type=float, default=1.0, help="scale factor for model delays (1 = realistic)")
    parser.add_argument("--expire-after", type=float, default=600, help="seconds until a run expires")
    parser.add_argument("--faults", default=None, help="e.g. 429=0.1,5xx=0.05,latency=0.05-0.2,cut=0.1@3")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--control", action="store_true", help="enable /_emulator/ control endpoints")
    args = parser.parse_args(argv)
    if args.speed <= 0:
        parser.error("--speed must be > 0")
    try:
        url, handle = serve_in_thread(args.host, args.port, api_key=args.api_key, speed=args.speed,
                                      expire_after=args.expire_after, faults=args.faults, seed=args.seed,
                                      control=args.control)
    except ValueError as exc:
        parser.error(str(exc))
    except OSError as exc:
        print(f"emulator: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    print(f"Emulator listening on {url}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    handle.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
