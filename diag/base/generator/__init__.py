"""Instance generator for flashinfer_gen: the instance table, Jinja rendering, the manifest."""
from .instances import (KINDS, InvalidInstance, check, default_instances, enumerate_instances, why_invalid)
from .keys import InstanceKey
from .render import generate, render, source_hash

__all__ = ["KINDS", "InstanceKey", "InvalidInstance", "check", "default_instances", "enumerate_instances",
           "why_invalid", "generate", "render", "source_hash"]
