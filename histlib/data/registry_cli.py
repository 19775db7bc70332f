"""``python -m histlib datasets``: lists the registered public datasets (name, size, licence, checksum status)."""

from __future__ import annotations

import argparse
import json
import textwrap

from histlib.data.registry import DatasetEntry, get_entry, list_entries


def format_table(entries: list[DatasetEntry]) -> str:
    """A plain-text table: one row per dataset with name, size, licence and checksum status."""
    header = ("name", "size", "licence", "checksum")
    rows = [(e.name, e.size_text, e.licence if len(e.licence) <= 24 else "see --long", e.checksum_status)
            for e in entries]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_entry(e: DatasetEntry, width: int = 110) -> str:
    """Every field of one entry, wrapped for a terminal."""

    def field(label: str, text: str) -> str:
        return textwrap.fill(text, width=width, initial_indent=f"  {label:<10} ", subsequent_indent=" " * 13)

    parts = [f"{e.name}: {e.title}", field("size", e.size_text), field("licence", e.licence),
             field("homepage", e.homepage), field("classes", ", ".join(e.classes)), field("layout", e.layout),
             field("checksum", f"{e.checksum_status} — {e.checksum_note}")]
    for f in e.urls:
        digest = f"{f.checksum[0]}:{f.checksum[1]}" if f.checksum else "no checksum"
        parts.append(field("file", f"{f.filename} ({digest}) {f.url}"))
    if e.manual:
        parts.append(field("manual", e.manual))
    parts.append(field("cite", e.citation))
    return "\n".join(parts)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="*", help="show only these datasets (default: all)")
    parser.add_argument("--long", action="store_true", help="every field: layout, files, checksums, citation")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def main(args: argparse.Namespace) -> int:
    try:
        entries = [get_entry(n) for n in args.names] if args.names else list_entries()
    except ValueError as e:
        print(f"error: {e}")
        return 1
    if args.json:
        import dataclasses

        print(json.dumps([dataclasses.asdict(e) for e in entries], indent=2, ensure_ascii=False))
    elif args.long:
        print("\n\n".join(format_entry(e) for e in entries))
    else:
        print(format_table(entries))
        print("\n'python -m histlib datasets --long' shows layout, files, checksums and citations; "
              "'python -m histlib download NAME --to DIR' fetches one.")
    return 0
