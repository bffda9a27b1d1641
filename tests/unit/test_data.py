"""Data sources: built-in digits, tensor files, text files, and user functions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from compressor.data.batches import InputLayout, collate, few_shot_subset, make_loader
from compressor.data.sources import load_source, parse_source
from compressor.data.tokenization import load_tokenizer
from compressor.errors import DataError
from compressor.spec.sections import InputSpec
from tests.conftest import SAMPLES

IMAGE = InputLayout.from_specs({"x": InputSpec(shape=[1, 1, 8, 8])})
FLAT = InputLayout.from_specs({"x": InputSpec(shape=[1, 64])})
TEXT = InputLayout.from_specs({"input_ids": InputSpec(shape=[1, 64], dtype="int64")})
TOKENIZER = SAMPLES / "text_transformer" / "tokenizer.json"


def load(text, layout=IMAGE, base=None, **kw):
    return load_source(parse_source(text, base), layout, **kw)


def test_builtin_digits_split_is_deterministic_and_reshaped():
    train = load("builtin:digits?split=train")
    test = load("builtin:digits?split=test")
    assert (len(train), len(test)) == (1347, 450)
    x, _y = test[0]
    assert x["x"].shape == (1, 8, 8) and x["x"].dtype == torch.float32
    assert float(x["x"].min()) >= 0.0 and float(x["x"].max()) <= 1.0
    again = load("builtin:digits?split=test")
    assert torch.equal(test.inputs["x"], again.inputs["x"])
    assert sorted(set(test.target.tolist())) == list(range(10))
    flat = load("builtin:digits?split=test", FLAT)
    assert flat[0][0]["x"].shape == (64,)


def test_builtin_digits_rejects_bad_split():
    with pytest.raises(DataError, match="split must be train, test or all"):
        load("builtin:digits?split=val")


def test_unknown_builtin_and_unknown_source():
    with pytest.raises(DataError, match="unknown built-in dataset 'mnist'"):
        parse_source("builtin:mnist")
    with pytest.raises(DataError, match="cannot tell what data source"):
        parse_source("some words")


@pytest.mark.parametrize("suffix", [".safetensors", ".npz", ".pt"])
def test_tensor_files_with_named_inputs_and_labels(tmp_path, suffix):
    x = torch.rand(12, 64)
    y = torch.arange(12) % 10
    path = tmp_path / f"data{suffix}"
    if suffix == ".safetensors":
        save_file({"x": x, "labels": y}, str(path))
    elif suffix == ".npz":
        np.savez(path, x=x.numpy(), labels=y.numpy())
    else:
        torch.save({"x": x, "labels": y}, path)
    ds = load(str(path))
    assert len(ds) == 12
    inputs, target = ds[3]
    assert inputs["x"].shape == (1, 8, 8) and torch.equal(inputs["x"].flatten(), x[3])
    assert int(target) == 3


def test_tensor_file_with_wrong_names(tmp_path):
    path = tmp_path / "d.safetensors"
    save_file({"a": torch.rand(4, 64), "b": torch.rand(4, 64)}, str(path))
    with pytest.raises(DataError, match=r"holds tensors \['a', 'b'\] but the model's inputs are"):
        load(str(path))


def test_tensor_file_with_wrong_shape(tmp_path):
    path = tmp_path / "d.safetensors"
    save_file({"x": torch.rand(4, 50), "labels": torch.zeros(4, dtype=torch.long)}, str(path))
    with pytest.raises(DataError, match=r"shape \(50,\), the model expects \(1, 8, 8\)"):
        load(str(path))


def test_tensor_file_length_mismatch(tmp_path):
    path = tmp_path / "d.safetensors"
    save_file({"x": torch.rand(4, 64), "labels": torch.zeros(3, dtype=torch.long)}, str(path))
    with pytest.raises(DataError, match="different numbers of examples"):
        load(str(path))


def test_missing_data_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load(str(tmp_path / "none.safetensors"))


def tokenizer():
    return load_tokenizer(TOKENIZER, 64)


def test_text_jsonl_csv_txt(tmp_path):
    (tmp_path / "a.jsonl").write_text(
        json.dumps({"text": "The for statement", "label": 1})
        + "\n\n"
        + json.dumps({"text": "a string method", "label": 0})
        + "\n"
    )
    (tmp_path / "a.csv").write_text('text,label\n"The for statement",1\nstrings,0\n')
    (tmp_path / "a.txt").write_text("The for statement\n\nanother line\n")
    tok = tokenizer()
    jl = load(str(tmp_path / "a.jsonl"), TEXT, tokenizer=tok)
    csv_ds = load(str(tmp_path / "a.csv"), TEXT, tokenizer=tok)
    txt = load(str(tmp_path / "a.txt"), TEXT, tokenizer=tok)
    assert len(jl) == 2 and len(csv_ds) == 2 and len(txt) == 2
    assert torch.equal(jl[0][0]["input_ids"], csv_ds[0][0]["input_ids"])
    assert jl[0][0]["input_ids"].shape == (64,) and int(jl[0][1]) == 1
    assert txt.target is None
    assert int((jl[0][0]["input_ids"] != 0).sum()) == 3  # "the", "for", "statement"


def test_text_errors_name_the_line_and_fix(tmp_path):
    tok = tokenizer()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok", "label": 0}\n{not json}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        load(str(bad), TEXT, tokenizer=tok)
    nofield = tmp_path / "nofield.jsonl"
    nofield.write_text('{"sentence": "hello"}\n')
    with pytest.raises(
        DataError, match=r"nofield\.jsonl:1: each line must be an object with a 'text'"
    ):
        load(str(nofield), TEXT, tokenizer=tok)
    ok = load(str(nofield) + "?text=sentence", TEXT, tokenizer=tok)
    assert len(ok) == 1
    nocol = tmp_path / "c.csv"
    nocol.write_text("body,label\nx,1\n")
    with pytest.raises(DataError, match="header has no 'text' column"):
        load(str(nocol), TEXT, tokenizer=tok)
    strings = tmp_path / "s.jsonl"
    strings.write_text('{"text": "a", "label": "spam"}\n{"text": "b", "label": "ham"}\n')
    with pytest.raises(DataError, match=r"give data\.label_names"):
        load(str(strings), TEXT, tokenizer=tok)
    named = load(str(strings), TEXT, tokenizer=tok, label_names=["ham", "spam"])
    assert named.target.tolist() == [1, 0]
    with pytest.raises(DataError, match="needs a tokenizer"):
        load(str(strings), TEXT)


def test_user_dataset_function_and_dataloader():
    ds = load("tests.unit.data_sources:pairs_dataset?n=10", FLAT)
    batch = collate([ds[i] for i in range(4)])
    assert batch.inputs["x"].shape == (4, 64) and batch.target.tolist() == [0, 1, 2, 0]
    loader = make_loader(
        load("tests.unit.data_sources:dict_loader", FLAT), 4, shuffle=False, seed=0
    )
    batches = list(loader)
    assert [len(b) for b in batches] == [4, 2] and batches[1].target.tolist() == [0, 1]


def test_user_function_errors():
    with pytest.raises(DataError, match=r"cannot import module 'tests\.unit\.nope'"):
        load("tests.unit.nope:f", FLAT)
    with pytest.raises(DataError, match="returned int"):
        load("tests.unit.data_sources:not_a_dataset", FLAT)
    with pytest.raises(DataError, match="safe mode refuses"):
        load("tests.unit.data_sources:pairs_dataset", FLAT, safe=True)


def test_shuffled_loader_is_deterministic_under_a_seed():
    ds = load("builtin:digits?split=test")
    first = [b.target.tolist() for b in make_loader(ds, 64, shuffle=True, seed=3)]
    again = [b.target.tolist() for b in make_loader(ds, 64, shuffle=True, seed=3)]
    other = [b.target.tolist() for b in make_loader(ds, 64, shuffle=True, seed=4)]
    assert first == again and first != other


def test_few_shot_keeps_n_per_class():
    ds = load("builtin:digits?split=train")
    few = few_shot_subset(ds, 10, seed=0)
    counts = torch.bincount(few.target, minlength=10)
    assert len(few) == 100 and counts.tolist() == [10] * 10
    assert not torch.equal(few.target, few_shot_subset(ds, 10, seed=1).target) or not torch.equal(
        few.inputs["x"], few_shot_subset(ds, 10, seed=1).inputs["x"]
    )
