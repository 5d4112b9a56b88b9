"""Generate a tiny random-weight Llama model (with a locally trained tokenizer) for vLLM CPU tests.

No download: the weights are random (``transformers`` LlamaForCausalLM, seeded), the BPE
tokenizer is trained with ``tokenizers`` on the source text of a few standard-library modules.
The model is written once into a cache directory (``/work/main/.cache/tiny-llama`` unless
``TUNER_TINY_MODEL_DIR`` or ``--out`` says otherwise); a marker file written last makes
generation idempotent: a directory without the marker is regenerated from scratch.

    python -m tests.support.tiny_model [--out DIR]    # prints the directory

Shape: 2 layers, hidden 256, 4 heads of 64 (vLLM's CPU attention rejects head_dim 16),
vocab 2048, max_position_embeddings 4096, bf16 safetensors (~3 MB).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import shutil
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DIR = REPO_ROOT / ".cache" / "tiny-llama"
MARKER = ".tiny-model-complete"
#: Bump when the recipe changes so cached copies are regenerated.
RECIPE_VERSION = 1

VOCAB_SIZE = 2048
HIDDEN = 256
LAYERS = 2
HEADS = 4
HEAD_DIM = 64
MAX_POSITIONS = 4096

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def model_dir(out: str | os.PathLike[str] | None = None) -> Path:
    """Where the tiny model lives: ``out``, else $TUNER_TINY_MODEL_DIR, else .cache/tiny-llama."""
    if out is not None:
        return Path(out)
    env = os.environ.get("TUNER_TINY_MODEL_DIR")
    return Path(env) if env else DEFAULT_DIR


def _corpus() -> list[str]:
    """Training text for the tokenizer: source of standard-library modules (always on disk)."""
    import argparse as m1
    import collections as m2
    import email.message as m5
    import json.decoder as m3
    import textwrap as m4

    texts = [inspect.getsource(m) for m in (m1, m2, m3, m4, m5)]
    return [line for t in texts for line in t.splitlines() if line.strip()]


def _train_tokenizer(out: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=MAX_POSITIONS,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out))


def _write_model(out: Path, vocab_size: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        intermediate_size=4 * HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        head_dim=HEAD_DIM,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        tie_word_embeddings=False,
        torch_dtype="bfloat16",
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(str(out), safe_serialization=True)


def is_complete(path: Path) -> bool:
    marker = path / MARKER
    if not marker.is_file():
        return False
    try:
        return bool(json.loads(marker.read_text()).get("recipe") == RECIPE_VERSION)
    except (OSError, ValueError):
        return False


def ensure_tiny_model(out: str | os.PathLike[str] | None = None) -> Path:
    """Generate the tiny model unless a complete copy exists; return its directory."""
    path = model_dir(out)
    if is_complete(path):
        return path
    if path.exists():
        shutil.rmtree(path)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    _train_tokenizer(tmp)
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(str(tmp)))
    _write_model(tmp, vocab)
    (tmp / MARKER).write_text(json.dumps({"recipe": RECIPE_VERSION, "vocab_size": vocab}))
    try:
        tmp.rename(path)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
        if not is_complete(path):
            raise
    return path


def vocab_size(path: Path) -> int:
    """Vocabulary size of a generated model (read from its config)."""
    return int(json.loads((path / "config.json").read_text())["vocab_size"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="target directory (default: $TUNER_TINY_MODEL_DIR or "
                        f"{DEFAULT_DIR})")
    args = parser.parse_args(argv)
    print(ensure_tiny_model(args.out))


if __name__ == "__main__":
    main()
