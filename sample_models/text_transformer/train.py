"""Build the tokenizer and train the text classifier:
python -m sample_models.text_transformer.train"""

from __future__ import annotations

import time

import torch
import torch.nn as nn
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

from sample_models.text_transformer import data
from sample_models.text_transformer.model import build

VOCAB_SIZE = 4000


def build_tokenizer() -> None:
    from collections import Counter

    train = data.paragraphs()["train"]
    normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    pre = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    counts: Counter[str] = Counter()
    for text, _ in train:
        counts.update(w for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(text)))
    words = [w for w, c in counts.most_common(VOCAB_SIZE - 2) if c >= 2]
    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.save(str(data.HERE / "tokenizer.json"))
    print(f"tokenizer: {len(vocab)} tokens")


def main(epochs: int = 20, seed: int = 0) -> None:
    build_tokenizer()
    torch.manual_seed(seed)
    train, test = data.load("train"), data.load("test")
    model = build(vocab_size=VOCAB_SIZE, classes=len(data.TOPICS))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    steps = epochs * ((len(train) + 31) // 32)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    x, y = train.inputs["input_ids"], train.target
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=generator)
        for i in range(0, len(x), 32):
            idx = perm[i : i + 32]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            acc = (model(test.inputs["input_ids"]).argmax(-1) == test.target).float().mean()
        print(f"epoch {epoch + 1}/{epochs}: loss {loss.item():.3f} test accuracy {acc:.4f}")
    out = data.HERE / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out))
    print(
        f"saved {out} ({out.stat().st_size} bytes), {len(train)} train / {len(test)} test "
        f"paragraphs, {time.perf_counter() - start:.1f}s"
    )


if __name__ == "__main__":
    main()
