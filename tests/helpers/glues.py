"""Spellings of the same glue (the data movement between a GDN layer's projections and its core op), for the
unpack fusion tests: each takes the projections' outputs qkvz [T, NK * GROUP] and ba [T, 2 * NV]."""

import torch
from einops import rearrange

NK, R, DK, DV = 2, 3, 24, 40
NV = NK * R
GROUP = 2 * DK + 2 * R * DV


def next_split(qkvz, ba):
    """Qwen3-Next unpack as transformers writes it: view, split, reshape, cat."""
    T = qkvz.shape[0]
    q, k, v, z = torch.split(qkvz.view(T, NK, GROUP), [DK, DK, R * DV, R * DV], dim=-1)
    b, a = torch.split(ba.view(T, NK, 2 * R), [R, R], dim=-1)
    mixed = torch.cat([q.reshape(T, -1), k.reshape(T, -1), v.reshape(T, -1)], dim=-1)
    return mixed, z.reshape(T, NV, DV), b.reshape(T, NV), a.reshape(T, NV)


def next_slices(qkvz, ba):
    """Same movement: reshape + slicing + narrow, contiguous copies."""
    T = qkvz.shape[0]
    g = qkvz.reshape(T, NK, GROUP)
    q, k = g[..., :DK], g.narrow(-1, DK, DK)
    v, z = g[..., 2 * DK : 2 * DK + R * DV], g[..., 2 * DK + R * DV :]
    gba = ba.reshape(T, NK, 2 * R)
    mixed = torch.cat([q.flatten(1), k.flatten(1), v.flatten(1)], dim=1)
    return mixed, z.contiguous().view(T, NV, DV), gba[..., :R].contiguous().view(T, NV), gba[..., R:].reshape(T, NV)


def next_einops(qkvz, ba):
    """Same movement: einops rearrange and chunk/unbind."""
    g = rearrange(qkvz, "t (g c) -> t g c", g=NK)
    q, k, v, z = g.split([DK, DK, R * DV, R * DV], dim=-1)
    b, a = rearrange(ba, "t (g two r) -> two t (g r)", g=NK, two=2).unbind(0)
    mixed = torch.cat([rearrange(x, "t g c -> t (g c)") for x in (q, k, v)], dim=-1)
    return mixed, rearrange(z, "t g (r d) -> t (g r) d", d=DV), b.contiguous(), a.contiguous()


def olmo_expand(qkvz, ba):
    """q/k expanded to the value heads (OLMo-style), permute + contiguous spelling."""
    T = qkvz.shape[0]
    q, k, v = qkvz[:, : NK * DK], qkvz[:, NK * DK : 2 * NK * DK], qkvz[:, 2 * NK * DK : 2 * NK * DK + NV * DV]
    qe = q.view(T, NK, 1, DK).expand(T, NK, R, DK).reshape(T, NV, DK)
    ke = k.view(T, NK, DK).repeat_interleave(R, dim=1)
    ve = v.view(T, NV, DV).permute(1, 0, 2).contiguous().permute(1, 0, 2)
    b, a = ba.chunk(2, dim=-1)
    return qe, ke, ve.contiguous(), b.contiguous(), a.contiguous()


def rearrange_mixed_qkv(qkvz, ba):
    """The split of mixed_qkv into heads (vLLM's rearrange_mixed_qkv), contiguous."""
    q, k, v = torch.split(qkvz[:, : 2 * NK * DK + NV * DV], [NK * DK, NK * DK, NV * DV], dim=-1)
    return (rearrange(q, "l (h d) -> l h d", d=DK).contiguous(), rearrange(k, "l (h d) -> l h d", d=DK).contiguous(),
            rearrange(v, "l (h d) -> l h d", d=DV).contiguous())


GLUES = [next_split, next_slices, next_einops, olmo_expand, rearrange_mixed_qkv]


def _sinked(glue):
    """One [T, C] input holding both projections, so both share the token symbol (as mm outputs of
    one hidden_states do); the glue feeds the opaque sink."""
    return lambda x: torch.ops.gdn_fx_test.sink(list(glue(x[:, : NK * GROUP], x[:, NK * GROUP :])))
