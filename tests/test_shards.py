"""Calibration at scale: statistics saved per shard, merged exactly, and used by forget --stats.

Exactness. A shard's statistics are float64 sums over its batches. When shards are class-aligned
(every class wholly in one shard, in its original order) each class is batched exactly as one
process batches it, so its sums, row counts and Gram are the same numbers, and the total Gram is
defined as the class-order sum of per-class Grams: merged == single process, bit for bit
(assert_array_equal). When a class is split across shards its batches differ and its partial sums
are added in another grouping ((b1+b2)+b3 vs b1+(b2+b3)), so agreement is to float64 rounding:
relative 1e-12 of the largest entry (observed ~1e-16), with row and sample counts still exact.
"""
from dataclasses import replace

import numpy as np
import onnx
import pytest

import onnx_damp
from onnx_damp import DampError
from onnx_damp.stats.shards import merge
from onnx_damp.stats.statistics import load_statistics
from onnx_damp.options import MethodOptions

from mnist_sample import CALIB, MODEL, REF as OTHER_MODEL, TEST, first_per_class, invoke


@pytest.fixture(scope="module")
def calib():
    """50 samples per class of the shipped calibration set, in their original (shuffled) order."""
    return first_per_class(CALIB, 50, keep_order=True)


@pytest.fixture(scope="module")
def single(calib):
    return onnx_damp.collect(MODEL, calib)


def _part(calib, mask):
    x, y = calib
    return x[mask], y[mask]


def assert_stats_equal(a, b, exact=True):
    assert a.samples == b.samples
    assert list(a.layers) == list(b.layers)
    assert a.feature_mode == b.feature_mode and a.token_layouts == b.token_layouts
    assert a.gram_classes == b.gram_classes
    for node in b.layers:
        la, lb = a.layers[node], b.layers[node]
        assert la.feature_dim == lb.feature_dim and la.rows == lb.rows
        assert list(la.sums) == list(lb.sums) and list(la.grams) == list(lb.grams)
        pairs = [(la.sums[c], lb.sums[c]) for c in lb.sums] + [(la.grams[c], lb.grams[c]) for c in lb.grams]
        pairs.append((la.total_gram, lb.total_gram))
        for u, v in pairs:
            assert u.dtype == np.float64 and v.dtype == np.float64
            if exact:
                np.testing.assert_array_equal(u, v)
            else:
                # other batch boundaries: each batch is reduced in float32 inside onnxruntime (around its
                # own mean), so sums over ~10^5 rows agree to a few 1e-5
                np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-5 * np.abs(v).max())


def test_save_load_round_trip_is_exact(tmp_path, single):
    path = single.save(tmp_path / "stats.npz")
    back = onnx_damp.Statistics.load(path)
    assert_stats_equal(back, single, exact=True)
    assert back.provenance == single.provenance and back.path == path
    p = back.provenance
    assert p.input_name == "input" and p.preprocessing == "npz" and p.num_outputs == 10
    assert len(p.model_sha256) == 64 and len(p.graph_sha256) == 64
    # operators reading the same activation share one LayerStats, in memory and after loading
    shared = lambda st: sorted(len([n for n in st.layers if st.layers[n] is ls]) for ls in  # noqa: E731
                               {id(v): v for v in st.layers.values()}.values())
    assert shared(back) == shared(single)
    with np.load(path, allow_pickle=False) as z:  # plain arrays and one JSON string: no pickle anywhere
        assert all(z[k].dtype != object for k in z.files)


def test_save_adds_npz_suffix(tmp_path, single):
    assert single.save(tmp_path / "stats_1").endswith("stats_1.npz")


def test_merge_of_class_aligned_shards_equals_single_collect_exactly(calib, single):
    _, y = calib
    low = y < 5
    shards = [onnx_damp.collect(MODEL, _part(calib, low)), onnx_damp.collect(MODEL, _part(calib, ~low))]
    merged = merge(shards)
    assert_stats_equal(merged, single, exact=True)
    # the order of the shards does not matter either: every class comes from one shard
    assert_stats_equal(merge(shards[::-1]), single, exact=True)


def test_merge_of_halves_equals_single_collect_to_rounding(calib, single):
    _, y = calib
    even = np.arange(len(y)) % 2 == 0  # every class split across both shards
    merged = merge([onnx_damp.collect(MODEL, _part(calib, even)), onnx_damp.collect(MODEL, _part(calib, ~even))])
    assert_stats_equal(merged, single, exact=False)


def test_merge_refuses_another_model(calib, single):
    other = onnx_damp.collect(OTHER_MODEL, calib)
    other.path = "stats_other.npz"
    with pytest.raises(DampError, match=r"shard 1 \(stats_other.npz\) was collected from a different model") as e:
        merge([single, other])
    assert "\n" not in str(e.value)


def test_merge_refuses_another_feature_mode(calib, single):
    pooled = onnx_damp.collect(MODEL, calib, feature_mode="pooled")
    with pytest.raises(DampError, match="shard 1 has feature mode 'pooled'") as e:
        merge([single, pooled])
    assert "\n" not in str(e.value)


