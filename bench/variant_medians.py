"""Medians of a `run_device.sh variants` run: for each row (causal or not, layout, dtype), the
median and range of the rotations' medians, one column per variant.

usage: python bench/variant_medians.py DIR   (DIR: variants.tgz unpacked, its var_<name>_<round>.json)
"""
import collections
import glob
import json
import statistics
import sys


def main(directory: str) -> None:
    rows = collections.defaultdict(lambda: collections.defaultdict(list))
    for path in sorted(glob.glob(f"{directory}/var_*_*.json")):
        name = path.rsplit("/", 1)[1][len("var_"):].rsplit("_", 1)[0]  # var_<name>_<round>.json
        for r in json.load(open(path))["medians"]:
            key = ("causal " if r["causal"] else "full   ") + " ".join(str(x) for x in r["config"] if x is not None)
            rows[key][name].append(r["tflops"])
    names = sorted({n for v in rows.values() for n in v})
    print(f"{'':40s}" + "".join(f"{n:>22s}" for n in names))
    for key, by_name in rows.items():
        print(f"{key:40s}" + "".join(f"{statistics.median(by_name[n]):10.1f} ({min(by_name[n]):.0f}-{max(by_name[n]):.0f})"
                                     if by_name[n] else f"{'-':>22s}" for n in names))


if __name__ == "__main__":
    main(sys.argv[1])
