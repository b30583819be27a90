"""Exit 0 when the app on 127.0.0.1:$PORT answers its health check, else 1.

The Docker image's HEALTHCHECK runs it (the slim image has no curl). Streamlit answers
``GET /_stcore/health`` with ``ok`` once the server is up (deploy/serve.py imports the
pages' libraries meanwhile; a first page waits for them).

    python deploy/healthcheck.py [--port PORT] [--timeout SECONDS]
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.request


def healthy(port: int, timeout: float = 5.0, host: str = "127.0.0.1") -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/_stcore/health",
                                    timeout=timeout) as r:
            return r.status == 200 and r.read().strip() == b"ok"
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8501")))
    p.add_argument("--timeout", type=float, default=5.0)
    args = p.parse_args(argv)
    ok = healthy(args.port, args.timeout)
    print("ok" if ok else f"no answer on port {args.port}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