def test_merge_refuses_other_preprocessing_and_kept_grams(single):
    other = replace(single, provenance=replace(single.provenance, preprocessing="resize256-crop224"), path="b.npz")
    with pytest.raises(DampError, match=r"shard 1 \(b.npz\) used preprocessing 'resize256-crop224'"):
        merge([single, other])
    with pytest.raises(DampError, match="shard 2 kept second moments for classes \\[3\\]"):
        merge([single, single, replace(single, gram_classes=[3])])


def test_load_refuses_other_npz(tmp_path):
    np.savez(tmp_path / "data.npz", x=np.zeros(3), y=np.zeros(3))
    with pytest.raises(DampError, match="not an onnx-damp statistics file"):
        load_statistics(tmp_path / "data.npz")


def test_collect_with_forget_keeps_only_those_grams(tmp_path, calib, single):
    st = onnx_damp.collect(MODEL, calib, forget=[3])
    assert st.gram_classes == [3]
    for node, ls in st.layers.items():
        assert list(ls.grams) == [3]
        np.testing.assert_array_equal(ls.sums[3], single.layers[node].sums[3])
        np.testing.assert_array_equal(ls.grams[3], single.layers[node].grams[3])
    path = st.save(tmp_path / "s.npz")
    with pytest.raises(DampError, match=r"second moments only for classes \[3\], not for \[5\]"):
        onnx_damp.forget(MODEL, None, [5], stats=[path], eval_data=TEST, feature_samples=0)


def test_forget_refuses_statistics_of_another_model(tmp_path, calib):
    path = onnx_damp.collect(OTHER_MODEL, calib, tmp_path / "other.npz").path
    with pytest.raises(DampError, match="collected from another model"):
        onnx_damp.forget(MODEL, None, [3], stats=[path], eval_data=TEST, feature_samples=0)


def test_forget_expands_a_quoted_glob_of_statistics(tmp_path, calib, single):
    _, y = calib
    low = y < 5
    onnx_damp.collect(MODEL, _part(calib, low), tmp_path / "stats_0.npz")
    onnx_damp.collect(MODEL, _part(calib, ~low), tmp_path / "stats_1.npz")
    res = onnx_damp.forget(MODEL, None, [3], stats=str(tmp_path / "stats_*.npz"), eval_data=calib, max_passes=1,
                           feature_samples=0)
    assert res.calibration_samples == single.num_samples
    assert len(res.notes) == 1 and "one DAMP pass of the default plan" in res.notes[0]
    st = res.to_dict()["statistics"]
    assert st["samples"] == 500 and st["sources"] == ["<memory>", "<memory>"] and st["gram_classes"] is None
    assert st["model_sha256"] == single.provenance.model_sha256 and st["preprocessing"] == "npz"


def test_forget_with_stats_needs_data_or_eval_data(tmp_path, single):
    path = single.save(tmp_path / "s.npz")
    with pytest.raises(DampError, match="needs --eval-data"):
        onnx_damp.forget(MODEL, None, [3], stats=[path])
    with pytest.raises(DampError, match="same --features"):
        onnx_damp.forget(MODEL, None, [3], stats=[path], eval_data=TEST, feature_mode="pooled")


def test_forget_with_stats_pass_one_equals_forget_with_data(tmp_path, calib):
    """Pass 1 from saved statistics edits exactly as pass 1 from the same data does.

    forget keeps the Gram of the forget classes only, so the statistics are collected with forget=[3]
    (with every class's Gram the retain moments are summed differently: equal to rounding only).
    """
    x, y = calib
    path = onnx_damp.collect(MODEL, calib, tmp_path / "s.npz", forget=[3]).path
    a = onnx_damp.forget(MODEL, None, [3], stats=[path], eval_data=(x, y), feature_samples=0)
    # the same plan from data: no held-out part (the statistics hold every image), no candidates, no readout
    b = onnx_damp.forget(MODEL, (x, y), [3], max_passes=1, feature_samples=0, holdout=0.0, candidates=False,
                         readout=False)
    assert len(a.passes) == 1 and a.notes and "one DAMP pass" in a.notes[0]
    assert a.passes[0].calib_forget_accuracy is None
    for pa, pb in zip(a.passes[0].plans, b.passes[0].plans):
        assert pa.alpha == pb.alpha
        np.testing.assert_allclose(pa.q, pb.q, rtol=0, atol=1e-12)
    wa = {t.name: onnx.numpy_helper.to_array(t) for t in a.model.graph.initializer}
    wb = {t.name: onnx.numpy_helper.to_array(t) for t in b.model.graph.initializer}
    assert all(np.array_equal(wa[n], wb[n]) for n in wb)


# --------------------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def shard_files(tmp_path_factory, calib):
    folder = tmp_path_factory.mktemp("shards")
    x, y = calib
    paths = []
    for k, mask in enumerate([y < 5, y >= 5]):
        p = folder / f"data_{k}.npz"
        np.savez(p, x=x[mask], y=y[mask])
        paths.append(p)
    return paths


