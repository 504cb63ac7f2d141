"""FVMR's word table initialised from GloVe (``model.word_embed='glove'``): the table starts as
the GloVe rows of a file the test writes, one SGD step moves each row by the gradient the old
features path gives its word vectors (accumulated per id), ``freeze_word_embed`` keeps it
bit-identical under weight decay, and free-text prediction reads the trained rows.

Expected numbers: the GloVe file's decimals parsed here, ``np.add.at`` of the gradients of the
features path (a model without a table reading ``query_features``), and the trained table
looked up by hand; never the table code itself.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jax
import ml_collections
import numpy as np
import optax
import pytest

from data_pipelines import synthetic
from data_pipelines.sources import DataSources
from data_pipelines.text_inputs import TextInputs
from vmr_jax import checkpoint_eval, config_cli, predict, sharding, trainer
from vmr_jax.errors import UserError
from vmr_jax.models import fvmr, get_family
from vmr_jax.optimizers import family_optimizer
from vmr_jax.predictor import Predictor
from vmr_jax.text import saved
from vmr_jax.text.tokenizer import Vocabulary

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
CONFIG = str(CONFIGS / "fvmr" / "synthetic.py")
DIM = 32  # the tiny variant's word_dim
MISSING = ("w1", "noun0")  # vocabulary words the GloVe file leaves out: zero rows
EXTRA = "zebra"  # in the GloVe file, in no query: outside the vocabulary

pytestmark = pytest.mark.usefixtures("jax_compilation_cache")


def _words(text: str) -> list[str]:
    return re.findall(r"[^\W_]+", text.lower())


@pytest.fixture(scope="module")
def glove(tmp_path_factory):
    """A GloVe file of every synthetic query word but :data:`MISSING`, plus :data:`EXTRA`;
    returns ``(path, {word: float32 vector as written})``."""
    spec = synthetic.spec_from_config(config_cli.load_config(CONFIG + ":runlocal").data.synthetic)
    words = sorted(
        {
            w
            for recs in synthetic.make_splits(spec, 0).values()
            for r in recs
            for w in _words(r.query_text)
        }
    )
    rng = np.random.default_rng(3)
    path = tmp_path_factory.mktemp("glove") / "glove.txt"
    vectors = {}
    with open(path, "w") as f:
        for word in [*words, EXTRA]:
            if word in MISSING:
                continue
            text = [f"{x:.4f}" for x in rng.normal(size=DIM)]
            vectors[word] = np.asarray([float(x) for x in text], np.float32)
            f.write(word + " " + " ".join(text) + "\n")
    assert all(w in words for w in MISSING)
    return str(path), vectors


def _config(glove_path: str, **overrides):
    base = {
        "data.text_mode": "glove",
        "data.glove_path": glove_path,
        "data.glove_missing": "zero",
        "model.word_embed": "glove",
        "train.progress_bar": False,
        "train.checkpoint_every": 0,
    }
    base.update(overrides)
    return config_cli.load_config(f"{CONFIG}:runlocal", [(k, str(v)) for k, v in base.items()])


def _expected_rows(vocab_words, vectors) -> np.ndarray:
    """The GloVe rows by hand: the file's vector, zeros for <pad>, <unk> and missing words."""
    rows = np.zeros((len(vocab_words), DIM), np.float32)
    for i, word in enumerate(vocab_words):
        if i >= 2 and word in vectors:
            rows[i] = vectors[word]
    return rows


def _state(config, tx):
    data = DataSources(config)
    model = fvmr.create_model(config.model)
    mesh = sharding.make_mesh(config.mesh)
    state = trainer.create_train_state(
        config, model, jax.random.PRNGKey(0), data.sample_batch(), mesh, tx=tx,
        text=data.datasets.text,
    )  # fmt: skip
    return data, state


def _table(state) -> np.ndarray:
    return np.asarray(state.params["word_embed"]["embedding"])


def _step(config, state, batch, lr_schedule):
    return trainer.train_step(
        state,
        batch,
        jax.random.PRNGKey(1),
        loss_fn=fvmr.loss_fn,
        model_config=config.model,
        schedule=lr_schedule,
        steps_per_epoch=1,
    )


def _features_model(config):
    """The old path: no table, the batch's ``query_features`` read as given."""
    fields = config.model.to_dict()
    fields["vocab_size"] = 0
    return fvmr.create_model(ml_collections.ConfigDict(fields))


def test_table_starts_as_the_glove_rows(glove):
    path, vectors = glove
    config = _config(path)
    data, state = _state(config, optax.sgd(1.0))
    vocab = data.datasets.text.encoder.words
    assert config.model.vocab_size == len(vocab)  # sized from the GloVe vocabulary
    assert EXTRA not in vocab
    np.testing.assert_array_equal(_table(state), _expected_rows(vocab, vectors))
    for word in MISSING:
        np.testing.assert_array_equal(_table(state)[vocab.index(word)], 0.0)


