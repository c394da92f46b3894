"""Make a tiny random-weight Llama model and a locally trained tokenizer for the real-vLLM tests.

    .venv-vllm/bin/python hack/make_tiny_model.py OUTDIR

Nothing comes from a model hub: the tokenizer is a byte-level BPE trained here on generated
text, the weights are random (seeded). The output is a normal Hugging Face model folder
(config.json, model.safetensors, tokenizer.json, tokenizer_config.json) that vLLM loads by path.
About 5M parameters, so a CPU server starts in seconds and a decode step takes milliseconds.

NB: run it with the vLLM venv's Python (it needs torch, transformers and tokenizers, which the
project venv does not carry). Idempotent: an OUTDIR that already holds a complete model is kept.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import random
import sys

#: Sized so that the model is ~5M parameters and its KV cache per token is small.
ARCHITECTURE = {
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "vocab_size": 2048,
}
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]
MARKER = "slm-operator-tiny-model"


def _corpus(*, seed: int, lines: int) -> list[str]:
    """Pseudo-words from syllables: enough variety for a few thousand BPE merges."""
    rng = random.Random(seed)
    onsets = ["", "b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "st", "tr", "pl"]
    vowels = ["a", "e", "i", "o", "u", "ai", "ou", "ee"]
    codas = ["", "", "n", "r", "s", "t", "l", "ng", "ck"]
    words = [
        "".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas) for _ in range(rng.randint(1, 3)))
        for _ in range(3000)
    ]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(5, 40))) + rng.choice([".", "?", "!"])
            for _ in range(lines)]


def build_tokenizer(outdir: pathlib.Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=ARCHITECTURE["vocab_size"],
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(seed=0, lines=20000), trainer=trainer)
    tokenizer.save(str(outdir / "tokenizer.json"))
    (outdir / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "model_max_length": ARCHITECTURE["max_position_embeddings"],
                "clean_up_tokenization_spaces": False,
            },
            indent=2,
        )
    )
    (outdir / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, indent=2)
    )


def build_model(outdir: pathlib.Path, *, seed: int) -> int:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        **ARCHITECTURE,
        bos_token_id=SPECIAL_TOKENS.index("<s>"),
        eos_token_id=SPECIAL_TOKENS.index("</s>"),
        tie_word_embeddings=False,
        torch_dtype="bfloat16",
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(str(outdir), safe_serialization=True)
    return sum(p.numel() for p in model.parameters())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=pathlib.Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    outdir: pathlib.Path = args.outdir
    marker = outdir / MARKER
    if marker.exists() and (outdir / "config.json").exists():
        print(f"tiny model already in {outdir}")
        return 0
    outdir.mkdir(parents=True, exist_ok=True)
    build_tokenizer(outdir)
    params = build_model(outdir, seed=args.seed)
    marker.write_text(json.dumps({"parameters": params, "seed": args.seed}) + "\n")
    print(f"tiny Llama with {params:,} parameters written to {outdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
