"""Reference gated delta rule over packed sequences, state kept in a pool by slot.

Per value head h (reading key head h // R), state S: [DK, DV]:

    S = exp(g_t) S;  u = beta_t (v_t - S^T k_t);  S = S + k_t u^T;  o_t = S^T q_t

with q, k optionally L2-normalised (x * rsqrt(sum(x^2) + 1e-6)) and q scaled.
Computes in fp32 (fp64 when given fp64 inputs).
"""

import torch

from gdn_fx.metadata import NULL_SLOT

CHUNK = 64


def l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps)


def _compute_dtype(*ts: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in ts) else torch.float32


def _prep(q, k, v, g, beta, scale, use_qk_l2norm):
    """Slices of one sequence -> head-major compute-dtype tensors with q/k expanded to the value heads.

    q, k: [n, NK, DK]; v: [n, NV, DV]; g, beta: [n, NV] -> q, k: [NV, n, DK]; v: [NV, n, DV]; g, beta: [NV, n].
    """
    cd = _compute_dtype(q, v)
    R = v.shape[1] // q.shape[1]
    q, k = (x.to(cd).repeat_interleave(R, dim=1).transpose(0, 1) for x in (q, k))
    if use_qk_l2norm:
        q, k = l2norm(q), l2norm(k)
    return q * scale, k, v.to(cd).transpose(0, 1), g.to(cd).transpose(0, 1), beta.to(cd).transpose(0, 1)


def _chunked_sequence(q, k, v, g, beta, S):
    """Chunked form (chunk 64) of one sequence. q, k: [H, n, K]; v: [H, n, V]; S: [H, K, V]. -> o, S."""
    n = q.shape[1]
    outs = []
    for c0 in range(0, n, CHUNK):
        qc, kc, vc = q[:, c0 : c0 + CHUNK], k[:, c0 : c0 + CHUNK], v[:, c0 : c0 + CHUNK]
        gc, bc = g[:, c0 : c0 + CHUNK], beta[:, c0 : c0 + CHUNK]
        C = qc.shape[1]
        G = gc.cumsum(-1)  # [H, C] log decay from the chunk start
        incl = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
        diff = (G[:, :, None] - G[:, None, :]).masked_fill(~incl, float("-inf"))
        decay = diff.exp()  # [H, C, C]: exp(G_t - G_s) for s <= t, else 0
        strict = decay.masked_fill(torch.eye(C, dtype=torch.bool, device=q.device), 0.0)
        # u = (I + A)^-1 beta (v - exp(G) K S0), A[t, s] = beta_t exp(G_t - G_s) k_t.k_s for s < t
        A = bc[:, :, None] * (kc @ kc.transpose(1, 2)) * strict
        eye = torch.eye(C, dtype=q.dtype, device=q.device).expand_as(A)
        rhs = bc[:, :, None] * (vc - G.exp()[:, :, None] * (kc @ S))
        U = torch.linalg.solve_triangular(eye + A, rhs, upper=False, unitriangular=True)
        outs.append(G.exp()[:, :, None] * (qc @ S) + ((qc @ kc.transpose(1, 2)) * decay) @ U)
        GC = G[:, -1:]
        S = GC.exp()[:, :, None] * S + (kc * (GC - G).exp()[:, :, None]).transpose(1, 2) @ U
    return torch.cat(outs, dim=1), S


def _step(S, q_t, k_t, v_t, g_t, b_t):
    """One token for all heads. S: [H, K, V]; q_t, k_t: [H, K]; v_t: [H, V]; g_t, b_t: [H]."""
    S = S * g_t.exp()[:, None, None]
    u = b_t[:, None] * (v_t - torch.einsum("hkv,hk->hv", S, k_t))
    S = S + k_t[:, :, None] * u[:, None, :]
    return S, torch.einsum("hkv,hk->hv", S, q_t)


def chunk_gated_delta_rule_reference(
    q, k, v, g, beta, ssm_state, query_start_loc, state_indices, has_initial_state, scale, use_qk_l2norm
) -> torch.Tensor:
    out = torch.zeros_like(v)
    qsl = query_start_loc.tolist()
    slots = state_indices.tolist()
    init = has_initial_state.tolist()
    NV, DK, DV = ssm_state.shape[1:]
    for i, slot in enumerate(slots):
        s, e = qsl[i], qsl[i + 1]
        if slot == NULL_SLOT or e == s:  # padding, or no tokens: the state is left as it is
            continue
        qi, ki, vi, gi, bi = _prep(q[s:e], k[s:e], v[s:e], g[s:e], beta[s:e], scale, use_qk_l2norm)
        if init[i]:
            S = ssm_state[slot].to(qi.dtype)
        else:
            S = qi.new_zeros((NV, DK, DV))
        o, S = _chunked_sequence(qi, ki, vi, gi, bi, S)
        out[s:e] = o.transpose(0, 1).to(out.dtype)
        ssm_state[slot] = S.to(ssm_state.dtype)
    return out


def recurrent_gated_delta_rule_reference(
    q, k, v, g, beta, ssm_state, query_start_loc, state_indices, num_accepted_tokens, scale, use_qk_l2norm
) -> torch.Tensor:
    out = torch.zeros_like(v)
    qsl = query_start_loc.tolist()
    slots = state_indices.tolist()
    accepted = num_accepted_tokens.tolist()
    for i, row in enumerate(slots):
        s, e = qsl[i], qsl[i + 1]
        read = row[accepted[i] - 1]
        if read == NULL_SLOT or e == s:
            continue
        qi, ki, vi, gi, bi = _prep(q[s:e], k[s:e], v[s:e], g[s:e], beta[s:e], scale, use_qk_l2norm)
        S = ssm_state[read].to(qi.dtype)
        for j in range(e - s):
            S, o = _step(S, qi[:, j], ki[:, j], vi[:, j], gi[:, j], bi[:, j])
            out[s + j] = o.to(out.dtype)
            if row[j] != NULL_SLOT:  # per-position checkpoint for speculative verification
                ssm_state[row[j]] = S.to(ssm_state.dtype)
    return out