def test_one_sgd_step_moves_the_batch_rows_by_the_features_gradient(glove):
    lr = 1000.0  # one step of plain SGD: lr only scales it, large enough that the move is
    # far above float32's rounding of the rows (~1e-7)
    config = _config(glove[0], **{"model.distill_start_epoch": 0})  # every loss term
    data, state = _state(config, optax.sgd(lr))
    table0 = _table(state)
    batch = next(data.train_iterator(0))
    tokens = np.asarray(batch["query_tokens"])
    np.testing.assert_array_equal(  # the pipeline's vectors are the rows of those ids
        batch["query_features"], table0[tokens] * batch["query_mask"][..., None]
    )
    new_state, _ = _step(config, state, batch, optax.constant_schedule(lr))

    # The gradient of the loss w.r.t. the looked-up vectors, through the features path with
    # the same parameters, summed per id.
    model = _features_model(config)
    params = {k: v for k, v in state.params.items() if k != "word_embed"}

    def loss_of(features):
        feature_batch = {k: v for k, v in batch.items() if k != "query_tokens"}
        feature_batch["query_features"] = features
        outputs, _ = model.apply(
            {"params": params, "batch_stats": state.batch_stats},
            feature_batch,
            train=True,
            rngs={"dropout": jax.random.fold_in(jax.random.PRNGKey(1), 0)},
            mutable=["batch_stats"],
        )
        return fvmr.loss_fn(outputs, feature_batch, config.model, step=0, steps_per_epoch=1)[0]

    grads = np.asarray(jax.grad(loss_of)(table0[tokens]), np.float64)
    per_id = np.zeros(table0.shape, np.float64)
    np.add.at(per_id, tokens, grads)
    moved = _table(new_state).astype(np.float64) - table0
    np.testing.assert_allclose(moved, -lr * per_id, rtol=1e-4, atol=2e-6)

    in_batch = np.zeros(len(table0), bool)
    in_batch[np.unique(tokens[batch["query_mask"] > 0])] = True
    assert (np.abs(moved[in_batch]).max(axis=1) > 0).all()
    np.testing.assert_array_equal(moved[~in_batch], 0.0)  # <pad>, <unk>, unseen words


@pytest.mark.parametrize("frozen", [True, False])
def test_a_frozen_table_gets_no_update_and_no_weight_decay(glove, frozen):
    config = _config(glove[0], **{"model.freeze_word_embed": frozen, "train.lr": 0.01})
    with config.unlocked():  # AdamW with decoupled weight decay on every kernel and table
        config.train.optimizer = "adamw"
        config.train.weight_decay = 0.5
    family = get_family("fvmr")
    tx, schedule = family_optimizer(config, 1, family)
    data, state = _state(config, tx)
    table0 = _table(state)
    head0 = np.asarray(state.params["phi_s"]["fc1"]["kernel"])
    batches = data.train_iterator(0)
    seen = set()
    for _ in range(2):
        batch = next(batches)
        seen |= set(np.asarray(batch["query_tokens"]).ravel().tolist())
        state, _ = _step(config, state, batch, schedule)
    assert not np.array_equal(np.asarray(state.params["phi_s"]["fc1"]["kernel"]), head0)
    vocab = data.datasets.text.encoder.words
    unseen = [i for i in range(2, len(vocab)) if i not in seen and table0[i].any()]
    assert unseen  # rows no query of the two batches reads
    if frozen:
        np.testing.assert_array_equal(_table(state), _expected_rows(vocab, glove[1]))
    else:
        # Decoupled decay alone moves a row with zero gradient (Adam's update of a zero
        # gradient is 0): x <- x (1 - lr wd) per step, lr 0.01, wd 0.5, two steps.
        np.testing.assert_allclose(
            _table(state)[unseen], table0[unseen] * (1 - 0.01 * 0.5) ** 2, rtol=1e-6
        )


def test_config_checks_name_the_field(glove):
    config = _config(glove[0], **{"data.text_mode": "features"})
    with pytest.raises(UserError, match=r"word_embed='glove'.*text_mode='glove'"):
        trainer.train_and_evaluate(config, "/nonexistent/never-written")
    config = _config(
        glove[0], **{"data.text_mode": "features", "model.word_embed": "input",
                     "model.freeze_word_embed": True}
    )  # fmt: skip
    with pytest.raises(UserError, match=r"freeze_word_embed=True but the model has no word"):
        trainer.train_and_evaluate(config, "/nonexistent/never-written")


@pytest.fixture(scope="module")
def trained(glove, tmp_path_factory):
    """A six-step run with the GloVe table; returns ``(config, workdir, train result)``."""
    config = _config(glove[0], **{"train.checkpoint_every": 3})
    workdir = tmp_path_factory.mktemp("fvmr_glove_table")
    result = trainer.train_and_evaluate(config, str(workdir))
    assert result["step"] == 6 and "R@1,IoU=0.5" in result["eval_metrics"]
    return config, str(workdir), result


