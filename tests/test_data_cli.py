"""``vmr-jax data fake`` and ``data build`` write under ``data/`` of the current directory by
default (where the configs look), never into the annotation folder; ``data/`` is git-ignored."""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

from vmr_jax import data_cli

ROOT = Path(__file__).resolve().parents[1]
CSV = "id,length\nV1,30.0\nV2,12.5\n"
QUERIES = "V1 1.0 5.0##a person opens the door.\nV2 2.0 6.0##a person sits down.\n"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vmr-jax data")
    data_cli.add_arguments(p)
    return p


def run(*argv: str) -> int:
    return data_cli.main(parser().parse_args(list(argv)))


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_fake_then_build_write_outside_the_annotation_folder(tmp_path, monkeypatch, capsys):
    ann = tmp_path / "annotations"
    ann.mkdir()
    (ann / "charades_sta_test.txt").write_text(QUERIES)
    (ann / "Charades_v1_test.csv").write_text(CSV)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    common = ["--dataset", "charades_sta", "--features", "i3d", "--splits", "test"]

    assert run("fake", *common, "--data_dir", str(ann)) == 0
    fake = Path("data/fake_features/charades_sta-i3d")
    assert sorted(p.name for p in (work / fake / "I3D" / "finetune").iterdir()) == [
        "V1.npy",
        "V2.npy",
    ]
    assert f"--data_dir {fake} --annotation_dir {ann}" in capsys.readouterr().err

    assert run("build", *common, "--data_dir", str(fake), "--annotation_dir", str(ann)) == 0
    assert (work / "data" / "vmr_jax" / "charades_sta-i3d" / "dataset_info.json").is_file()
    assert listing(ann) == ["Charades_v1_test.csv", "charades_sta_test.txt"]  # untouched


def test_help_names_the_default_locations():
    text = " ".join(parser().format_help().split())
    assert "default: data/vmr_jax/<dataset>-<features> in the current directory" in text
    assert "default: data/fake_features/<dataset>-<features>" in text


def test_data_folder_is_git_ignored():
    rules = (ROOT / ".gitignore").read_text().split()
    assert "/data/" in rules  # the README's build location, at the repository root only
    git = shutil.which("git")
    if git is not None and (ROOT / ".git").exists():  # and git agrees, in a checkout
        for path in ("data/vmr_jax/charades_sta-i3d/dataset_info.json", "data/glove.840B.300d.txt"):
            done = subprocess.run([git, "-C", str(ROOT), "check-ignore", "-q", path], check=False)
            assert done.returncode == 0, f"{path} is not ignored by .gitignore"
