"""LmdbStore: HERO's LMDB video databases (msgpack and npz values), errors, registry.

The databases are written here in HERO's layout (``scripts/convert_videodb.py``): an LMDB
directory ``<img_dir>/resnet_slowfast_1.5`` keyed by video name, values packed by hand as
``msgpack_numpy`` does (and, when installed, by ``msgpack_numpy`` itself), and
``<img_dir>/id2nframe.json``.
"""

from __future__ import annotations

import io
import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

from data_pipelines import didemo
from data_pipelines.annotations import DataError, ParseReport
from data_pipelines.feature_stores import STORES, open_store
from data_pipelines.lmdb_store import LmdbStore


@pytest.fixture(scope="module")
def lmdb():
    reason = "the lmdb package is not installed or not importable (pip install lmdb)"
    return pytest.importorskip("lmdb", reason=reason, exc_type=ImportError)


def msgpack_value(array: np.ndarray) -> bytes:
    """HERO's uncompressed value: ``{"features": array}`` in msgpack_numpy's array map."""
    import msgpack

    packed = {
        b"nd": True,
        b"type": array.dtype.str,
        b"kind": b"",
        b"shape": list(array.shape),
        b"data": array.tobytes(),
    }
    return msgpack.packb({"features": packed}, use_bin_type=True)


def npz_value(array: np.ndarray) -> bytes:
    """HERO's ``--compress`` value: an ``np.savez_compressed`` archive with ``features``."""
    with io.BytesIO() as writer:
        np.savez_compressed(writer, features=array)
        return writer.getvalue()


def write_db(lmdb, img_dir: Path, values: dict[str, bytes], nframes=None) -> Path:
    path = img_dir / "resnet_slowfast_1.5"
    path.mkdir(parents=True)
    env = lmdb.open(str(path), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for key, value in values.items():
            txn.put(key.encode("utf-8"), value)
    env.close()
    if nframes is not None:
        (img_dir / "id2nframe.json").write_text(json.dumps(nframes))
    return path


def test_msgpack_values_read_back_exactly(lmdb, tmp_path):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = -np.ones((2, 4), np.float16)
    keys_entry = json.dumps(["v1", "v2"]).encode()
    path = write_db(
        lmdb, tmp_path, {"v1": msgpack_value(a), "v2": msgpack_value(b), "__keys__": keys_entry}
    )
    store = LmdbStore(path, dim=4)
    assert store.keys() == ["v1", "v2"]
    assert "v1" in store and "v3" not in store
    got = store.get("v1")
    assert got.dtype == np.float32 and got.shape == (3, 4)
    np.testing.assert_array_equal(got, a)
    got = store.get("v2")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.full((2, 4), -1.0))


def test_values_packed_by_msgpack_numpy_itself(lmdb, tmp_path):
    msgpack_numpy = pytest.importorskip(
        "msgpack_numpy", reason="msgpack_numpy not installed", exc_type=ImportError
    )
    import msgpack

    a = np.linspace(0.0, 1.0, 10, dtype=np.float32).reshape(2, 5)
    value = msgpack.dumps({"features": a}, default=msgpack_numpy.encode, use_bin_type=True)
    store = LmdbStore(write_db(lmdb, tmp_path, {"vid": value}), dim=5)
    np.testing.assert_array_equal(store.get("vid"), a)


def test_compressed_npz_values(lmdb, tmp_path):
    a = np.array([[0.5, 1.5, 2.5], [3.0, 4.0, 5.0]], np.float16)
    store = LmdbStore(write_db(lmdb, tmp_path, {"vid": npz_value(a)}), dim=3)
    got = store.get("vid")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, [[0.5, 1.5, 2.5], [3.0, 4.0, 5.0]])


def test_id2nframe_keeps_the_first_rows(lmdb, tmp_path):
    a = np.arange(10, dtype=np.float32).reshape(5, 2)
    path = write_db(
        lmdb, tmp_path, {"v": msgpack_value(a), "w": msgpack_value(a)}, nframes={"v": 2}
    )
    store = LmdbStore(path, dim=2)
    np.testing.assert_array_equal(store.get("v"), [[0, 1], [2, 3]])
    assert store.get("w").shape == (5, 2)  # no count: every row


def test_registered_and_opened_through_the_didemo_spec(lmdb, tmp_path, shared_data_dir):
    assert STORES["lmdb"] is LmdbStore
    annotations = didemo.parse_split(shared_data_dir / "didemo", "val", ParseReport())[:3]
    spec = didemo.FEATURES["resnet_slowfast"].video
    assert spec.layout == "lmdb" and spec.dim == 2048 + 2304
    rng = np.random.default_rng(0)
    arrays = {a.video_id: rng.normal(size=(20, 4352)).astype(np.float32) for a in annotations}
    path = write_db(lmdb, tmp_path / "didemo", {k: msgpack_value(v) for k, v in arrays.items()})
    store = spec.open(path)
    for a in annotations:
        np.testing.assert_array_equal(store.get(spec.key(a)), arrays[a.video_id])
    # 20 clips of 1.5 s: the last one ends at 30 s.
    np.testing.assert_allclose(spec.clip_times(20, a.duration_s)[-1], [28.5, 30.0])
    copy = pickle.loads(pickle.dumps(store))
    np.testing.assert_array_equal(
        copy.get(annotations[0].video_id), arrays[annotations[0].video_id]
    )
    assert isinstance(open_store("lmdb", path, dim=4352), LmdbStore)