def test_eval_of_the_restored_checkpoint_reproduces_the_run(trained):
    """``vmr-jax eval`` rebuilds the batches' ids from the data: the same vocabulary as the
    run's saved one, so the restored table gives the run's own final metrics."""
    config, workdir, result = trained
    evaluated = checkpoint_eval.evaluate_workdir(workdir, step=6)
    for name, value in result["eval_metrics"].items():
        assert evaluated["metrics"][name] == pytest.approx(value, abs=1e-6), name
    # Another vocabulary (the same words in another order) would read other rows: refused.
    words = saved.load_text_inputs(workdir).encoder.words
    shuffled = TextInputs("glove", Vocabulary([*words[:2], *reversed(words[2:])]))
    with pytest.raises(UserError, match=r"vocab.txt .* is not the vocabulary of config.data"):
        checkpoint_eval.check_vocabulary(workdir, shuffled)


def test_free_text_prediction_reads_the_trained_rows(glove, trained, tmp_path):
    path, vectors = glove
    config, workdir, _ = trained
    predictor = Predictor.from_workdir(workdir, step=None)
    variables = predictor.restored.variables
    trained = np.asarray(variables["params"]["word_embed"]["embedding"])
    vocab = predictor.text.encoder.words
    initial = _expected_rows(vocab, vectors)
    assert not np.array_equal(trained, initial)

    # Ids by hand: vocabulary positions, EXTRA (in the GloVe file, not in the vocabulary) and
    # an unknown word read <unk> (1).
    texts = ["verb0 w47 adj0", f"noun2 {EXTRA} qqqq w1"]
    arrays = predictor.encode_queries(texts)
    want = np.zeros((2, config.data.max_query_len), np.int32)
    want[0, :3] = [vocab.index("verb0"), vocab.index("w47"), vocab.index("adj0")]
    want[1, :4] = [vocab.index("noun2"), 1, 1, vocab.index("w1")]
    np.testing.assert_array_equal(arrays["query_tokens"], want)

    # The table model on those ids = the features path on the trained rows, not the GloVe ones.
    model = predictor.restored.model
    got = model.apply(variables, arrays, method="encode_queries")
    feature_model = _features_model(predictor.config)
    params = {k: v for k, v in variables["params"].items() if k != "word_embed"}
    mask = arrays["query_mask"][..., None]

    def features_path(rows):
        batch = {"query_features": rows[want] * mask, "query_mask": arrays["query_mask"]}
        return feature_model.apply({"params": params}, batch, method="encode_queries")

    np.testing.assert_allclose(got, features_path(trained), rtol=1e-5, atol=1e-6)
    assert np.abs(np.asarray(got) - np.asarray(features_path(initial))).max() > 1e-4

    rng = np.random.default_rng(0)
    video = rng.normal(size=(32, int(config.model.feature_dim))).astype(np.float32)
    moments = predictor.predict(video, 30.0, texts, top_k=3)
    assert len(moments) == 2 and all(len(m) == 3 for m in moments)

    # `vmr-jax predict --features --queries`: FVMR's gallery path reads the same ids.
    features = tmp_path / "videos.npz"
    np.savez(features, v0=video)
    queries = tmp_path / "queries.json"
    entries = [
        {"query_id": f"q{i}", "video_id": "v0", "duration": 30.0, "query": t}
        for i, t in enumerate(texts)
    ]
    queries.write_text(json.dumps(entries))
    header = predict.predict_workdir(
        workdir, features=str(features), queries=str(queries), output=str(tmp_path / "out.json")
    )
    assert header["method"] == "gallery"
    written = json.loads((tmp_path / "out.json").read_text())["predictions"]
    assert [e["query_id"] for e in written] == ["q0", "q1"]


def test_benchmark_configs_train_the_table_and_freeze_it_on_request():
    for name in ("charades", "tacos", "activitynet"):
        plain = config_cli.load_config(f"{CONFIGS}/fvmr/{name}.py")
        assert plain.model.word_embed == "glove" and plain.model.freeze_word_embed is False
        assert plain.data.text_mode == "glove"
        frozen = config_cli.load_config(f"{CONFIGS}/fvmr/{name}.py:frozen_embed")
        assert frozen.model.freeze_word_embed is True
        changed = {k for k, v in frozen.model.items() if plain.model[k] != v}
        assert changed == {"freeze_word_embed"}
        tiny = config_cli.load_config(f"{CONFIGS}/fvmr/{name}.py:tiny")
        assert tiny.model.word_embed == "input" and tiny.data.text_mode == "tokens"
    synthetic_config = config_cli.load_config(CONFIG)
    assert synthetic_config.model.word_embed == "input"
    assert synthetic_config.data.text_mode == "features"
