"""Instance table, arch table, rendering, ABI spec, cache key, manifest: CPU only."""
import ctypes
import dataclasses
import importlib
import json
import re
import shutil
import subprocess

import pytest

from generator import InstanceKey, InvalidInstance, check, default_instances, enumerate_instances, generate, render
from generator import abi, arches, kind_decode, kind_prefill, kind_prefill_sm90, toolchain
from generator.instances import KINDS, why_invalid
from generator.render import CMAKE_LIST_NAME, MANIFEST_NAME, generated_headers, included_headers, source_hash


render_mod = importlib.import_module("generator.render")  # the package re-exports render() under that name


def key(**kw):
    base = dict(kind="decode", q_dtype="bf16", kv_dtype="e4m3", head_dim=128, arch="sm90a",
                conversion="hardware", variant="default")
    base.update(kw)
    return InstanceKey(**base)


def constant(source: str, name: str) -> int:
    """The value the template rendered for /*name=*/."""
    return int(re.search(rf"/\*{name}=\*/(\d+)", source).group(1))


# --- instance table --------------------------------------------------------------------------

def test_default_set():
    keys = default_instances(["sm80", "sm90a"])
    assert {k.head_dim for k in keys} == {128} and {k.variant for k in keys} == {"default"}
    assert {(k.q_dtype, k.kv_dtype) for k in keys} == {
        ("f16", "f16"), ("f16", "e4m3"), ("f16", "e5m2"), ("bf16", "bf16"), ("bf16", "e4m3"), ("bf16", "e5m2")}
    # sm80 has only the software conversion; sm90a both
    assert {k.conversion for k in keys if k.arch == "sm80" and k.is_fp8} == {"software"}
    assert {k.conversion for k in keys if k.arch == "sm90a" and k.is_fp8} == {"hardware", "software"}
    # decode, prefill and append; the Hopper prefill's f16 and bf16 q, each with a 16-bit cache of
    # its dtype and both FP8 caches (FP8 tiles, conversion "hardware"); an FP8 q is built on request
    assert len(keys) == 3 * (6 + 10) + 2 * 3
    sm90 = {(k.q_dtype, k.kv_dtype, k.conversion, k.o_dtype) for k in keys if k.kind == "prefill_sm90"}
    assert sm90 == {(q, kv, "none" if kv == q else "hardware", "same") for q in ("f16", "bf16")
                    for kv in (q, "e4m3", "e5m2")}
    assert {k.kind for k in keys} == {"decode", "prefill", "prefill_sm90", "append"}
    assert len({k.name for k in keys}) == len(keys)


def test_prefill_space():
    keys = enumerate_instances({"kind": ("prefill",), "arch": ("sm90a",), "variant": ("default",), "q_dtype": ("bf16",)})
    by_dim = {d: sum(k.head_dim == d for k in keys) for d in kind_prefill.HEAD_DIMS}
    # bf16 + two FP8 kinds x two conversions at every head dim (FP8 tiles are upcast in shared memory)
    assert by_dim == {64: 5, 80: 5, 96: 5, 128: 5, 192: 5, 256: 5}
    assert why_invalid(key(kind="prefill", head_dim=80)) is None
    # two m-tiles a warp up to head dim 128; the largest key tile with which two CTAs share an SM
    assert kind_prefill.block_m(key(kind="prefill")) == 128 and kind_prefill.warps(key(kind="prefill")) == 4
    assert kind_prefill.block_n(key(kind="prefill", head_dim=64)) == 64
    assert kind_prefill.block_n(key(kind="prefill", kv_dtype="bf16", conversion="none", q_dtype="bf16")) == 64
    # one m-tile a warp from head dim 192: one CTA of 8 warps (128 rows) where that gets a larger
    # key tile than two CTAs of 4 (64 keys against 32 at head dim 256 on sm_90a), else 4 warps
    d256 = key(kind="prefill", head_dim=256)
    assert (kind_prefill.warps(d256), kind_prefill.block_m(d256), kind_prefill.block_n(d256)) == (8, 128, 64)
    assert "/*kWarps=*/8" in render(d256) and "/*kMinCtasPerSm=*/1" in render(d256)
    d256_sm86 = key(kind="prefill", head_dim=256, arch="sm86", conversion="software")
    assert (kind_prefill.warps(d256_sm86), kind_prefill.block_m(d256_sm86)) == (4, 64)
    soft_e4m3_sw = key(kind="prefill", conversion="software", variant="softcap")
    assert kind_prefill.block_n(soft_e4m3_sw) == 32 and "/*kBlockN=*/32" in render(soft_e4m3_sw)
    # a 100 KB part: head dim 96 keeps two CTAs only with 16-key tiles
    assert kind_prefill.block_n(key(kind="prefill", head_dim=96, arch="sm86", conversion="software")) == 16
    assert "head_dim=80" in why_invalid(key(head_dim=80))  # decode has no head dim 80
    names = [k.name for k in enumerate_instances()]
    assert len(names) == len(set(names))


