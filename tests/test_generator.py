"""Instance table, rendering, manifest: CPU only."""
import json

import pytest

from generator import InstanceKey, InvalidInstance, check, default_instances, enumerate_instances, generate, render
from generator.instances import (GENCODE, HEAD_DIMS, SMEM_PER_CTA_MAX, decode_smem_bytes, min_ctas_per_sm,
                                 pipeline_stages, template_context, why_invalid)
from generator.render import CMAKE_LIST_NAME, MANIFEST_NAME, headers_digest, source_hash


def key(**kw):
    base = dict(kind="decode", q_dtype="bf16", kv_dtype="e4m3", head_dim=128, arch="sm90a",
                conversion="hardware", variant="default")
    base.update(kw)
    return InstanceKey(**base)


def test_default_set_matches_the_issue():
    keys = default_instances(["sm80", "sm90a"])
    assert {k.head_dim for k in keys} == {128}
    assert {(k.q_dtype, k.kv_dtype) for k in keys} == {
        ("f16", "f16"), ("f16", "e4m3"), ("f16", "e5m2"), ("bf16", "bf16"), ("bf16", "e4m3"), ("bf16", "e5m2")}
    # sm80 has only the software conversion; sm90a both
    assert {k.conversion for k in keys if k.arch == "sm80" and k.is_fp8} == {"software"}
    assert {k.conversion for k in keys if k.arch == "sm90a" and k.is_fp8} == {"hardware", "software"}
    assert len(keys) == 6 + 10
    assert len({k.name for k in keys}) == len(keys)


@pytest.mark.parametrize("bad,reason", [
    (dict(q_dtype="f16", kv_dtype="bf16", conversion="none"), "16-bit KV cache must have the q dtype"),
    (dict(arch="sm80", conversion="hardware"), "no FP8 convert instruction"),
    (dict(conversion="none"), "needs conversion"),
    (dict(kv_dtype="bf16", conversion="software"), "is not converted"),
    (dict(head_dim=96), "head_dim=96"),
    (dict(q_dtype="e4m3", kv_dtype="e4m3"), "q_dtype"),
    (dict(arch="sm75"), "arch"),
    (dict(variant="alibi"), "variant"),
])
def test_invalid_combinations_say_why(bad, reason):
    k = key(**bad)
    assert reason in why_invalid(k)
    with pytest.raises(InvalidInstance, match=reason):
        check(k)
    with pytest.raises(InvalidInstance):
        render(k)


def test_enumeration_is_the_valid_product():
    keys = enumerate_instances()
    assert all(why_invalid(k) is None for k in keys)
    # 2 q dtypes x 3 head dims x (sm80: 1 + 2 fp8 sw; sm90a: 1 + 2 fp8 x 2 conversions)
    assert len(keys) == 2 * len(HEAD_DIMS) * (3 + 5)
    assert keys == sorted(keys)


def test_render_is_deterministic_and_only_fills_constants():
    k = key()
    a, b = render(k), render(k)
    assert a == b
    assert k.name in a
    ctx = template_context(k)
    for value in ("cute::bfloat16_t", "fig::Conversion::kHardware", "fig::Fp8Format::kE4M3",
                  f"{ctx['stages']}", "fig::PlainLogits"):
        assert value in a
    assert "{{" not in a and "{%" not in a


def test_variants_render_differently():
    sources = {render(key(conversion=c, variant=v)) for c in ("hardware", "software") for v in ("default", "softcap")}
    assert len(sources) == 4


def test_generate_writes_only_on_change_and_is_byte_identical(tmp_path):
    keys = [key(), key(conversion="software"), key(kv_dtype="bf16", conversion="none")]
    generate(keys, tmp_path / "a")
    generate(keys, tmp_path / "b")
    for name in [k.filename for k in keys] + [MANIFEST_NAME, CMAKE_LIST_NAME]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    mtimes = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "a").iterdir()}
    generate(keys, tmp_path / "a")
    assert mtimes == {p.name: p.stat().st_mtime_ns for p in (tmp_path / "a").iterdir()}


def test_manifest_round_trip_and_cmake_list(tmp_path):
    keys = [key(), key(head_dim=64, q_dtype="f16", kv_dtype="e5m2", arch="sm80", conversion="software")]
    entries = generate(keys, tmp_path)
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert set(manifest["instances"]) == {k.name for k in keys}
    for k in keys:
        item = manifest["instances"][k.name]
        assert InstanceKey.from_dict(item["key"]) == k
        assert item["source_hash"] == source_hash(k)
        assert item["library"] == f"libfig_{k.name}_{item['source_hash']}.so"
        assert GENCODE[k.arch] in item["nvcc_flags"]
    cmake = (tmp_path / CMAKE_LIST_NAME).read_text()
    assert cmake.count("fig_add_instance(") == len(keys)
    assert "compute_80,code=sm_80" in cmake and "compute_90a,code=sm_90a" in cmake
    # a second, smaller generation keeps earlier instances in the manifest but builds only its own
    generate([key()], tmp_path)
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert set(manifest["instances"]) == {k.name for k in keys}
    assert (tmp_path / CMAKE_LIST_NAME).read_text().count("fig_add_instance(") == 1
    assert set(entries) == {k.name for k in keys}


def test_source_hash_covers_headers_and_flags():
    k = key()
    assert source_hash(k) == source_hash(k)
    assert source_hash(k, digest="other headers") != source_hash(k)
    assert source_hash(k) != source_hash(key(arch="sm80", conversion="software"))
    assert len(headers_digest()) == 64


def test_pipeline_constants_fit_the_arch():
    for kv in ("f16", "e4m3"):
        for d in HEAD_DIMS:
            for arch in ("sm80", "sm90a"):
                assert 2 <= pipeline_stages(kv, d, arch) <= 8
                assert 1 <= min_ctas_per_sm(kv, d, arch) <= 4
                assert decode_smem_bytes(kv, d, arch) <= SMEM_PER_CTA_MAX[arch]
    # FP8 rows are half as wide, so the same bytes in flight take twice the steps
    assert pipeline_stages("e4m3", 128, "sm90a") == 2 * pipeline_stages("bf16", 128, "sm90a")
    # two CTAs per SM wherever the step allows it, on both archs
    assert min_ctas_per_sm("e4m3", 128, "sm80") == 2 and min_ctas_per_sm("e4m3", 128, "sm90a") == 2
