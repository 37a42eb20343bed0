"""Small self-contained HTML/Markdown reports for the KFP UI (images inlined as base64)."""
from __future__ import annotations

import base64
import html
import json
from collections.abc import Iterable
from pathlib import Path


def html_page(title: str, pngs: Iterable[str | Path], data: dict | None = None) -> str:
    parts = [f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>",
             "<body style='font-family:sans-serif'>", f"<h1>{html.escape(title)}</h1>"]
    for png in pngs:
        b64 = base64.b64encode(Path(png).read_bytes()).decode()
        parts.append(f"<figure><img style='max-width:100%' src='data:image/png;base64,{b64}'/>"
                     f"<figcaption>{html.escape(Path(png).stem.replace('_', ' '))}</figcaption></figure>")
    if data:
        parts.append(f"<pre>{html.escape(json.dumps(data, indent=2, default=str))}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)
