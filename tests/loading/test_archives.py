import io
import tarfile
import zipfile

import pytest

from compression_core.loading import ArchiveError, CalibrationSpec, load_calibration
from compression_core.loading.archives import ArchiveLimits, extract_archive


def tar_with(path, members, mode="w"):
    """``members``: (TarInfo, bytes | None) pairs."""
    with tarfile.open(path, mode) as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def file_info(name, data=b"x"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def special(name, kind, linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info, None


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (file_info("../evil.png"), "outside the archive folder"),
        (file_info("imgs/../../evil.png"), "outside the archive folder"),
        (file_info("/etc/evil.png"), "absolute path"),
        (special("imgs/link.png", tarfile.SYMTYPE, "/etc/passwd"), "symbolic link"),
        (special("imgs/hard.png", tarfile.LNKTYPE, "imgs/a.png"), "hard link"),
        (special("imgs/dev", tarfile.CHRTYPE), "special file"),
        (special("imgs/fifo", tarfile.FIFOTYPE), "special file"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink", "hardlink", "chardev", "fifo"],
)
def test_tar_tricks_are_refused_and_nothing_escapes(tmp_path, member, message):
    archive = tar_with(tmp_path / "a.tar", [file_info("imgs/a.png", b"data"), member])
    dest = tmp_path / "out" / "inner"
    dest.mkdir(parents=True)
    with pytest.raises(ArchiveError, match=message):
        extract_archive(archive, dest)
    assert not (tmp_path / "out" / "evil.png").exists() and not (tmp_path / "evil.png").exists()


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("../evil.png", "outside"),
        ("/abs/evil.png", "absolute"),
        ("C:/evil.png", "absolute"),
        ("a\\..\\..\\evil.png", "outside"),
    ],
)
def test_zip_path_tricks_are_refused(tmp_path, name, message):
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as zf:
        zf.writestr(zipfile.ZipInfo(name), b"data")
    with pytest.raises(ArchiveError, match=message):
        extract_archive(tmp_path / "a.zip", tmp_path / "out")


def test_zip_symlink_is_refused(tmp_path):
    info = zipfile.ZipInfo("imgs/link.png")
    info.external_attr = 0o120777 << 16
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as zf:
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(ArchiveError, match="symbolic link"):
        extract_archive(tmp_path / "a.zip", tmp_path)


def test_zip_bomb_by_ratio_is_refused(tmp_path):
    with zipfile.ZipFile(tmp_path / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("imgs/zeros.png", bytes(4 * 1024**2))
    with pytest.raises(ArchiveError, match="decompression bomb"):
        extract_archive(tmp_path / "bomb.zip", tmp_path)
    assert not (tmp_path / "imgs" / "zeros.png").exists()


def test_tar_gz_bomb_by_ratio_is_refused(tmp_path):
    archive = tar_with(tmp_path / "bomb.tar.gz", [file_info("zeros.png", bytes(4 * 1024**2))], mode="w:gz")
    with pytest.raises(ArchiveError, match="decompression bomb"):
        extract_archive(archive, tmp_path / "out")


def test_total_uncompressed_size_limit(tmp_path):
    archive = tar_with(tmp_path / "a.tar", [file_info(f"f{i}.png", bytes(600)) for i in range(3)])
    with pytest.raises(ArchiveError, match="more than 1000 bytes"):
        extract_archive(archive, tmp_path / "out", ArchiveLimits(max_total_bytes=1000))


def test_too_many_members(tmp_path):
    archive = tar_with(tmp_path / "a.tar", [file_info(f"f{i}.png") for i in range(5)])
    with pytest.raises(ArchiveError, match="more than 4 members"):
        extract_archive(archive, tmp_path / "out", ArchiveLimits(max_members=4))


def test_limits_come_from_the_calibration_spec(tmp_path, make_images):
    make_images(tmp_path / "imgs", 3)
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as zf:
        for p in (tmp_path / "imgs").iterdir():
            zf.write(p, f"imgs/{p.name}")
    with pytest.raises(ArchiveError, match="more than 2 members"):
        load_calibration(tmp_path / "a.zip", CalibrationSpec(max_count=2, resize=None, crop=None))


def test_clean_archive_extracts_every_file(tmp_path):
    archive = tar_with(tmp_path / "a.tar", [file_info("d/a.png", b"1"), file_info("d/e/b.png", b"22")])
    (tmp_path / "out").mkdir()
    assert extract_archive(archive, tmp_path / "out") == 2
    assert (tmp_path / "out" / "d" / "e" / "b.png").read_bytes() == b"22"
