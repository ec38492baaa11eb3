"""The instance space as data.

One frozen key per kernel instance (`keys.InstanceKey`), one spec per kernel kind (`KINDS`).
Everything else — the rendered ``.cu`` files, the CMake source list, the runtime registry, the
CLI's selectors and the support matrix — is derived from a list of keys and these specs, so there
is no second copy of the table to drift. Combinations that make no sense are refused by named
predicates that say why.
"""
from __future__ import annotations

import itertools
from typing import Iterable, Mapping, Sequence

from . import kind_append, kind_decode, kind_prefill, kind_prefill_sm90
from .arches import ARCH_BY_NAME, ARCH_NAMES
from .keys import KEY_FIELDS, SHARED_PREDICATES, InstanceKey, KindSpec

KINDS: dict[str, KindSpec] = {spec.name: spec for spec in (kind_decode.SPEC, kind_prefill.SPEC, kind_prefill_sm90.SPEC,
                                                           kind_append.SPEC)}


class InvalidInstance(ValueError):
    pass


def field_values(field: str) -> tuple:
    """Every value a key field takes in some kind, in the specs' order."""
    values: list = []
    for spec in KINDS.values():
        values += [v for v in spec.allowed(field) if v not in values]
    return tuple(values)


def _axis_values(key: InstanceKey) -> str | None:
    spec = KINDS.get(key.kind)
    if spec is None:
        return f"kind={key.kind!r} is not one of {list(KINDS)}"
    if key.arch not in ARCH_BY_NAME:
        return f"arch={key.arch!r} is not one of {list(ARCH_NAMES)}"
    for field in KEY_FIELDS:
        allowed = spec.allowed(field)
        if getattr(key, field) not in allowed:
            return f"{field}={getattr(key, field)!r} is not one of {list(allowed)} for {key.kind}"
    return None


def why_invalid(key: InstanceKey) -> str | None:
    reason = _axis_values(key)
    if reason is not None:
        return reason
    for predicate in SHARED_PREDICATES + KINDS[key.kind].predicates:
        reason = predicate(key)
        if reason is not None:
            return reason
    return None


def check(key: InstanceKey) -> InstanceKey:
    reason = why_invalid(key)
    if reason is not None:
        raise InvalidInstance(f"{key.name}: {reason}")
    return key


def template_context(key: InstanceKey) -> dict:
    """What the kind's template renders: the kind's constants plus the identity every
    library exports."""
    spec = KINDS[check(key).kind]
    return {"kind": key.kind, "name": key.name, "description": key.describe(),
            "abi_kind": spec.abi.kind, "abi_version_macro": spec.abi.version_macro,
            "params_struct": spec.abi.params.name, **spec.context(key)}


# --- selections ----------------------------------------------------------------------------

def enumerate_instances(selection: Mapping[str, Sequence] | None = None, *,
                        use_defaults: bool = False) -> list[InstanceKey]:
    """Every valid key in the product of the selected values of each key field. A field not in
    `selection` takes every value its kind allows, or with use_defaults the kind's default
    build selection."""
    selection = dict(selection or {})
    keys = set()
    for kind in selection.get("kind") or tuple(KINDS):
        if kind not in KINDS:
            raise InvalidInstance(f"kind={kind!r} is not one of {list(KINDS)}")
        spec = KINDS[kind]
        axes = []
        for field in KEY_FIELDS:
            if field == "kind":
                axes.append((kind,))
                continue
            chosen = selection.get(field)
            if not chosen:
                chosen = spec.defaults.get(field) if use_defaults else None
            axes.append(tuple(chosen) if chosen else spec.allowed(field))
        for values in itertools.product(*axes):
            key = InstanceKey(**dict(zip(KEY_FIELDS, values)))
            if why_invalid(key) is None:
                keys.add(key)
    return sorted(keys)


def default_instances(archs: Iterable[str]) -> list[InstanceKey]:
    """The default build for `archs`: each kind's default selection."""
    return enumerate_instances({"arch": tuple(archs)}, use_defaults=True)
