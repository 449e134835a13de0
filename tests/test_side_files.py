"""Every file mdream reads besides the images — schemas, lists, manifests, the default
bundle's name, ``.verified.json``, GGUF headers, tarballs, stdin — is opened without blocking,
only if it is a regular file (or, for a list, a pipe), and read only up to its documented
limit: a FIFO, /dev/zero or a 50 GB sparse file is one clear error, at once."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import pytest

from conftest import draw_photo, within
from moondream_cli import bounded, registry
from moondream_cli import manifest as mf
from moondream_cli.errors import BundleError, InputError, ModelError, UsageError
from moondream_cli.grammars import schema_constraint
from moondream_cli.images import read_stream
from moondream_cli.inputs import MAX_ENTRY, read_list
from moondream_cli.locate import find_pair
from test_doctor import install_bundle


def _sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def test_a_schema_on_a_device_or_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "schema.json"
    os.mkfifo(fifo)  # nobody ever writes to it
    for path, kind in ((Path("/dev/zero"), "a character device"), (fifo, "a FIFO")):
        with pytest.raises(UsageError, match=rf"not a regular file \({kind}\)"):
            within(5, lambda p=path: schema_constraint(p))  # type: ignore[misc]


def test_a_schema_larger_than_its_limit_is_refused_unread(tmp_path: Path) -> None:
    path = _sparse(tmp_path / "big.schema.json", 50 << 30)
    with pytest.raises(UsageError, match=r"file too large for a JSON schema \(50 GiB; the limit"):
        within(5, lambda: schema_constraint(path))


def test_a_default_file_linked_to_dev_zero_or_a_fifo_names_no_bundle(
    tiny_model: Path, isolated_home: Path
) -> None:
    install_bundle(isolated_home, tiny_model)
    default = isolated_home / "default"
    default.symlink_to("/dev/zero")
    assert within(5, registry.named_default) is None
    default.unlink()
    os.mkfifo(default)
    assert within(5, registry.named_default) is None
    assert within(5, registry.default_name) == "tiny"  # the only bundle installed


def test_a_verified_record_linked_to_dev_zero_or_a_fifo_is_not_trusted(
    tiny_model: Path, isolated_home: Path
) -> None:
    folder = install_bundle(isolated_home, tiny_model)
    manifest = mf.read_manifest(folder)
    record = folder / mf.VERIFIED
    record.unlink()
    record.symlink_to("/dev/zero")
    assert within(5, lambda: mf.verified_recently(folder, manifest)) is False
    record.unlink()
    os.mkfifo(record)
    assert within(5, lambda: mf.verified_recently(folder, manifest)) is False


def test_a_50_gb_sparse_manifest_is_refused_unread(tmp_path: Path) -> None:
    _sparse(tmp_path / mf.MANIFEST, 50 << 30)
    with pytest.raises(ModelError, match="file too large for a bundle manifest"):
        within(5, lambda: mf.read_manifest(tmp_path))


def test_a_fifo_named_like_a_gguf_in_a_model_folder_is_refused(
    tiny_model: Path, tmp_path: Path
) -> None:
    os.mkfifo(tmp_path / "x.gguf")
    with pytest.raises(ModelError, match=r"x.gguf: not a regular file \(a FIFO\)"):
        within(5, lambda: find_pair(tmp_path))


def test_bundle_install_refuses_a_fifo_without_opening_it_for_good(tmp_path: Path) -> None:
    from moondream_cli.bundles.install import install

    fifo = tmp_path / "bundle.tar"
    os.mkfifo(fifo)
    with pytest.raises(BundleError, match=r"not a regular file \(a FIFO\)"):
        within(5, lambda: install(fifo))


def test_a_list_without_separators_is_refused_quickly_and_not_echoed() -> None:
    stream = io.BytesIO(b"a" * (30 << 20))
    started = time.perf_counter()
    with pytest.raises(UsageError) as caught:
        list(read_list(stream))
    assert time.perf_counter() - started < 2
    assert f"longer than {MAX_ENTRY:,} bytes" in str(caught.value)
    assert len(str(caught.value)) < 300  # the entry itself is not repeated


def test_a_long_list_is_read_in_linear_time() -> None:
    names = b"".join(b"photos/%08d.jpg\n" % i for i in range(200_000))
    started = time.perf_counter()
    assert sum(1 for _ in read_list(io.BytesIO(names))) == 200_000
    assert time.perf_counter() - started < 5


def test_a_nul_list_of_nothing_but_separators_is_refused() -> None:
    with pytest.raises(UsageError, match="no path in the first"):
        list(read_list(io.BytesIO(b"\0" * (4 << 20)), null=True))


def test_files_from_a_device_is_refused(tiny_model: Path) -> None:
    from moondream_cli.job import Job
    from moondream_cli.settings import InputOptions, Settings

    job = Job((), ("q",), Settings(inputs=InputOptions(files_from="/dev/zero")), 2)

    def open_the_list() -> None:
        with job.sources():
            pass

    with pytest.raises(UsageError, match=r"not a regular file \(a character device\)"):
        within(5, open_the_list)


def test_a_list_on_a_pipe_is_still_read(tmp_path: Path) -> None:
    read, write = os.pipe()
    os.write(write, b"a.jpg\nb.jpg\n")
    os.close(write)
    fd = bounded.open_fd(f"/proc/self/fd/{read}", bounded.LIST)
    os.close(read)
    with os.fdopen(fd, "rb") as f:
        assert list(read_list(f)) == ["a.jpg", "b.jpg"]


def test_stdin_that_is_a_device_gives_no_image_and_reads_nothing() -> None:
    with open("/dev/zero", "rb") as zero, pytest.raises(InputError, match="character device"):
        within(5, lambda: read_stream(zero))


def test_stdin_that_does_not_start_like_an_image_is_refused_after_its_first_bytes() -> None:
    read, write = os.pipe()
    os.write(write, b"\0" * 65536)  # more would follow, for ever
    with os.fdopen(read, "rb") as stream, pytest.raises(InputError, match="not a supported image"):
        within(5, lambda: read_stream(stream))
    os.close(write)


def test_stdin_that_starts_like_an_image_is_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    draw_photo().save(path)
    with open(path, "rb") as f:
        assert read_stream(f) == path.read_bytes()


def test_a_model_file_that_is_a_fifo_is_not_hashed(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "model.gguf")
    with pytest.raises(ModelError, match=r"not a regular file \(a FIFO\)"):
        within(5, lambda: mf.sha256_file(tmp_path / "model.gguf"))


def test_a_recipe_file_that_is_a_fifo_is_refused(tmp_path: Path) -> None:
    from moondream_cli.bundles.recipe import load_recipe

    os.mkfifo(tmp_path / "recipe.json")
    with pytest.raises(BundleError, match=r"not a regular file \(a FIFO\)"):
        within(5, lambda: load_recipe(str(tmp_path / "recipe.json")))


def test_a_list_on_a_named_fifo_waits_for_its_writer(tmp_path: Path) -> None:
    import threading

    fifo = tmp_path / "paths"
    os.mkfifo(fifo)

    def writer() -> None:
        time.sleep(0.5)  # after mdream opened its end
        with open(fifo, "wb") as f:
            f.write(b"a.jpg\nb.jpg\n")

    threading.Thread(target=writer, daemon=True).start()
    with bounded.open_file(fifo, bounded.LIST) as f:
        assert within(10, lambda: list(read_list(f))) == ["a.jpg", "b.jpg"]
