"""flashinfer-gen generate | build | list | demo"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from generator import KINDS, enumerate_instances, generate
from generator.instances import field_values
from generator.keys import KEY_FIELDS

from .builder import build, cache_root, format_report, generated_dir, visible_archs


def _option(field: str) -> str:
    return "--" + field.replace("_", "-")


def _add_selectors(p: argparse.ArgumentParser) -> None:
    """One option per key field, its values and defaults taken from the kind specs."""
    for field in KEY_FIELDS:
        values = field_values(field)
        cast = type(values[0])
        defaults = sorted({str(v) for spec in KINDS.values() for v in spec.defaults.get(field, ())})
        note = ("; default: the visible GPU's, else the fallback pair" if field == "arch"
                else f"; default: {','.join(defaults)}" if defaults else "; default: every valid value")
        p.add_argument(_option(field), dest=field, default=None,
                       type=lambda text, cast=cast: tuple(cast(x) for x in text.split(",") if x),
                       help=f"{field.replace('_', ' ')}s ({','.join(map(str, values))}){note}")


def _selected(args) -> list:
    selection = {}
    for field in KEY_FIELDS:
        chosen = getattr(args, field)
        for value in chosen or ():
            if value not in field_values(field):
                raise SystemExit(f"{_option(field)} {value!r} is not one of {list(field_values(field))}")
        selection[field] = chosen
    selection["arch"] = selection["arch"] or visible_archs()
    keys = enumerate_instances(selection, use_defaults=True)
    if not keys:
        raise SystemExit("the selectors match no valid instance (e.g. a 16-bit KV dtype must equal the q dtype, "
                         "and an arch without the FP8 cvt instruction has only the software conversion)")
    return keys


def cmd_generate(args) -> int:
    keys = _selected(args)
    out = Path(args.out) if args.out else generated_dir()
    generate(keys, out)
    print(f"generated {len(keys)} instances into {out}")
    for k in keys:
        print(f"  {k.name}")
    return 0


def cmd_build(args) -> int:
    keys = _selected(args)
    print(f"building {len(keys)} instances into {cache_root()}")

    def echo(msg: str) -> None:
        sys.stdout.write(msg)
        sys.stdout.flush()

    report = build(keys, jobs=args.jobs, echo=echo)
    print()
    print(format_report(report))
    return 0


def registry_table() -> str:
    """The support matrix: one row per key without its arch, one column per arch."""
    from .registry import default_registry
    entries = default_registry().entries()
    if not entries:
        return f"no instances in {cache_root()}; run `flashinfer-gen build`"
    row_fields = [f for f in KEY_FIELDS if f != "arch"]
    archs = [a for a in field_values("arch") if any(e.key.arch == a for e in entries)]
    cells: dict[tuple, dict[str, str]] = {}
    for e in entries:
        row = tuple(getattr(e.key, f) for f in row_fields)
        cells.setdefault(row, {})[e.key.arch] = "built" if e.built else ("stale" if e.stale else "missing")
    widths = [max(len(f), *(len(str(r[i])) for r in cells)) for i, f in enumerate(row_fields)]
    line = lambda values: " ".join(f"{str(v):<{w}}" for v, w in zip(values, widths + [8] * len(archs)))  # noqa: E731
    lines = [line(row_fields + archs)]
    lines.append("-" * len(lines[0]))
    for row in sorted(cells, key=lambda r: tuple(str(v).zfill(4) for v in r)):
        lines.append(line(list(row) + [cells[row].get(a, "-") for a in archs]))
    built = sum(e.built for e in entries)
    lines.append(f"{built} of {len(entries)} generated instances built, cache {cache_root()}")
    return "\n".join(lines)


def cmd_list(args) -> int:
    print(registry_table())
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo
    return run_demo()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="flashinfer-gen", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    kinds = "; ".join(f"{name}: {spec.summary}" for name, spec in KINDS.items())
    g = sub.add_parser("generate", help="render instances and the manifest", description=f"kinds: {kinds}")
    _add_selectors(g)
    g.add_argument("--out", default=None, help="output directory (default: the build cache's generated/)")
    g.set_defaults(func=cmd_generate)
    b = sub.add_parser("build", help="generate + CMake + ninja into the build cache", description=f"kinds: {kinds}")
    _add_selectors(b)
    b.add_argument("--jobs", type=int, default=None)
    b.set_defaults(func=cmd_build)
    ls = sub.add_parser("list", help="the registry as a support matrix")
    ls.set_defaults(func=cmd_list)
    d = sub.add_parser("demo", help="a short decode and prefill on the GPU, checked against a reference")
    d.set_defaults(func=cmd_demo)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
