"""emotion-summary: LongEmotion Emotion Summary with a QLoRA fine-tuned Qwen2-7B-Instruct.

The sub-packages are the pipeline's stages, in order:

- `core`: command-line options, errors and exit codes, paths, atomic writes, plots;
- `data`: records, PsyQA conversion, download, folds and the leakage guard, overlap fingerprints;
- `prompting`: the prompt (one definition, saved into every checkpoint), fitting a report into a
  model's window, reading replies;
- `modeling`: device and dtype choice, loading, memory levers, LoRA adapters, generation batching,
  the model wrapper, the answer-only loss, merging;
- `training`: config and presets, the run directory, checkpoints, the trainer and the train command;
- `predicting`: the predict command, its backends, the extractive baseline, the submission file;
- `scoring`: ROUGE and BERTScore, the LLM judge, the evaluate command and its report page;
- `teacher`: an OpenAI-compatible client, labelling with a teacher, synthetic reports;
- `gpusim`: the simulated GPU and the memory planner.

`stats`, `pipeline` and `commands` compose the stages into commands. Light modules (records,
atomic_io, prompt, submission, metrics, converters) import no torch, so checking or scoring a file is
instant; the model and trainer live in modules that import it.
"""

from emotion_summary.core.quiet import silence_known_noise

__version__ = "0.1.0"

# Any entry point may import transformers, which imports peft and so bitsandbytes: filter their known
# noise before that, here (stdlib only, no torch).
silence_known_noise()
