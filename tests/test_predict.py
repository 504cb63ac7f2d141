"""``vmr-jax predict``: predictions of a trained MGPN workdir equal ``vmr-jax eval``'s; FVMR's
gallery path equals the forward pass and ``vmr-jax eval`` and is reused; the user's own
feature / query files equal the same videos and queries read from the split; bad input."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import jax
import ml_collections
import numpy as np
import pytest

from data_pipelines.input_pipeline import TextInputs
from vmr_jax import checkpointing, config_cli, main, predict, sharding, trainer
from vmr_jax import predictor as predictor_module
from vmr_jax.models import get_family
from vmr_jax.retrieval import gallery
from vmr_jax.text.tokenizer import Vocabulary

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "mgpn" / "synthetic.py")

pytestmark = pytest.mark.usefixtures("jax_compilation_cache")


def tiny_config(family: str, text_mode: str = "features") -> ml_collections.ConfigDict:
    """The synthetic runlocal config with ``family``'s tiny model and ``text_mode``."""
    config = config_cli.load_config_file(f"{CONFIG}:runlocal")
    config.unlock()
    model = dict(get_family(family).variants["tiny"], name=family)
    if text_mode == "tokens":
        model["vocab_size"] = 100  # > the synthetic vocabulary (64 words + 2 reserved)
    config.model = ml_collections.ConfigDict(model)
    config.data.text_mode = text_mode
    config.data.num_input_clips = model["num_clips"] * model["frame_stride"]
    config.data.synthetic.feature_dim = model["feature_dim"]
    config.data.synthetic.word_dim = model["word_dim"]
    config.evals.batch_size = 16
    config.lock()
    return config


def make_workdir(path: Path, family: str, text_mode: str = "features", step: int = 3) -> Path:
    """A workdir with ``config.json`` and one checkpoint of initial weights (FVMR: common-space
    MLPs scaled up so scores spread over (0, 1))."""
    config = tiny_config(family, text_mode)
    checkpointing.save_config(config, str(path))
    mesh = sharding.make_mesh(config.mesh)
    data = trainer.DataSources(config)
    model = trainer.create_model(config.model)
    tx, _ = trainer.family_optimizer(config, data.steps_per_epoch())
    rng = jax.random.split(jax.random.PRNGKey(int(config.train.seed)))[0]
    state = trainer.create_train_state(config, model, rng, data.sample_batch(), mesh, tx=tx)
    if family == "fvmr":
        params = jax.tree.map(np.array, state.params)
        params["phi_m"]["fc2"]["kernel"] *= 6.0
        params["phi_s"]["fc2"]["kernel"] *= 8.0
        state = state.replace(params=jax.device_put(params, sharding.replicated(mesh)))
    manager = checkpointing.create_checkpoint_manager(str(path), config.train)
    checkpointing.save(manager, step, state)
    manager.wait_until_finished()
    manager.close()
    return path


def read(path) -> dict:
    return json.loads(Path(path).read_text())


def assert_same_moments(got: list, want: list, rtol: float = 1e-5):
    assert [g["query_id"] for g in got] == [w["query_id"] for w in want]
    for g, w in zip(got, want):
        assert g["video_id"] == w["video_id"]
        g_m, w_m = np.array(g["moments"]), np.array(w["moments"])
        assert g_m.shape == w_m.shape, g["query_id"]
        np.testing.assert_array_equal(g_m[:, :2], w_m[:, :2], err_msg=g["query_id"])
        np.testing.assert_allclose(g_m[:, 2], w_m[:, 2], rtol=rtol, err_msg=g["query_id"])


