"""flashinfer-gen generate | build | list | demo"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from generator import enumerate_instances, generate
from generator.instances import ARCHS, CONVERSIONS, HEAD_DIMS, KINDS, KV_DTYPES, Q_DTYPES, VARIANTS

from .builder import build, cache_root, format_report, generated_dir, visible_archs


def _csv(cast=str):
    return lambda text: tuple(cast(x) for x in text.split(",") if x)


def _add_selectors(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kind", type=_csv(), default=None, help=f"kernel kinds ({','.join(KINDS)})")
    p.add_argument("--arch", type=_csv(), default=None, help=f"archs ({','.join(ARCHS)}); default: the visible GPU's, "
                   "else sm80,sm90a")
    p.add_argument("--head-dim", type=_csv(int), default=None, help=f"head dims ({','.join(map(str, HEAD_DIMS))}); default 128")
    p.add_argument("--q-dtype", type=_csv(), default=None, help=f"q dtypes ({','.join(Q_DTYPES)})")
    p.add_argument("--kv-dtype", type=_csv(), default=None, help=f"kv dtypes ({','.join(KV_DTYPES)}); default: q dtype, e4m3, e5m2")
    p.add_argument("--conversion", type=_csv(), default=None, help=f"FP8 conversions ({','.join(CONVERSIONS)}); default: all the arch has")
    p.add_argument("--variant", type=_csv(), default=None, help=f"variants ({','.join(VARIANTS)}); default: default")


def _selected(args) -> list:
    for field, allowed in (("kind", KINDS), ("arch", ARCHS), ("head_dim", HEAD_DIMS), ("q_dtype", Q_DTYPES),
                           ("kv_dtype", KV_DTYPES), ("conversion", CONVERSIONS), ("variant", VARIANTS)):
        for value in getattr(args, field) or ():
            if value not in allowed:
                raise SystemExit(f"--{field.replace('_', '-')} {value!r} is not one of {list(allowed)}")
    keys = enumerate_instances(kinds=args.kind or KINDS, q_dtypes=args.q_dtype or Q_DTYPES, kv_dtypes=args.kv_dtype,
                               head_dims=args.head_dim or (128,), archs=args.arch or visible_archs(),
                               conversions=args.conversion, variants=args.variant or ("default",))
    if not keys:
        raise SystemExit("the selectors match no valid instance (e.g. a 16-bit KV dtype must equal the q dtype, "
                         "and sm80 has only the software FP8 conversion)")
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
    from .registry import default_registry
    entries = default_registry().entries()
    if not entries:
        return f"no instances in {cache_root()}; run `flashinfer-gen build`"
    archs = sorted({e.key.arch for e in entries})
    cells: dict[tuple, dict[str, str]] = {}
    for e in entries:
        k = e.key
        row = (k.kind, k.q_dtype, k.kv_dtype, k.head_dim, k.conversion, k.variant)
        cells.setdefault(row, {})[k.arch] = "built" if e.built else ("stale" if e.stale else "missing")
    head = f"{'kind':<7} {'q':<5} {'kv':<5} {'dim':>4} {'conversion':<10} {'variant':<8} " + " ".join(f"{a:<8}" for a in archs)
    lines = [head, "-" * len(head)]
    for row in sorted(cells):
        kind, q, kv, d, conv, var = row
        lines.append(f"{kind:<7} {q:<5} {kv:<5} {d:>4} {conv:<10} {var:<8} "
                     + " ".join(f"{cells[row].get(a, '-'):<8}" for a in archs))
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
    g = sub.add_parser("generate", help="render instances and the manifest")
    _add_selectors(g)
    g.add_argument("--out", default=None, help="output directory (default: the build cache's generated/)")
    g.set_defaults(func=cmd_generate)
    b = sub.add_parser("build", help="generate + CMake + ninja into the build cache")
    _add_selectors(b)
    b.add_argument("--jobs", type=int, default=None)
    b.set_defaults(func=cmd_build)
    ls = sub.add_parser("list", help="the registry as a support matrix")
    ls.set_defaults(func=cmd_list)
    d = sub.add_parser("demo", help="a short decode on the GPU, checked against a reference")
    d.set_defaults(func=cmd_demo)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
