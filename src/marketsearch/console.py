"""The terminal of a local pipeline run: what matters on screen, everything in the log file.

kfp.local echoes each task's executor input (the config, per task) and every line its
subprocess prints (TensorFlow's start-up chatter included). During ``marketsearch run`` /
``monitor`` all of it goes to ``<run_dir>/logs/<pipeline run>.log``; the terminal shows each
stage's start and one-line result (``[marketsearch]`` lines from marketsearch.steps.runner),
its progress bars' last state, which stages were reused from the cache, failures, and the
summary (printed after the run).
"""
from __future__ import annotations

import contextlib
import logging
import re
import sys
from pathlib import Path

MARK = "[marketsearch]"
_PROGRESS = re.compile(r"\d+%\|")                  # a tqdm bar
_CACHE_HIT = re.compile(r"Task (\S+) cache hit")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class _Tee:
    """A stream that writes everything to ``log`` and the lines that matter to ``terminal``."""

    def __init__(self, log, terminal):
        self.log, self.terminal, self._line = log, terminal, ""

    def write(self, text: str) -> int:
        self.log.write(text)
        self._line += text
        while "\n" in self._line:
            line, self._line = self._line.split("\n", 1)
            shown = shown_line(line)
            if shown:
                self.terminal.write(shown + "\n")
                self.terminal.flush()
        return len(text)

    def flush(self) -> None:
        self.log.flush()
        self.terminal.flush()

    def isatty(self) -> bool:
        return False


def shown_line(line: str) -> str | None:
    """The part of a log line the terminal shows, or None."""
    last = _ANSI.sub("", line.split("\r")[-1]).strip()     # a progress bar's final state
    if MARK in last:
        return last[last.index(MARK):]
    hit = _CACHE_HIT.search(last)
    if hit:
        return (f"{MARK} {hit.group(1).replace('-', '_')}: reused (cache hit: same inputs and "
                "code as an earlier run)")
    if "FAILURE" in last or "Traceback" in last:
        return last
    if _PROGRESS.search(last):
        return f"    {last}"
    return None


@contextlib.contextmanager
def quiet(log_path: str | Path, verbose: bool = False):
    """Route the run's output to ``log_path``; the terminal gets what matters (all of it with
    ``verbose``)."""
    if verbose:
        yield Path(log_path)
        return
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    saved_handlers, saved_level, saved_stdout = root.handlers[:], root.level, sys.stdout
    with log_path.open("a") as log:
        sys.stdout = _Tee(log, sys.__stderr__)   # kfp.local logs to sys.stdout as well
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.handlers = [handler]
        root.setLevel(logging.INFO)
        try:
            yield log_path
        finally:
            sys.stdout = saved_stdout
            root.handlers, root.level = saved_handlers, saved_level
