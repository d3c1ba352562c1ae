"""Render the report `make bench` writes (build/bench.json) into docs/benchmarks.md, between its two markers.

    python benchmarks/render_docs.py [--bench build/bench.json] [--doc docs/benchmarks.md]

Only the text between the markers changes; the rest of the page is the dated record of earlier runs. A missing
or unreadable report, or a page without the markers, is one line naming it and the fix, exit status 2, and the
page is left as it was.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ganforge.fileio import atomic_write_text

BEGIN = "<!-- bench.json:begin -->"
END = "<!-- bench.json:end -->"


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render(report: dict) -> str:
    """The markdown for one report: the machine and load it ran under, then one row per metric."""
    m, load = report["machine"], report["load_average"]
    quick = " — `--quick`: it checks the machinery, not the speed" if report["quick"] else ""
    lines = [
        f"Rendered from `build/bench.json`{quick}. Started {report['started_at']}, {report['seconds']:.0f} s; "
        f"{m['cpu_count']} CPUs ({_cell(m['cpu_model'])}), torch {m['torch_version']}, "
        f"{_cell(m.get('thread_policy', str(m['torch_threads']) + ' threads'))}; "
        f"load average {load['before'][0]:.1f} → {load['after'][0]:.1f}.",
        "",
        "| metric | value | target | status | what |",
        "|---|---|---|---|---|",
    ]
    for name, e in report["metrics"].items():
        target = f"≥ {e['target']['value']:g}" if e["target"] else "–"
        lines.append(f"| `{name}` | {e['value']:.3g} {e['unit']} | {target} | {e['status']} | {_cell(e['what'])} |")
    for group, error in report["errors"].items():
        lines.append(f"\nNot measured, group `{group}`: {_cell(error)}")
    return "\n".join(lines)


def splice(page: str, body: str) -> str:
    """``page`` with the text between its markers replaced by ``body``; ValueError when a marker is missing."""
    if page.count(BEGIN) != 1 or page.count(END) != 1 or page.index(BEGIN) > page.index(END):
        raise ValueError(f"needs exactly one {BEGIN} followed by one {END}")
    head, rest = page.split(BEGIN)
    return f"{head}{BEGIN}\n{body}\n{END}{rest.split(END, 1)[1]}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bench", type=Path, default=Path("build/bench.json"), help="the report make bench wrote")
    p.add_argument("--doc", type=Path, default=Path("docs/benchmarks.md"), help="the page to render it into")
    a = p.parse_args(argv)
    try:
        report = json.loads(a.bench.read_text())
        body = render(report)
    except FileNotFoundError:
        print(f"{a.bench}: no such file; run `make bench` first, which writes it", file=sys.stderr)
        return 2
    except (ValueError, KeyError, TypeError, IndexError) as e:
        print(
            f"{a.bench}: not a report of benchmarks/run.py ({type(e).__name__}: {e}); rerun `make bench`",
            file=sys.stderr,
        )
        return 2
    try:
        page = splice(a.doc.read_text(), body)
    except (OSError, ValueError) as e:
        print(f"{a.doc}: {e}; restore the markers from git (git checkout -- {a.doc})", file=sys.stderr)
        return 2
    atomic_write_text(a.doc, page)
    print(f"{a.doc}: rendered {len(report['metrics'])} metrics from {a.bench}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
