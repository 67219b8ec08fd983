"""Text calibration from a plain text file and a local tokenizer folder: one sample per non-empty line, padded
and masked here, and compressed end to end (library and `l2 compress`) on a randomly initialised BERT."""

import pytest
import torch

from compression_core.cli import main
from compression_core.coding import load_l2
from compression_core.compressor import compress
from compression_core.config import CompressionConfig
from compression_core.loading import CalibrationError, CalibrationSpec, load_calibration, register_architecture
from compression_core.loading.architectures import unregister_architecture

transformers = pytest.importorskip("transformers")

WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "to", "house", "red", "big", "small", "and"]
LINES = [
    "the cat sat on the mat",
    "",
    "a dog ran",
    "   ",
    "the big red dog ran to the small house and the cat sat on the mat",
    "a cat",
    "the dog and the cat",
    "a small red house",
    "the mat",
    "a big dog sat on a small cat",
    "the house",
    "red",
    "a cat ran to the dog and sat",
    "the small mat",
]
REAL = [line for line in LINES if line.strip()]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """A WordPiece tokenizer built here from a vocabulary file and saved as a folder, as users ship them."""
    root = tmp_path_factory.mktemp("tok")
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    folder = root / "tokenizer"
    transformers.BertTokenizerFast(str(vocab)).save_pretrained(str(folder))
    return folder


@pytest.fixture
def sentences(tmp_path):
    path = tmp_path / "sentences.txt"
    path.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    return path


def tiny_bert():
    config = transformers.BertConfig(
        vocab_size=5 + len(WORDS),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    return transformers.BertModel(config)


def test_one_sample_per_non_empty_line_padded_to_the_longest(sentences, tokenizer_dir):
    data = load_calibration(sentences, CalibrationSpec(tokenizer=str(tokenizer_dir), max_length=32))
    inputs = data.inputs
    assert set(inputs) == {"input_ids", "token_type_ids", "attention_mask"} and data.source_kind == "text"
    assert data.count == len(REAL) and data.labels is None
    longest = max(len(line.split()) for line in REAL) + 2  # [CLS] … [SEP]
    assert inputs["input_ids"].shape == (len(REAL), longest) and inputs["input_ids"].dtype == torch.int64
    assert inputs["attention_mask"].sum(1).tolist() == [len(line.split()) + 2 for line in REAL]
    assert (inputs["input_ids"][inputs["attention_mask"] == 0] == 0).all()  # [PAD]
    assert inputs["input_ids"][1, :5].tolist() == [2, 5 + WORDS.index("a"), 5 + WORDS.index("dog"), 12, 3]
    assert any("padding" in note for note in data.notes)


def test_max_length_truncates_and_can_be_the_padded_length(sentences, tokenizer_dir):
    short = load_calibration(sentences, CalibrationSpec(tokenizer=str(tokenizer_dir), max_length=6))
    assert short.inputs["input_ids"].shape[1] == 6
    assert short.inputs["input_ids"][:, -1][short.inputs["attention_mask"][:, -1] == 1].eq(3).all()  # [SEP] kept
    assert any("truncated" in note for note in short.notes)
    fixed = load_calibration(
        sentences, CalibrationSpec(tokenizer=str(tokenizer_dir), max_length=24, padding="max_length")
    )
    assert fixed.inputs["input_ids"].shape == (len(REAL), 24)
    few = load_calibration(sentences, CalibrationSpec(tokenizer=str(tokenizer_dir), max_samples=3, seed=1))
    assert few.count == 3


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing_tokenizer", "tokenizer folder .* does not exist"),
        ("empty_tokenizer", "holds no tokenizer"),
        ("empty_file", "no non-empty lines"),
        ("no_tokenizer", "needs the model's tokenizer folder"),
        ("not_utf8", "not UTF-8 text"),
        ("text_without_any_setting", "tokenizer folder"),
    ],
)
def test_text_errors_are_one_readable_line(tmp_path, sentences, tokenizer_dir, setup, message):
    spec = CalibrationSpec(tokenizer=str(tokenizer_dir))
    path = sentences
    if setup == "missing_tokenizer":
        spec = CalibrationSpec(tokenizer=str(tmp_path / "nowhere"))
    elif setup == "empty_tokenizer":
        (tmp_path / "empty").mkdir()
        spec = CalibrationSpec(tokenizer=str(tmp_path / "empty"))
    elif setup == "empty_file":
        path = tmp_path / "blank.txt"
        path.write_text("\n  \n\n")
    elif setup == "no_tokenizer":
        spec = CalibrationSpec(kind="text")
    elif setup == "not_utf8":
        path = tmp_path / "latin1.txt"
        path.write_bytes("café au lait\n".encode("latin-1"))
    elif setup == "text_without_any_setting":
        spec = CalibrationSpec()
    with pytest.raises(CalibrationError, match=message) as caught:
        load_calibration(path, spec)
    assert "\n" not in str(caught.value)