def test_prefill_fp8_codes_read_by_the_warps():
    """K's and V's FP8 codes go from the ring to registers (no CTA upcast, no 16-bit tiles) only
    where the upcast is two instructions a word (`cvt`, e5m2's software permutes; not e4m3's
    software routine), at the head dims where that measured faster: 128 (rows of codes swizzled,
    whole 128-byte lines) and 64 (padded)."""
    codes = [k for k in enumerate_instances({"kind": ("prefill",), "variant": ("default",), "q_dtype": ("bf16",),
                                             "head_dim": kind_prefill.HEAD_DIMS}) if kind_prefill.fp8_from_codes(k)]
    assert {(k.head_dim, k.kv_dtype, k.conversion, k.arch) for k in codes} == (
        {(d, kv, "hardware", a) for d in (64, 128) for kv in ("e4m3", "e5m2") for a in ("sm89", "sm90a")}
        | {(d, "e5m2", "software", a) for d in (64, 128) for a in ("sm80", "sm86", "sm89", "sm90a")})
    # the rows ldmatrix reads: codes of 64 padded, of 128 swizzled; the CTA's 16-bit tiles padded
    assert kind_prefill.row_padding(64, True, True) == 16 and kind_prefill.row_padding(128, True, True) == 0
    assert kind_prefill.row_padding(128, True) == 16 and kind_prefill.row_padding(64, False) == 0
    for d, padding in ((64, 16), (96, 16), (128, 0)):
        assert constant(render(key(kind="prefill", head_dim=d)), "kRowPadding") == padding
    # a d64 codes ring of 80-byte rows (2 x 64 keys a stage) in place of 64-byte rows plus two 16-bit tiles
    d64 = key(kind="prefill", head_dim=64)
    assert kind_prefill.smem_bytes(key(kind="prefill", head_dim=64, conversion="software"), 4) - \
        kind_prefill.smem_bytes(d64, 4) == 2 * 64 * (128 + 16) - 4 * 2 * 64 * 16
    d128 = key(kind="prefill")
    assert kind_prefill.fp8_from_codes(d128) and "/*kFp8FromCodes=*/true" in render(d128)
    # without the two 16-bit tiles (2 x 64 rows of 272 bytes) four stages fit two CTAs on sm_90a
    assert constant(render(d128), "kStages") == 4
    software = key(kind="prefill", conversion="software")
    assert constant(render(software), "kStages") == 2 and "/*kFp8FromCodes=*/false" in render(software)
    assert (kind_prefill.smem_bytes(software, 2) - kind_prefill.smem_bytes(d128, 2)) == 2 * 64 * (256 + 16)
    # on sm_80 (two CTAs in 164 KB) the 16-bit tiles had left room for 32 keys a tile; the codes take 64
    e5m2_sm80 = key(kind="prefill", kv_dtype="e5m2", conversion="software", arch="sm80")
    assert "/*kFp8FromCodes=*/true" in render(e5m2_sm80) and constant(render(e5m2_sm80), "kBlockN") == 64
    assert constant(render(key(kind="prefill", conversion="software", arch="sm80")), "kBlockN") == 32


