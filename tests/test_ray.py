"""The Ray backend on a local Ray instance started here (skipped when Ray is not installed).

Ray shards hold whole classes (distributed.class_aligned_shards), so every class is batched as one
process batches it and the merged statistics equal single-process ones bit for bit (see
tests/test_shards.py for why split classes agree only to rounding).
"""

import numpy as np
import pytest

import onnx_damp
from onnx_damp.stats.ray import class_aligned_shards

ray = pytest.importorskip("ray")

from mnist_sample import CALIB, MODEL, TEST, first_per_class


@pytest.fixture(scope="module")
def local_ray():
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def calib():
    return first_per_class(CALIB, 50, keep_order=True)


def test_class_aligned_shards_keep_classes_whole_and_order():
    y = np.array([3, 1, 3, 2, 1, 1, 0, 3, 2, 3])
    parts = class_aligned_shards(y, 2)
    assert len(parts) == 2 and sorted(np.concatenate(parts).tolist()) == list(range(10))
    for p in parts:
        assert np.all(np.diff(p) > 0)  # original order inside a shard
    owners = [{int(c) for c in y[p]} for p in parts]
    assert not owners[0] & owners[1]  # no class in two shards
    assert sorted(len(p) for p in parts) == [5, 5]  # balanced: {3, 0} vs {1, 2}
    assert len(class_aligned_shards(y, 10)) == 4  # never more shards than classes


@pytest.mark.parametrize("forget", [None, [3]], ids=["every-gram", "forget-gram"])
def test_ray_statistics_equal_single_process(local_ray, calib, forget):
    on_ray = onnx_damp.collect(MODEL, calib, forget=forget, ray=True)
    single = onnx_damp.collect(MODEL, calib, forget=forget)
    assert on_ray.samples == single.samples and on_ray.gram_classes == single.gram_classes
    for node, lb in single.layers.items():
        la = on_ray.layers[node]
        assert la.rows == lb.rows and list(la.grams) == list(lb.grams)
        for c in lb.sums:
            np.testing.assert_array_equal(la.sums[c], lb.sums[c])
        for c in lb.grams:
            np.testing.assert_array_equal(la.grams[c], lb.grams[c])
        if forget is None:  # total = class-order sum of per-class Grams: exact
            np.testing.assert_array_equal(la.total_gram, lb.total_gram)
        else:  # total summed per shard, then across shards: another grouping of the same batches
            np.testing.assert_allclose(la.total_gram, lb.total_gram, rtol=1e-12, atol=1e-12 * np.abs(lb.total_gram).max())


def test_forget_on_ray_forgets(local_ray, calib, tmp_path):
    res = onnx_damp.forget(MODEL, calib, [3], output=tmp_path / "e.onnx", eval_data=TEST, ray=True,
                           feature_samples=0)
    assert res.after.forget_accuracy <= 0.02
    assert res.before.retain_accuracy - res.after.retain_accuracy <= 0.01


def test_cli_collect_on_ray_writes_the_single_process_statistics(local_ray, calib, tmp_path):
    from click.testing import CliRunner

    from onnx_damp.cli import main

    data = tmp_path / "calib.npz"
    np.savez(data, x=calib[0], y=calib[1])
    out = tmp_path / "stats.npz"
    r = CliRunner().invoke(main, ["collect", str(MODEL), "--data", str(data), "-o", str(out), "--ray", "-q"])
    assert r.exit_code == 0, r.output
    on_ray, single = onnx_damp.Statistics.load(out), onnx_damp.collect(MODEL, data)
    assert on_ray.provenance == single.provenance
    for node, lb in single.layers.items():
        np.testing.assert_array_equal(on_ray.layers[node].total_gram, lb.total_gram)
