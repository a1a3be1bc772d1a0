"""emotion-summary: LongEmotion Emotion Summary with a QLoRA fine-tuned Qwen2-7B-Instruct.

Light modules (records, atomic_io, prompt, submission, metrics, converters) import no torch, so
checking or scoring a file is instant; the model and trainer live in modules that import it.
"""

from emotion_summary.quiet import silence_known_noise

__version__ = "0.1.0"

# Any entry point may import transformers, which imports peft and so bitsandbytes: filter their known
# noise before that, here (stdlib only, no torch).
silence_known_noise()