def test_prefill_sm90_tuning_hook(monkeypatch):
    """The bench-only hook (kind_prefill_sm90.TUNE_ENV): n16 / n8 make block_n try only that many
    keys per tile (16-bit head dim 128 then takes 64-key tiles), the rings follow; a count that is
    not a candidate (96: TMA cannot box it), or an unknown name, is an error. Without it, 16-bit
    head dim 192 has 64-key TMA tiles for three consumers, 4 K and 2 V stages (two stages of 128
    do not fit)."""
    sm90 = kind_prefill_sm90
    sm90a = arches.arch("sm90a")
    d192 = key(kind="prefill_sm90", kv_dtype="bf16", conversion="none", head_dim=192)
    d128 = key(kind="prefill_sm90", kv_dtype="bf16", conversion="none", head_dim=128)
    assert sm90.block_n(d192) == 64 and sm90.pipeline_stages(d192, sm90a) == (4, 2) and sm90.consumers(d192) == 3
    assert sm90.block_n(d128) == 128
    monkeypatch.setenv(sm90.TUNE_ENV, "n16=64")
    assert sm90.block_n(d128) == 64 and sm90.pipeline_stages(d128, sm90a) == (4, 4)
    assert sm90.block_n(key(kind="prefill_sm90", conversion="hardware", head_dim=128)) == 128  # n8 untouched
    for n in (80, 96):
        monkeypatch.setenv(sm90.TUNE_ENV, f"n16={n}")
        with pytest.raises(ValueError, match="not one of the candidates"):
            sm90.block_n(d192)
    monkeypatch.setenv(sm90.TUNE_ENV, "n32=64")
    with pytest.raises(ValueError):
        sm90.block_n(d192)