@pytest.mark.parametrize(
    "value, dim, words",
    [
        (msgpack_value(np.ones((2, 3), np.float32)), 4, "expected width 4"),
        (msgpack_value(np.array([[1.0, np.nan]], np.float32)), 2, "non-finite"),
        (msgpack_value(np.zeros((0, 2), np.float32)), 2, "no row"),
        (msgpack_value(np.ones(3, np.float32)), None, "[T, D]"),
        (msgpack_value(np.ones((2, 2), np.int32)), 2, "floating"),
        (b"\x81\xa8features\xc4\x03abc", 2, "corrupt value"),
        (b"\xc1\xc1garbage", 2, "corrupt value"),
        (msgpack_value(np.ones((2, 2), np.float32))[:-5], 2, "corrupt value"),
        (npz_value(np.ones((2, 2), np.float32))[:40], 2, "corrupt value"),
    ],
)
def test_bad_values_name_the_key(lmdb, tmp_path, value, dim, words):
    store = LmdbStore(write_db(lmdb, tmp_path, {"bad_vid": value}), dim=dim)
    with pytest.raises(DataError, match="bad_vid") as err:
        store.get("bad_vid")
    assert words in str(err.value)


def test_missing_key_lists_some_keys(lmdb, tmp_path):
    store = LmdbStore(write_db(lmdb, tmp_path, {"a": msgpack_value(np.ones((1, 2), np.float32))}))
    with pytest.raises(DataError, match="'zz'.*not in the database.*1 keys"):
        store.get("zz")


def test_missing_empty_and_truncated_databases(lmdb, tmp_path):
    with pytest.raises(DataError, match="no such LMDB"):
        LmdbStore(tmp_path / "absent")
    (tmp_path / "no_data").mkdir()
    with pytest.raises(DataError, match="no data.mdb"):
        LmdbStore(tmp_path / "no_data")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "data.mdb").write_bytes(b"")
    with pytest.raises(DataError, match="empty file"):
        LmdbStore(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "data.mdb").write_bytes(b"x" * 5000)
    with pytest.raises(DataError, match="not an LMDB"):
        LmdbStore(tmp_path / "other")

    big = np.ones((300, 64), np.float32)  # a value spilling over several pages
    path = write_db(lmdb, tmp_path / "good", {"v": msgpack_value(big)})
    data = (path / "data.mdb").read_bytes()
    for cut in (100, len(data) // 2, len(data) - 1):
        (path / "data.mdb").write_bytes(data[:cut])
        with pytest.raises(DataError, match="truncated"):
            LmdbStore(path)
    (path / "data.mdb").write_bytes(data)
    np.testing.assert_array_equal(LmdbStore(path / "data.mdb", dim=64).get("v"), big)


def test_malformed_id2nframe(lmdb, tmp_path):
    path = write_db(lmdb, tmp_path, {"v": msgpack_value(np.ones((2, 2), np.float32))})
    (tmp_path / "id2nframe.json").write_text("{not json")
    with pytest.raises(DataError, match="id2nframe.json.*malformed JSON"):
        LmdbStore(path).get("v")


def test_without_lmdb_the_error_says_pip_install(tmp_path, monkeypatch):
    # A valid-looking data.mdb is not needed: the package is missing before anything is read.
    db = tmp_path / "resnet_slowfast_1.5"
    db.mkdir()
    meta = bytearray(8192)
    for page in (0, 4096):
        meta[page + 16 : page + 20] = (0xBEEFC0DE).to_bytes(4, "little")
        meta[page + 40 : page + 44] = (4096).to_bytes(4, "little")
    (db / "data.mdb").write_bytes(bytes(meta))
    monkeypatch.setitem(sys.modules, "lmdb", None)
    store = LmdbStore(db)
    with pytest.raises(ImportError, match="pip install lmdb"):
        store.keys()


def test_stores_over_one_database_share_its_environment(lmdb, tmp_path):
    a = np.ones((2, 3), np.float32)
    path = write_db(lmdb, tmp_path, {"v": msgpack_value(a)})
    first, second = LmdbStore(path, dim=3), LmdbStore(path / "data.mdb", dim=3)
    np.testing.assert_array_equal(first.get("v"), a)
    np.testing.assert_array_equal(second.get("v"), a)
    first.close()
    np.testing.assert_array_equal(second.get("v"), a)
    second.close()
    np.testing.assert_array_equal(LmdbStore(path).get("v"), a)  # reopened after the last close
