import tarfile
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from compression_core.loading import CalibrationError, CalibrationSpec, load_calibration, split_holdout
from compression_core.model_io import select

SMALL = CalibrationSpec(resize=8, crop=8, channels=3)


def archive(folder, path):
    """``folder`` packed (with its name as the top folder) as zip, tar or tar.gz by ``path``'s suffix."""
    if path.suffix == ".zip":
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            for p in sorted(folder.rglob("*")):
                zf.write(p, p.relative_to(folder.parent).as_posix())
    else:
        with tarfile.open(path, "w:gz" if path.name.endswith(".gz") else "w") as tf:
            tf.add(folder, arcname=folder.name)
    return path


def test_class_folders_give_labels_and_normalised_images(class_folder):
    data = load_calibration(class_folder, SMALL)
    assert data.count == 5 and data.inputs.shape == (5, 3, 8, 8) and data.inputs.dtype == torch.float32
    assert data.classes == ["cat", "dog"] and sorted(data.labels.tolist()) == [0, 0, 0, 1, 1]
    assert data.skipped == 0 and data.source_kind == "directory"
    assert data.inputs.min() < -1.0  # ImageNet normalisation applied, not just [0, 1]


def test_flat_folder_has_no_labels_and_greyscale_works(tmp_path, make_images):
    make_images(tmp_path / "imgs", 4, size=(20, 16))
    data = load_calibration(tmp_path / "imgs", CalibrationSpec(resize=10, crop=(6, 8), channels=1))
    assert data.labels is None and data.inputs.shape == (4, 1, 6, 8)
    assert 0.0 <= float(data.inputs.min()) and float(data.inputs.max()) <= 1.0  # 1 channel: no normalisation


@pytest.mark.parametrize("name", ["data.zip", "data.tar", "data.tar.gz"])
def test_archives_of_class_folders(tmp_path, class_folder, name):
    data = load_calibration(archive(class_folder, tmp_path / name), SMALL)
    assert data.count == 5 and data.classes == ["cat", "dog"]
    direct = load_calibration(class_folder, SMALL)
    torch.testing.assert_close(data.inputs, direct.inputs)  # same images, same deterministic order