def test_prefill_sm90_space():
    """The Hopper family: sm_90a only, 16-bit caches at head dims in 64-element swizzle atoms, FP8
    caches (FP8 tiles, conversion "hardware") at d64 (64-byte swizzled rows), d128, d192 (three
    64-byte atoms a row) and d256; its
    tiles and shared memory as rendered; the Ampere family's ABI (one plan(), one set of exports)."""
    keys = enumerate_instances({"kind": ("prefill_sm90",)})
    assert {k.arch for k in keys} == {"sm90a"} and {k.kv_dtype for k in keys} == {"f16", "bf16", "e4m3", "e5m2"}
    assert {k.head_dim for k in keys if not k.is_fp8} == {64, 128, 192, 256}
    assert {(k.head_dim, k.conversion) for k in keys if k.is_fp8} == {(d, "hardware") for d in (64, 128, 192, 256)}
    for d in (64, 128, 192, 256):
        assert {k.variant for k in keys if k.is_fp8 and k.head_dim == d} == {"default", "softcap"}, d
    # an e4m3 q: with an FP8 cache, writing f16 or bf16 (o_dtype); a 16-bit q writes its own dtype
    assert {(k.kv_dtype, k.o_dtype) for k in keys if k.q_dtype == "e4m3" and k.variant == "default"} == {
        (kv, o) for kv in ("e4m3", "e5m2") for o in ("f16", "bf16")}
    assert {k.o_dtype for k in keys if k.q_dtype != "e4m3"} == {"same"}
    fp8_q = key(kind="prefill_sm90", q_dtype="e4m3", o_dtype="f16")
    assert why_invalid(fp8_q) is None and fp8_q.name.endswith("_default_of16") and fp8_q.out_dtype == "f16"
    assert "fig::PrefillSm90Config<cute::float_e4m3_t, cute::float_e4m3_t, cute::half_t," in render(fp8_q)
    assert "o_dtype must be 'f16' or 'bf16'" in why_invalid(key(kind="prefill_sm90", q_dtype="e4m3"))
    assert "o_dtype must be 'same'" in why_invalid(key(kind="prefill_sm90", o_dtype="bf16"))
    assert "16-bit KV cache must have the q dtype" in why_invalid(
        key(kind="prefill_sm90", q_dtype="e4m3", kv_dtype="bf16", conversion="none", o_dtype="bf16"))
    assert "q_dtype='e4m3'" in why_invalid(key(kind="prefill", q_dtype="e4m3", o_dtype="bf16"))
    assert "arch='sm80'" in why_invalid(key(kind="prefill_sm90", q_dtype="bf16", kv_dtype="bf16", conversion="none",
                                            arch="sm80"))
    assert "conversion='software'" in why_invalid(key(kind="prefill_sm90", conversion="software"))
    # 64-byte rows of Q, K and V; three 64-byte atoms a row; 64-key tiles with 64-byte rows of transposed V
    for d in (64, 192, 256):
        assert why_invalid(key(kind="prefill_sm90", conversion="hardware", head_dim=d)) is None
    for d in (64, 128, 192, 256):  # FP8 tiles with the soft-cap
        assert why_invalid(key(kind="prefill_sm90", conversion="hardware", head_dim=d, variant="softcap")) is None
    assert "head_dim=96" in why_invalid(key(kind="prefill_sm90", kv_dtype="f16", conversion="none", head_dim=96))
    assert KINDS["prefill_sm90"].abi is KINDS["prefill"].abi
    smem_per_block = arches.arch("sm90a").smem_per_block
    for k in keys:
        source = render(k)
        rows, keys_per_tile = KINDS["prefill_sm90"].tiles(k)
        # three consumer warpgroups up to head dim 192 (16-bit) or 128 (FP8), two past it; FP8
        # three only without the soft-cap (ptxas spilled its consumers at 152). At 128 and 192
        # three 16-bit consumers hold P over S's registers, three FP8 ones run P V 64 columns of O
        # at a time; at 192 and 256 FP8 tiles have 64 keys, P V by 96 and 32 columns, and the
        # mask bounds in shared memory.
        fp8_narrow = k.is_fp8 and k.variant != "default"
        consumers = 3 if k.head_dim <= (128 if k.is_fp8 else 192) and not fp8_narrow else 2
        assert constant(source, "kConsumers") == consumers and rows == 64 * consumers
        p_in_s = consumers == 3 and k.head_dim in (128, 192) and not k.is_fp8
        assert f"/*kPInS=*/{'true' if p_in_s else 'false'}" in source
        assert f"/*kMaskInSmem=*/{'true' if p_in_s or (k.is_fp8 and k.head_dim >= 192) else 'false'}" in source
        o_chunk = ({192: 96, 256: 32}.get(k.head_dim, 64 if consumers == 3 else k.head_dim) if k.is_fp8
                   else k.head_dim)
        assert constant(source, "kOChunk") == o_chunk
        assert constant(source, "kBlockN") == keys_per_tile in kind_prefill_sm90.TILE_KEYS
        assert not k.is_fp8 or keys_per_tile == (64 if k.head_dim >= 192 else 128)
        assert constant(source, "kSmemBytes") == kind_prefill_sm90.smem_bytes(k) <= smem_per_block
        assert constant(source, "kStagesK") >= constant(source, "kStagesV") >= 2  # pipeline_stages' policy
        assert constant(source, "kStagesVt") == (kind_prefill_sm90.FP8_STAGES_VT if k.is_fp8 else 0)
        # the warpgroups' setmaxnreg counts stay within the CTA's launch allocation (65536 registers
        # over 128 (1 + consumers) threads, 8-aligned a thread)
        launch = 65536 // (128 * (1 + consumers)) // 8 * 8
        assert constant(source, "kProducerRegisters") + consumers * constant(source, "kConsumerRegisters") <= \
            launch * (1 + consumers)
        assert "fig_prefill_run" in source and "fig_prefill_abi_version" in source
        # persistent CTAs where the registers hold the loop over work units: not at head dims past
        # PERSISTENT_MAX_HEAD_DIM (the consumers') nor with three FP8 consumers (the producer's 56)
        persistent = k.head_dim <= kind_prefill_sm90.PERSISTENT_MAX_HEAD_DIM and not (k.is_fp8 and consumers == 3)
        assert f"/*kPersistent=*/{'true' if persistent else 'false'}" in source
    d128 = key(kind="prefill_sm90", q_dtype="bf16", kv_dtype="bf16", conversion="none")
    assert (kind_prefill_sm90.block_n(d128), kind_prefill_sm90.pipeline_stages(d128, arches.arch("sm90a"))) == \
        (128, (3, 2))


