"""builder/image.py: a rootfs tree as a one-layer docker-archive that names its platform."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
from xshim.builder import image
from xshim.builder.platform import Platform


@pytest.mark.parametrize(("platform", "arch", "variant"), [
    ("linux/arm64", "arm64", None), ("linux/arm/v7", "arm", "v7"), ("linux/s390x", "s390x", None),
])
def test_archive_names_the_platform_and_holds_the_tree(
        tmp_path: Path, platform: str, arch: str, variant: str | None) -> None:
    tree = tmp_path / "tree"
    (tree / "bin").mkdir(parents=True)
    (tree / "bin" / "hello").write_text("hi")
    (tree / "dev").mkdir()
    (tree / "dev" / "null").write_text("not a device")
    out = image.write_image_archive(tree, tmp_path / "img.tar", tag="me/x:1",
                                    platform=Platform.parse(platform),
                                    config=image.base_config(Cmd=["sh"]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.tar", "tree"]
    with tarfile.open(out) as tf:
        (manifest,) = json.load(tf.extractfile("manifest.json"))  # type: ignore[arg-type]
        assert manifest["RepoTags"] == ["me/x:1"]
        config = json.load(tf.extractfile(manifest["Config"]))  # type: ignore[arg-type]
        layer = tf.extractfile(manifest["Layers"][0])
        assert layer is not None
        with tarfile.open(fileobj=layer) as lt:
            names = set(lt.getnames())
    assert (config["os"], config["architecture"], config.get("variant")) == ("linux", arch, variant)
    assert config["config"] == {"Env": [image.DEBIAN_PATH], "Cmd": ["sh"]}
    assert "./bin/hello" in names and "./dev/null" not in names
