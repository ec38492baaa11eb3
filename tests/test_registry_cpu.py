"""Registry, dispatch errors, CLI and argument validation: CPU only."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from generator import InstanceKey, generate, why_invalid
from generator.kind_decode import HEAD_DIMS, STEP_TOKENS
from generator.render import MANIFEST_NAME, MANIFEST_VERSION
from flashinfer_gen import validation as V
from flashinfer_gen.builder import generated_dir, library_dir
from flashinfer_gen.decode import MIN_CHUNK_TOKENS, make_schedule
from flashinfer_gen.registry import InstanceNotBuiltError, Registry, build_command

pytestmark = pytest.mark.usefixtures("fixed_toolchain")

K_HW = InstanceKey("decode", "bf16", "e4m3", 128, "sm90a", "hardware")
K_SW = InstanceKey("decode", "bf16", "e4m3", 128, "sm90a", "software")
K_BF16 = InstanceKey("decode", "bf16", "bf16", 128, "sm90a", "none")


def fake_cache(root, built, generated=()):
    """A cache whose manifest lists `generated` + `built` and whose lib/ holds files for `built`."""
    entries = generate(list(built) + list(generated), generated_dir(root))
    library_dir(root).mkdir(parents=True, exist_ok=True)
    for k in built:
        (library_dir(root) / entries[k.name]["library"]).write_bytes(b"not a real library")
    return entries


def test_registry_round_trip(tmp_path):
    fake_cache(tmp_path, built=[K_HW, K_BF16], generated=[K_SW])
    reg = Registry(tmp_path)
    state = {e.key: e.built for e in reg.entries()}
    assert state == {K_HW: True, K_BF16: True, K_SW: False}
    assert reg.built_keys() == sorted([K_HW, K_BF16])


def test_missing_instance_error_names_key_nearest_and_command(tmp_path):
    fake_cache(tmp_path, built=[K_HW, K_BF16])
    with pytest.raises(InstanceNotBuiltError) as info:
        Registry(tmp_path).lookup(K_SW, jit=False)
    msg = str(info.value)
    assert K_SW.name in msg
    assert info.value.nearest[0] == K_HW  # differs in the conversion only
    assert K_HW.name in msg and K_BF16.name in msg
    assert build_command(K_SW) in msg
    assert "--conversion software" in build_command(K_SW)


def test_build_command_round_trips_through_the_cli(tmp_path):
    from flashinfer_gen.cli import _add_selectors, _selected
    import argparse
    parser = argparse.ArgumentParser()
    _add_selectors(parser)
    args = parser.parse_args(build_command(K_SW).split()[2:])
    assert _selected(args) == [K_SW]


def test_invalid_combination_is_refused_with_reason(tmp_path):
    bad = InstanceKey("decode", "f16", "bf16", 128, "sm90a", "none")
    with pytest.raises(ValueError, match="16-bit KV cache must have the q dtype"):
        Registry(tmp_path).lookup(bad, jit=False)


def test_stale_library_is_not_loaded(tmp_path):
    fake_cache(tmp_path, built=[K_HW, K_SW])
    manifest_path = generated_dir(tmp_path) / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    manifest["instances"][K_HW.name]["source_hash"] = "0" * 16  # built from other sources
    manifest_path.write_text(json.dumps(manifest))
    state = {e.key: (e.built, e.stale) for e in Registry(tmp_path).entries()}
    assert state == {K_HW: (False, True), K_SW: (True, False)}
    with pytest.raises(InstanceNotBuiltError):
        Registry(tmp_path).lookup(K_HW, jit=False)


def test_toolchain_change_makes_libraries_stale(tmp_path, monkeypatch):
    from generator import toolchain
    fake_cache(tmp_path, built=[K_HW])
    assert Registry(tmp_path).built_keys() == [K_HW]
    monkeypatch.setattr(toolchain, "current", lambda: {"nvcc": "release 99.0", "cutlass": "0.0.0"})
    (entry,) = Registry(tmp_path).entries()
    assert entry.stale and not entry.built
    # without nvcc here nothing could be rebuilt: the library is judged by the toolchain that built it
    monkeypatch.setattr(toolchain, "current", lambda: None)
    assert Registry(tmp_path).built_keys() == [K_HW]


def test_foreign_manifest_entries_are_skipped_not_fatal(tmp_path):
    fake_cache(tmp_path, built=[K_HW])
    path = generated_dir(tmp_path) / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    manifest["instances"]["from_a_newer_version"] = {"key": {**K_SW.as_dict(), "tile": 64}, "library": "x.so",
                                                     "source_hash": "0"}
    manifest["instances"]["truncated"] = {"key": {"kind": "decode"}}
    path.write_text(json.dumps(manifest))
    assert [e.key for e in Registry(tmp_path).entries()] == [K_HW]
    # a manifest of another version is read as empty: its instances are rebuilt when asked for
    path.write_text(json.dumps({**manifest, "version": MANIFEST_VERSION - 1}))
    assert Registry(tmp_path).entries() == []
    path.write_text("{ not json")
    assert Registry(tmp_path).entries() == []


def test_cli_list_shows_the_matrix(tmp_path, monkeypatch):
    fake_cache(tmp_path, built=[K_HW], generated=[K_SW])
    from flashinfer_gen.cli import registry_table
    monkeypatch.setenv("FLASHINFER_GEN_CACHE", str(tmp_path))
    out = registry_table()
    rows = [line.split() for line in out.splitlines()]
    assert rows[0] == ["kind", "q_dtype", "kv_dtype", "head_dim", "conversion", "variant", "o_dtype", "sm90a"]
    assert ["decode", "bf16", "e4m3", "128", "hardware", "default", "same", "built"] in rows
    assert ["decode", "bf16", "e4m3", "128", "software", "default", "same", "missing"] in rows
    assert "1 of 2 generated instances built" in out


def test_cli_generate_and_selector_errors(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "flashinfer_gen.cli", *a], capture_output=True,  # noqa: E731
                                    text=True, env=dict(os.environ, FLASHINFER_GEN_CACHE=str(tmp_path)))
    r = run("generate", "--arch", "sm80", "--q-dtype", "f16", "--out", str(tmp_path / "g"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "g" / "decode_qf16_kve4m3_d128_sm80_software_default.cu").exists()
    assert not list((tmp_path / "g").glob("*hardware*")), "sm80 has no hardware conversion"
    r = run("generate", "--head-dim", "72")
    assert r.returncode != 0 and "72" in r.stderr
    r = run("generate", "--kind", "decode", "--head-dim", "96")
    assert r.returncode != 0 and "no valid instance" in r.stderr
    r = run("generate", "--kind", "decode", "--arch", "sm89", "--q-dtype", "bf16", "--kv-dtype", "e4m3", "--out",
            str(tmp_path / "h"))
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "h").glob("*.cu")) == [
        "decode_qbf16_kve4m3_d128_sm89_hardware_default.cu", "decode_qbf16_kve4m3_d128_sm89_software_default.cu"]
    r = run("generate", "--arch", "sm80", "--conversion", "hardware")
    assert r.returncode != 0 and "no valid instance" in r.stderr


# --- schedule --------------------------------------------------------------------------------

def test_schedule_no_split_when_the_batch_fills_whole_waves():
    s = make_schedule(np.zeros(98, np.int64), np.full(98, 4096), 8, 396)  # 49 columns: exactly 2 waves
    assert s.chunk_tokens is None and sorted(s.request.tolist()) == list(range(98)) and s.num_partial == 0
    assert (s.partial == -1).all() and s.merge_request.size == 0


def test_schedule_fills_waves_for_a_uniform_batch():
    # 64 requests on 49 columns would be 1.3 waves unsplit; the pieces must make the waves nearly full
    s = make_schedule(np.zeros(64, np.int64), np.full(64, 4096), 8, 396)
    waves = s.request.size / 49
    assert s.chunk_tokens is not None and waves / np.ceil(waves) > 0.95
    lens = s.end - s.begin
    assert lens.max() - lens.min() <= 16 and (lens % 16 == 0).all()


def test_schedule_splits_long_single_request_over_one_wave():
    s = make_schedule(np.array([0]), np.array([32768]), 8, 396)
    assert s.chunk_tokens % STEP_TOKENS == 0 and s.chunk_tokens >= MIN_CHUNK_TOKENS
    assert s.request.size * 8 <= 396 and s.request.size > 1
    # the chunks tile [0, 32768) exactly; listed longest first
    order = np.argsort(s.begin)
    b, e = s.begin[order], s.end[order]
    assert b[0] == 0 and e[-1] == 32768 and (b[1:] == e[:-1]).all()
    assert ((s.end - s.begin)[:-1] >= (s.end - s.begin)[1:]).all()
    assert s.merge_request.tolist() == [0] and s.merge_indptr.tolist() == [0, s.request.size]


def test_schedule_mixed_lengths_and_window_begin():
    begin = np.array([0, 0, 3000, 0])
    end = np.array([1, 100, 9000, 64])
    s = make_schedule(begin, end, 2, 264)
    for b in range(4):
        items = s.request == b
        assert s.begin[items].min() == begin[b] and s.end[items].max() == end[b]
        assert (s.end[items] - s.begin[items]).sum() == end[b] - begin[b]
    split = [b for b in range(4) if (s.request == b).sum() > 1]
    assert s.merge_request.tolist() == split
    for i, b in enumerate(s.merge_request):  # each merge item covers exactly its request's partial slots
        slots = sorted(s.partial[s.request == b].tolist())
        assert slots == list(range(s.merge_indptr[i], s.merge_indptr[i + 1]))
    assert sorted(s.partial[s.partial >= 0].tolist()) == list(range(s.num_partial))


def test_schedule_respects_a_graph_plans_item_capacity():
    """A CUDA-graph plan caps the work items (the grid it was captured with): the split heuristic
    then picks the finest cut within the cap, still tiling every request exactly."""
    begin, end = np.zeros(6, np.int64), np.array([30000, 5, 17, 64, 2, 100])
    free = make_schedule(begin, end, 4, 528)
    assert free.request.size > 12  # unconstrained, the long request is cut into many pieces
    capped = make_schedule(begin, end, 4, 528, max_items=12)
    assert 6 < capped.request.size <= 12
    for b in range(6):
        items = capped.request == b
        assert (capped.end[items] - capped.begin[items]).sum() == end[b]
    assert make_schedule(begin, end, 4, 528, max_items=6).request.size == 6  # no room: no split


def _choose_chunk_loop(lens, ctas_per_item, max_resident_ctas, max_items=None):
    """choose_chunk as first written, one candidate k at a time: the specification the vectorised
    one must match exactly (same float operations, the first k of equal estimates)."""
    from flashinfer_gen.decode import MAX_PIECES, PIECE_OVERHEAD_TOKENS, SPLIT_OVERHEAD_TOKENS

    def makespan(chunk, columns):
        pieces = np.ones_like(lens) if chunk is None else np.maximum(1, -(-lens // chunk))
        n = int(pieces.sum())
        waves = -(-n // columns)
        busy = max(float((lens / pieces).max()), waves * float(lens.sum()) / n, float(lens.sum()) / columns)
        return busy + waves * PIECE_OVERHEAD_TOKENS + (SPLIT_OVERHEAD_TOKENS if (pieces > 1).any() else 0)

    columns = max(1, max_resident_ctas // ctas_per_item)
    best_chunk, best = None, makespan(None, columns)
    longest = int(lens.max())
    for k in range(2, MAX_PIECES + 1):
        chunk = max(MIN_CHUNK_TOKENS, -(-(-(-longest // k)) // STEP_TOKENS) * STEP_TOKENS)
        if chunk >= longest or (max_items is not None and int(np.maximum(1, -(-lens // chunk)).sum()) > max_items):
            continue
        est = makespan(chunk, columns)
        if est < best:
            best_chunk, best = chunk, est
    return best_chunk


def test_choose_chunk_matches_the_loop_it_replaced():
    """The vectorised split choice equals the loop over k on 3000 random batches (lengths 1 to
    64k, uniform and skewed, batch 1 to 256, with and without a graph plan's item cap), so every
    schedule, and so every kernel launch, is the one the GPU tests ran before."""
    from flashinfer_gen.decode import choose_chunk
    rng = np.random.default_rng(7)
    splits = 0
    for _ in range(3000):
        batch = int(rng.choice([1, 2, 7, 32, 64, 256]))
        top = int(rng.choice([16, 200, 4096, 65536]))
        lens = rng.integers(1, top + 1, batch) if rng.random() < 0.7 else np.full(batch, int(rng.integers(1, top + 1)))
        ctas, resident = int(rng.choice([1, 2, 4, 8])), int(rng.choice([132, 264, 528]))
        cap = None if rng.random() < 0.5 else int(rng.integers(batch, 4 * batch + 300))
        want = _choose_chunk_loop(lens, ctas, resident, cap)
        assert choose_chunk(lens, ctas, resident, cap) == want, (lens, ctas, resident, cap)
        splits += want is not None
    assert 300 < splits < 2700  # both outcomes are exercised


@pytest.mark.parametrize("seed", range(40))
def test_prefill_schedule_stays_within_a_graph_plans_capacity(seed):
    """The capacity a CUDA-graph prefill plan reserves from its first plan (schedule_capacity)
    holds every later batch of that size with no more query tokens, split-KV or not; a cap on the
    partial slots makes the split coarser, never drops keys."""
    from flashinfer_gen.prefill import make_schedule as prefill_schedule, schedule_capacity
    rng = np.random.default_rng(seed)
    batch, group, kv_heads = int(rng.integers(1, 9)), int(rng.choice([1, 3, 4, 8])), int(rng.choice([1, 2, 8, 32]))
    tile_rows, tile_keys, resident = int(rng.choice([64, 128])), int(rng.choice([64, 128])), int(rng.choice([132, 264]))
    rows = int(rng.integers(batch, 600))
    items, slots = schedule_capacity(rows, batch, group, kv_heads, tile_rows, resident)
    for _ in range(10):
        qo = rng.multinomial(rows - batch, np.ones(batch) / batch) + 1 if rng.random() < 0.5 else \
            rng.integers(1, max(2, rows // batch), batch)
        kv = qo + rng.integers(0, 40000, batch) * (rng.random(batch) < 0.5)
        causal = bool(rng.random() < 0.5)
        s = prefill_schedule(qo, kv, group, causal, -1, kv_heads, resident, tile_rows, tile_keys)
        assert s.request.size <= items and s.num_partial <= slots and s.merge_row.size <= rows
        cap = int(rng.integers(0, slots + 1))
        c = prefill_schedule(qo, kv, group, causal, -1, kv_heads, resident, tile_rows, tile_keys, max_partial=cap)
        assert c.num_partial <= cap and c.request.size <= items
        for sched in (s, c):  # every row tile's pieces tile its key range [begin, end) exactly, in order
            whole = prefill_schedule(qo, kv, group, causal, -1, kv_heads, 1, tile_rows, tile_keys)  # no split
            for b, row0, begin, end in zip(whole.request, whole.row_begin, whole.kv_begin, whole.kv_end):
                tile = (sched.request == b) & (sched.row_begin == row0)
                pieces = sorted(zip(sched.kv_begin[tile].tolist(), sched.kv_end[tile].tolist()))
                assert pieces[0][0] == begin and pieces[-1][1] == end
                assert all(p[1] == n[0] for p, n in zip(pieces, pieces[1:])), pieces


def emulate_partial_writes(s, qo, group, tile_rows):
    """What the prefill kernels write for a schedule (one KV head: the others repeat it): the
    packed rows (request, token, q head) written straight to the output, and for each partial
    slot the rows its pieces wrote there (slot = partial + token x pieces, as both epilogues)."""
    direct, slotted = [], {}
    for b, row0, partial, pieces in zip(s.request.tolist(), s.row_begin.tolist(), s.partial.tolist(),
                                        s.pieces.tolist()):
        for r in range(max(row0, 0), min(int(qo[b]) * group, row0 + tile_rows)):
            if pieces == 1:
                direct.append((b, r // group, r % group))
            else:
                slot = partial + (r // group) * pieces
                assert 0 <= slot < s.num_partial, (slot, s.num_partial)
                slotted.setdefault(slot, []).append((b, r // group, r % group))
    return direct, slotted


def random_cut_case(seed):
    """A random batch and a resident CTA count for cut_last_wave: mostly requests of about as many
    keys and a lap of CTAs and a few units, so that its last wave is short and as long as the rest
    (as well as other batches and counts, which it leaves whole or splits under one wave)."""
    from flashinfer_gen.prefill import make_schedule as prefill_schedule
    rng = np.random.default_rng(seed)
    batch, group = int(rng.integers(1, 6)), int(rng.choice([1, 2, 3, 4, 7, 8]))
    kv_heads = int(rng.choice([1, 2, 8]))
    tile_rows, tile_keys = int(rng.choice([64, 128])), int(rng.choice([32, 64]))
    causal, window = bool(rng.random() < 0.3), int(rng.choice([-1, -1, -1, 200]))
    qo = rng.integers(1, 400, batch)
    kv = qo + (rng.integers(0, 3000, batch) if seed % 3 == 0 else rng.integers(1500, 1600) + rng.integers(0, 50, batch))
    whole = prefill_schedule(qo, kv, group, causal, window, kv_heads, 1, tile_rows, tile_keys)  # resident 1: no split
    units = whole.request.size * kv_heads
    resident = max(2, units - int(rng.integers(1, max(2, units // 8)))) if seed % 5 else int(rng.choice([8, 24, 132]))
    s = prefill_schedule(qo, kv, group, causal, window, kv_heads, resident, tile_rows, tile_keys, cut_wave=True)
    return qo, kv, group, causal, window, kv_heads, resident, tile_rows, tile_keys, whole, s


@pytest.mark.parametrize("seed", range(60))
def test_prefill_cut_wave_slots_and_merge_rows(seed):
    """A grid's short last wave cut into pieces (make_schedule's cut_wave, cut_last_wave): every
    (token, q head) is written once straight to the output or once per piece of its token's
    partial slots, which are exactly the merge rows' ranges; every row tile's pieces tile its
    keys. A group that does not divide the tile's rows (3, 7: a token's q heads in two row tiles),
    and a causal batch, are not cut, beyond the split of a batch under one wave."""
    qo, kv, group, causal, window, kv_heads, resident, tile_rows, tile_keys, whole, s = random_cut_case(seed)
    batch = qo.size
    if (tile_rows % group or causal) and whole.request.size * kv_heads >= resident:
        assert s.num_partial == 0
    direct, slotted = emulate_partial_writes(s, qo, group, tile_rows)
    qo_start = np.concatenate([[0], np.cumsum(qo)])
    merged = {}
    for j, row in enumerate(s.merge_row.tolist()):
        b = int(np.searchsorted(qo_start, row, side="right")) - 1
        merged[(b, row - int(qo_start[b]))] = range(int(s.merge_indptr[j]), int(s.merge_indptr[j + 1]))
    assert len(direct) == len(set(direct))
    every = {(b, t, h) for b in range(batch) for t in range(int(qo[b])) for h in range(group)}
    assert {(b, t) for b, t, _ in direct}.isdisjoint(merged), "a merged token written straight as well"
    assert set(direct) | {(b, t, h) for (b, t) in merged for h in range(group)} == every
    for (b, t), slots in merged.items():
        assert len(slots) >= 2
        for slot in slots:
            assert sorted(slotted.pop(slot)) == [(b, t, h) for h in range(group)], (b, t, slot)
    assert not slotted, "a slot no merge row reads"
    assert s.merge_indptr[-1] == s.num_partial
    for b, row0, begin, end in zip(whole.request, whole.row_begin, whole.kv_begin, whole.kv_end):
        tile = (s.request == b) & (s.row_begin == row0)
        pieces = sorted(zip(s.kv_begin[tile].tolist(), s.kv_end[tile].tolist()))
        assert pieces[0][0] == begin and pieces[-1][1] == end
        assert all(p[1] == n[0] for p, n in zip(pieces, pieces[1:])), pieces


def test_prefill_cut_wave_cases_cover_the_cut():
    """test_prefill_cut_wave_slots_and_merge_rows's cases do cut: many of them past one wave, with
    GQA groups and with a split item's `partial` below 0 (and with whole requests cut too)."""
    cut = []
    for seed in range(60):
        qo, kv, group, causal, window, kv_heads, resident, tile_rows, tile_keys, whole, s = random_cut_case(seed)
        if whole.request.size * kv_heads > resident and s.num_partial > 0:
            cut.append((group, bool((s.partial[s.pieces > 1] < 0).any())))
    assert len(cut) >= 12, cut
    assert any(g > 1 for g, _ in cut) and any(n for _, n in cut) and not all(n for _, n in cut), cut


