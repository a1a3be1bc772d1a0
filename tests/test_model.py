"""The model wrapper on a tiny random Qwen2: 4-bit loading, the bitsandbytes CPU trap, MLP tiling."""

import pytest
import torch

from emotion_summary.training.config import resolve_config
from emotion_summary.modeling.summary_model import Qwen2EmotionSummaryModel
from emotion_summary.modeling.loading import disable_cpu_weight_repacking
from emotion_summary.modeling.levers import tile_mlp
from emotion_summary.prompting.encode import fit_report

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wrapper():
    return Qwen2EmotionSummaryModel.for_training(resolve_config("cpu-smoke"))


def test_loads_in_4bit_with_lora_on_every_linear_projection(wrapper):
    import bitsandbytes as bnb

    base = wrapper.model.get_base_model()
    proj = base.model.layers[0].mlp.up_proj
    assert isinstance(proj.base_layer, bnb.nn.Linear4bit)
    assert proj.base_layer.weight.quant_type == "nf4"
    targets = {n.split(".")[-1] for n, m in base.named_modules() if hasattr(m, "lora_A")}
    assert targets == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def _smoke_batch(wrapper):
    from emotion_summary.prompting.encode import encode_example
    from emotion_summary.modeling.loss import collate
    from emotion_summary.data.records import read_records
    from emotion_summary.data.sample_data import SMOKE_DATA

    rec = read_records(SMOKE_DATA[0])[0]
    return rec, collate([encode_example(wrapper.tokenizer, wrapper.prompt, rec, 1024)], wrapper.tokenizer.pad_token_id)


def _packed_layers(model) -> int:
    return sum(bool(getattr(getattr(m.weight, "quant_state", None), "packing_format_for_cpu", False))
               for m in model.modules() if hasattr(m, "support_avx512bf16_for_cpu"))


@pytest.fixture
def avx512_bf16_cpu(monkeypatch):
    """Every 4-bit layer built from here on believes the CPU has AVX512-BF16, whatever this CPU has:
    bitsandbytes 0.49-0.50 then takes its in-place weight-repacking branch."""
    import bitsandbytes.nn.modules as bnb_modules

    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: True)


def test_eval_forward_repacks_4bit_weights_in_place_on_an_avx512_bf16_cpu(avx512_bf16_cpu, monkeypatch):
    """The trap, shown on any CPU: without our switch, one eval forward without grad repacks every
    4-bit weight in place (on an AVX512-BF16 CPU the next training step then fails with 'a view of a
    leaf Variable ... in-place')."""
    from emotion_summary.modeling import loading as model_module

    monkeypatch.setattr(model_module, "disable_cpu_weight_repacking", lambda model: 0)
    trap = Qwen2EmotionSummaryModel.for_training(resolve_config("cpu-smoke"))
    _, batch = _smoke_batch(trap)
    trap.model.eval()
    with torch.no_grad():
        try:
            trap.loss(batch)
        except (RuntimeError, AssertionError):  # a CPU without the instruction cannot multiply the
            pass  # repacked weights; a layer whose rows are no multiple of 32 cannot be repacked
    assert _packed_layers(trap.model) >= 1


def test_train_evaluate_train_again_with_4bit_weights_on_an_avx512_bf16_cpu(avx512_bf16_cpu):
    """bitsandbytes 0.49-0.50 repacks 4-bit weights in place in eval on AVX512-BF16 CPUs; the next
    training step then failed with 'a view of a leaf Variable ... in-place'. Loading turns it off."""
    wrapper = Qwen2EmotionSummaryModel.for_training(resolve_config("cpu-smoke"))
    rec, batch = _smoke_batch(wrapper)
    wrapper.model.train()
    wrapper.loss(batch).backward()
    wrapper.model.eval()
    with torch.no_grad():
        wrapper.loss(batch)
        wrapper.generate([fit_report(wrapper.tokenizer, wrapper.prompt, rec, wrapper.config.max_seq_len, 2)], max_new_tokens=2)
    wrapper.model.train()
    wrapper.loss(batch).backward()  # raised RuntimeError before the fix
    assert _packed_layers(wrapper.model) == 0
    assert disable_cpu_weight_repacking(wrapper.model) == 14  # 7 projections x 2 layers