def test_append_space():
    """The append kind: source dtype x cache dtype x head dim x encoder, through the shared
    predicates (a 16-bit cache takes its own dtype, cvt only on sm_89+)."""
    keys = enumerate_instances({"kind": ("append",), "arch": ("sm90a",), "head_dim": (128,)})
    assert {(k.q_dtype, k.kv_dtype, k.conversion) for k in keys} == {
        (q, q, "none") for q in ("f16", "bf16")} | {(q, kv, c) for q in ("f16", "bf16") for kv in ("e4m3", "e5m2")
                                                    for c in ("hardware", "software")}
    assert "16-bit KV cache must have the q dtype" in why_invalid(key(kind="append", kv_dtype="f16", conversion="none"))
    assert "no FP8 convert instruction" in why_invalid(key(kind="append", arch="sm80"))
    source = render(key(kind="append", arch="sm80", conversion="software"))
    assert "fig::Fp8Encoder<fig::Fp8Format::kE4M3, fig::Conversion::kSoftware>" in source
    assert "fig::CopyEncoder" in render(key(kind="append", kv_dtype="bf16", conversion="none"))


@pytest.mark.parametrize("bad,reason", [
    (dict(q_dtype="f16", kv_dtype="bf16", conversion="none"), "16-bit KV cache must have the q dtype"),
    (dict(arch="sm80", conversion="hardware"), "no FP8 convert instruction"),
    (dict(arch="sm86", conversion="hardware"), "no FP8 convert instruction"),
    (dict(conversion="none"), "needs conversion"),
    (dict(kv_dtype="bf16", conversion="software"), "is not converted"),
    (dict(head_dim=96), "head_dim=96"),
    (dict(q_dtype="e4m3", kv_dtype="e4m3"), "q_dtype"),
    (dict(arch="sm75"), "arch"),
    (dict(variant="alibi"), "variant"),
    (dict(kind="encode"), "kind"),
])
def test_invalid_combinations_say_why(bad, reason):
    k = key(**bad)
    assert reason in why_invalid(k)
    with pytest.raises(InvalidInstance, match=reason):
        check(k)
    with pytest.raises(InvalidInstance):
        render(k)


def test_enumeration_is_the_valid_product():
    keys = enumerate_instances({"kind": ("decode",)})
    assert all(why_invalid(k) is None for k in keys)
    # per q dtype, head dim and variant: sm80/sm86 1 + 2 fp8 software; sm89/sm90a 1 + 2 fp8 x 2
    per = 3 + 3 + 5 + 5
    assert len(keys) == 2 * len(kind_decode.HEAD_DIMS) * len(kind_decode.VARIANTS) * per
    assert keys == sorted(keys)
    # a selection narrows exactly the named fields
    sel = enumerate_instances({"arch": ("sm89",), "head_dim": (64,), "variant": ("softcap",), "q_dtype": ("f16",)})
    assert {(k.kv_dtype, k.conversion) for k in sel} == {
        ("f16", "none"), ("e4m3", "hardware"), ("e4m3", "software"), ("e5m2", "hardware"), ("e5m2", "software")}


def test_key_from_older_or_newer_manifest():
    k = key()
    assert InstanceKey.from_dict(k.as_dict()) == k
    old = {f: v for f, v in k.as_dict().items() if f != "variant"}  # written before `variant` existed
    assert InstanceKey.from_dict(old) == k
    old = {f: v for f, v in k.as_dict().items() if f != "o_dtype"}  # written before `o_dtype` existed
    assert InstanceKey.from_dict(old) == k and k.o_dtype == "same" and "_o" not in k.name
    with pytest.raises(ValueError, match="lacks the field 'head_dim'"):
        InstanceKey.from_dict({f: v for f, v in k.as_dict().items() if f != "head_dim"})
    with pytest.raises(ValueError, match="does not know"):
        InstanceKey.from_dict({**k.as_dict(), "tile": 64})


# --- arch table ------------------------------------------------------------------------------

@pytest.mark.parametrize("cap,name", [((8, 0), "sm80"), ((8, 7), "sm80"), ((8, 6), "sm86"), ((8, 9), "sm89"),
                                      ((9, 0), "sm90a"), ((7, 5), None), ((10, 0), None), ((12, 0), None)])
def test_capability_to_arch(cap, name):
    arch = arches.arch_for_capability(cap)
    assert (arch.name if arch else None) == name
    if name is None:
        assert "compute capability" in arches.capability_error(cap)


