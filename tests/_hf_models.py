"""Tiny random Hugging Face causal LMs of every family the HF layer supports (fast, fp32, eval).

Weights are drawn with a large initializer range so that next-token distributions are peaked:
greedy choices then do not hinge on last-bit rounding differences between code paths.
"""

import torch

VOCAB = 320
PAD, BOS, EOS = 0, 1, 2

FAMILIES = ["llama", "qwen2", "qwen3", "gpt2", "gemma3"]
# Which families tie the output head to the input embedding (both kinds are covered).
TIED = {"llama": False, "qwen2": True, "qwen3": False, "gpt2": True, "gemma3": True}


def make_model(family: str, seed: int = 0, vocab: int = VOCAB, tied=None):
    import transformers as tf
    tied = TIED[family] if tied is None else tied
    common = dict(vocab_size=vocab, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS,
                  tie_word_embeddings=tied)
    if family == "llama":
        cfg = tf.LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=256, initializer_range=0.05, **common)
        cls = tf.LlamaForCausalLM
    elif family == "qwen2":
        cfg = tf.Qwen2Config(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=256, initializer_range=0.05, **common)
        cls = tf.Qwen2ForCausalLM
    elif family == "qwen3":
        cfg = tf.Qwen3Config(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                             max_position_embeddings=256, initializer_range=0.05, **common)
        cls = tf.Qwen3ForCausalLM
    elif family == "gpt2":
        cfg = tf.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=256,
                            initializer_range=0.05, **common)
        cls = tf.GPT2LMHeadModel
    elif family == "gemma3":
        cfg = tf.Gemma3TextConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                  max_position_embeddings=256, sliding_window=8,
                                  initializer_range=0.05, **common)
        cls = tf.Gemma3ForCausalLM
    else:
        raise ValueError(family)
    torch.manual_seed(seed)
    model = cls(cfg).to(torch.float32).eval()
    # Sharpen the next-token distributions (x10 logits) through the final norm's gain.
    norm = model.transformer.ln_f if family == "gpt2" else model.model.norm
    with torch.no_grad():
        if family == "gemma3":          # Gemma's RMSNorm multiplies by (1 + weight)
            norm.weight.add_(9.0)
        else:
            norm.weight.mul_(10.0)
    model.generation_config.pad_token_id = PAD
    model.generation_config.eos_token_id = EOS
    model.generation_config.bos_token_id = BOS
    return model


def prompts(batch: int = 3, length: int = 6, seed: int = 1, pad_rows=True):
    """Left-padded prompts: row b has b fewer real tokens (when pad_rows), ids avoid PAD/BOS/EOS."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    if pad_rows:
        for b in range(batch):
            n = min(b, length - 2)
            ids[b, :n] = PAD
            mask[b, :n] = 0
    return ids, mask