def test_cli_collect_then_forget_with_stats_forgets(tmp_path, shard_files):
    stats = []
    for k, data in enumerate(shard_files):
        out = tmp_path / f"stats_{k}.npz"
        r = invoke("collect", MODEL, "--data", data, "-o", out, "-q")
        assert r.exit_code == 0, r.output
        assert f"wrote {out}: 250 samples" in r.output
        stats.append(out)
    edited = tmp_path / "edited.onnx"
    # `--stats stats_*.npz` as the shell expands it: the files after the first are extra arguments
    r = invoke("forget", MODEL, "--stats", stats[0], stats[1], "--forget", 3, "-o", edited,
               "--eval-data", TEST, "--feature-samples", 0, "-q")
    assert r.exit_code == 0, r.output
    assert "note: statistics given without --data: one DAMP pass" in r.output
    ev = onnx_damp.evaluate(edited, TEST, [3], original=MODEL, feature_samples=0)
    assert ev.summary.forget_accuracy <= 0.02
    assert ev.original.retain_accuracy - ev.summary.retain_accuracy <= 0.01


def test_forget_with_stats_and_data_recollects_later_passes_on_data(tmp_path, shard_files):
    """Pass 1 uses the statistics; pass 2 re-collects on the fit part of --data (on the edited model)."""
    from onnx_damp.data.dataset import load_npz
    from onnx_damp.ops.graph import scan_graph
    from onnx_damp.runtime.modelio import load_model
    from onnx_damp.stats.collector import collect
    from onnx_damp.method.pipeline import damp_edit

    data = load_npz(shard_files[0])
    proto = load_model(MODEL)
    ops = scan_graph(proto).editable
    stats = collect(proto, ops, data, [3])
    calls = []

    def spy(model, ops_, d, *args, **kwargs):
        calls.append(len(d))
        return collect(model, ops_, d, *args, **kwargs)

    out = damp_edit(proto, ops, data, [3], [0, 1, 2, 4], MethodOptions(max_passes=2, target_forget_accuracy=-1.0),
                    first_stats=stats, collector=spy)  # the target is never reached: pass 2 always runs
    assert calls == [200]  # 250 images, one in five held out
    assert any("statistics were given" in n for n in out.notes)


def test_cli_forget_stats_errors_are_one_line(tmp_path, shard_files):
    r = invoke("forget", MODEL, "--forget", 3, "-o", tmp_path / "e.onnx")
    assert r.exit_code == 2 and "error: no calibration data: give --data, --stats, or both" in r.output
    r = invoke("forget", MODEL, "stray.npz", "--data", shard_files[0], "--forget", 3, "-o", tmp_path / "e.onnx")
    assert r.exit_code == 2 and "error: unexpected argument(s) stray.npz: only --stats takes several" in r.output
    r = invoke("forget", MODEL, "--stats", tmp_path / "nothing_*.npz", "--forget", 3, "-o", tmp_path / "e.onnx",
               "--eval-data", TEST)
    assert r.exit_code == 2 and "error: no statistics file matches" in r.output
    other = tmp_path / "other.npz"
    assert invoke("collect", OTHER_MODEL, "--data", shard_files[0], "-o", other, "-q").exit_code == 0
    mine = tmp_path / "mine.npz"
    assert invoke("collect", MODEL, "--data", shard_files[1], "-o", mine, "-q").exit_code == 0
    r = invoke("forget", MODEL, "--stats", mine, "--stats", other, "--forget", 3, "-o", tmp_path / "e.onnx",
               "--eval-data", TEST)
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: shard 1 ({other}) was collected from a different model")
    r = invoke("collect", MODEL, "--data", shard_files[0], "-o", tmp_path / "missing" / "s.npz")
    assert r.exit_code == 2 and "does not exist" in r.output


def test_ray_flag_without_ray_is_one_line(monkeypatch, tmp_path, shard_files):
    import builtins
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    r = invoke("collect", MODEL, "--data", shard_files[0], "-o", tmp_path / "s.npz", "--ray", "-q")
    assert r.exit_code == 2 and "pip install 'onnx-damp[ray]'" in r.output, r.output


def test_collect_refuses_every_class_gram_above_the_limit(monkeypatch, calib):
    import onnx_damp.api as api

    monkeypatch.setattr(api, "GRAM_LIMIT", 1000)
    with pytest.raises(DampError, match="pass --forget with the classes you will forget"):
        onnx_damp.collect(MODEL, calib)
    assert onnx_damp.collect(MODEL, calib, forget=[3]).gram_classes == [3]  # --forget is not limited


def test_statistics_do_not_depend_on_the_number_of_threads(monkeypatch, calib):
    """Ray tasks run onnxruntime with the CPUs they were given: the thread count must not change a bit."""
    from onnx_damp.runtime import session as runtime

    _, y = calib
    part = _part(calib, y < 3)
    monkeypatch.setattr(runtime, "INTRA_OP_THREADS", 1)
    one = onnx_damp.collect(MODEL, part)
    monkeypatch.setattr(runtime, "INTRA_OP_THREADS", 2)
    two = onnx_damp.collect(MODEL, part)
    assert_stats_equal(one, two, exact=True)
