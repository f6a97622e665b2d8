"""Head importance of any local transformers model: python -m sinkmoe.inspect MODEL_DIR --text FILE

Runs the text through the model (weights from MODEL_DIR, no network) with its attention on
sinkmoe, gathers every layer's router values G (1 - attention mass on the sink, or the output
gate), and prints per layer the head importance (mean G over the counted tokens), its coefficient
of variation, the effective number of heads ((sum Imp)^2 / sum Imp^2) and the dormant heads
(importance below each threshold). Writes layers.csv, heads.csv and a layer x head heatmap
(importance.png) to --out, and says which of the paper's mechanisms the model uses.
"""
from __future__ import annotations

import argparse
import csv
import os
import pathlib
import sys

import torch

MECHANISMS = {
    "vanilla": "vanilla attention: the first token is the sink, G = 1 - attention on it",
    "sink": "sink attention: a learned sink logit per head (GPT-OSS), G = 1 - sink mass",
    "gated": "gated attention: a sigmoid output gate (Qwen3-Next), G = the gate",
}


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m sinkmoe.inspect", description=__doc__.split("\n")[0])
    p.add_argument("model_dir", help="a local model directory (config.json, weights, tokenizer)")
    p.add_argument("--text", required=True, help="a UTF-8 text file to run through the model")
    p.add_argument("--out", default="sinkmoe_inspect", help="output folder (default: %(default)s)")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per sequence (default: 256)")
    p.add_argument("--batch", type=int, default=4, help="sequences per forward pass (default: 4)")
    p.add_argument("--max-tokens", type=int, default=16384,
                   help="tokens of the text to use at most (default: 16384)")
    p.add_argument("--thresholds", default="0.1,0.2",
                   help="dormant-head thresholds on importance (default: %(default)s)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    return p.parse_args(argv)


def load(model_dir: str, dtype: torch.dtype):
    from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer)

    import sinkmoe.hf
    sinkmoe.hf.register()
    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    causal = any(a.endswith("ForCausalLM") for a in (config.architectures or []))
    cls = AutoModelForCausalLM if causal else AutoModel
    kwargs = dict(attn_implementation="sinkmoe", local_files_only=True, dtype=dtype)
    model = cls.from_pretrained(model_dir, **kwargs).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    return model, tokenizer


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a text ([CLS] ... [SEP], <s> ...)."""
    plain = tokenizer("word", add_special_tokens=False)["input_ids"]
    full = tokenizer("word", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return full[:start], full[start + len(plain):]
    return [], []


def token_chunks(tokenizer, text: str, seq_len: int, max_tokens: int) -> list[list[int]]:
    """The text's tokens in sequences of at most seq_len, each with the tokenizer's special
    tokens (an encoder's [CLS] is the sink its heads attend to)."""
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"][:max_tokens]
    prefix, suffix = special_tokens(tokenizer)
    body = max(1, seq_len - len(prefix) - len(suffix))
    return [prefix + ids[i:i + body] + suffix for i in range(0, len(ids), body)]


def padded_batch(chunks: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and attention_mask of right-padded sequences."""
    width = max(len(c) for c in chunks)
    ids = torch.full((len(chunks), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, c in enumerate(chunks):
        ids[i, :len(c)] = torch.tensor(c)
        mask[i, :len(c)] = 1
    return ids, mask


def inspect_model(model, tokenizer, text: str, seq_len: int, batch: int, max_tokens: int,
                  thresholds: list[float], progress: bool = True):
    """Per-layer head metrics (sinkmoe.LossReport) over the text."""
    from tqdm import tqdm

    import sinkmoe
    import sinkmoe.hf
    chunks = token_chunks(tokenizer, text, seq_len, max_tokens)
    if not chunks:
        raise ValueError("sinkmoe.inspect: the text gives no tokens")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    sums = None
    names = None
    batches = range(0, len(chunks), batch)
    for start in tqdm(batches, desc="sinkmoe.inspect", unit="batch", disable=not progress):
        ids, mask = padded_batch(chunks[start:start + batch], pad)
        with torch.no_grad(), sinkmoe.hf.Collector(detach=True) as collector:
            model(input_ids=ids, attention_mask=mask)
        routers, counted = collector.layers()
        part = sinkmoe.ops.balance_sums([r.float().cpu() for r in routers],
                                        [c.cpu() for c in counted])
        sums = part if sums is None else sums + part
        names = collector.names()
    table = sinkmoe.ops.balance_report(sums, 0.0, 0, False, [], thresholds)
    from .balance import _report
    return _report(table, sums.shape[1] - 1, thresholds), names, len(chunks)


def write_outputs(report, names, out: pathlib.Path, title: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    thresholds = report.dormant_thresholds
    with open(out / "layers.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["layer", "module", "tokens", "cv", "effective_heads"] +
                   [f"dormant_below_{t:g}" for t in thresholds])
        for l, name in enumerate(names):
            w.writerow([l, name, int(report.tokens[l]), f"{report.cv[l]:.6f}",
                        f"{report.effective_heads[l]:.4f}"] +
                       [f"{x:.4f}" for x in report.dormant_fraction[l]])
    with open(out / "heads.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["layer", "head", "importance"] + [f"dormant_below_{t:g}" for t in thresholds])
        for l, row in enumerate(report.importance):
            for h, imp in enumerate(row):
                w.writerow([l, h, f"{imp:.6f}"] + [int(imp < t) for t in thresholds])
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    layers, heads = len(report.importance), len(report.importance[0])
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * heads + 2), max(3.0, 0.35 * layers + 1.5)))
    image = ax.imshow(report.importance, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(heads))
    ax.set_yticks(range(layers))
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label="importance (mean G)")
    fig.tight_layout()
    fig.savefig(out / "importance.png", dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    thresholds = [float(t) for t in args.thresholds.split(",") if t]
    dtype = torch.float64 if args.dtype == "float64" else torch.float32
    import sinkmoe.hf
    model, tokenizer = load(args.model_dir, dtype)
    mechanism = sinkmoe.hf.mechanism(model)
    text = pathlib.Path(args.text).read_text(encoding="utf-8")
    report, names, sequences = inspect_model(model, tokenizer, text, args.seq_len, args.batch,
                                             args.max_tokens, thresholds)
    path = pathlib.Path(args.model_dir).resolve()
    model_name = "/".join(path.parts[-2:]) if path.name in ("model", "snapshots") else path.name
    print(f"model: {args.model_dir} ({type(model).__name__}, {model.config.model_type})")
    print(f"mechanism: {MECHANISMS[mechanism]}")
    print(f"text: {args.text}, {sequences} sequences of up to {args.seq_len} tokens")
    heads = len(report.importance[0])
    for l, name in enumerate(names):
        dormant = " ".join(
            f"<{t:g}: {[h for h, x in enumerate(report.importance[l]) if x < t]}"
            for t in thresholds)
        imp = " ".join(f"{x:.2f}" for x in report.importance[l])
        print(f"layer {l:2d} {name}: CV {report.cv[l]:.3f}, effective heads "
              f"{report.effective_heads[l]:.2f} of {heads}, dormant {dormant}")
        print(f"         importance {imp}")
    mean_cv = sum(report.cv) / len(report.cv)
    mean_eff = sum(report.effective_heads) / len(report.effective_heads)
    print(f"mean CV {mean_cv:.3f}, mean effective heads {mean_eff:.2f} of {heads}")
    out = pathlib.Path(args.out)
    write_outputs(report, names, out, f"{model_name}: head importance ({mechanism})")
    print(f"wrote {out / 'layers.csv'}, {out / 'heads.csv'}, {out / 'importance.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