def test_prefill_cut_last_wave_on_the_measured_shapes():
    """cut_last_wave's choices on the shapes measured on the H200 (the Ampere path, d128, 128-row
    tiles of 64 keys, 264 resident CTAs; README, "The grid's short last wave"): those that ran
    faster cut (B1 S1100 with 8 KV heads, S1152, S1280; the forms measured) are cut, those that
    ran level or slower (B2 S1088, B1 S1536, S1792, S4608 with 8 KV heads, B4 S4096, B16 S8192,
    and every causal one) are not. A CUDA-graph plan, and a cut whose partials the workspace does
    not hold (cut_slots), run whole."""
    from flashinfer_gen.prefill import make_schedule as prefill_schedule

    def form(batch, seq, kv_heads, causal=False, **kwargs):
        qo = np.full(batch, seq)
        s = prefill_schedule(qo, qo, 32 // kv_heads, causal, -1, kv_heads, 264, 128, 64, cut_wave=True, **kwargs)
        split = s.pieces > 1
        return len(set(zip(s.request[split].tolist(), s.row_begin[split].tolist()))), int(s.pieces.max())

    assert form(1, 1100, 8) == (2, 6) and form(1, 1152, 32) == (1, 6) and form(1, 1280, 32) == (2, 4)
    for shape in ((2, 1088, 32), (1, 1536, 32), (1, 1792, 32), (1, 4608, 8), (4, 4096, 32), (16, 8192, 32)):
        assert form(*shape) == (0, 1), shape
    for shape in ((1, 1100, 8), (1, 1152, 32), (1, 1280, 32)):
        assert form(*shape, causal=True) == (0, 1), shape
        assert form(*shape, max_partial=10 ** 6) == (0, 1), shape  # a CUDA-graph plan keeps its capacity's items
    assert form(1, 1152, 32, cut_slots=768) == (1, 6) and form(1, 1152, 32, cut_slots=767) == (0, 1)
    assert form(1, 512, 32, cut_slots=0)[0] > 0  # a batch under one wave keeps its split (lay_out_plan refuses)
    # the kinds that take it: the Ampere path's CTAs of 4 warps two an SM; not one CTA an SM (8 warps
    # at head dim 256 on sm_90a; 4 warps at head dim 128 on sm_86), nor the Hopper family's grids
    from generator.instances import KINDS
    from generator.keys import InstanceKey
    assert KINDS["prefill"].cut_last_wave(InstanceKey("prefill", "bf16", "bf16", 128, "sm90a", "none"))
    assert KINDS["prefill"].cut_last_wave(InstanceKey("prefill", "bf16", "e4m3", 128, "sm90a", "software"))
    assert not KINDS["prefill"].cut_last_wave(InstanceKey("prefill", "bf16", "bf16", 256, "sm90a", "none"))
    assert not KINDS["prefill"].cut_last_wave(InstanceKey("prefill", "bf16", "bf16", 128, "sm86", "none"))
    assert KINDS["prefill_sm90"].cut_last_wave is None


@pytest.mark.parametrize("window_left", [-1, 40])
def test_prefill_row_tiles_end_at_the_last_row(window_left):
    """Each request's packed rows are its items' [row_begin, row_begin + tile_rows) within [0, rows),
    each row in exactly one row tile; the tiles end at its last row, so a partial tile is the first
    (row_begin below 0), and causal, its keys are the fewest: they end at its last row's diagonal."""
    from flashinfer_gen.prefill import item_rows, make_schedule as prefill_schedule
    qo = np.array([1, 127, 128, 129, 300, 4096, 7])
    kv = qo + np.array([0, 5, 0, 1000, 17, 0, 300])
    for group, tile_rows, causal in ((1, 128, True), (4, 192, True), (7, 128, False), (3, 64, True)):
        s = prefill_schedule(qo, kv, group, causal, window_left, 8, 1, tile_rows, 64)  # resident 1: no split
        for b, n in enumerate(qo.tolist()):
            rows = n * group
            mine = np.sort(s.row_begin[s.request == b])
            assert mine[0] == rows - tile_rows * -(-rows // tile_rows) and (np.diff(mine) == tile_rows).all()
            assert mine[-1] + tile_rows == rows, "the last tile ends at the request's last row"
            assert int(item_rows(mine, np.full(mine.size, rows), tile_rows).sum()) == rows
            first = (s.request == b) & (s.row_begin == mine[0])
            last_token = (min(rows, int(mine[0]) + tile_rows) - 1) // group
            if causal:
                assert int(s.kv_end[first][0]) == int(kv[b]) - n + last_token + 1
            if window_left >= 0:
                assert int(s.kv_begin[first][0]) == max(0, int(kv[b]) - n - window_left)


# --- validation --------------------------------------------------------------------------------

def page_table(lens=(5, 40), page=16):
    pages = [(n + page - 1) // page for n in lens]
    indptr = torch.tensor([0] + list(np.cumsum(pages)), dtype=torch.int32)
    indices = torch.arange(int(indptr[-1]), dtype=torch.int32)
    last = torch.tensor([n - (p - 1) * page for n, p in zip(lens, pages)], dtype=torch.int32)
    return indptr, indices, last


def test_page_table_ok():
    indptr, indices, last = page_table()
    ih, lh, mx = V.check_page_table(indptr, indices, last, 16)
    assert mx == int(indices.max()) and ih.tolist() == indptr.tolist()


@pytest.mark.parametrize("mutate,match", [
    (lambda i, x, l: (i.flip(0), x, l), "indptr\\[0\\] must be 0"),
    (lambda i, x, l: (torch.tensor([0, 3, 2], dtype=torch.int32), x, l), "non-decreasing"),
    (lambda i, x, l: (torch.tensor([0, 0, 3], dtype=torch.int32), x, l), "has no pages"),
    (lambda i, x, l: (i, x, l + 16), "last_page_len\\[.\\] = .* outside"),
    (lambda i, x, l: (i, x, l * 0), "outside"),
    (lambda i, x, l: (i, x, l[:1]), "expected batch"),
    (lambda i, x, l: (i, x[:1], l), "exceeds len\\(indices\\)"),
    (lambda i, x, l: (i, x - 5, l), "negative page index"),
    (lambda i, x, l: (i[:1], x, l), "batch \\+ 1 >= 2"),
])
def test_page_table_errors(mutate, match):
    indptr, indices, last = mutate(*page_table())
    with pytest.raises(V.ArgumentError, match=match):
        V.check_page_table(indptr, indices, last, 16)


@pytest.mark.parametrize("args,match", [
    ((32, 8, 96, 16), "head_dim 96 is not supported"),
    ((30, 8, 128, 16), "multiple of num_kv_heads"),
    ((32, 0, 128, 16), "num_kv_heads must be a positive int"),
    ((32, 8, 128, 0), "page_size must be a positive int"),
])
def test_head_config_errors(args, match):
    with pytest.raises(V.ArgumentError, match=match):
        V.check_head_config(*args, HEAD_DIMS)


def test_index_and_dtype_errors():
    with pytest.raises(V.ArgumentError, match="int32"):
        V.require_int_index(torch.zeros(3), "indptr")
    with pytest.raises(V.ArgumentError, match="1-D"):
        V.require_int_index(torch.zeros(3, 2, dtype=torch.int32), "indptr")
    with pytest.raises(V.ArgumentError, match="torch.Tensor"):
        V.require_int_index([0, 1], "indptr")
    with pytest.raises(V.ArgumentError, match="unsupported dtype"):
        V.dtype_name(torch.float32, "q_data_type")
    assert V.dtype_name("fp8_e4m3", "kv") == "e4m3" and V.dtype_name(torch.bfloat16, "q") == "bf16"


def test_scalar_errors():
    assert V.check_scalar(None, "k_scale") == 1.0
    with pytest.raises(V.ArgumentError, match="tensor"):
        V.check_scalar(torch.tensor(2.0), "k_scale")
    with pytest.raises(V.ArgumentError, match="finite"):
        V.check_scalar(float("nan"), "v_scale")
    with pytest.raises(V.ArgumentError, match="must be a float"):
        V.check_scalar("x", "v_scale")


def test_kv_layout_and_shape_errors():
    k = torch.zeros(10, 16, 2, 128)
    assert V.kv_strides(k, "NHD", 16, 2, 128) == (k.stride(0), k.stride(1), k.stride(2))
    h = torch.zeros(10, 2, 16, 128)
    assert V.kv_strides(h, "HND", 16, 2, 128) == (h.stride(0), h.stride(2), h.stride(1))
    with pytest.raises(V.ArgumentError, match="does not match layout NHD"):
        V.kv_strides(h, "NHD", 16, 2, 128)
    with pytest.raises(V.ArgumentError, match="\\(k_cache, v_cache\\)"):
        V.split_paged_kv((k, k, k), "NHD")
    with pytest.raises(V.ArgumentError, match="\\[num_pages, 2"):
        V.split_paged_kv(torch.zeros(10, 3, 16, 2, 128), "NHD")
    with pytest.raises(V.ArgumentError, match="same shape"):
        V.split_paged_kv((k, k[:5]), "NHD")
    with pytest.raises(V.ArgumentError, match="same dtype"):
        V.split_paged_kv((k, k.half()), "NHD")
    kk, vv = V.split_paged_kv(torch.zeros(10, 2, 16, 2, 128), "NHD")
    assert kk.shape == (10, 16, 2, 128) and vv.data_ptr() > kk.data_ptr()


def test_cuda_tensor_check_on_cpu_tensor():
    with pytest.raises(V.ArgumentError, match="CUDA"):
        V.check_cuda_tensor(torch.zeros(2), "q", torch.device("cuda", 0))


def test_wrapper_rejects_cpu_workspace():
    from flashinfer_gen import BatchDecodeWithPagedKVCacheWrapper
    with pytest.raises(V.ArgumentError, match="CUDA tensor of a 1-byte dtype"):
        BatchDecodeWithPagedKVCacheWrapper(torch.zeros(16, dtype=torch.uint8))


def test_spill_reports_are_found():
    from flashinfer_gen.builder import spill_warnings
    out = ["[1/2] Building CUDA object ...\n",
           "ptxas warning : Registers are spilled to local memory in function '_Z3foov', 32 bytes spill stores, "
           "32 bytes spill loads\n", "[2/2] Linking CUDA shared library\n"]
    assert spill_warnings(out) == [out[1].strip()]
    assert spill_warnings(out[::2]) == []
    # serialised WGMMAs (the wording of ptxas 12.x/13.0) are refused the same way
    wgmma = ("ptxas warning : (C7510) Potential Performance Loss: wgmma.mma_async instructions are serialized due "
             "to the presence of Extern calls in the function '_Z3barv'\n")
    assert spill_warnings([wgmma, out[0]]) == [wgmma.strip()]


def test_positional_run_args():
    """run(q, cache, k_scale, v_scale, out, lse, return_lse) positionally, FlashInfer's keywords, or
    a mix; the same argument both ways, or too many, is refused."""
    from flashinfer_gen.common import positional_run_args
    assert positional_run_args((0.5, 2.0), None, None, None, None, False) == (0.5, 2.0, None, None, False)
    assert positional_run_args((), 0.5, None, None, None, True) == (0.5, None, None, None, True)
    assert positional_run_args((0.5,), None, 3.0, "o", None, False) == (0.5, 3.0, "o", None, False)
    with pytest.raises(V.ArgumentError, match="both positionally and by keyword"):
        positional_run_args((0.5,), 0.25, None, None, None, False)
    with pytest.raises(V.ArgumentError, match="at most 5"):
        positional_run_args((1, 2, 3, 4, 5, 6), None, None, None, None, False)


def test_backend_auto_prefers_a_built_hopper_instance(tmp_path, monkeypatch):
    """lookup_family (the prefill wrappers' backend=): "auto" takes the Hopper family where its
    instance for the call is valid on the device's arch and built, else the Ampere path; a forced
    family that cannot serve the call names why."""
    from flashinfer_gen import common
    hopper_bf16 = InstanceKey("prefill_sm90", "bf16", "bf16", 128, "sm90a", "none")
    hopper_e4m3 = InstanceKey("prefill_sm90", "bf16", "e4m3", 128, "sm90a", "hardware")
    fake_cache(tmp_path, built=[hopper_bf16, hopper_e4m3, InstanceKey("prefill", "bf16", "bf16", 128, "sm90a", "none")])
    reg = Registry(tmp_path)
    monkeypatch.setattr(reg, "lookup", lambda key, jit=None: key)  # the key stands for the loaded module
    monkeypatch.setattr(common, "default_registry", lambda: reg)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    dev, auto = torch.device("cuda", 0), ("prefill_sm90", "prefill")
    pick = lambda kinds, q, kv: common.lookup_family(kinds, dev, q, kv, 128, 0.0, None, False)  # noqa: E731
    assert pick(auto, "bf16", "bf16") == hopper_bf16
    assert pick(auto, "bf16", "e4m3") == hopper_e4m3        # FP8 tiles
    assert pick(auto, "bf16", "e5m2").kind == "prefill"   # valid there but not built: never built implicitly
    assert pick(auto, "f16", "f16").kind == "prefill"
    assert pick(("prefill",), "bf16", "bf16").kind == "prefill"
    # FP8 tiles are valid at head dim 192, but not built here: "auto" takes the Ampere path, and
    # the Hopper family forced looks its instance up (the registry here hands back the key; a real
    # one builds it or names it missing), with the soft-cap as well
    assert common.lookup_family(auto, dev, "bf16", "e4m3", 192, 0.0, None, False).kind == "prefill"
    assert common.lookup_family(("prefill_sm90",), dev, "bf16", "e4m3", 192, 0.0, None, False) == InstanceKey(
        "prefill_sm90", "bf16", "e4m3", 192, "sm90a", "hardware")
    assert common.lookup_family(("prefill_sm90",), dev, "bf16", "e4m3", 192, 30.0, None, False) == InstanceKey(
        "prefill_sm90", "bf16", "e4m3", 192, "sm90a", "hardware", "softcap")
    # valid FP8 tiles with the soft-cap at head dim 256, but not built here: "auto" takes the Ampere path
    assert why_invalid(InstanceKey("prefill_sm90", "bf16", "e4m3", 256, "sm90a", "hardware", "softcap")) is None
    assert common.lookup_family(auto, dev, "bf16", "e4m3", 256, 30.0, None, False).kind == "prefill"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert pick(auto, "bf16", "bf16").kind == "prefill"   # an A100: the Ampere path
    with pytest.raises(V.ArgumentError, match="arch='sm80'"):
        pick(("prefill_sm90",), "bf16", "bf16")


def test_prefill_families():
    """prefill.families: backend="auto" offers the Hopper family's FP8 tiles to an FP8 cache unless
    fp8_tiles=False (then the Ampere path, and backend="sm90" is an ArgumentError naming sm80); an
    FP8 q goes only to the kinds that build one, whatever fp8_tiles says, and a backend with none
    says where it runs."""
    from flashinfer_gen.prefill import FP8_Q_DTYPES, families
    assert FP8_Q_DTYPES == ("e4m3",)
    assert families("auto", "bf16", "bf16", True) == ("prefill_sm90", "prefill")
    assert families("auto", "bf16", "bf16", False) == ("prefill_sm90", "prefill")
    assert families("auto", "bf16", "e4m3", True) == ("prefill_sm90", "prefill")
    assert families("auto", "f16", "e5m2", False) == ("prefill",)
    assert families("sm80", "bf16", "e4m3", True) == ("prefill",)
    assert families("fa3", "bf16", "e4m3", True) == ("prefill_sm90",)
    assert families("auto", "e4m3", "e5m2", True) == ("prefill_sm90",)
    assert families("sm90", "e4m3", "e4m3", False) == ("prefill_sm90",)  # an FP8 q: nothing to quantise
    with pytest.raises(V.ArgumentError, match="backend='sm80' to keep q in 16 bits"):
        families("sm90", "bf16", "e4m3", False)
    with pytest.raises(V.ArgumentError, match="q of dtype torch.float8_e4m3fn runs only on the Hopper"):
        families("sm80", "e4m3", "e4m3", True)


def test_q_and_output_dtype_names():
    """dtype_names / o_dtype_name: a 16-bit q writes its own dtype; an FP8 q (where the caller's
    kinds build one) needs an FP8 cache and writes float16 or bfloat16 (bfloat16 by default)."""
    from flashinfer_gen.common import dtype_names, o_dtype_name
    e4m3, e5m2 = torch.float8_e4m3fn, torch.float8_e5m2
    assert dtype_names(torch.bfloat16, e4m3) == ("bf16", "e4m3")
    assert dtype_names(e4m3, e5m2, ("e4m3",)) == ("e4m3", "e5m2")
    assert dtype_names(e4m3, None, ("e4m3",)) == ("e4m3", "e4m3")
    with pytest.raises(V.ArgumentError, match="float16 or bfloat16, got"):
        dtype_names(e4m3, e4m3)  # decode builds no FP8 q
    with pytest.raises(V.ArgumentError, match="or torch.float8_e4m3fn, got"):
        dtype_names(e5m2, e5m2, ("e4m3",))
    with pytest.raises(V.ArgumentError, match="needs an FP8 KV cache"):
        dtype_names(e4m3, torch.bfloat16, ("e4m3",))
    assert o_dtype_name("bf16", None) == o_dtype_name("bf16", torch.bfloat16) == "same"
    assert o_dtype_name("e4m3", None) == "bf16"
    assert o_dtype_name("e4m3", torch.float16) == "f16" and o_dtype_name("e4m3", "bfloat16") == "bf16"
    with pytest.raises(V.ArgumentError, match="must be q's dtype"):
        o_dtype_name("f16", torch.bfloat16)
    with pytest.raises(V.ArgumentError, match="float16 or bfloat16 for an FP8 q"):
        o_dtype_name("e4m3", e4m3)


def test_cta_unit_lists_cover_every_unit_once_and_balance():
    """prefill.cta_unit_lists (a persistent kernel's per-CTA work): every (item, KV head) unit
    exactly once, encoded item + head x stride; each CTA's units by section of KV heads, longest
    first within one; the CTAs' sums within one unit's cost of each other with one section, within
    2.5 with several (each section's snake starts at the least loaded CTA; 2.43 the worst of 2000
    random trials), on random causal-like batches with fewer, equal and more units than CTAs; then
    the snake itself and the order of ties, on cases built so that a deal without them fails."""
    from flashinfer_gen.prefill import cta_unit_lists, l2_heads_per_section
    gen = np.random.default_rng(5)
    for trial in range(200):
        items, heads = int(gen.integers(1, 60)), int(gen.integers(1, 9))
        ctas = int(gen.integers(1, 140))
        begin = gen.integers(0, 3000, items)
        end = begin + gen.integers(1, 9000, items)
        stride = items + int(gen.integers(0, 5))  # a CUDA-graph plan's capacity may exceed the live items
        for per_section in (None, int(gen.integers(1, heads + 1))):
            indptr, units = cta_unit_lists(begin, end, heads, ctas, 128, stride, per_section)
            assert indptr.size == ctas + 1 and indptr[0] == 0 and indptr[-1] == units.size == items * heads
            assert (np.diff(indptr) >= 0).all()
            item, head = units % stride, units // stride
            assert sorted(zip(item.tolist(), head.tolist())) == [(i, h) for i in range(items) for h in range(heads)]
            cost = end[item] - begin[item] + 128
            section = head // (per_section or heads)
            sums = [int(cost[indptr[c]:indptr[c + 1]].sum()) for c in range(ctas)]
            for c in range(ctas):
                own, own_section = cost[indptr[c]:indptr[c + 1]], section[indptr[c]:indptr[c + 1]]
                assert (np.diff(own_section) >= 0).all(), "a CTA's units section by section"
                assert (np.diff(own)[np.diff(own_section) == 0] <= 0).all(), "longest first within a section"
            if items * heads >= ctas:
                bound = cost.max() * (1 if (per_section or heads) >= heads else 2.5)
                assert max(sums) - min(sums) <= bound, (trial, per_section, max(sums), min(sums), cost.max())
    # the snake itself: 32 items of linearly falling cost on 4 CTAs, 8 laps. Dealt the same way
    # every lap, CTA 0 would get the largest of each (spread 24 x 128); the snake's alternate laps
    # cancel (spread within one lap's, 3 x 128)
    indptr, units = cta_unit_lists(np.zeros(32, int), np.arange(1, 33) * 128, 1, 4, 128, 32)
    cost = 128 * (np.arange(1, 33) + 1)
    sums = [int(cost[units[indptr[c]:indptr[c + 1]]].sum()) for c in range(4)]
    assert max(sums) - min(sums) <= 3 * 128, sums
    # ties: units of equal length go head by head, item by item (so the CTAs running together
    # share KV heads): the first lap gives CTA c the c-th (head, item), the next lap runs back
    indptr, units = cta_unit_lists(np.zeros(5, int), np.full(5, 640), 3, 4, 128, 5)
    firsts = [int(units[indptr[c]]) for c in range(4)]
    assert firsts == [0, 1, 2, 3] and int(units[indptr[3] + 1]) == 4 and int(units[indptr[2] + 1]) == 0 + 1 * 5, units
    # sections whose last lap is partial: that lap goes to the least loaded CTAs, not on in the
    # snake to the most loaded (section after section to the same ones). 8 sections of 176
    # equal units on 132 CTAs (the chunked step's, 192-row tiles): 10-11 units each, not 8-16
    indptr, units = cta_unit_lists(np.zeros(176, int), np.full(176, 8192), 8, 132, 128, 176, 1)
    counts = np.diff(indptr)
    assert counts.min() >= 10 and counts.max() <= 11, (counts.min(), counts.max())
    # B4 S4096, d128, bf16 K and V: 8 MB a KV head; half of a 50 MB L2 holds 3
    assert l2_heads_per_section(np.full(4, 4096), 128, 2, 50 << 20) == 3
    assert l2_heads_per_section(np.full(4, 1 << 20), 256, 2, 50 << 20) == 1
    assert [a.size for a in cta_unit_lists(np.zeros(0, int), np.zeros(0, int), 4, 3, 128, 8)] == [4, 0]


def test_grid_unit_order_runs_sections_then_a_longest_first_tail():
    """A grid of one CTA per unit: every (item, KV head) once, encoded item + head x stride. The
    units outside the tail go section by section of heads_per_section KV heads (the last may hold
    fewer), each item by item in plan()'s order with the section's heads fastest; the tail, run
    last and longest first, is the cheapest units, whose costs add up to the resident CTAs times
    the longest unit's (all of them where the whole grid costs less). With equal costs the order is
    the sections' alone: one section is every head of an item together, sections of one head are
    items fastest."""
    from flashinfer_gen.prefill import grid_unit_order
    gen = np.random.default_rng(5)
    for trial in range(300):
        items, heads = int(gen.integers(1, 40)), int(gen.integers(1, 12))
        stride, per, resident = items + int(gen.integers(0, 5)), int(gen.integers(1, heads + 3)), int(gen.integers(1, 20))
        cost = np.sort(gen.integers(1, 50, items))[::-1] if trial % 3 else np.full(items, 7)
        units = grid_unit_order(cost, heads, stride, per, resident)
        assert units.dtype == np.int32 and units.size == items * heads
        item, head = units % stride, units // stride
        assert (item < items).all() and (head < heads).all()
        assert np.unique(units).size == units.size, "a unit twice"
        unit_cost = cost[item]
        # the tail: the shortest suffix whose costs reach resident x the longest unit's (or the grid)
        from_end = np.cumsum(unit_cost[::-1])
        k = units.size - min(units.size, int(np.searchsorted(from_end, resident * cost.max())) + 1)
        body = np.arange(units.size) < k
        if k:
            assert unit_cost[~body].max() <= unit_cost[body].min(), "the tail is the cheapest units"
        section = head // min(per, heads)
        assert (np.diff(section[body]) >= 0).all(), "sections in turn"
        for s in np.unique(section[body]):
            own = body & (section == s)
            assert (np.diff(item[own]) >= 0).all(), "item by item within a section"
            members = np.arange(s * min(per, heads), min(heads, (s + 1) * min(per, heads)))
            assert np.isin(head[own], members).all()
        assert (np.diff(unit_cost[~body]) <= 0).all(), "the tail longest first"
        if (cost == cost[0]).all():
            sections = np.concatenate([(np.arange(items)[:, None] + np.arange(h0, min(heads, h0 + min(per, heads)))[None, :]
                                        * stride).ravel() for h0 in range(0, heads, min(per, heads))])
            assert np.array_equal(units, sections), "equal costs: the sections' order"
    assert np.array_equal(grid_unit_order(np.full(3, 5), 2, 4, 2, 1), [0, 4, 1, 5, 2, 6])   # every head of an item together
    assert np.array_equal(grid_unit_order(np.full(3, 5), 2, 4, 1, 1), [0, 1, 2, 4, 5, 6])   # items fastest
    # causal-like costs, sections of one head, one resident CTA: the cheapest units whose costs
    # reach 9 (1 + 1 + 2 + 2 + 3) run last, longest first; before them head 0's 9 and 3, then head 1's 9
    assert list(grid_unit_order(np.array([9, 3, 2, 1]), 2, 4, 1, 1)) == [0, 1, 4, 5, 2, 6, 3, 7]
    assert grid_unit_order(np.zeros(0, int), 4, 8, 2, 3).size == 0


def test_cta_unit_lists_weigh_partial_row_tiles_and_deal_the_last_units_greedily():
    """B4 S4096, 32/32 heads, d128 on the Hopper family (192-row tiles, 3 KV heads a section): each
    request's last item has 64 rows, whose unit the kind's unit_cost puts at 0.65 of a full one
    (measured 0.646). With those weights and the greedy last laps, the CTAs' largest sum of the
    measured costs is within 2% of the mean, non-causal and causal (dealt as equal units in the
    snake alone, as before them: 4.8% and 5.4% over), and each CTA's units stay by section,
    costliest first within one. unit_cost gives none where it was not measured (two consumers);
    unit_weights maps GQA-packed rows to row groups."""
    from flashinfer_gen.prefill import cta_unit_lists, item_rows, l2_heads_per_section, make_schedule, unit_weights
    from generator.instances import KINDS
    from generator.keys import InstanceKey
    spec = KINDS["prefill_sm90"]
    key = InstanceKey("prefill_sm90", "bf16", "bf16", 128, "sm90a", "none")
    granule, by_groups = spec.unit_cost(key)
    tile_rows, tile_keys = spec.tiles(key)
    assert (granule, tile_rows) == (64, 192) and np.allclose(by_groups, (0.65, 0.825, 1.0))
    assert spec.unit_cost(InstanceKey("prefill_sm90", "bf16", "bf16", 256, "sm90a", "none")) is None  # 2 consumers
    assert spec.unit_cost(InstanceKey("prefill_sm90", "bf16", "e4m3", 128, "sm90a", "hardware", "softcap")) is None
    assert spec.unit_cost(InstanceKey("prefill_sm90", "bf16", "e4m3", 128, "sm90a", "hardware")) is not None
    assert spec.unit_cost(InstanceKey("prefill_sm90", "e4m3", "e4m3", 128, "sm90a", "hardware", "default",
                                      "bf16")) is not None
    # rows of GQA-packed items (group 4: 48 tokens a 192-row tile) -> 1, 2, 3 row groups
    assert unit_weights((64, (0.65, 0.825, 1.0)), np.array([1, 64, 65, 128, 129, 192])).tolist() == \
        [0.65, 0.65, 0.825, 0.825, 1.0, 1.0]
    assert unit_weights(None, np.array([5])) is None
    qo = kv = np.full(4, 4096)
    measured = np.array((0.646, 0.802, 1.0))
    per = l2_heads_per_section(kv, 128, 2, 50 << 20)
    for causal in (False, True):
        s = make_schedule(qo, kv, 1, causal, -1, 32, 132, tile_rows, tile_keys)
        rows = item_rows(s.row_begin, qo[s.request], tile_rows)
        groups = -(-rows // granule)
        true_cost = (s.kv_end - s.kv_begin + tile_keys) * measured[groups - 1]
        weight = unit_weights((granule, by_groups), rows)
        indptr, units = cta_unit_lists(s.kv_begin, s.kv_end, 32, 132, tile_keys, s.request.size, per, weight)
        assert sorted(units.tolist()) == list(range(s.request.size * 32))
        sums = [true_cost[units[indptr[c]:indptr[c + 1]] % s.request.size].sum() for c in range(132)]
        spread = max(sums) / np.mean(sums)
        dealt_cost = (s.kv_end - s.kv_begin + tile_keys) * weight
        for c in range(132):
            own = units[indptr[c]:indptr[c + 1]]
            section = (own // s.request.size) // per
            assert (np.diff(section) >= 0).all(), "a CTA's units section by section"
            assert (np.diff(dealt_cost[own % s.request.size])[np.diff(section) == 0] <= 0).all(), "costliest first"
        assert spread < 1.02, (causal, spread)
