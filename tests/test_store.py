"""The feature store (`gradalign.gradients.store`): append, reopen, resume after a kill, metadata checks, growth."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from numpy.lib.format import open_memmap

from gradalign.gradients.store import FEATURES, META, FeatureStore, model_hash

META_IN = {"model": "tiny", "model_hash": "abc123", "round": 3, "step": 24, "kind": "factored", "seed": 0, "dim": 8}


def rows(n: int, start: int = 0, dim: int = 8) -> tuple[list[str], np.ndarray]:
    ids = [f"p{i}" for i in range(start, start + n)]
    feats = np.arange(start * dim, (start + n) * dim, dtype=np.float64).reshape(n, dim) / 7
    return ids, feats


def test_append_reopen_load(tmp_path):
    store = FeatureStore.create(tmp_path / "s", META_IN, capacity=10)
    ids, feats = rows(4)
    store.append(ids, feats)
    store.append(*rows(3, start=4))
    again = FeatureStore.open(tmp_path / "s", expect=META_IN)
    got_ids, got = again.load()
    assert got_ids == [f"p{i}" for i in range(7)]
    assert got.dtype == np.float32 and got.shape == (7, 8)
    assert isinstance(got, np.memmap)
    np.testing.assert_array_equal(got, np.concatenate([feats, rows(3, 4)[1]]).astype(np.float32))
    assert again.done_ids() == set(got_ids)
    meta = json.loads((tmp_path / "s" / META).read_text())
    assert meta["ids"] == got_ids and meta["count"] == 7 and meta["dtype"] == "float32"
    assert {k: meta[k] for k in META_IN} == META_IN
    header = open_memmap(tmp_path / "s" / FEATURES, mode="r")
    assert header.dtype == np.float32 and header.shape == (10, 8)


def test_torch_features_and_float32(tmp_path):
    store = FeatureStore.create(tmp_path / "t", META_IN, capacity=2)
    store.append(["a", "b"], torch.randn(2, 8, dtype=torch.float64))
    _, got = store.load()
    assert got.dtype == np.float32


def test_resume_after_kill_between_rows_and_metadata(tmp_path, monkeypatch):
    """Rows written but metadata not updated (killed in between): those rows are not trusted and are recomputed."""
    path = tmp_path / "s"
    store = FeatureStore.create(path, META_IN, capacity=10)
    store.append(*rows(3))
    import gradalign.gradients.store as store_module

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed before the metadata was written")

    monkeypatch.setattr(store_module, "write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        store.append(*rows(4, start=3))
    monkeypatch.undo()
    # The rows hit the disk ...
    raw = open_memmap(path / FEATURES, mode="r")
    np.testing.assert_array_equal(raw[3:7], rows(4, start=3)[1].astype(np.float32))
    # ... but a resumed run does not count them.
    resumed = FeatureStore.open(path, expect=META_IN)
    assert resumed.done_ids() == {"p0", "p1", "p2"}
    assert resumed.load()[1].shape == (3, 8)
    todo = [f"p{i}" for i in range(7) if f"p{i}" not in resumed.done_ids()]
    assert todo == ["p3", "p4", "p5", "p6"]
    ids, feats = rows(4, start=3)
    resumed.append(ids, feats + 1)  # recomputed values overwrite the untrusted rows
    got_ids, got = FeatureStore.open(path).load()
    assert got_ids == [f"p{i}" for i in range(7)]
    np.testing.assert_array_equal(got[3:], (feats + 1).astype(np.float32))


def test_kill_while_rows_are_written_leaves_the_store_valid(tmp_path, monkeypatch):
    path = tmp_path / "s"
    store = FeatureStore.create(path, META_IN, capacity=4)
    store.append(*rows(2))
    before = (path / META).read_text()

    class HalfWritten:  # the kill lands while rows are being written: the first row is on disk, then it stops
        def __init__(self, array):
            self.array, self.shape = array, array.shape

        def __setitem__(self, key, value):
            self.array[key.start] = value[0]
            raise KeyboardInterrupt

    store._array = HalfWritten(store._array)
    with pytest.raises(KeyboardInterrupt):
        store.append(*rows(2, start=2))
    assert (path / META).read_text() == before
    assert FeatureStore.open(path, expect=META_IN).done_ids() == {"p0", "p1"}


def test_metadata_mismatch_is_one_line_naming_file_and_key(tmp_path):
    path = tmp_path / "s"
    FeatureStore.create(path, META_IN, capacity=2)
    with pytest.raises(ValueError) as err:
        FeatureStore.open(path, expect={**META_IN, "seed": 1})
    msg = str(err.value)
    assert "\n" not in msg and str(path / META) in msg and "'seed'" in msg and "expected 1" in msg
    with pytest.raises(ValueError, match="'round' is 3, expected 4"):
        FeatureStore.open(path, expect={"kind": "factored", "round": 4, "seed": 0})  # first mismatching key
    with pytest.raises(ValueError, match="has no 'fraction'"):
        FeatureStore.open(path, expect={"fraction": 0.1})
    with pytest.raises(ValueError, match="no feature store"):
        FeatureStore.open(tmp_path / "missing")
    # tuples / numpy numbers compare as their JSON form
    FeatureStore.open(path, expect={"dim": np.int64(8), "round": 3})


def test_create_refuses_bad_metadata_and_existing_store(tmp_path):
    with pytest.raises(ValueError, match="needs seed"):
        FeatureStore.create(tmp_path / "a", {"model": "m", "kind": "dense", "dim": 4}, capacity=1)
    with pytest.raises(ValueError, match="maintained by the store"):
        FeatureStore.create(tmp_path / "b", {**META_IN, "ids": []}, capacity=1)
    FeatureStore.create(tmp_path / "c", META_IN, capacity=1)
    with pytest.raises(ValueError, match="already exists"):
        FeatureStore.create(tmp_path / "c", META_IN, capacity=1)
    store = FeatureStore.open_or_create(tmp_path / "c", META_IN, capacity=1)
    assert store.count == 0
    with pytest.raises(ValueError, match="'kind'"):
        FeatureStore.open_or_create(tmp_path / "c", {**META_IN, "kind": "dense"}, capacity=1)


def test_append_checks_shapes_and_duplicates(tmp_path):
    store = FeatureStore.create(tmp_path / "s", META_IN, capacity=4)
    with pytest.raises(ValueError, match=r"\[2, 8\]"):
        store.append(["a", "b"], np.zeros((2, 7)))
    store.append(["a"], np.zeros((1, 8)))
    with pytest.raises(ValueError, match="'a' already has features"):
        store.append(["b", "a"], np.zeros((2, 8)))
    with pytest.raises(ValueError, match="'c' already"):
        store.append(["c", "c"], np.zeros((2, 8)))
    assert store.done_ids() == {"a"}


def test_capacity_grows_or_errors_clearly(tmp_path):
    store = FeatureStore.create(tmp_path / "g", META_IN, capacity=2)
    store.append(*rows(2))
    store.append(*rows(3, start=2))  # grows: 2 -> max(4, 5) rows
    assert store.capacity >= 5
    ids, got = FeatureStore.open(tmp_path / "g", expect=META_IN).load()
    assert ids == [f"p{i}" for i in range(5)]
    np.testing.assert_array_equal(got, rows(5)[1].astype(np.float32))
    fixed = FeatureStore.create(tmp_path / "f", META_IN, capacity=2, grow=False)
    fixed.append(*rows(2))
    with pytest.raises(ValueError, match="store is full \\(2 rows, 2 used\\)"):
        fixed.append(*rows(1, start=2))
    assert fixed.done_ids() == {"p0", "p1"}


def test_model_hash_tracks_weights():
    from test_gradients import make_model
    a, b = make_model(tie=True, seed=0), make_model(tie=True, seed=0)
    assert model_hash(a) == model_hash(b)
    with torch.no_grad():
        next(b.parameters()).add_(1e-3)
    assert model_hash(a) != model_hash(b)


def test_projected_features_round_trip(tmp_path):
    """The intended use: features of a batch, with the projector's metadata, resumed problem by problem."""
    from test_gradients import make_model
    from test_onepass import random_rollouts

    from gradalign.gradients.projections import get_projector
    from gradalign.gradients.surrogate import SurrogateBatch
    model = make_model(tie=True, seed=1)
    rollouts = random_rollouts(5, vocab=model.config.vocab_size, n_problems=6)
    batch = SurrogateBatch(rollouts, rollouts.advantages("none"))
    projector = get_projector("factored", 48, seed=2)
    feats = projector.features(model, batch)
    meta = {"model": "test", "model_hash": model_hash(model), "round": 0, **projector.metadata()}
    store = FeatureStore.create(tmp_path / "round-0", meta, capacity=3)
    store.append(rollouts.problem_ids[:3], feats[:3])
    again = FeatureStore.open_or_create(tmp_path / "round-0", meta, capacity=3)
    todo = [i for i, pid in enumerate(rollouts.problem_ids) if pid not in again.done_ids()]
    again.append([rollouts.problem_ids[i] for i in todo], feats[todo])
    ids, got = again.load()
    assert ids == rollouts.problem_ids
    np.testing.assert_array_equal(got, feats.numpy().astype(np.float32))