def eval_lines(workdir: Path, step: int) -> list:
    lines = (workdir / "eval" / f"val_step{step}_predictions.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines]


@pytest.mark.slow
def test_cli_round_trip_on_a_trained_mgpn_workdir(tmp_path, capsys):
    workdir = tmp_path / "mgpn"
    flags = ["--config.train.num_steps=2", "--config.train.progress_bar=false"]
    assert (
        main.main(["train", "--config", f"{CONFIG}:runlocal", "--workdir", str(workdir), *flags])
        == 0
    )
    assert main.main(["predict", "--workdir", str(workdir)]) == 0
    assert f"predictions: {workdir / 'predict' / 'val_step2.json'}" in capsys.readouterr().out
    out = read(workdir / "predict" / "val_step2.json")
    assert out["format"] == predict.FORMAT and out["time_unit"] == "seconds"
    assert (out["model"], out["method"], out["source"], out["step"]) == (
        "mgpn",
        "forward",
        {"split": "val"},
        2,
    )
    assert (out["top_k"], out["nms_thresh"]) == (5, 0.45)  # max(evals.recalls), evals.nms_thresh
    assert out["num_queries"] == len(out["predictions"]) == 24
    assert main.main(["eval", "--workdir", str(workdir)]) == 0
    assert_same_moments(out["predictions"], eval_lines(workdir, 2), rtol=0)
    for entry in out["predictions"]:
        moments = np.array(entry["moments"])
        assert len(moments) == 5 and (np.diff(moments[:, 2]) <= 0).all()
        assert (0 <= moments[:, 0]).all() and (moments[:, 1] <= entry["duration"] + 1e-4).all()


def test_fvmr_gallery_equals_the_forward_pass_and_eval(tmp_path, monkeypatch):
    workdir = make_workdir(tmp_path / "fvmr", "fvmr")
    assert main.main(["predict", "--workdir", str(workdir)]) == 0
    via_gallery = read(workdir / "predict" / "val_step3.json")
    assert via_gallery["method"] == "gallery"
    saved = gallery.Gallery.load(workdir / "gallery" / "val_step3", sharding.make_mesh({}))
    assert saved.metadata["step"] == 3 and saved.num_videos == 6  # runlocal val videos
    forward = tmp_path / "forward.json"
    argv = ["predict", "--workdir", str(workdir), "--method", "forward", "--output", str(forward)]
    assert main.main(argv) == 0
    assert read(forward)["method"] == "forward"
    assert_same_moments(via_gallery["predictions"], read(forward)["predictions"])
    assert main.main(["eval", "--workdir", str(workdir)]) == 0
    assert_same_moments(via_gallery["predictions"], eval_lines(workdir, 3))

    # The next call reuses the saved gallery; another top_k needs no new gallery either.
    def no_build(*args, **kwargs):
        raise AssertionError("the gallery was rebuilt")

    monkeypatch.setattr(gallery, "build_gallery", no_build)
    again = predict.predict_workdir(str(workdir), top_k=2, output=str(tmp_path / "k2.json"))
    assert again["gallery"] == str(workdir / "gallery" / "val_step3")
    for entry, full in zip(read(tmp_path / "k2.json")["predictions"], via_gallery["predictions"]):
        assert entry["moments"] == full["moments"][:2]


def write_own_files(workdir: Path, tmp_path: Path, kind: str) -> tuple[Path, Path]:
    """The val split's raw videos and texts as the user's own files."""
    data = trainer.DataSources(checkpointing.load_config(str(workdir)))
    records = data.datasets.splits["val"]
    videos = {r.video_id: r.video_features for r in records}
    if kind == "npz":
        features = tmp_path / "features.npz"
        np.savez(features, **videos)
    else:
        features = tmp_path / "features.h5"
        with h5py.File(features, "w") as f:
            for vid, array in videos.items():
                f[vid] = array
    queries = tmp_path / "queries.json"
    entries = [
        {
            "query_id": r.query_id,
            "video_id": r.video_id,
            "duration": r.duration_s,
            "query": r.query_text,
        }
        for r in records
    ]
    queries.write_text(json.dumps(entries))
    return features, queries


@pytest.mark.parametrize("family, kind", [("mgpn", "npz"), ("fvmr", "h5")])
def test_own_files_equal_the_split(tmp_path, family, kind):
    workdir = make_workdir(tmp_path / family, family, text_mode="tokens")
    features, queries = write_own_files(workdir, tmp_path, kind)
    predict.predict_workdir(str(workdir), output=str(tmp_path / "split.json"))
    own = predict.predict_workdir(
        str(workdir),
        features=str(features),
        queries=str(queries),
        output=str(tmp_path / "own.json"),
    )
    assert own["source"] == {"features": str(features), "queries": str(queries)}
    if family == "fvmr":
        assert Path(own["gallery"]).name.startswith("features_")
    assert_same_moments(
        read(tmp_path / "own.json")["predictions"], read(tmp_path / "split.json")["predictions"]
    )


def test_bad_requests_name_the_input(tmp_path, capsys):
    workdir = make_workdir(tmp_path / "mgpn", "mgpn", text_mode="tokens")
    features, queries = write_own_files(workdir, tmp_path, "npz")
    entries = read(queries)
    entries[2]["video_id"] = "no_such_video"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(entries))
    argv = ["predict", "--workdir", str(workdir), "--features", str(features), "--queries"]
    assert main.main([*argv, str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"query {entries[2]['query_id']!r}: field 'video_id'" in err and "no_such_video" in err
    entries = read(queries)
    entries[0]["duration"] = -3
    bad.write_text(json.dumps(entries))
    assert main.main([*argv, str(bad)]) == 2
    assert "entry 0" in (err := capsys.readouterr().err) and "field 'duration'" in err
    assert main.main(["predict", "--workdir", str(workdir), "--features", str(features)]) == 2
    assert "--features and --queries go together" in capsys.readouterr().err

    # Token features cannot be rebuilt from text.
    features_mode = make_workdir(tmp_path / "features_mode", "mgpn")
    argv = ["predict", "--workdir", str(features_mode), "--features", str(features)]
    assert main.main([*argv, "--queries", str(queries)]) == 2
    assert "text_mode='features'" in capsys.readouterr().err

    # Corpus families are evaluated, not predicted.
    xml_dir = tmp_path / "xml"
    config = config_cli.load_config_file(str(Path(CONFIG).parents[1] / "xml" / "synthetic.py"))
    checkpointing.save_config(config, str(xml_dir))
    assert main.main(["predict", "--workdir", str(xml_dir)]) == 2
    assert "vmr-jax eval" in capsys.readouterr().err


def test_query_text_is_encoded_as_the_pipeline_does(tmp_path, caplog):
    """Tokens: the training vocabulary (unknown words -> 1), cut at max_query_len with one
    warning.  GloVe: the training table, words it never saw read from the GloVe file (zeros
    when absent)."""
    vocab = Vocabulary(["<pad>", "<unk>", "person", "opens", "door"])
    config_data = ml_collections.ConfigDict({"max_query_len": 3, "glove_path": ""})
    with caplog.at_level("WARNING"):
        tokens = predictor_module.encode_texts(
            ["Person opens the door", "door"], TextInputs("tokens", vocab), config_data, "q.json"
        )
    # The 4-word query is cut to 3: said once, with its index and length.
    cut = [r.getMessage() for r in caplog.records if "cut to" in r.getMessage()]
    assert len(cut) == 1 and "1 of 2 queries" in cut[0] and "'#0' (4 tokens)" in cut[0]
    np.testing.assert_array_equal(tokens["query_tokens"], [[2, 3, 1], [4, 0, 0]])
    np.testing.assert_array_equal(tokens["query_mask"], [[1, 1, 1], [1, 0, 0]])
    glove = tmp_path / "glove.txt"
    glove.write_text("closes 1.5 -2.0\nperson 9.0 9.0\n")
    table = np.array([[0, 0], [0, 0], [1, 2], [3, 4], [5, 6]], np.float32)
    config_data.glove_path = str(glove)
    out = predictor_module.encode_texts(
        ["person closes the door"], TextInputs("glove", vocab, table), config_data, "q.json"
    )
    # 'person' keeps its training row (not the file's), 'closes' is read, 'the' is absent.
    np.testing.assert_array_equal(out["query_features"][0], [[1, 2], [1.5, -2.0], [0, 0]])
    with pytest.raises(predictor_module.PredictError, match="text_mode='features'"):
        predictor_module.encode_texts(["door"], TextInputs("features"), config_data, "q.json")


def test_inference_needs_no_training_data(tmp_path, monkeypatch):
    """A trained workdir copied elsewhere answers free-text queries through ``Predictor`` and
    ``vmr-jax predict --features --queries`` with the dataset unreadable: the trainer saved
    the text encoder with the checkpoints, and inference restores parameters only."""
    import shutil

    from data_pipelines import input_pipeline, sources
    from vmr_jax import Predictor

    trained = tmp_path / "trained"
    config = tiny_config("mgpn", text_mode="tokens")
    config.unlock()
    config.train.num_steps = 1
    config.train.progress_bar = False
    config.lock()
    trainer.train_and_evaluate(config, str(trained))
    assert (trained / "text_encoder" / "vocab.txt").is_file()
    features, queries = write_own_files(trained, tmp_path, "npz")
    want = predict.predict_workdir(
        str(trained), features=str(features), queries=str(queries), output=str(tmp_path / "a.json")
    )

    copied = tmp_path / "elsewhere" / "copied"
    shutil.copytree(trained, copied)
    shutil.rmtree(trained)

    def no_data(*args, **kwargs):
        raise AssertionError("inference read the training data")

    monkeypatch.setattr(input_pipeline, "get_datasets", no_data)
    monkeypatch.setattr(sources.DataSources, "__init__", no_data)
    argv = ["predict", "--workdir", str(copied), "--features", str(features)]
    assert main.main([*argv, "--queries", str(queries), "--output", str(tmp_path / "b.json")]) == 0
    got = read(tmp_path / "b.json")
    assert got["step"] == want["step"] == 1
    assert_same_moments(got["predictions"], read(tmp_path / "a.json")["predictions"], rtol=0)

    # The Python API: one video, its queries as text; the same moments as the CLI.
    predictor = Predictor.from_workdir(str(copied))
    assert predictor.step == 1 and predictor.family.name == "mgpn"
    entries = read(queries)
    video = entries[0]["video_id"]
    mine = [e for e in entries if e["video_id"] == video]
    moments = predictor.predict(
        np.load(features)[video], mine[0]["duration"], [e["query"] for e in mine]
    )
    by_id = {p["query_id"]: p["moments"] for p in got["predictions"]}
    for entry, ranked in zip(mine, moments):
        want_moments = np.array(by_id[entry["query_id"]])
        np.testing.assert_allclose(np.array(ranked), want_moments, rtol=1e-6)
    with pytest.raises(predictor_module.PredictError, match="duration"):
        predictor.predict(np.load(features)[video], 0.0, ["a person"])


def test_restore_for_inference_reads_parameters_only(tmp_path):
    """Parameters and BatchNorm statistics equal the checkpoint's; no optimiser state."""
    workdir = make_workdir(tmp_path / "mgpn", "mgpn")
    restored = predictor_module.restore_for_inference(str(workdir), step=None)
    assert restored.step == 3 and not hasattr(restored.state, "opt_state")
    config = checkpointing.load_config(str(workdir))
    manager = checkpointing.create_checkpoint_manager(str(workdir), config.train, read_only=True)
    full = manager.restore(3)  # the whole train state, as saved
    manager.close()
    for name in ("params", "batch_stats"):
        want = jax.tree.leaves(full["default"][name] if "default" in full else full[name])
        got = jax.tree.leaves(getattr(restored.state, name))
        assert len(got) == len(want) > 0
        for g, w in zip(got, want):
            np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
    with pytest.raises(FileNotFoundError, match="step 7"):
        predictor_module.restore_for_inference(str(workdir), step=7)
    # A config that does not match the checkpoint is named, leaf and shapes.
    with pytest.raises(ValueError, match=r"variable \[.+ has shape .+ in the checkpoint but"):
        predictor_module.restore_for_inference(str(workdir), overrides=[("model.hidden", "48")])
