"""The contract of a record: what one stage hands the next.

A record is a typed value that writes itself to an artifact directory and reads itself back
(``save`` / ``load``), and names the files it writes in ``FILES`` (the one place they are
named). The KFP wrapper of a stage (marketsearch.steps) only loads its input records from the
input artifacts, calls the stage's pure function and saves the record it returns; the metrics,
the one-line headline and the report (plots) of a record are what the wrapper logs to MLflow
and shows in the KFP UI.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, TypeVar

R = TypeVar("R", bound="Record")


@dataclass
class Report:
    """What a person looks at: a title, figures (PNG files), a summary and optional Markdown."""
    title: str
    pngs: list[Path] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    markdown: str | None = None


class Record:
    """Base of the stage records (see the module docstring)."""

    FILES: ClassVar[dict[str, str]] = {}   # file name -> what it holds

    def save(self, directory: str | Path) -> None:
        raise NotImplementedError

    @classmethod
    def load(cls: type[R], directory: str | Path) -> R:
        raise NotImplementedError

    @classmethod
    def coerce(cls: type[R], value: R | str | Path) -> R:
        """``value`` itself when it is a record of this type, else the record saved there."""
        return value if isinstance(value, cls) else cls.load(value)

    def metrics(self) -> dict:
        """Numbers worth a metric (nested mappings allowed; non-numbers are skipped)."""
        return {}

    def headline(self) -> str:
        """One line for the terminal."""
        return ""

    def report(self, directory: str | Path) -> Report | None:
        """Figures and a summary, written under ``directory`` (the saved record's own)."""
        return None

