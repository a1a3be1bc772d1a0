"""GPU-path choices without a GPU: CUDA queries answered for a named card (T4 = sm75, RTX 3060 = sm86),
attention with repeated K/V heads against plain SDPA on a tiny Qwen2, generation batches by memory,
the out-of-memory advice. (Peak-memory checks on fake CUDA tensors: tests/test_gpu_sim.py.)"""

from types import SimpleNamespace

import pytest
import torch

from emotion_summary.modeling import device as model_module
from emotion_summary.core.errors import ModelError
from emotion_summary.modeling.device import SDPA_REPEAT_KV, attn_implementation, compute_dtype
from emotion_summary.modeling.generation import generation_groups, prefill_chunk_tokens


def pretend_gpu(monkeypatch, capability: tuple[int, int], flash_attn: bool = False):
    """torch.cuda answers as a card of this compute capability; bf16 'supported' with emulation, as
    torch says on a real pre-Ampere card."""
    props = SimpleNamespace(major=capability[0], minor=capability[1], total_memory=16 * 1024**3)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: props)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda device: True)
    monkeypatch.setattr(model_module, "flash_attn_installed", lambda: flash_attn)


def test_pre_ampere_cards_compute_in_fp16_not_emulated_bf16(monkeypatch):
    pretend_gpu(monkeypatch, (7, 5))  # T4, RTX 20xx
    assert torch.cuda.is_bf16_supported()  # what the old code asked: emulation counts
    assert compute_dtype("auto") == torch.float16
    pretend_gpu(monkeypatch, (8, 6))  # RTX 3060
    assert compute_dtype("auto") == torch.bfloat16
    assert compute_dtype("fp32") == torch.float32


def test_cpu_computes_in_bf16_only_where_it_has_bf16_instructions(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert compute_dtype("auto") == torch.float32  # emulated bf16 is slower than fp32
    assert attn_implementation("auto", torch.float32) == "sdpa"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)  # e.g. AMD Zen 4, Intel Cooper Lake
    assert compute_dtype("auto") == torch.bfloat16
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)  # Intel Sapphire Rapids
    assert compute_dtype("auto") == torch.bfloat16
    assert compute_dtype("fp32") == torch.float32  # an explicit choice stays


def test_flash_attention_2_only_on_ampere_or_newer_in_16_bit(monkeypatch):
    pretend_gpu(monkeypatch, (8, 6), flash_attn=True)
    assert attn_implementation("auto", torch.bfloat16) == "flash_attention_2"
    assert attn_implementation("auto", torch.float32) == "sdpa"
    pretend_gpu(monkeypatch, (8, 6), flash_attn=False)
    assert attn_implementation("auto", torch.bfloat16) == "sdpa"
    pretend_gpu(monkeypatch, (7, 5), flash_attn=True)
    assert attn_implementation("auto", torch.float16) == SDPA_REPEAT_KV
    with pytest.raises(ModelError, match="sm80"):
        attn_implementation("flash_attention_2", torch.float16)


def tiny_qwen2(attn: str):
    from transformers import Qwen2ForCausalLM

    from emotion_summary.modeling.architectures import qwen2_config

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(qwen2_config("tiny", vocab_size=97, hidden_size=64, intermediate_size=64)).eval()
    model.set_attn_implementation(attn)
    return model


def test_repeated_kv_attention_gives_sdpa_its_full_heads_and_the_same_logits(monkeypatch):
    """On sm75 SDPA has no fused kernel for grouped-query attention (enable_gqa): with K/V heads
    repeated the memory-efficient kernel applies. Same numbers as transformers' SDPA path."""
    model_module.register_sdpa_repeat_kv()
    ids = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding, as in batched generation
    want_padded = tiny_qwen2("sdpa")(input_ids=ids, attention_mask=mask).logits
    want_causal = tiny_qwen2("sdpa")(input_ids=ids[:1]).logits
    seen = []
    real_sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        seen.append((q.shape[1], k.shape[1], v.shape[1], kwargs.get("enable_gqa", False), kwargs.get("is_causal")))
        return real_sdpa(q, k, v, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    model = tiny_qwen2(SDPA_REPEAT_KV)
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, want_padded)
    assert torch.equal(model(input_ids=ids[:1]).logits, want_causal)
    heads = model.config.num_attention_heads
    assert seen and all(s[:4] == (heads, heads, heads, False) for s in seen)
    assert seen[-1][4] is True  # no padding: causal flag, no L x L mask


GB = 10**9