def test_arch_facts():
    assert [a.name for a in arches.ARCHES if a.has_fp8_cvt] == ["sm89", "sm90a"]
    assert arches.arch("sm89").default_conversion == "hardware"
    assert arches.arch("sm86").conversions == ("software",)
    caps = [c for a in arches.ARCHES for c in a.capabilities]
    assert len(caps) == len(set(caps)), "a device is served by one arch"
    with pytest.raises(ValueError, match="unknown arch"):
        arches.arch("sm75")


@pytest.mark.parametrize("arch", arches.ARCH_NAMES)
def test_every_instance_fits_its_arch(arch):
    """Shared memory within the arch's per-CTA limit, pipeline and occupancy in range, for every
    decode instance (the 100 KB parts included)."""
    a = arches.arch(arch)
    for k in enumerate_instances({"arch": (arch,), "variant": ("default",), "q_dtype": ("f16",),
                                  "kind": ("decode", "prefill")}):  # append uses no shared memory
        source = render(k)
        stages, smem = constant(source, "kStages"), constant(source, "kSmemBytes")
        assert smem <= a.smem_per_block == constant(source, "kSmemPerBlock"), k.name
        assert 1 <= constant(source, "kMinCtasPerSm") <= 4
        if k.kind == "prefill":  # the launch bounds leave every thread the mainloop's registers
            threads = 32 * constant(source, "kWarps") * constant(source, "kMinCtasPerSm")
            assert threads * kind_prefill.THREAD_REGISTERS <= a.registers_per_sm, k.name
        if k.kind == "decode":
            assert 1 <= stages <= 8
        else:  # prefill: two CTAs per SM where it can, the copy ring at least double-buffered
            assert stages in (2, 3, 4) and constant(source, "kBlockN") == kind_prefill.block_n(k) in (16, 32, 64)
            assert stages == 2 or 2 * (smem + 1024) <= a.smem_per_sm
    # FP8 rows are half as wide, so the same bytes in flight take twice the steps
    sm90 = arches.arch("sm90a")
    assert kind_decode.pipeline_stages("e4m3", 128, sm90) == 2 * kind_decode.pipeline_stages("bf16", 128, sm90)
    assert kind_decode.min_ctas_per_sm("e4m3", 128, arches.arch("sm80")) == 2
    # a 16-bit head-dim-256 step leaves a 100 KB part room for one stage only
    assert kind_decode.pipeline_stages("f16", 256, arches.arch("sm86")) == 1
    assert kind_decode.pipeline_stages("f16", 256, arches.arch("sm80")) == 2


# --- rendering -------------------------------------------------------------------------------

def test_render_is_deterministic_and_only_fills_constants():
    k = key()
    a, b = render(k), render(k)
    assert a == b
    assert f'fig_instance_name(void) {{ return "{k.name}"; }}' in a
    assert 'fig_kind(void) { return "decode"; }' in a
    for value in ("cute::bfloat16_t", "fig::Conversion::kHardware", "fig::Fp8Format::kE4M3", "fig::PlainLogits"):
        assert value in a
    assert constant(a, "kStages") == kind_decode.pipeline_stages("e4m3", 128, arches.arch("sm90a"), "hardware")
    assert constant(a, "kWarps") == kind_decode.WARPS and constant(a, "kStepTokens") == kind_decode.STEP_TOKENS
    assert "{{" not in a and "{%" not in a and "{#" not in a


def test_variants_render_differently():
    sources = {render(key(conversion=c, variant=v)) for c in ("hardware", "software") for v in ("default", "softcap")}
    assert len(sources) == 4


def test_generate_writes_only_on_change_and_is_byte_identical(tmp_path, fixed_toolchain):
    keys = [key(), key(conversion="software"), key(kv_dtype="bf16", conversion="none")]
    generate(keys, tmp_path / "a")
    generate(keys, tmp_path / "b")
    names = [k.filename for k in keys] + [MANIFEST_NAME, CMAKE_LIST_NAME, *generated_headers()]
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    mtimes = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "a").iterdir()}
    generate(keys, tmp_path / "a")
    assert mtimes == {p.name: p.stat().st_mtime_ns for p in (tmp_path / "a").iterdir()}


