"""Fault injection for the crash tests: a named point where a test may kill the process with
SIGKILL, as a power cut or an OOM kill would. A no-op unless ``MARKETSEARCH_CRASH_AT`` names
the point, as ``name`` (the first time it is reached) or ``name@k`` (the k-th time).

Used by deploy's publish (marketsearch.publish) and the database upsert (marketsearch.db).
"""
import os
from collections import Counter

CRASH_ENV = "MARKETSEARCH_CRASH_AT"
_reached: Counter = Counter()


def crash_point(name: str) -> None:
    wanted = os.environ.get(CRASH_ENV)
    if not wanted:
        return
    _reached[name] += 1
    point, _, nth = wanted.partition("@")
    if point == name and _reached[name] == int(nth or 1):
        os.kill(os.getpid(), 9)