def test_undecodable_and_oversized_images_are_skipped_and_counted(tmp_path, make_images):
    make_images(tmp_path / "imgs", 3)
    (tmp_path / "imgs" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (tmp_path / "imgs" / "notes.txt").write_text("ignored: not an image suffix")
    Image.new("RGB", (200, 200)).save(tmp_path / "imgs" / "huge.png")
    data = load_calibration(tmp_path / "imgs", CalibrationSpec(resize=8, crop=8, max_image_pixels=10_000))
    assert data.count == 3 and data.skipped == 2
    assert any("undecodable" in n and "max_image_pixels" in n for n in data.notes)


def test_nothing_decodable_is_an_error(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(b"nope")
    with pytest.raises(CalibrationError, match="none of the 1 images"):
        load_calibration(tmp_path / "imgs", SMALL)


def test_max_samples_draws_from_every_class(class_folder):
    data = load_calibration(class_folder, CalibrationSpec(resize=8, crop=8, max_samples=3, seed=1))
    assert data.count == 3
    assert (
        data.labels.tolist()
        == load_calibration(
            class_folder, CalibrationSpec(resize=8, crop=8, max_samples=3, seed=1)
        ).labels.tolist()
    )


def test_different_sizes_without_crop_say_to_set_crop(tmp_path, make_images):
    make_images(tmp_path / "imgs", 1, size=(8, 8))
    make_images(tmp_path / "imgs" / "sub", 1, size=(9, 8))
    with pytest.raises(CalibrationError, match="set crop"):
        load_calibration(tmp_path / "imgs", CalibrationSpec(resize=None, crop=None))


def test_pt_tensor_tuple_and_dict(tmp_path):
    x = torch.randn(6, 3)
    torch.save(x, tmp_path / "t.pt")
    assert torch.equal(load_calibration(tmp_path / "t.pt").inputs, x)
    torch.save([x, x[:, :1]], tmp_path / "tuple.pt")
    inputs = load_calibration(tmp_path / "tuple.pt").inputs
    assert isinstance(inputs, tuple) and len(inputs) == 2
    ids = torch.randint(0, 100, (6, 5))
    torch.save(
        {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.arange(6)},
        tmp_path / "d.pt",
    )
    data = load_calibration(tmp_path / "d.pt", CalibrationSpec(kind="tensors", labels_key="labels"))
    assert set(data.inputs) == {"input_ids", "attention_mask"} and data.labels.tolist() == list(range(6))
    assert data.inputs["input_ids"].dtype == torch.int64 and data.count == 6


def test_declared_labels_key_must_exist(tmp_path):
    torch.save({"x": torch.zeros(2, 1)}, tmp_path / "d.pt")
    with pytest.raises(CalibrationError, match="labels_key='y'"):
        load_calibration(tmp_path / "d.pt", CalibrationSpec(labels_key="y"))


def test_npy_npz_and_float64_conversion(tmp_path):
    np.save(tmp_path / "a.npy", np.ones((4, 2), dtype=np.float64))
    data = load_calibration(tmp_path / "a.npy")
    assert data.inputs.dtype == torch.float32 and data.count == 4
    np.savez(tmp_path / "b.npz", input_ids=np.zeros((3, 5), dtype=np.int64), attention_mask=np.ones((3, 5)))
    inputs = load_calibration(tmp_path / "b.npz").inputs
    assert set(inputs) == {"input_ids", "attention_mask"} and inputs["input_ids"].dtype == torch.int64


def test_safetensors_dict_is_keyword_and_single_key_is_positional(tmp_path):
    ids = torch.randint(0, 100, (3, 5))
    save_file({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, str(tmp_path / "d.safetensors"))
    assert set(load_calibration(tmp_path / "d.safetensors").inputs) == {"input_ids", "attention_mask"}
    save_file({"pixels": torch.zeros(2, 3)}, str(tmp_path / "s.safetensors"))
    assert isinstance(load_calibration(tmp_path / "s.safetensors").inputs, torch.Tensor)


def test_mismatched_sample_counts_are_refused(tmp_path):
    torch.save({"a": torch.zeros(3, 1), "b": torch.zeros(4, 1)}, tmp_path / "d.pt")
    with pytest.raises(CalibrationError, match="same leading"):
        load_calibration(tmp_path / "d.pt")


def test_tensor_max_samples_takes_the_first_rows(tmp_path):
    torch.save(torch.arange(10.0).view(10, 1), tmp_path / "t.pt")
    data = load_calibration(tmp_path / "t.pt", CalibrationSpec(max_samples=4))
    assert data.inputs.view(-1).tolist() == [0.0, 1.0, 2.0, 3.0]


def test_pickled_objects_in_tensor_file_are_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"x": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CalibrationError, match="refused"):
        load_calibration(tmp_path / "evil.pt")
    assert not marker.exists()


def test_declared_kind_contradicting_content_is_an_error(tmp_path, class_folder):
    with pytest.raises(CalibrationError, match="kind='images'"):
        load_calibration(class_folder, CalibrationSpec(kind="tensors"))


def test_invalid_spec_names_the_field():
    with pytest.raises(CalibrationError, match="channels=2"):
        CalibrationSpec(channels=2)
    with pytest.raises(CalibrationError, match="mean"):
        CalibrationSpec(mean=(0.5, 0.5), std=(0.2, 0.2))
    assert CalibrationSpec.from_dict({"mean": [0.5], "std": [0.25], "crop": [4, 6]}).crop == (4, 6)
    with pytest.raises(CalibrationError, match="unknown calibration settings"):
        CalibrationSpec.from_dict({"size": 3})


def test_split_holdout_is_a_deterministic_partition():
    inputs = {"a": torch.zeros(10, 2), "b": torch.zeros(10)}
    train, hold = split_holdout(inputs, 0.3, seed=7)
    assert len(hold) == 3 and len(train) == 7
    assert sorted(train.tolist() + hold.tolist()) == list(range(10))
    again = split_holdout(inputs, 0.3, seed=7)
    assert torch.equal(train, again[0]) and torch.equal(hold, again[1])
    assert not torch.equal(
        split_holdout(torch.zeros(100), 0.3, seed=7)[1], split_holdout(torch.zeros(100), 0.3, seed=8)[1]
    )
    assert select(inputs, hold)["a"].shape == (3, 2)
    assert len(split_holdout(torch.zeros(10), 0.0)[1]) == 0
    assert len(split_holdout(torch.zeros(2), 0.9)[0]) == 1  # never holds out everything
    with pytest.raises(CalibrationError):
        split_holdout(torch.zeros(3), 1.0)


def test_mac_zip_junk_is_ignored_and_wrapping_folder_unwrapped(tmp_path, class_folder):
    path = archive(class_folder, tmp_path / "data.zip")
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("__MACOSX/data/cat/._img0.png", b"resource fork")
        zf.writestr("data/.DS_Store", b"junk")
    data = load_calibration(path, SMALL)
    assert data.classes == ["cat", "dog"] and data.skipped == 0


def test_image_folder_total_bytes_limit(class_folder):
    with pytest.raises(CalibrationError, match="max_total_bytes"):
        load_calibration(class_folder, CalibrationSpec(resize=8, crop=8, max_total_bytes=100))