def test_manifest_round_trip_and_cmake_list(tmp_path, fixed_toolchain):
    keys = [key(), key(head_dim=64, q_dtype="f16", kv_dtype="e5m2", arch="sm80", conversion="software")]
    entries = generate(keys, tmp_path)
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert set(manifest["instances"]) == {k.name for k in keys}
    for k in keys:
        item = manifest["instances"][k.name]
        assert InstanceKey.from_dict(item["key"]) == k
        assert item["source_hash"] == source_hash(k)
        assert item["library"] == f"libfig_{k.name}_{item['source_hash']}.so"
        assert item["nvcc_flags"] == render_mod.nvcc_flags(k) and arches.arch(k.arch).gencode in item["nvcc_flags"]
        assert item["toolchain"] == fixed_toolchain
        assert "fig_abi_decode.h" in item["headers"] and "fp8_convert.cuh" in item["headers"]
    cmake = (tmp_path / CMAKE_LIST_NAME).read_text()
    assert cmake.count("fig_add_instance(") == len(keys)
    for k in keys:  # the flags CMake gets are the hashed list, verbatim
        assert f'"{";".join(render_mod.nvcc_flags(k))}")' in cmake
    # a second, smaller generation keeps earlier instances in the manifest but builds only its own
    generate([key()], tmp_path)
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert set(manifest["instances"]) == {k.name for k in keys}
    assert (tmp_path / CMAKE_LIST_NAME).read_text().count("fig_add_instance(") == 1
    assert set(entries) == {k.name for k in keys}


# --- cache key -------------------------------------------------------------------------------

KEYS = [key(), key(arch="sm80", conversion="software"), key(kv_dtype="bf16", conversion="none", head_dim=64)]


def hashes(template_dir=toolchain.TEMPLATE_DIR, tools=None):
    tools = tools or {"nvcc": "n", "cutlass": "c"}
    return [source_hash(k, tools=tools, template_dir=template_dir) for k in KEYS]


def test_header_edit_changes_exactly_the_hashes_that_include_it(tmp_path):
    tdir = tmp_path / "templates"
    shutil.copytree(toolchain.TEMPLATE_DIR, tdir)
    before = hashes(tdir)
    assert len(set(before)) == len(KEYS)
    (tdir / "unrelated.cuh").write_text("// included by nobody\n")
    assert hashes(tdir) == before
    with open(tdir / "softmax.cuh", "a") as fh:  # included by every decode instance
        fh.write("// edited\n")
    edited = hashes(tdir)
    assert all(a != b for a, b in zip(before, edited))
    # a header the sources do not include, present in the folder: the include graph leaves it out
    assert "unrelated.cuh" not in included_headers(render(KEYS[0]), tdir)


def test_flag_and_toolchain_changes_change_exactly_the_dependent_hashes(monkeypatch):
    before = hashes()
    sm80 = arches.ARCH_BY_NAME["sm80"]
    monkeypatch.setitem(arches.ARCH_BY_NAME, "sm80", dataclasses.replace(sm80, gencode=sm80.gencode + " -lineinfo"))
    changed = [a != b for a, b in zip(before, hashes())]
    assert changed == [k.arch == "sm80" for k in KEYS]
    monkeypatch.setitem(arches.ARCH_BY_NAME, "sm80", sm80)
    assert hashes() == before
    monkeypatch.setattr(render_mod, "COMMON_NVCC_FLAGS", render_mod.COMMON_NVCC_FLAGS + ("-lineinfo",))
    assert all(a != b for a, b in zip(before, hashes()))
    monkeypatch.undo()
    assert all(a != b for a, b in zip(before, hashes(tools={"nvcc": "n2", "cutlass": "c"})))
    assert all(a != b for a, b in zip(before, hashes(tools={"nvcc": "n", "cutlass": "c2"})))


# --- C ABI spec ------------------------------------------------------------------------------

OFFSETS_PROGRAM = r"""
#include <cstddef>
#include <cstdio>
#include "fig_abi_decode.h"
#define SHOW(T, f) std::printf("%s %zu\n", #f, offsetof(T, f))
int main() {
  std::printf("size %zu\n", sizeof(FigDecodeParams));
  %FIELDS%
}
"""


