"""Independent fp64 token-by-token oracles for the ops (plain loops, written apart from gdn_fx.ops)."""

import math

import torch

NULL = -1


def gating(a, b, A_log, dt_bias, allow_neg_eigval=False):
    a, b, A_log, dt_bias = (t.double() for t in (a, b, A_log, dt_bias))
    x = a + dt_bias
    softplus = torch.where(x > 20, x, torch.log1p(torch.exp(x)))
    beta = 1 / (1 + torch.exp(-b))
    return -torch.exp(A_log) * softplus, beta * (2 if allow_neg_eigval else 1)


def conv(x_hist, x_new, weight, bias):
    """x_hist: [D, W-1] fp64; x_new: [n, D] -> [n, D] silu(conv), all fp64, explicit taps."""
    D, W = weight.shape
    seq = torch.cat([x_hist.T, x_new.double()], 0)  # [W-1+n, D]
    out = []
    for t in range(x_new.shape[0]):
        acc = torch.zeros(D, dtype=torch.float64) if bias is None else bias.double().clone()
        for w in range(W):
            acc += weight[:, w].double() * seq[t + w]
        out.append(acc * torch.sigmoid(acc))
    return torch.stack(out) if out else x_new.new_zeros((0, D), dtype=torch.float64), seq


def delta_rule(q, k, v, g, beta, S, scale, l2norm=True):
    """One sequence. q, k: [n, NK, DK]; v: [n, NV, DV]; S: [NV, DK, DV]. Returns o [n, NV, DV], states [n, ...]."""
    q, k, v, g, beta, S = (t.double() for t in (q, k, v, g, beta, S))
    NK, NV = q.shape[1], v.shape[1]
    R = NV // NK
    S = S.clone()
    outs, states = [], []
    for t in range(q.shape[0]):
        o_t = torch.empty(NV, v.shape[2], dtype=torch.float64)
        for h in range(NV):
            qh, kh = q[t, h // R], k[t, h // R]
            if l2norm:
                qh = qh / math.sqrt(float((qh * qh).sum()) + 1e-6)
                kh = kh / math.sqrt(float((kh * kh).sum()) + 1e-6)
            qh = qh * scale
            Sh = S[h] * math.exp(float(g[t, h]))
            u = float(beta[t, h]) * (v[t, h] - Sh.T @ kh)
            Sh = Sh + torch.outer(kh, u)
            S[h] = Sh
            o_t[h] = Sh.T @ qh
        outs.append(o_t)
        states.append(S.clone())
    return torch.stack(outs), states


def ulps(got: torch.Tensor, want: torch.Tensor) -> torch.Tensor:
    """|got - want| in units of the last place of ``want`` (both bf16 or fp16)."""
    a = want.abs()
    ulp = (a.view(torch.int16) + 1).view(want.dtype).double() - a.double()
    return (got.double() - want.double()).abs() / ulp