def test_text_calibration_compresses_a_bert_end_to_end(sentences, tokenizer_dir):
    torch.manual_seed(0)
    model = tiny_bert().eval()
    data = load_calibration(sentences, CalibrationSpec(tokenizer=str(tokenizer_dir)))
    config = CompressionConfig(rounds=1, transform_iters=3, weight_iters=3, batch_size=4, holdout_fraction=0.25)
    result = compress(model, data.inputs, 4.0, config=config)
    assert result.evaluation["holdout_samples"] == 3
    hidden = result.evaluation["outputs"][0]
    assert hidden["numel"] < 3 * data.inputs["input_ids"].shape[1] * 32  # real tokens only
    assert 0.5 < hidden["cosine"] <= 1.0 + 1e-9


@pytest.fixture
def registered():
    register_architecture("tiny-text-bert", tiny_bert, replace=True)
    yield "tiny-text-bert"
    unregister_architecture("tiny-text-bert")


def test_cli_compresses_from_a_text_file_and_a_tokenizer_folder(tmp_path, sentences, tokenizer_dir, registered):
    torch.manual_seed(0)
    torch.save(tiny_bert().state_dict(), tmp_path / "bert.pt")
    out = tmp_path / "bert.l2"
    common = ["compress", str(tmp_path / "bert.pt"), "--arch", registered, "--calibration", str(sentences)]
    code = main(
        [*common, "--tokenizer", str(tokenizer_dir), "--max-length", "16", "--target-ratio", "4", "--rounds", "1"]
        + ["--transform-iters", "2", "--weight-iters", "2", "--batch-size", "4", "--output-keys", "last_hidden_state"]
        + ["-o", str(out)]
    )
    assert code == 0
    decoded = load_l2(out)
    assert decoded.keys() == tiny_bert().state_dict().keys()


def test_cli_reports_a_missing_tokenizer_folder_in_one_line(tmp_path, sentences, registered, capsys):
    torch.save(tiny_bert().state_dict(), tmp_path / "bert.pt")
    code = main(
        ["compress", str(tmp_path / "bert.pt"), "--arch", registered, "--calibration", str(sentences)]
        + ["--tokenizer", str(tmp_path / "missing"), "--target-ratio", "4"]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("l2 compress: tokenizer folder") and "does not exist" in err and "\n" not in err


def test_cli_names_the_outputs_that_exist_when_output_keys_is_wrong(
    tmp_path, sentences, tokenizer_dir, registered, capsys
):
    torch.save(tiny_bert().state_dict(), tmp_path / "bert.pt")
    code = main(
        ["compress", str(tmp_path / "bert.pt"), "--arch", registered, "--calibration", str(sentences)]
        + ["--tokenizer", str(tokenizer_dir), "--target-ratio", "4", "--output-keys", "logits"]
    )
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert code == 2 and last.startswith("l2 compress: the model returns no output named 'logits'")
    assert "last_hidden_state" in last