def _flat_fields(s: abi.Struct, prefix=""):
    for f in s.fields:
        if isinstance(f.ctype, abi.Struct):
            yield from _flat_fields(f.ctype, f"{prefix}{f.name}.")
        else:
            yield prefix + f.name


def _ctypes_offset(struct_type, path):
    offset, t = 0, struct_type
    for part in path.split("."):
        field = getattr(t, part)
        offset += field.offset
        t = dict(t._fields_)[part]
    return offset


def test_c_header_and_ctypes_mirror_agree(tmp_path):
    """The C compiler's offsets of every (nested) field and sizeof(FigDecodeParams) equal the ctypes
    mirror's, both being made from generator/abi.py."""
    gxx = shutil.which("g++") or shutil.which("c++")
    if gxx is None:
        pytest.fail("a host C++ compiler (g++) is needed for this test")
    for name, text in generated_headers().items():
        (tmp_path / name).write_text(text)
    fields = list(_flat_fields(kind_decode.PARAMS))
    (tmp_path / "main.cpp").write_text(OFFSETS_PROGRAM.replace(
        "%FIELDS%", "\n  ".join(f"SHOW(FigDecodeParams, {f});" for f in fields)))
    subprocess.run([gxx, "-std=c++17", f"-I{tmp_path}", str(tmp_path / "main.cpp"), "-o", str(tmp_path / "off")],
                   check=True)
    rows = dict(line.split() for line in subprocess.run([str(tmp_path / "off")], check=True, capture_output=True,
                                                        text=True).stdout.splitlines())
    mirror = abi.ctypes_struct(kind_decode.PARAMS)
    assert int(rows.pop("size")) == ctypes.sizeof(mirror)
    assert {f: int(v) for f, v in rows.items()} == {f: _ctypes_offset(mirror, f) for f in fields}


def test_abi_version_follows_the_spec():
    spec = kind_decode.ABI
    swapped = dataclasses.replace(spec.params, fields=(spec.params.fields[1], spec.params.fields[0],
                                                       *spec.params.fields[2:]))
    other = dataclasses.replace(spec, params=swapped, structs=(spec.structs[0], swapped))
    assert other.version != spec.version
    renamed = dataclasses.replace(spec.params, fields=(dataclasses.replace(spec.params.fields[0], name="query"),
                                                       *spec.params.fields[1:]))
    assert dataclasses.replace(spec, params=renamed, structs=(spec.structs[0], renamed)).version != spec.version
    assert f"#define {spec.version_macro} {spec.version}u" in abi.kind_header(spec)
    assert spec.version == kind_decode.ABI.version  # deterministic


def test_fill_requires_every_field():
    with pytest.raises(TypeError, match="missing"):
        abi.fill(abi.SCALES, sm_scale=1.0, k_scale=1.0, v_scale=1.0)
    with pytest.raises(TypeError, match="unknown"):
        abi.fill(abi.SCALES, sm_scale=1.0, k_scale=1.0, v_scale=1.0, logits_soft_cap=0.0, q_scale_device=None,
                 k_scale_device=None, v_scale_device=None, extra=1)
    s = abi.fill(abi.SCALES, sm_scale=0.5, k_scale=2.0, v_scale=3.0, logits_soft_cap=0.0, q_scale_device=None,
                 k_scale_device=1024, v_scale_device=None)
    assert (s.sm_scale, s.k_scale, s.v_scale, s.k_scale_device, s.v_scale_device) == (0.5, 2.0, 3.0, 1024, None)


def test_every_kind_is_complete():
    """A kind spec names a template that exists, an ABI whose exports the template defines, and
    default selections within its axes."""
    for name, spec in KINDS.items():
        assert (toolchain.TEMPLATE_DIR / spec.template).is_file()
        k = enumerate_instances({"kind": (name,), "arch": ("sm90a",)}, use_defaults=True)[0]
        source = render(k)
        for fn in spec.abi.all_functions:
            if fn not in abi.COMMON_FUNCTIONS:
                assert f" {spec.abi.symbol(fn)}(" in source, f"{name} template does not define {spec.abi.symbol(fn)}"
        for field, values in spec.defaults.items():
            assert set(values) <= set(spec.allowed(field))
