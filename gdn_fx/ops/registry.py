"""One registry for every ``gdn_fx`` custom op and its per-backend implementations.

Each op is a ``torch.library`` custom op in the ``gdn_fx`` namespace. Its
pure-PyTorch reference is the implementation for every device; a faster kernel
for one device type is a single call::

    registry.register_kernel("recurrent_gated_delta_rule", "cuda", my_triton_launcher)

Every implementation (reference or kernel) runs behind the op's input
validation, so bad input raises the same ``ValueError`` on every backend and
before anything is written to a state pool. ``tests/ops/test_registry.py`` compares
every registered kernel with the reference of its op.
"""

import dataclasses
import functools
import importlib
from typing import Callable

import torch

NAMESPACE = "gdn_fx"


@dataclasses.dataclass
class OpEntry:
    name: str
    op: "torch._library.custom_ops.CustomOpDef"
    reference: Callable
    validate: Callable | None
    kernels: dict[str, Callable] = dataclasses.field(default_factory=dict)
    # a mutating op's ADInplaceOrView kernel and every op's Autograd kernel are the registry's own where
    # torch lets it replace custom_op's (2.13; see _register_version_bump and _register_lean_autograd)
    own_version_bump: bool = False
    own_autograd: bool = False

    @property
    def qualname(self) -> str:
        return f"{NAMESPACE}::{self.name}"

    def register_fake(self, fn: Callable) -> Callable:
        """The fake (meta) implementation; it validates shapes, dtypes and devices too, so bad
        input fails at trace time under torch.compile as well."""
        self.op.register_fake(_guarded(fn, self.validate))
        return fn

    def backend(self, device: torch.device | str) -> str:
        """Name of the implementation that runs for ``device`` ("reference" or the kernel's)."""
        device_type = torch.device(device).type
        fn = self.kernels.get(device_type)
        return "reference" if fn is None else getattr(fn, "__qualname__", repr(fn))


_OPS: dict[str, OpEntry] = {}


def _guarded(fn: Callable, validate: Callable | None) -> Callable:
    if validate is None:
        return fn

    @functools.wraps(fn)
    def impl(*args, **kwargs):
        validate(*args, **kwargs)
        return fn(*args, **kwargs)

    return impl


def define(name: str, *, mutates_args: tuple[str, ...], validate: Callable | None = None):
    """Decorator: define ``gdn_fx::<name>`` with the decorated function as its reference.

    The schema is inferred from the reference's signature; ``mutates_args``
    must name exactly the tensors it writes. Register the fake with
    ``entry.register_fake``.
    """

    def deco(reference: Callable) -> OpEntry:
        if name in _OPS:
            raise ValueError(f"op gdn_fx::{name} is already defined")
        op = torch.library.custom_op(f"{NAMESPACE}::{name}", mutates_args=mutates_args)(
            _guarded(reference, validate)
        )
        entry = OpEntry(name=name, op=op, reference=reference, validate=validate,
                        own_version_bump=bool(mutates_args) and _register_version_bump(op, name))
        entry.own_autograd = _register_lean_autograd(op, name)
        # the reference, called directly rather than through custom_op's wrapper (see register_kernel)
        _override(op, name, _guarded(reference, validate), "CompositeExplicitAutograd")
        _OPS[name] = entry
        return entry

    return deco


def _register_version_bump(op, name: str) -> bool:
    """Replace custom_op's ADInplaceOrView kernel (it bumps the version counters of the tensors the op
    writes) with one that reads the written arguments' positions from a list made once here. torch's
    own rebuilds the schema's argument list for every argument it looks at (``fill_defaults``):
    quadratic in the argument count: 140 us per ``gdn_core`` call (19 arguments) on a 2-core CI CPU, paid on
    every call outside inference mode, eager and compiled alike. Where this torch refuses the
    registration, its own kernel stays (slower, same result) and this returns False."""
    overload = op._opoverload
    written = [(i, a.name) for i, a in enumerate(overload._schema.arguments)
               if a.alias_info is not None and a.alias_info.is_write]
    below = torch._C._after_ADInplaceOrView_keyset
    bump = torch.autograd.graph.increment_version

    def inplace_or_view(keyset, *args, **kwargs):
        for i, arg_name in written:
            value = args[i] if i < len(args) else kwargs.get(arg_name)
            if isinstance(value, torch.Tensor):
                bump(value)
            elif isinstance(value, (list, tuple)):
                for t in value:
                    if isinstance(t, torch.Tensor):
                        bump(t)
        return overload.redispatch(keyset & below, *args, **kwargs)

    return _override(op, name, inplace_or_view, "ADInplaceOrView", with_keyset=True)


