"""What quoting a peer's large answer in an error costs: scrubbing it (common.logs.scrub, before every quote cut to
200 characters) and the worker's quote of a queue manager's error page (white space folded, cut to 200).

    ./dev python -m bench.error_quotes [--kib 1024 8192] [--page-mib 8 64]

Pages of one letter repeated and of short words: the shapes that made the old code quadratic (a scheme tried from
every letter) or split a whole page into words; and those the query parameter search walks slowest: ``?a=b&``
pairs (a name at every step), runs of ``%25`` (an escape at every step) and an encoded scheme then letters.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

from common.logs import scrub
from worker.queue_client import _short

# Each: a name, the text before the repeated part, and the part repeated to the size scrubbed.
SHAPES = (("letters", "", "a"), ("dotted", "", "a."), ("query pairs", "", "?a=b&"), ("unended pairs", "", "?a=b"),
          ("%25 runs", "", "%25"), ("https%3A%2F%2F then letters", "https%3A%2F%2F", "a"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kib", type=int, nargs="+", default=[40, 1024, 8192], help="sizes scrubbed (KiB)")
    parser.add_argument("--page-mib", type=float, nargs="+", default=[8, 64], help="error pages quoted (MiB)")
    args = parser.parse_args(argv)
    for kib in args.kib:
        for name, head, unit in SHAPES:
            text = head + unit * ((kib * 1024 - len(head)) // len(unit))
            started = time.perf_counter()
            scrub(text)
            print(f"scrub {kib} KiB of {name}: {time.perf_counter() - started:.3f} s")
    for mib in args.page_mib:
        page = "ab " * int(mib * (1 << 20) // 3)
        tracemalloc.start()
        started = time.perf_counter()
        _short(page)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"quote a {mib:g} MiB page of short words: {elapsed:.3f} s, {peak / (1 << 20):.1f} MiB allocated at peak")


if __name__ == "__main__":
    main()
