"""The Gated DeltaNet layer shared by every model family.

A family's class only says how the transformers checkpoint maps onto the input projections
(``_convert_projections``: stacked into the one merged ``in_proj`` by default) and, for its
checkpoint layout (``merge_projections=False``), how those projections unpack
(``_project_checkpoint``); the rest (the merged projection, core op, gated norm, output
projection, state pools, tensor-parallel slicing) lives here.
"""

import math

import torch
import torch._dynamo
from einops import rearrange
from torch import nn

import gdn_fx.ops
from gdn_fx.layers.norm import RMSNormGated
from gdn_fx.metadata import GDNMetadata, Request, build_metadata


class GatedDeltaNet(nn.Module):
    """One GDN layer, holding the heads of tensor-parallel rank ``tp_rank`` of ``tp_size``.

    Constructor head counts are the model's totals; the attributes (num_k_heads,
    num_v_heads, key_dim, value_dim, conv_dim) are this rank's. ``out_proj`` is
    row-parallel: with tp_size > 1 each rank returns a partial sum, and the caller
    all-reduces.

    Parameters: conv_weight: [conv_dim, W] (transformers stores [conv_dim, 1, W]);
    A_log, dt_bias: [NV]; norm.weight: [DV]; out_proj.weight: [hidden, value_dim].

    Inference only: ``gdn_fx::gdn_core`` has no autograd formula. Rather than leave the input
    projections, conv and gating parameters silently without gradients, ``forward_serving`` raises
    when autograd would record through the core op (see ``check_no_grad``).
    """

    # transformers names of the output norm and projection (OLMo-Hybrid differs)
    hf_norm_key = "norm.weight"
    hf_out_proj_key = "out_proj.weight"

    def __init__(
        self, *, hidden_size: int, num_k_heads: int, num_v_heads: int, head_k_dim: int, head_v_dim: int,
        conv_kernel_size: int = 4, norm_eps: float = 1e-6, allow_neg_eigval: bool = False,
        tp_size: int = 1, tp_rank: int = 0, merge_projections: bool = True, device=None, dtype=None,
    ):
        super().__init__()
        if num_v_heads % num_k_heads != 0:
            raise ValueError(f"num_v_heads={num_v_heads} must be a multiple of num_k_heads={num_k_heads}")
        if tp_size < 1 or num_k_heads % tp_size != 0 or num_v_heads % tp_size != 0:
            raise ValueError(
                f"tp_size={tp_size} must divide both num_k_heads={num_k_heads} and num_v_heads={num_v_heads}"
            )
        if not 0 <= tp_rank < tp_size:
            raise ValueError(f"tp_rank={tp_rank} must lie in [0, tp_size={tp_size})")
        self.hidden_size = hidden_size
        self.tp_size = tp_size
        self.tp_rank = tp_rank
        self.num_k_heads = num_k_heads // tp_size
        self.num_v_heads = num_v_heads // tp_size
        self.head_k_dim = head_k_dim
        self.head_v_dim = head_v_dim
        self.conv_kernel_size = conv_kernel_size
        self.allow_neg_eigval = allow_neg_eigval
        self.key_dim = self.num_k_heads * head_k_dim
        self.value_dim = self.num_v_heads * head_v_dim
        self.conv_dim = 2 * self.key_dim + self.value_dim

        factory = {"device": device, "dtype": dtype}
        self.conv_weight = nn.Parameter(torch.empty(self.conv_dim, conv_kernel_size, **factory))
        self.register_parameter("conv_bias", None)  # no GDN checkpoint has one; the op accepts it
        self.A_log = nn.Parameter(torch.empty(self.num_v_heads, **factory))
        self.dt_bias = nn.Parameter(torch.empty(self.num_v_heads, **factory))
        self.norm = RMSNormGated(head_v_dim, eps=norm_eps, **factory)
        self.out_proj = nn.Linear(self.value_dim, hidden_size, bias=False, **factory)
        self.reset_parameters()
        # merge_projections: one input GEMM, in_proj rows [q, k, v, z, b, a] (each head-major), stacked from the
        # checkpoint's projections at load (the family's _convert_projections); else the family's own
        self.merge_projections = merge_projections
        if merge_projections:
            rows = self.conv_dim + self.value_dim + 2 * self.num_v_heads
            self.in_proj = nn.Linear(hidden_size, rows, bias=False, **factory)

    def reset_parameters(self) -> None:
        """Initialises the core parameters (checkpoints overwrite them; the projections init themselves)."""
        with torch.no_grad():
            bound = 1.0 / math.sqrt(self.conv_kernel_size)
            self.conv_weight.uniform_(-bound, bound)
            self.A_log.uniform_(1.0, 16.0).log_()
            self.dt_bias.fill_(1.0)

    def extra_repr(self) -> str:
        return (f"hidden_size={self.hidden_size}, heads k/v={self.num_k_heads}/{self.num_v_heads}, "
                f"head dims k/v={self.head_k_dim}/{self.head_v_dim}, conv_kernel_size={self.conv_kernel_size}, "
                f"allow_neg_eigval={self.allow_neg_eigval}, tp={self.tp_rank}/{self.tp_size}")

    # ---- family hooks -------------------------------------------------------------------------

    def project(self, hidden_states: torch.Tensor):
        """hidden_states: [T, hidden] -> mixed_qkv: [T, conv_dim] (channels [q, k, v], heads in order),
        z: [T, NV, DV], b: [T, NV], a: [T, NV]. Merged (the default): views of the one GEMM's output
        [T, conv_dim + value_dim + 2*NV], columns [q, k, v, z, b, a]: no glue kernel is left between the
        GEMM and the core op (which reads its inputs through their strides). Otherwise the family's
        checkpoint layout (``_project_checkpoint``)."""
        if not self.merge_projections:
            return self._project_checkpoint(hidden_states)
        T, nv = hidden_states.shape[0], self.num_v_heads
        mixed_qkv, z, b, a = torch.split(self.in_proj(hidden_states), [self.conv_dim, self.value_dim, nv, nv], dim=-1)
        return mixed_qkv, z.reshape(T, nv, self.head_v_dim), b, a

    def _project_checkpoint(self, hidden_states: torch.Tensor):
        """``project`` through the checkpoint's projections (merge_projections=False). Plain PyTorch only:
        a compiler pass matches this glue."""
        raise NotImplementedError

    def _hf_projection_shapes(self) -> dict[str, tuple[int, ...]]:
        """transformers key -> full (all ranks) shape, for the family's input projections."""
        raise NotImplementedError

    def _convert_projections(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """transformers tensors (shapes checked) -> this rank's projection parameters, by our names."""
        raise NotImplementedError

    @classmethod
    def _hf_config_kwargs(cls, config) -> dict:
        """Constructor kwargs from a transformers config of this family."""
        return {
            "hidden_size": config.hidden_size,
            "num_k_heads": config.linear_num_key_heads,
            "num_v_heads": config.linear_num_value_heads,
            "head_k_dim": config.linear_key_head_dim,
            "head_v_dim": config.linear_value_head_dim,
            "conv_kernel_size": config.linear_conv_kernel_dim,
            "norm_eps": config.rms_norm_eps,
        }

    # ---- serving ------------------------------------------------------------------------------

    def forward_serving(
        self, hidden_states: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor, meta: GDNMetadata
    ) -> torch.Tensor:
        """hidden_states: [T, hidden] packed as ``meta`` says -> [T, hidden] (a partial sum when tp_size > 1).

        conv_state: [S, conv_dim, W-1+num_spec] and ssm_state: [S, NV, DK, DV] are updated in place.
        Raises ValueError before any kernel runs when hidden_states or the pools do not fit the layer
        or the metadata (shapes only: under torch.compile these checks cost nothing at run time).
        """
        self._check_serving_inputs(hidden_states, conv_state, meta)
        self.check_no_grad(hidden_states)
        mixed_qkv, z, b, a = self.project(hidden_states)
        core_attn_out = torch.empty(
            hidden_states.shape[0], self.num_v_heads, self.head_v_dim, dtype=mixed_qkv.dtype, device=mixed_qkv.device
        )
        gdn_fx.ops.gdn_core(
            mixed_qkv, b, a, self.conv_weight, self.conv_bias, self.A_log, self.dt_bias, conv_state, ssm_state,
            core_attn_out, meta, num_k_heads=self.num_k_heads, head_k_dim=self.head_k_dim,
            allow_neg_eigval=self.allow_neg_eigval,
        )
        o = self.norm(core_attn_out, z)
        o = rearrange(o, "t h d -> t (h d)")
        return self.out_proj(o)

    def _check_serving_inputs(self, hidden_states: torch.Tensor, conv_state: torch.Tensor, meta: GDNMetadata) -> None:
        T = meta.state_indices.shape[0]
        dtype = self.conv_weight.dtype
        if hidden_states.dim() != 2 or hidden_states.shape[0] != T or hidden_states.shape[1] != self.hidden_size:
            raise ValueError(f"hidden_states must have shape [T={T}, hidden_size={self.hidden_size}] (T from the "
                             f"metadata), got {list(hidden_states.shape)}")
        if hidden_states.dtype != dtype:
            raise ValueError(f"hidden_states must have the layer's dtype {dtype}, got {hidden_states.dtype}")
        if hidden_states.device != self.conv_weight.device:
            raise ValueError(f"hidden_states is on {hidden_states.device} but the layer is on {self.conv_weight.device}")
        if conv_state.dtype not in (dtype, torch.float32):
            raise ValueError(f"conv_state must have the layer's dtype {dtype} or float32, got {conv_state.dtype}")

    def check_no_grad(self, hidden_states: torch.Tensor) -> None:
        """Raises RuntimeError when autograd is recording and the input or a parameter upstream of the
        core op requires grad: ``gdn_fx::gdn_core`` has no backward, so those would get no gradient
        while out_proj and norm would (silently partial). Free when grad mode is off (no_grad,
        inference_mode); under torch.compile the condition is decided while tracing and guarded."""
        if not torch.is_grad_enabled():
            return
        names = [n for n, p in self.named_parameters() if p.requires_grad and not n.startswith(("norm.", "out_proj."))]
        if hidden_states.requires_grad:
            names.append("hidden_states")
        if names:
            raise RuntimeError(
                f"{type(self).__name__} is inference-only: gdn_fx::gdn_core has no backward, so {names} would get "
                "no gradient. Run under torch.no_grad() or torch.inference_mode(), or call "
                "layer.requires_grad_(False) with inputs that do not require grad."
            )

    def compile_serving(self, **compile_kwargs):
        """-> ``step(hidden_states, conv_state, ssm_state, meta)``: ``forward_serving`` under
        ``torch.compile(fullgraph=True, dynamic=True, **compile_kwargs)`` that first marks the pools
        static, whoever allocated them (``allocate_state`` marks its own). An unmarked pool gets symbolic
        sizes under dynamic=True, and duck sizing ties a pool size to the token count when they happen
        to be equal, so a later token count recompiles. Marking costs ~50 us, so it is done once per
        pool tensor (a new tensor, e.g. after a cache reorder, is marked on its first step)."""
        compiled = torch.compile(self.forward_serving, **{"fullgraph": True, "dynamic": True, **compile_kwargs})
        marked: list[torch.Tensor] = []  # the pools of the last step: the common case is the same pair again

        def step(hidden_states, conv_state, ssm_state, meta):
            if len(marked) != 2 or marked[0] is not conv_state or marked[1] is not ssm_state:
                for pool in (conv_state, ssm_state):
                    torch._dynamo.mark_static(pool)
                marked[:] = [conv_state, ssm_state]
            return compiled(hidden_states, conv_state, ssm_state, meta)

        return step

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """hidden_states: [B, L, hidden] -> [B, L, hidden]: B fresh sequences, no cache (as transformers'
        forward without cache_params), run through the serving path on temporary state pools."""
        B, L, _ = hidden_states.shape
        device = hidden_states.device
        conv_state, ssm_state = self.allocate_state(B, device=device, conv_dtype=hidden_states.dtype)
        meta = build_metadata([Request(L, slots=i) for i in range(B)], num_slots=B, device=device)
        out = self.forward_serving(rearrange(hidden_states, "b l d -> (b l) d"), conv_state, ssm_state, meta)
        return rearrange(out, "(b l) d -> b l d", b=B)

    @torch.no_grad()
    def warmup(self, num_spec: int = 0) -> None:
        """Runs every kernel of this layer once on tiny batches (a prefill, a decode and, with
        num_spec > 0, a verification) over temporary pools, so JIT compilation and autotuning happen
        now rather than on the first real batch, after the state pools have taken the memory."""
        device, dtype = self.conv_weight.device, self.conv_weight.dtype
        slots = list(range(1 + num_spec))
        conv_state, ssm_state = self.allocate_state(len(slots), num_spec=num_spec)
        steps = [Request(5, slots=slots[:1]), Request(1, slots=slots, num_computed_tokens=5)]
        if num_spec:
            steps.append(Request(1 + num_spec, slots=slots, num_computed_tokens=6, num_draft_tokens=num_spec))
        for req in steps:
            meta = build_metadata([req], num_slots=len(slots), num_spec=num_spec, device=device)
            h = torch.randn(req.num_new_tokens, self.hidden_size, device=device, dtype=dtype)
            self.forward_serving(h, conv_state, ssm_state, meta)

    def allocate_state(
        self, num_slots: int, *, num_spec: int = 0, device=None, conv_dtype=None, ssm_dtype=torch.float32
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Zeroed pools: conv_state: [S, conv_dim, W-1+num_spec] (the extra columns keep the inputs of
        draft tokens), ssm_state: [S, NV, DK, DV]. Defaults: the parameters' device and dtype.
        Both are marked static for torch.compile (a tensor attribute, no global state)."""
        device = self.conv_weight.device if device is None else device
        conv_dtype = self.conv_weight.dtype if conv_dtype is None else conv_dtype
        conv_state = torch.zeros(
            num_slots, self.conv_dim, self.conv_kernel_size - 1 + num_spec, device=device, dtype=conv_dtype
        )
        ssm_state = torch.zeros(
            num_slots, self.num_v_heads, self.head_k_dim, self.head_v_dim, device=device, dtype=ssm_dtype
        )
        # Pool shapes never change: keep them out of dynamic=True's symbols (and of duck sizing).
        for pool in (conv_state, ssm_state):
            torch._dynamo.mark_static(pool)
        return conv_state, ssm_state

    # ---- transformers interop -----------------------------------------------------------------

    @classmethod
    def from_hf_config(cls, config, *, tp_size: int = 1, tp_rank: int = 0, device=None, dtype=None, **kwargs):
        """Builds the layer from a transformers config (a multimodal config gives its text config).

        ``kwargs`` go to the family's constructor. Raises ValueError when tp_size does not divide
        the head counts or the conv activation is not SiLU (the core op fuses SiLU).
        """
        if hasattr(config, "get_text_config"):
            config = config.get_text_config()
        act = getattr(config, "hidden_act", "silu")
        if act not in ("silu", "swish"):
            raise ValueError(f"config.hidden_act={act!r}: the GDN conv activation must be silu")
        return cls(**cls._hf_config_kwargs(config), tp_size=tp_size, tp_rank=tp_rank, device=device, dtype=dtype,
                   **kwargs)

    def hf_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every key of the transformers GDN module's state dict, with its full (all ranks) shape."""
        nv = self.num_v_heads * self.tp_size
        return {
            **self._hf_projection_shapes(),
            "conv1d.weight": (self.conv_dim * self.tp_size, 1, self.conv_kernel_size),
            "A_log": (nv,),
            "dt_bias": (nv,),
            self.hf_norm_key: (self.head_v_dim,),
            self.hf_out_proj_key: (self.hidden_size, self.value_dim * self.tp_size),
        }

    def convert_hf_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The transformers GDN module's state dict -> this layer's (``self.state_dict()`` keys), as
        ``load_hf_state_dict`` loads it: this rank's heads, projections fused as the family wants.
        Where no slicing or fusion is needed the result is a view of the input (no copy).

        Keys must be relative to that module ("conv1d.weight", "A_log", ...): strip the model's prefix
        (e.g. "model.layers.0.linear_attn.") first. Raises ValueError naming missing or unknown keys,
        or a key whose shape is wrong.
        """
        expected = self.hf_shapes()
        missing = sorted(expected.keys() - state_dict.keys())
        unknown = sorted(state_dict.keys() - expected.keys())
        if missing or unknown:
            raise ValueError(
                f"{type(self).__name__}.load_hf_state_dict: missing keys {missing}, unknown keys {unknown} "
                "(keys must be relative to the GDN module)"
            )
        for key, shape in expected.items():
            got = tuple(state_dict[key].shape)
            if got != shape:
                raise ValueError(f"state_dict[{key!r}] must have shape {list(shape)}, got {list(got)}")
        sd = state_dict
        return {
            **self._convert_projections(sd),
            "conv_weight": self._qkv_rows(sd["conv1d.weight"][:, 0]),
            "A_log": self._head_rows(sd["A_log"]),
            "dt_bias": self._head_rows(sd["dt_bias"]),
            "norm.weight": sd[self.hf_norm_key],
            "out_proj.weight": self._value_rows(sd[self.hf_out_proj_key].t()).t(),
        }

    def load_hf_state_dict(self, state_dict: dict[str, torch.Tensor], *, assign: bool = False) -> None:
        """Loads the state dict of the transformers GDN module itself (``layer.linear_attn.state_dict()``).

        Keys must be relative to that module ("conv1d.weight", "A_log", ...): strip the model's prefix
        (e.g. "model.layers.0.linear_attn.") first. Takes this rank's heads and fuses projections as the
        family wants. Raises ValueError naming missing or unknown keys, or a key whose shape is wrong.
        ``assign=True`` makes the converted tensors the parameters (no copy; what is only sliced or
        reshaped stays a view of the given tensors): for a layer built on the meta device.
        """
        self.load_state_dict(self.convert_hf_state_dict(state_dict), strict=True, assign=assign)

    # ---- tensor-parallel slicing of full (all ranks) tensors along dim 0 -----------------------

    def _head_rows(self, t: torch.Tensor) -> torch.Tensor:
        """t: [NV_total, ...] -> this rank's [NV, ...]."""
        return t[self.tp_rank * self.num_v_heads : (self.tp_rank + 1) * self.num_v_heads]

    def _key_rows(self, t: torch.Tensor) -> torch.Tensor:
        """t: [NK_total * DK, ...] -> this rank's [key_dim, ...]."""
        return t[self.tp_rank * self.key_dim : (self.tp_rank + 1) * self.key_dim]

    def _value_rows(self, t: torch.Tensor) -> torch.Tensor:
        """t: [NV_total * DV, ...] -> this rank's [value_dim, ...]."""
        return t[self.tp_rank * self.value_dim : (self.tp_rank + 1) * self.value_dim]

    def _qkv_rows(self, t: torch.Tensor) -> torch.Tensor:
        """t: [conv_dim_total, ...] laid out [q, k, v] -> this rank's [conv_dim, ...], same layout."""
        parts = self._qkv_parts(t)
        return parts[0] if len(parts) == 1 else torch.cat(parts)  # one part: the whole tensor, no copy

    def _qkv_parts(self, t: torch.Tensor) -> list[torch.Tensor]:
        """t: [conv_dim_total, ...] laid out [q, k, v] -> views of this rank's rows: [t] at tp_size 1, else
        its q, k and v rows (for a caller that concatenates them with more, in one copy)."""
        if self.tp_size == 1:
            return [t]
        kd, vd = self.key_dim * self.tp_size, self.value_dim * self.tp_size
        q, k, v = torch.split(t, [kd, kd, vd])
        return [self._key_rows(q), self._key_rows(k), self._value_rows(v)]

    def shard_state(self, conv_state: torch.Tensor, ssm_state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pools of the whole layer (tp_size=1 layout) -> new pools holding this rank's heads, e.g. to hand
        each rank the state one process computed, or to check a rank against one process.

        conv_state: [S, conv_dim_total, C] -> [S, conv_dim, C] (the rank's q, k and v channels);
        ssm_state: [S, NV_total, DK, DV] -> [S, NV, DK, DV]. Contiguous copies; the inputs are untouched.
        """
        kd, vd, nv = self.key_dim * self.tp_size, self.value_dim * self.tp_size, self.num_v_heads * self.tp_size
        if conv_state.dim() != 3 or conv_state.shape[1] != 2 * kd + vd:
            raise ValueError(f"conv_state must have shape [S, conv_dim_total={2 * kd + vd}, C], "
                             f"got {list(conv_state.shape)}")
        if ssm_state.dim() != 4 or tuple(ssm_state.shape[1:]) != (nv, self.head_k_dim, self.head_v_dim):
            raise ValueError(f"ssm_state must have shape [S, NV_total={nv}, DK={self.head_k_dim}, "
                             f"DV={self.head_v_dim}], got {list(ssm_state.shape)}")
        conv = self._qkv_rows(conv_state.transpose(0, 1)).transpose(0, 1)
        ssm = self._head_rows(ssm_state.transpose(0, 1)).transpose(0, 1)
        return (conv.clone(memory_format=torch.contiguous_format),
                ssm.clone(memory_format=torch.contiguous_format))