def test_tiled_mlp_gives_the_same_outputs_and_gradients():
    from transformers import Qwen2Config
    from transformers.models.qwen2.modeling_qwen2 import Qwen2MLP

    torch.manual_seed(0)
    mlp = Qwen2MLP(Qwen2Config(hidden_size=16, intermediate_size=40))
    x = torch.randn(2, 37, 16, requires_grad=True)
    y = mlp(x)
    y.square().sum().backward()
    want_out, want_grad = y.detach(), x.grad.clone()
    x.grad = None
    assert tile_mlp(mlp, 8) == 1
    y2 = mlp(x)
    y2.square().sum().backward()
    assert torch.allclose(y2, want_out, atol=1e-6)
    assert torch.allclose(x.grad, want_grad, atol=1e-6)


def test_adapter_of_another_base_model_is_refused(tmp_path):
    import json

    from emotion_summary.core.errors import ModelError

    cfg = resolve_config("cpu-smoke")
    wrapper = Qwen2EmotionSummaryModel.for_training(cfg)
    wrapper.save(tmp_path / "a")
    adapter_cfg = tmp_path / "a" / "adapter_config.json"
    data = json.loads(adapter_cfg.read_text())
    data["base_model_name_or_path"] = "meta-llama/Llama-3.1-8B-Instruct"
    adapter_cfg.write_text(json.dumps(data))
    with pytest.raises(ModelError, match="trained on 'meta-llama/Llama-3.1-8B-Instruct', not on 'tiny'"):
        Qwen2EmotionSummaryModel.load(tmp_path / "a")


