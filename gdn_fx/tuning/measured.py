"""Kernel configurations measured per GPU model by ``python -m gdn_fx tune`` (``gdn_fx.tuning.sweep``).

TABLE[device name][kernel][dims][bucket] = config, where dims and the size that picks the bucket are
those of ``gdn_fx.tuning.sweep``:
- core_decode: dims "DKxDV", size sequences x value heads, config (BV, num_warps, tiles per program,
  the state's cache hint: an index of decode_kernel.HINTS);
- core_decode_tma: as core_decode, config (BV, num_warps, ring buffers, programs an SM, warps over columns),
  all zeros for "the Triton kernel (core_decode's config) is as fast or faster";
- norm_gate: dims "group size", size rows (tokens x groups), config (block_r, num_warps);
- unpack: dims "output columns", size tokens, config (block_t, block_c, num_warps, wide);
- linear: dims "NxK" (weight rows x columns), size tokens (rows M), config (block_m, block_n, block_k,
  num_warps, num_stages, split), all zeros for "ATen's matmul (cuBLAS) is as fast or faster";
- norm_gate_skinny_gemm: dims "NxKxgroup size", size tokens, config as linear's, all zeros for "the
  norm-gate kernel and then linear are as fast or faster".

NVIDIA H200 (torch 2.11, Triton 3.6), Qwen3-Next dims, 2026-11-30: every timing of the sweeps is in
bench/results/tuning_h200.json. norm_gate and unpack were retuned on 2026-12-01 after changes to their
kernels (tuning_norm_gate_h200.json, tuning_unpack_h200.json). linear: tuning_linear_h200.json; its
sweep cycles through 256 MB of weight copies, so that no candidate reads its weight from L2. Where
two configs lie within a few percent (the small sizes, which launch latency dominates), the table
holds the one that measured fastest.
"""

TABLE: dict = {
    "NVIDIA H200": {
        "core_decode": {
            # 2026-12-01, session 11: with the state's cache hints (tuning_core_hint_h200.json); from 8 to 64
            # sequences the TMA kernel serves the batch (below)
            "128x128": {32: (32, 4, 1, 0), 64: (64, 4, 1, 0), 128: (64, 2, 1, 0), 256: (128, 4, 64, 2),
                        512: (128, 4, 64, 2), 1024: (64, 2, 64, 2), 2048: (128, 4, 64, 2), 4096: (128, 4, 64, 3),
                        8192: (128, 4, 2, 1), 16384: (128, 4, 2, 1)},
        },
        "core_decode_tma": {  # 2026-12-01, session 10 (tuning_core_tma_h200.json): from B = 8 to 64 sequences
            "128x128": {32: (0, 0, 0, 0, 0), 256: (64, 4, 2, 1, 1), 512: (64, 4, 2, 2, 1), 1024: (64, 4, 3, 2, 1),
                        2048: (64, 4, 3, 2, 0), 4096: (0, 0, 0, 0, 0)},
        },
        "norm_gate": {  # 2026-12-01, loads without an eviction hint (tuning_norm_gate_h200.json)
            "128": {32: (1, 2), 256: (16, 16), 1024: (2, 2), 2048: (4, 2), 4096: (8, 8), 8192: (16, 8),
                    16384: (8, 4), 32768: (32, 16), 65536: (16, 8), 131072: (32, 16), 262144: (32, 16),
                    524288: (32, 16)},
        },
        "unpack": {  # 2026-12-01, after the contiguous path's 16-byte vectors (tuning_unpack_h200.json)
            "12352": {1: (1, 1024, 8, 1), 8: (4, 256, 4, 1), 32: (8, 128, 4, 0), 128: (8, 128, 2, 0),
                      512: (16, 256, 4, 0), 2048: (16, 128, 4, 0), 4096: (8, 128, 2, 0), 16384: (16, 256, 8, 0)},
        },
        "skinny_gemm": {  # Qwen3-Next's merged in_proj and its out_proj; from 128 rows on cuBLAS is as fast
            "12352x2048": {1: (1, 16, 256, 4, 1, 1), 2: (16, 32, 128, 4, 3, 1), 8: (16, 32, 128, 4, 3, 1),
                           16: (16, 32, 128, 4, 3, 1), 32: (32, 32, 128, 4, 3, 1), 64: (64, 64, 128, 4, 3, 1),
                           128: (0, 0, 0, 0, 0, 0)},
            "2048x4096": {1: (1, 4, 1024, 8, 1, 1), 2: (16, 32, 256, 4, 3, 4), 16: (16, 32, 256, 4, 3, 4),
                          32: (32, 32, 256, 4, 3, 4), 64: (64, 32, 256, 4, 3, 2), 128: (0, 0, 0, 0, 0, 0)},
        },
        "norm_gate_skinny_gemm": {  # out_proj with the norm-gate in front: one launch wins at one row only
            "2048x4096x128": {1: (1, 8, 1024, 8, 1, 1), 2: (0, 0, 0, 0, 0, 0)},
        },
    },
}
