"""report.html: one self-contained page built from plugin sections (pipeline/reports/*.py).

A section is `@section("Title", order=N) def render(ctx) -> str | None`; it reads the catalog
through `ctx.con` (read-only DuckDB) and the build/training directories, and returns HTML.
"""

from __future__ import annotations

import base64
import html
import importlib
import io
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import duckdb

from catalog.db import CATALOG_FILE

_SECTIONS: list[tuple[int, str, Callable]] = []


def section(title: str, order: int = 50):
    def wrap(fn):
        _SECTIONS.append((order, title, fn))
        return fn
    return wrap


@dataclass
class ReportContext:
    build_dir: Path
    con: duckdb.DuckDBPyConnection
    train_dir: Path | None = None
    notes: list[str] = field(default_factory=list)

    def figure(self, fig) -> str:
        import matplotlib.pyplot as plt

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        return self.image(buf.getvalue(), "")

    def image(self, data: bytes, caption: str = "", width: int | None = None) -> str:
        kind = "jpeg" if data[:3] == b"\xff\xd8\xff" else "png"
        style = f' style="width:{width}px"' if width else ""
        img = f'<img src="data:image/{kind};base64,{base64.b64encode(data).decode()}"{style}>'
        return f"<figure>{img}<figcaption>{html.escape(caption)}</figcaption></figure>" if caption else img

    def table(self, header: list[str], rows: list[list]) -> str:
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        cell = lambda v: f"<td{' class=num' if isinstance(v, (int, float)) else ''}>{html.escape(_fmt(v))}</td>"  # noqa: E731
        body = "".join("<tr>" + "".join(cell(v) for v in r) + "</tr>" for r in rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return "" if v is None else str(v)


STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left}
th{background:#f2f2f2}figure{display:inline-block;margin:4px;vertical-align:top}
figcaption{font-size:11px;max-width:260px}img{max-width:100%}
figure img{min-width:96px;image-rendering:pixelated}td.num{text-align:right}h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:2em}"""


def write_report(build_dir: Path, out: Path, train_dir: Path | None = None) -> Path:
    for info in pkgutil.iter_modules([str(Path(__file__).parent / "reports")]):
        importlib.import_module(f"pipeline.reports.{info.name}")
    con = duckdb.connect(str(build_dir / CATALOG_FILE), read_only=True)
    ctx = ReportContext(build_dir=build_dir, con=con, train_dir=train_dir)
    parts = []
    try:
        for _, title, fn in sorted(_SECTIONS, key=lambda s: (s[0], s[1])):
            body = fn(ctx)
            if body:
                parts.append(f"<h2>{html.escape(title)}</h2>\n{body}")
    finally:
        con.close()
    build = build_dir.name
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>janus-forge report: {html.escape(build)}</title><style>{STYLE}</style></head><body><h1>janus-forge reproduction report</h1>{''.join(parts)}</body></html>"
    out.write_text(page)
    return out
