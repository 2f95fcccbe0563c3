"""Self-contained HTML reports, beside the Markdown ones.

Each HTML report is the Markdown report rendered (the same tables, computed by
:mod:`unlearnkit.reports.evaluation` once), plus what reads better on a page:
the charts inline (PNG as base64 data URIs), the loss curves, and example
answers side by side (before / after, or one column per compared model). One
file, no external asset: CSS inline, no script, no font or image fetched, so it
opens offline and can be mailed or attached as it is.

The Markdown renderer handles what unlearnkit's reports use: headings,
paragraphs, pipe tables, bullet lists, fenced code, ``inline code``,
``**bold**``, ``*italic*`` and ``![alt](file.png)`` images next to the report.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from unlearnkit.rundir import atomic_write_text

CSS = """
body{font:15px/1.5 -apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;color:#1d2330;background:#f6f7f9;
margin:0;padding:24px}
main{max-width:1100px;margin:0 auto;background:#fff;padding:28px 36px;border-radius:10px;
box-shadow:0 1px 4px rgba(0,0,0,.08)}
h1{font-size:26px;margin-top:0;border-bottom:3px solid #3b6fd8;padding-bottom:8px}
h2{font-size:20px;margin-top:32px;color:#23408e}h3{font-size:16px;color:#23408e}
table{border-collapse:collapse;margin:10px 0 18px;font-size:13.5px;width:auto;max-width:100%}
th,td{border:1px solid #d6dbe4;padding:5px 9px;text-align:left;vertical-align:top}
th{background:#eef2fa}tr:nth-child(even) td{background:#fafbfd}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
code{background:#f0f2f6;padding:1px 4px;border-radius:4px;font-size:12.5px;word-break:break-all}
pre{background:#f0f2f6;padding:10px;border-radius:6px;overflow-x:auto}pre code{background:none;padding:0}
img{max-width:100%;border:1px solid #e3e6ec;border-radius:6px;margin:8px 0}
.answers{display:grid;gap:10px;margin:12px 0 20px}
.answer{border:1px solid #d6dbe4;border-radius:8px;padding:10px 12px}
.answer .prompt{font-weight:600;margin-bottom:6px}
.cols{display:grid;grid-template-columns:repeat(auto-fit,minmax(240px,1fr));gap:10px}
.col{background:#f7f9fc;border-radius:6px;padding:8px}.col .who{font-size:12px;color:#5a6478;text-transform:uppercase;
letter-spacing:.04em;margin-bottom:4px}.col p{margin:0;white-space:pre-wrap}
footer{margin-top:30px;font-size:12px;color:#6b7385}
"""

_NUMERIC = re.compile(r"^[-+–]?[\d.,]+%?(\s*\[[-+\d.,%\s]+\])?(\s+no measurable change)?$|^–$")


def _inline(text: str, base: Path | None) -> str:
    """Inline Markdown of one line, escaped: images, code, bold, italic."""
    out = []
    pos = 0
    pattern = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)|`([^`]+)`|\*\*([^*]+)\*\*|\*([^*\s][^*]*)\*")
    for m in pattern.finditer(text):
        out.append(html.escape(text[pos:m.start()]))
        if m.group(2) is not None:
            out.append(image(base / m.group(2), m.group(1)) if base is not None else html.escape(m.group(0)))
        elif m.group(3) is not None:
            out.append(f"<code>{html.escape(m.group(3))}</code>")
        elif m.group(4) is not None:
            out.append(f"<strong>{html.escape(m.group(4))}</strong>")
        else:
            out.append(f"<em>{html.escape(m.group(5))}</em>")
        pos = m.end()
    out.append(html.escape(text[pos:]))
    return "".join(out)


def _cells(line: str) -> list[str]:
    body = line.strip().strip("|")
    parts = re.split(r"(?<!\\)\|", body)
    return [p.strip().replace("\\|", "|") for p in parts]


def table(header: list[str], rows: list[list[str]], base: Path | None = None) -> str:
    head = "".join(f"<th>{_inline(h, base)}</th>" for h in header)
    body = []
    for row in rows:
        tds = "".join(f"<td{' class=num' if _NUMERIC.match(c) else ''}>{_inline(c, base)}</td>" for c in row)
        body.append(f"<tr>{tds}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def markdown_to_html(text: str, base: Path | None = None) -> str:
    """The HTML of a Markdown report (the subset unlearnkit writes; everything escaped)."""
    lines = text.splitlines()
    out: list[str] = []
    para: list[str] = []
    i = 0

    def flush() -> None:
        if para:
            out.append(f"<p>{'<br>'.join(_inline(p, base) for p in para)}</p>")
            para.clear()

    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith("```"):
            flush()
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith("```"):
                j += 1
            out.append(f"<pre><code>{html.escape(chr(10).join(lines[i + 1:j]))}</code></pre>")
            i = j + 1
            continue
        heading = re.match(r"^(#{1,4})\s+(.*)$", stripped)
        if heading:
            flush()
            level = len(heading.group(1))
            out.append(f"<h{level}>{_inline(heading.group(2), base)}</h{level}>")
        elif stripped.startswith("|") and i + 1 < len(lines) and re.match(r"^\|[\s:|-]+\|$", lines[i + 1].strip()):
            flush()
            header = _cells(stripped)
            rows = []
            i += 2
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            out.append(table(header, rows, base))
            continue
        elif re.match(r"^[-*]\s+", stripped):
            flush()
            items = []
            while i < len(lines) and (re.match(r"^[-*]\s+", lines[i].strip()) or
                                      (items and lines[i].startswith("  ") and lines[i].strip())):
                item = lines[i].strip()
                if re.match(r"^[-*]\s+", item):
                    items.append(_inline(re.sub(r"^[-*]\s+", "", item), base))
                else:  # a continuation line of the item above
                    items[-1] += "<br>" + _inline(item, base)
                i += 1
            out.append("<ul>" + "".join(f"<li>{it}</li>" for it in items) + "</ul>")
            continue
        elif not stripped:
            flush()
        else:
            para.append(stripped)
        i += 1
    flush()
    return "\n".join(out)


def image(path: Path, alt: str = "") -> str:
    """An ``<img>`` with the PNG inline as a data URI (a note where the file is missing)."""
    path = Path(path)
    if not path.is_file():
        return f"<em>({html.escape(path.name)} was not drawn)</em>"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    mime = "image/svg+xml" if path.suffix == ".svg" else "image/png"
    return f'<img alt="{html.escape(alt or path.stem)}" src="data:{mime};base64,{data}">'


def answers(examples: list[dict], columns: list[str], title: str = "") -> str:
    """Example answers: a prompt, then one box per column (before / after, or one per model)."""
    if not examples:
        return ""
    parts = [f"<h3>{html.escape(title)}</h3>"] if title else []
    parts.append('<div class="answers">')
    for ex in examples:
        cols = "".join(
            f'<div class="col"><div class="who">{html.escape(c)}</div><p>{html.escape(str(ex.get(c, "–")))}</p></div>'
            for c in columns if c in ex)
        parts.append(f'<div class="answer"><div class="prompt">{html.escape(str(ex.get("prompt", "")))}</div>'
                     f'<div class="cols">{cols}</div></div>')
    parts.append("</div>")
    return "".join(parts)


def page(title: str, body: str, footer: str = "") -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head>"
            f"<body><main>{body}<footer>{html.escape(footer)}</footer></main></body></html>\n")


def write_page(out: str | Path, title: str, body: str) -> Path:
    from unlearnkit import __version__

    return atomic_write_text(out, page(title, body, f"Written by unlearnkit {__version__}; one self-contained file."))


# --------------------------------------------------------------------------- example answers from eval.json


def eval_samples(result: dict) -> dict[str, list[dict]]:
    """The samples of an evaluation by where they come from (``harm.unseen``, ``normal``, ...)."""
    from unlearnkit.reports.tables import _collect_samples

    out: dict[str, list[dict]] = {}
    for where, sample in _collect_samples(result.get("results") or {}):
        out.setdefault(where, []).append(sample)
    return out


def aligned_answers(results: list[tuple[str, dict]], limit: int = 6) -> dict[str, list[dict]]:
    """Per sample set, the answers of every compared evaluation to the same prompts.

    ``results`` is ``[(label, eval.json dict)]``; a prompt is shown when at least
    two of them answered it (a before/after pair when the first is the original).
    """
    by_label = {label: eval_samples(r) for label, r in results}
    out: dict[str, list[dict]] = {}
    wheres = [w for samples in by_label.values() for w in samples]
    for where in dict.fromkeys(wheres):
        rows: dict[str, dict] = {}
        for label, samples in by_label.items():
            for s in samples.get(where, []):
                answer = s.get("response", s.get("generated"))
                if "prompt" in s and answer is not None:
                    rows.setdefault(s["prompt"], {"prompt": s["prompt"]})[label] = answer
        shown = [r for r in rows.values() if len(r) > 2][:limit]
        if shown:
            out[where] = shown
    return out