def test_16bit_weights_stay_16bit_for_training():
    """peft's prepare_model_for_kbit_training would upcast the embedding and LM head to fp32
    (+2.2 GB for Qwen2-7B); ours keeps them in the compute dtype and trains only LoRA."""
    wrapper = Qwen2EmotionSummaryModel.for_training(resolve_config("cpu-smoke", compute_dtype="bf16"))
    base = wrapper.model.get_base_model()
    assert base.get_input_embeddings().weight.dtype == torch.bfloat16
    assert base.lm_head.weight.dtype == torch.bfloat16
    trainable = {n for n, p in wrapper.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    ids = torch.tensor([[151644, 872, 198, 108386, 151645, 198, 9707]])
    labels = torch.tensor([[-100, -100, -100, -100, -100, 198, 9707]])
    wrapper.model.train()
    wrapper.loss({"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}).backward()
    assert all(p.grad is not None for n, p in wrapper.model.named_parameters() if "lora_B" in n)


def smoke_batch(wrapper):
    from emotion_summary.prompting.encode import encode_example
    from emotion_summary.modeling.loss import collate
    from emotion_summary.data.records import read_records
    from emotion_summary.data.sample_data import SMOKE_DATA

    rec = read_records(SMOKE_DATA[0])[0]
    return collate([encode_example(wrapper.tokenizer, wrapper.prompt, rec, 1024)], wrapper.tokenizer.pad_token_id)


@pytest.mark.parametrize("quantization", ["nf4", "none"])
def test_checkpointed_training_reaches_lora_without_the_input_grad_hook(quantization):
    """Non-reentrant checkpointing needs no input that requires grad: the embedding output stays
    gradient-free (no hook keeps it alive), LoRA gets gradients, the base model none. The reentrant
    variant without the hook raised 'element 0 of tensors does not require grad'."""
    wrapper = Qwen2EmotionSummaryModel.for_training(resolve_config("cpu-smoke", quantization=quantization))
    base = wrapper.model.get_base_model()
    assert base.is_gradient_checkpointing
    embed = base.get_input_embeddings()
    assert not embed._forward_hooks
    assert not embed(torch.tensor([[1, 2]])).requires_grad
    wrapper.model.train()
    loss = wrapper.loss(smoke_batch(wrapper))
    loss.backward()
    named = dict(wrapper.model.named_parameters())
    lora = {n: p for n, p in named.items() if "lora_" in n}
    assert lora and all(p.grad is not None for p in lora.values())
    assert any(p.grad.abs().sum() > 0 for n, p in lora.items() if "lora_B" in n)  # B=0: A's grad is 0 at first
    assert all(p.grad is None for n, p in named.items() if "lora_" not in n)


def test_lora_weights_are_in_the_compute_dtype():
    """bf16 adapters in a bf16 model (peft would keep them fp32 and cast every LoRA input to fp32)."""
    wrapper = Qwen2EmotionSummaryModel.for_training(resolve_config("cpu-smoke", compute_dtype="bf16"))
    lora = [p for n, p in wrapper.model.named_parameters() if "lora_" in n]
    assert lora and all(p.dtype == torch.bfloat16 for p in lora)
    wrapper = Qwen2EmotionSummaryModel.for_training(resolve_config("cpu-smoke", compute_dtype="fp32"))
    assert all(p.dtype == torch.float32 for n, p in wrapper.model.named_parameters() if "lora_" in n)


def test_wrapper_loss_is_transformers_full_logits_loss(wrapper):
    batch = smoke_batch(wrapper)
    wrapper.model.eval()
    with torch.no_grad():
        ours = wrapper.loss(batch)
        full = wrapper.model(**batch).loss
    assert ours.item() == pytest.approx(full.item(), abs=1e-5)


def test_generate_ids_prefills_long_prompts_in_chunks_with_the_same_tokens(wrapper, monkeypatch):
    from emotion_summary.modeling import generation as model_module
    from emotion_summary.data.records import read_records
    from emotion_summary.data.sample_data import SMOKE_DATA

    records = read_records(SMOKE_DATA[0])[:3]
    fitted = [fit_report(wrapper.tokenizer, wrapper.prompt, r, wrapper.config.max_seq_len, 8) for r in records]
    prompts = [f.ids for f in fitted]
    whole = wrapper.generate_ids(prompts, 8, batch_size=3)
    chunks = []
    hook = wrapper.model.get_base_model().register_forward_pre_hook(
        lambda m, args, kwargs: chunks.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    monkeypatch.setattr(model_module, "PREFILL_CHUNK_TOKENS", 768)  # 256 tokens per row per pass
    chunked = wrapper.generate_ids(prompts, 8, batch_size=3)
    hook.remove()
    assert chunked == whole and all(len(ids) == 8 for ids in whole)
    width = max(len(p) for p in prompts)
    assert width > 256 and chunks[0] == (3, 256)
    assert len(chunks) == -(-width // 256) + 7  # prefill passes, then 7 decode steps
    texts = wrapper.generate(fitted, max_new_tokens=8, batch_size=2)
    assert texts[0] == wrapper.tokenizer.decode(wrapper.generate_ids(prompts[:1], 8)[0], skip_special_tokens=True)


def _attention_calls_and_grads(save_attention: bool, mlp_tile_tokens: int):
    """Loss, attention kernels actually run (forward, recomputation) and LoRA gradients of one step."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from emotion_summary.modeling.levers import attention_kernels

    kernels = attention_kernels()

    class Count(TorchDispatchMode):  # outermost: an output served from the checkpoint's store never gets here
        calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.calls += func in kernels
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    wrapper = Qwen2EmotionSummaryModel.for_training(resolve_config(
        "cpu-smoke", quantization="none", save_attention=save_attention, mlp_tile_tokens=mlp_tile_tokens))
    wrapper.model.train()
    with Count():
        loss = wrapper.loss(smoke_batch(wrapper))
        loss.backward()
    grads = {n: p.grad.clone() for n, p in wrapper.model.named_parameters() if p.grad is not None}
    return loss.item(), Count.calls, grads


@pytest.mark.parametrize("mlp_tile_tokens", [0, 128])
def test_save_attention_runs_the_attention_once_with_the_same_loss_and_gradients(mlp_tile_tokens):
    """Checkpointing recomputes a layer in the backward, its attention too (on a CPU the attention is
    most of a 4K step); with save_attention the forward's attention output is reused: one attention
    kernel per layer instead of two, same numbers, also with the MLP tiles' own checkpoints inside."""
    loss, calls, grads = _attention_calls_and_grads(False, mlp_tile_tokens)
    saved_loss, saved_calls, saved_grads = _attention_calls_and_grads(True, mlp_tile_tokens)
    layers = 2  # the tiny Qwen2
    assert (calls, saved_calls) == (2 * layers, layers)
    assert saved_loss == pytest.approx(loss, rel=1e-6)
    assert grads.keys() == saved_grads.keys() and grads
    assert all(torch.allclose(grads[n], saved_grads[n], atol=1e-6) for n in grads)
