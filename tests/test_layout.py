"""The bundle contract (shim/layout.py) and the /bin/sh swap of xshim-install/xshim-restore.

Pure units: the install and restore steps run on a temporary root, as the shim runs them on /
inside an image.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from xshim.shim import entry
from xshim.shim import layout as L
from xshim.shim.layout import Entry, Layout, Manifest, ManifestError

SHA = "0" * 64


def test_layout_paths() -> None:
    b = Layout()
    assert b.base == L.DEFAULT_PREFIX == "/.xshim"
    assert (b.shim, b.exec, b.install, b.restore) == (
        "/.xshim/bin/sh", "/.xshim/bin/xshim-exec", "/.xshim/bin/xshim-install",
        "/.xshim/bin/xshim-restore")
    assert (b.qemu_dir, b.guest_dir, b.lib_dir, b.manifest) == (
        "/.xshim/qemu", "/.xshim/guest", "/.xshim/lib", "/.xshim/manifest.json")
    assert Layout("/opt/x/").guest_sh == "/opt/x/guest/sh"
    assert Layout("/opt/x").inside("/tmp/root").shim == "/tmp/root/opt/x/bin/sh"
    assert Layout("/opt/x").inside("/").base == "/opt/x"


def test_layout_of_the_running_shim(tmp_path: Path) -> None:
    (tmp_path / "b" / "bin").mkdir(parents=True)
    (tmp_path / "b" / "bin" / "sh").write_bytes(b"")
    os.symlink("sh", tmp_path / "b" / "bin" / "xshim-exec")
    assert Layout.of_shim(str(tmp_path / "b" / "bin" / "xshim-exec")).base == str(tmp_path / "b")


def sample(prefix: str = "/.xshim") -> Manifest:
    return Manifest(
        prefix=prefix, host_arch="x86_64", platforms=("linux/arm64",),
        emulators={"aarch64": "qemu/qemu-aarch64-static"}, loader="lib/ld-linux-x86-64.so.2",
        entries=(Entry("bin/sh", "shim", 10, SHA, 0o755),
                 Entry("bin/xshim-exec", "link", target="sh"),
                 Entry("manifest.json", "manifest")),
        dirs=(Entry("bin", "dir", mode=0o755), Entry("guest", "runtime", mode=0o755)),
        xshim_version="1.0",
    )


def test_manifest_round_trips_through_json() -> None:
    m = sample()
    data = json.loads(m.dumps())
    assert data["format"] == L.FORMAT
    assert data["files"][0] == {"path": "bin/sh", "role": "shim", "size": 10, "sha256": SHA,
                                "mode": "0755"}
    assert data["dirs"][1] == {"path": "guest", "role": "runtime", "mode": "0755"}
    assert Manifest.from_json(data) == m
    assert m.runtime_dirs == ("guest",)


def _broken(change: str) -> dict[str, object]:
    data: dict[str, object] = json.loads(sample().dumps())
    files: list[dict[str, object]] = data["files"]  # type: ignore[assignment]
    if change == "format":
        data["format"] = 1
    elif change == "escape":
        files[0]["path"] = "../etc/passwd"
    elif change == "absolute":
        files[0]["path"] = "/bin/sh"
    elif change == "role":
        files[0]["role"] = "rootkit"
    elif change == "no-mode":
        del files[0]["mode"]
    elif change == "bad-mode":
        files[0]["mode"] = "rwxr-xr-x"
    elif change == "sha":
        files[0]["sha256"] = "abc"
    elif change == "twice":
        files.append(dict(files[0]))
    elif change == "no-dirs":
        del data["dirs"]
    elif change == "prefix":
        data["prefix"] = "relative"
    elif change == "loader":
        data["loader"] = "/lib64/ld-linux-x86-64.so.2"
    elif change == "emulator":
        data["emulators"] = {"aarch64": "../qemu-aarch64-static"}
    return data


@pytest.mark.parametrize(("change", "needle"), [
    ("format", "format 1, not 2"),
    ("escape", "must be relative, without '..'"),
    ("absolute", "must be relative"),
    ("role", "unknown role 'rootkit'"),
    ("no-mode", "bin/sh: no mode"),
    ("bad-mode", "bad mode 'rwxr-xr-x'"),
    ("sha", "bad sha256"),
    ("twice", "bin/sh: listed twice"),
    ("no-dirs", "has no valid 'dirs'"),
    ("prefix", "bad prefix 'relative'"),
    ("loader", "bad loader path '/lib64/ld-linux-x86-64.so.2'"),
    ("emulator", "bad emulator path '../qemu-aarch64-static' for 'aarch64'"),
])
def test_invalid_manifests_are_refused(change: str, needle: str) -> None:
    with pytest.raises(ManifestError) as e:
        Manifest.from_json(_broken(change))
    assert needle in str(e.value)


def test_load_reports_unreadable_json(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(ManifestError, match="unreadable"):
        Manifest.load(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        Manifest.load(str(tmp_path / "nowhere"))


@pytest.mark.parametrize(("mode", "why"), [
    (0o755, None), (0o644, None), (0o4755, "setuid"), (0o2755, "setgid"), (0o757, "world-writable"),
])
def test_unsafe_modes(mode: int, why: str | None) -> None:
    assert L.unsafe_mode(mode) == why


# --- xshim-install / xshim-restore on a temporary root ------------------------------------------


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """A root with a regular /bin/sh and a bundle (a manifest is all install reads) at /.xshim."""
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "sh").write_bytes(b"the image's own shell")
    os.chmod(root / "bin" / "sh", 0o755)
    (root / ".xshim" / "bin").mkdir(parents=True)
    (root / ".xshim" / "manifest.json").write_text(sample().dumps())
    return root


def test_install_and_restore_a_regular_shell(image: Path) -> None:
    sh = image / "bin" / "sh"
    before = sh.stat()
    entry.install(Layout(), root=str(image))
    assert os.readlink(sh) == "/.xshim/bin/sh"
    kept = image / ".xshim" / "guest" / "sh"
    assert kept.stat().st_ino == before.st_ino and kept.read_bytes() == b"the image's own shell"
    assert entry.guest_shell(Layout(), root=str(image)) == "/.xshim/guest/sh"
    entry.install(Layout(), root=str(image))  # a second install changes nothing
    assert os.readlink(sh) == "/.xshim/bin/sh" and kept.stat().st_ino == before.st_ino
    entry.restore(Layout(), root=str(image), remove_bundle=True)
    after = sh.stat()
    assert not sh.is_symlink() and (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)
    assert not (image / ".xshim").exists()


def test_install_and_restore_a_symlinked_shell(image: Path) -> None:
    sh = image / "bin" / "sh"
    sh.unlink()
    os.symlink("dash", sh)
    entry.install(Layout(), root=str(image))
    assert os.readlink(sh) == "/.xshim/bin/sh"
    assert (image / ".xshim" / "guest" / "sh.symlink").read_text() == "dash"
    assert entry.guest_shell(Layout(), root=str(image)) == "/bin/dash"
    entry.restore(Layout(), root=str(image))
    assert os.readlink(sh) == "dash"


def test_install_resumes_after_an_interrupted_first_step(image: Path) -> None:
    (image / ".xshim" / "guest").mkdir()
    os.link(image / "bin" / "sh", image / ".xshim" / "guest" / "sh")
    entry.install(Layout(), root=str(image))
    assert os.readlink(image / "bin" / "sh") == "/.xshim/bin/sh"


@pytest.mark.parametrize("name", ["sh", "sh.symlink", "other"])
def test_install_refuses_a_bundle_that_brings_a_guest_shell(image: Path, name: str) -> None:
    guest = image / ".xshim" / "guest"
    guest.mkdir()
    (guest / name).write_text("/bin/evil")
    with pytest.raises(entry.InstallError, match="not in the bundle's manifest"):
        entry.install(Layout(), root=str(image))
    assert (image / "bin" / "sh").read_bytes() == b"the image's own shell"


def test_install_refuses_a_manifest_without_the_guest_dir(image: Path) -> None:
    m = sample()._replace(dirs=(Entry("bin", "dir", mode=0o755),))
    (image / ".xshim" / "manifest.json").write_text(m.dumps())
    with pytest.raises(entry.InstallError, match="does not declare guest/"):
        entry.install(Layout(), root=str(image))
    (image / ".xshim" / "manifest.json").unlink()
    with pytest.raises(entry.InstallError, match=r"manifest\.json is missing"):
        entry.install(Layout(), root=str(image))
    assert not (image / "bin" / "sh").is_symlink()


def test_restore_refuses_a_guest_dir_with_strangers(image: Path) -> None:
    entry.install(Layout(), root=str(image))
    (image / ".xshim" / "guest" / "other").write_text("x")
    with pytest.raises(entry.InstallError, match="not in the bundle's manifest"):
        entry.restore(Layout(), root=str(image))
    assert os.readlink(image / "bin" / "sh") == "/.xshim/bin/sh"


# --- mount mode: the bundle is read-only and there only during each RUN ------------------------


def test_layout_outside_paths() -> None:
    assert (Layout().outside_dir, Layout().outside_sh, Layout().outside_symlink) == (
        "/.xshim-guest", "/.xshim-guest/sh", "/.xshim-guest/sh.symlink")
    assert Layout("/opt/xs").inside("/tmp/r").outside_dir == "/tmp/r/opt/xs-guest"


def test_mounted_install_keeps_a_regular_shell_beside_the_bundle(image: Path) -> None:
    sh = image / "bin" / "sh"
    before = sh.stat()
    listing = sorted(p.name for p in (image / ".xshim").rglob("*"))
    entry.install(Layout(), root=str(image), mounted=True)
    assert os.readlink(sh) == "/.xshim/bin/sh"
    kept = image / ".xshim-guest" / "sh"
    assert kept.stat().st_ino == before.st_ino
    assert sorted(p.name for p in (image / ".xshim").rglob("*")) == listing  # bundle untouched
    assert entry.guest_shell(Layout(), root=str(image)) == "/.xshim-guest/sh"
    entry.install(Layout(), root=str(image), mounted=True)  # a second install changes nothing
    entry.restore(Layout(), root=str(image))
    after = sh.stat()
    assert not sh.is_symlink() and (after.st_ino, after.st_mode, after.st_mtime_ns) == (
        before.st_ino, before.st_mode, before.st_mtime_ns)
    assert not (image / ".xshim-guest").exists() and (image / ".xshim").is_dir()
    assert entry.guest_shell(Layout(), root=str(image)) == "/bin/sh"


def test_mounted_install_keeps_a_symlinked_shell_beside_the_bundle(image: Path) -> None:
    sh = image / "bin" / "sh"
    sh.unlink()
    os.symlink("dash", sh)
    entry.install(Layout(), root=str(image), mounted=True)
    assert (image / ".xshim-guest" / "sh.symlink").read_text() == "dash"
    assert not (image / ".xshim" / "guest").exists()
    assert entry.guest_shell(Layout(), root=str(image)) == "/bin/dash"
    entry.restore(Layout(), root=str(image))
    assert os.readlink(sh) == "dash" and not (image / ".xshim-guest").exists()


def test_mounted_install_resumes_after_an_interrupted_first_step(image: Path) -> None:
    (image / ".xshim-guest").mkdir()
    os.link(image / "bin" / "sh", image / ".xshim-guest" / "sh")
    entry.install(Layout(), root=str(image), mounted=True)
    assert os.readlink(image / "bin" / "sh") == "/.xshim/bin/sh"


def test_mounted_install_refuses_what_the_image_has_beside_the_bundle(image: Path) -> None:
    (image / ".xshim-guest").mkdir()
    (image / ".xshim-guest" / "sh.symlink").write_text("/bin/evil")
    with pytest.raises(entry.InstallError, match="already in the image"):
        entry.install(Layout(), root=str(image), mounted=True)
    assert (image / "bin" / "sh").read_bytes() == b"the image's own shell"


def test_mounted_install_refuses_a_bundle_that_brings_a_guest_shell(image: Path) -> None:
    # The shim looks in the bundle's guest/ first: it must be empty in mount mode too.
    (image / ".xshim" / "guest").mkdir()
    (image / ".xshim" / "guest" / "sh").write_text("/bin/evil")
    with pytest.raises(entry.InstallError, match="not in the bundle's manifest"):
        entry.install(Layout(), root=str(image), mounted=True)
    assert not (image / "bin" / "sh").is_symlink()


def test_restore_refuses_strangers_beside_the_bundle(image: Path) -> None:
    entry.install(Layout(), root=str(image), mounted=True)
    (image / ".xshim-guest" / "other").write_text("x")
    with pytest.raises(entry.InstallError, match="already in the image"):
        entry.restore(Layout(), root=str(image))
    assert os.readlink(image / "bin" / "sh") == "/.xshim/bin/sh"


def test_install_without_a_shell_says_so(image: Path) -> None:
    (image / "bin" / "sh").unlink()
    with pytest.raises(entry.InstallError, match="nothing to wrap"):
        entry.install(Layout(), root=str(image))
