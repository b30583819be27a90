"""Several ``python -m interp`` command lines in one torchrun launch (tests only).

    python -m torch.distributed.run --nproc_per_node N -m tests._dist_runner CMDS.json OUT

Each rank imports torch and the project once and runs every command line of CMDS.json
(a JSON list of argv lists) through :func:`interp.cli.main`, in order, in the same
process group; rank ``r`` writes the exit codes to ``OUT.r.json``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def main() -> int:
    t0 = time.perf_counter()
    from interp.cli import main as cli_main

    print(f"[runner] imports: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    cmds = json.loads(Path(sys.argv[1]).read_text())
    codes = []
    for argv in cmds:
        t0 = time.perf_counter()
        codes.append(cli_main(list(argv)))
        print(f"[runner] {' '.join(argv[:2])}: {time.perf_counter() - t0:.1f} s",
              file=sys.stderr, flush=True)
    Path(f"{sys.argv[2]}.{os.environ.get('RANK', '0')}.json").write_text(json.dumps(codes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