def _register_lean_autograd(op, name: str) -> bool:
    """Replace custom_op's Autograd kernel with one that, where no gradient is needed (every call of an
    inference layer, eager or compiled), goes straight to the kernels below, and otherwise runs
    custom_op's own (the same errors and graph as before). Custom_op's re-derives on every call whether
    the op is an out= op and wraps the call in a metadata object (with custom_op's kernel wrapper, see
    register_kernel, about half an op call's host price: ``bench/bench_op_host.py``). Where this torch
    refuses the registration, its own kernel stays and this returns False."""
    overload = op._opoverload
    try:
        from torch._library.autograd import make_autograd_impl

        slow = make_autograd_impl(overload, op)
    except (ImportError, AttributeError, TypeError):
        return False
    below = torch._C._after_autograd_keyset
    needs_grad, grad_enabled = torch._C._any_requires_grad, torch._C.is_grad_enabled

    def autograd(keyset, *args, **kwargs):
        if grad_enabled() and needs_grad(*args, **kwargs):
            return slow(keyset, *args, **kwargs)
        with torch._C._AutoDispatchBelowAutograd():
            return overload.redispatch(keyset & below, *args, **kwargs)

    return _override(op, name, autograd, "Autograd", with_keyset=True)


def _override(op, name: str, fn: Callable, dispatch_key: str, with_keyset: bool = False) -> bool:
    """Register ``fn`` as ``op``'s kernel for ``dispatch_key`` with the dispatcher directly, in custom_op's
    own library. Returns False where this torch refuses (2.11 keeps the first Python kernel of a key)."""
    try:
        op._lib.impl(name, fn, dispatch_key, with_keyset=with_keyset)
    except (AttributeError, RuntimeError, TypeError):
        return False
    return True


def register_kernel(name: str, device_type: str, fn: Callable) -> Callable:
    """Run ``fn`` for ``gdn_fx::<name>`` on ``device_type`` (same signature as the reference), behind
    the op's validation. A later registration for the same device replaces the kernel.

    The kernel is registered with the dispatcher directly, not through custom_op's per-device wrapper,
    which re-enters a dynamo-disabled frame and checks the outputs for aliasing on every call; the aliasing
    contract is opcheck's to prove (tests/ops/test_opcheck.py).
    Where this torch refuses, custom_op's registration serves."""
    entry = get(name)
    first = device_type not in entry.kernels
    entry.kernels[device_type] = fn
    if first:
        kernels = entry.kernels
        impl = _guarded(lambda *args, **kwargs: kernels[device_type](*args, **kwargs), entry.validate)
        if not _override(entry.op, entry.name, impl, torch._C._dispatch_key_for_device(device_type)):
            entry.op.register_kernel(device_type)(impl)
    return fn


def register_optional_kernel(name: str, device_type: str, module: str, attr: str) -> bool:
    """``register_kernel`` with ``module.attr``, if that module imports (its toolchain, e.g. Triton,
    may be missing: the reference then serves ``device_type``). Returns whether it registered."""
    try:
        fn = getattr(importlib.import_module(module), attr)
    except ImportError:
        return False
    register_kernel(name, device_type, fn)
    return True


def get(name: str) -> OpEntry:
    if name not in _OPS:
        raise KeyError(f"no gdn_fx op named {name!r}; defined: {sorted(_OPS)}")
    return _OPS[name]


def entries() -> list[OpEntry]:
    return list(_OPS.values())