def test_generation_batches_follow_free_gpu_memory():
    kv = 57_344  # Qwen2-7B in bf16: 2 x 28 layers x 4 K/V heads x 128 x 2 bytes per token
    prefill = (6 * 3584 + 3 * 18944) * 2
    lengths = [7_700] * 8
    # 8 GB card with the 8gb model loaded: ~2.5 GB free -> 4 x 8.2K tokens of cache would be 1.9 GB
    groups = generation_groups(lengths, 512, kv, prefill, free_bytes=int(2.5 * GB))
    assert [len(g) for g in groups] == [3, 3, 2]
    assert sum(groups, []) == list(range(8))
    # plenty of memory: the requested cap (inference's --batch_size) still holds
    assert [len(g) for g in generation_groups(lengths, 512, kv, prefill, 80 * GB, max_batch=4)] == [4, 4]
    # a prompt too long for the budget alone still goes, alone
    assert generation_groups([100, 200_000, 100], 512, kv, prefill, 3 * GB) == [[0], [1], [2]]
    # CPU: no memory query, fixed groups
    assert generation_groups([10] * 5, 8, kv, prefill, None) == [[0, 1, 2, 3], [4]]
    assert generation_groups([10] * 5, 8, kv, prefill, None, max_batch=2) == [[0, 1], [2, 3], [4]]


def test_prefill_chunks_share_4096_tokens_over_the_batch():
    assert prefill_chunk_tokens(1) == 4096
    assert prefill_chunk_tokens(4) == 1024
    assert prefill_chunk_tokens(64) == 256


def test_out_of_memory_names_one_lever_resumable_ones_first():
    from emotion_summary.training.config import RESUME_FREE_FIELDS, resolve_config
    from emotion_summary.training.oom import memory_lever

    cfg = resolve_config("24gb", offload_activations=False)
    assert memory_lever(cfg) == ("Pull this lever: python scripts/train_qwen2.py --output_dir model/qwen2-es-24gb "
                                 "--resume --offload_activations true")
    assert {"offload_activations", "mlp_tile_tokens", "embedding_on_cpu"} <= RESUME_FREE_FIELDS
    cfg = resolve_config("24gb", mlp_tile_tokens=1024, embedding_on_cpu=True, lora_dropout=0.0, batch_size=2,
                         grad_accum=8)
    assert memory_lever(cfg) == "Pull this lever: start a new run (new --output_dir) with --batch_size 1 --grad_accum 16"
    cfg = resolve_config("8gb", mlp_tile_tokens=1024, lora_dropout=0.0)
    assert "--max_seq_len 4096" in memory_lever(cfg)


def test_cpu_embedding_is_outside_the_parameters_so_generate_keeps_the_gpu_as_model_device():
    """`model.device` is the first parameter's device; with the embedding registered on the CPU,
    generate moved every input (position ids, masks) to the CPU beside a GPU model."""
    from emotion_summary.modeling.levers import CpuEmbedding, keep_embedding_on_cpu

    model = tiny_qwen2("sdpa")
    ids = torch.randint(0, 97, (1, 9), generator=torch.Generator().manual_seed(2))
    want = model(input_ids=ids).logits
    weight = model.get_input_embeddings().weight
    keep_embedding_on_cpu(model)
    assert isinstance(model.get_input_embeddings(), CpuEmbedding)
    assert model.get_input_embeddings().weight is weight
    assert all(p is not weight for p in model.parameters())
    assert next(model.parameters()).shape != weight.shape  # model.device now comes from a decoder weight
    assert torch.equal(model(input_ids=ids).logits, want)


def test_a_tied_embedding_stays_where_the_lm_head_is():
    """SmolLM2 ties its LM head to the input embedding: moving one would move the other."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from emotion_summary.modeling.levers import keep_embedding_on_cpu

    model = LlamaForCausalLM(LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True))
    embedding = model.get_input_embeddings()
    assert keep_embedding_on_cpu(model) is False
    assert model.get_input_embeddings() is embedding and model.lm_head.weight is embedding.weight


def test_merging_goes_to_the_cpu_when_the_16_bit_model_does_not_fit_the_free_memory(monkeypatch):
    from emotion_summary.modeling.loading import sixteen_bit_fits_gpu

    pretend_gpu(monkeypatch, (8, 6))
    free = {"bytes": 10**9}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free["bytes"], 16 * 1024**3))
    assert sixteen_bit_fits_gpu("tiny")  # a few MB of 16-bit weights
    free["bytes"] = 10**5
    assert not sixteen_bit_fits_gpu("tiny")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not sixteen_bit_fits_gpu("tiny")
