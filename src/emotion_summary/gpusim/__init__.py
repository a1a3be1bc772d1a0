"""Simulated GPU: the project's own training step and generate call on fake CUDA tensors, for a
named card, with the real Qwen2-7B shape and no weights (labelled "simulated" wherever reported).

Public API (all in emotion_summary.gpusim.api unless noted; importing this package imports no torch):

  simulate_training(preset="12gb", seq_lens=32768 | [32768, 20000], card=None, arch="qwen2-7b",
                    layers=None, overrides=None, flash_attn=False, answer_tokens=200) -> dict
      Qwen2EmotionSummaryModel.for_training(cfg, loaded=<the simulated base>), the optimizer state
      created (one optimizer step on zero gradients), then one TrainingStep over two micro-batches
      (the steady state); a list of lengths is one batch of rows of those lengths.
  simulate_generation(preset="12gb", prompt_lens=8192 | [..], card=None, arch="qwen2-7b", layers=None,
                      overrides=None, flash_attn=False, max_new_tokens=200) -> dict
      Qwen2EmotionSummaryModel.for_inference(<the simulated base>, adapter=<the preset's LoRA>) then
      its generate_ids: groups by free memory, left padding, chunked prefill, CPU embedding.
  run_jobs(jobs: list[dict], timeout_s=3600, paths=()) -> list[dict]   several `job(...)` dicts in one
      worker process; a failed job gives {"error", "traceback"} (simulate_* raise SimulationError instead)
  job(kind="train"|"generate"|"run", preset="12gb", seq_lens=None, card=None, arch="qwen2-7b",
      layers=None, overrides=None, flash_attn=False, answer_tokens=200, max_new_tokens=200, yarn=False,
      runner=None, params=None) -> dict   kind "run": `runner` ("module:function", importable in the
      worker: its folder in run_jobs' `paths`) gets the session's Simulation (session.Simulation:
      job, config, tracker, category(name), reset_peak(), base_model(), file_as(params, name),
      optimizer_as_lora(optimizer), result()) and returns what it adds to the result; `params` are
      its own options (bench/plain.py's simulate_plain, bench/peers.py's simulate_trl)
  resolve_card(card=None, vram_gb=None, preset=None) -> Card   (cards.CARDS: rtx4060 8 GiB sm89,
      rtx3060 12 GiB sm86, rtx4090 24 GiB sm89, t4 16 GiB sm75, a100-40gb, a100-80gb)
  planner.plan_memory(preset="12gb", seq_len=None, batch_size=None, seq_lens=None, vram_gb=None, card=None,
      arch="qwen2-7b", find_max=False, generate=False, max_new_tokens=512, flash_attn=False,
      yarn=False, lora_dropout=None, layers=None, json=None) -> None   the CLI of scripts/plan_memory.py
      (length, batch and levers default to the preset's); planner.plan(same options as keywords,
      json= or json_out=) -> dict does the work and returns the result (with "sources": which values
      were given and which came from the preset).
  planner.find_max_seq_len(preset, card, arch="qwen2-7b", batch_size=1, layers=None, overrides=None,
      flash_attn=False, yarn=False, lo=1024, step=512) -> {"fits": (length, result), "headroom":
      (length, result), "limit": position limit, "first": result at lo}
  planner.longest_fitting(fits, lo, limit, step, start=None, first_gap=None) -> int   the search
      alone (fits: n -> bool), from a start or a guess

  Result dict: kind, preset, arch, seq_len, seq_lens, batch_size, card, vram_gb (1e9 B), vram_gib,
  peak_allocated_gb (live CUDA storages, 512 B rounded), min_pool_gb (smallest caching-allocator
  pool the run fits in), context_gb (0.54 GB CUDA context), estimated_need_gb = min_pool + context,
  fits (need <= card), headroom_gb, breakdown_gb (live at the peak: weights, lora + optimizer,
  saved activations, logits, recomputed layer, kernel scratch, generation), largest_at_peak (the 5
  largest storages live at the peak: gb, category, made_by = the op), largest_new (the largest
  storage of the measured phase), pool_set_by (the first request a pool of the peak's size cannot
  serve, its cached segments being split: gb, made_by, category, allocated_gb then), host_peak_gb, sim_seconds, config (the memory levers
  used), weights_gb, lora_params, compute_dtype, attn_implementation, adapter_dtype, lora_gb
  (training), decode_steps and generate_groups (generation).
  `overrides` are TrainConfig fields (lora_dropout=0.0, mlp_tile_tokens=..., ...): the simulated
  config is resolve_config(preset, max_seq_len=max(seq_lens), batch_size=len(seq_lens), **overrides).

Method: native.py builds fake_cuda.cpp (a no-op CUDA device guard; CUDA hooks isBuilt() true,
hasCUDA() false) and loads it before torch in a worker process (core.subprocess_jobs, prepared by native.prepare_worker); runtime.py answers
torch.cuda queries for the card and runs everything under FakeTensorMode; build.py builds the
model that load_base_model would (bitsandbytes NF4 layers with their packed data and double-quant
state as fake tensors); attention.py gives SDPA the CUDA build's kernel choice and flash-attn's
unpadded path, counting FlashAttention-2's backward scratch; tracker.py counts every CUDA storage
(TorchDispatchMode + weakrefs) and answers host reads of fake values; allocator.py replays the
allocation log through a model of the CUDA caching allocator. gemm_4bit's dequantised weight (its
CUDA path past 1,536 rows) is counted for the op's duration; paged optimizer state is GPU memory.
Blind spots: Liger/Triton kernels (off in the simulation), Windows/desktop reservations,
fragmentation over many steps, cuBLAS workspaces beyond the context figure.

Time: work.py counts every op the tracker sees (FLOPs, device bytes, PCIe and host bytes, kernel
launches, the phase, and the lever behind it: recompute, MLP tiles, offload traffic); a result's
"work" holds those counts, and step_time.step_time(result, card, grad_accum) turns them into seconds
with the card's roofline (cards.py: tensor TFLOPs, memory bandwidth, PCIe) -> micro_batch_s, step_s,
tokens_per_s, shares. plan_memory prints it. Simulated time, calibrated in bench/RESULTS.md.
"""
