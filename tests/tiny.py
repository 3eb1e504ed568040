"""The tiny random Qwen3 configs the tests build, and facts of the real Qwen3-0.6B."""

# Tiny configs that together cover tied/untied embeddings, GQA ratios 1, 2 and 4,
# head_dim != hidden_size / heads, and more than one layer.
TINY_BASE = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                 max_position_embeddings=512, rms_norm_eps=1e-6, rope_theta=10000.0)
TINY_GQA1_TIED = dict(TINY_BASE, num_key_value_heads=4, head_dim=16, tie_word_embeddings=True)
TINY_GQA2 = dict(TINY_BASE, tie_word_embeddings=False)  # head_dim 32 != 64 / 4
TINY_GQA4_TIED = dict(TINY_BASE, num_attention_heads=8, num_key_value_heads=2, head_dim=16,
                      num_hidden_layers=3, tie_word_embeddings=True, rope_theta=1e6)  # 16 != 64 / 8
TINY_CONFIGS = {"gqa1_tied": TINY_GQA1_TIED, "gqa2_untied": TINY_GQA2, "gqa4_tied": TINY_GQA4_TIED}

QWEN3_06B_PARAMS = 596_049_920  # Qwen/Qwen3-0.6B, tied embedding counted once


def file_mapped(a) -> bool:
    """a is a view of a file's memory map (the export reader's), not a copy."""
    import mmap

    import numpy as np

    while isinstance(a, np.ndarray):
        a = a.base
    return isinstance(a.obj if isinstance(a, memoryview) else a, mmap.mmap)
