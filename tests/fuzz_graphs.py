"""Random small PyTorch modules for differential fuzzing of `waferscale.compile`.

A `Case` is plain data (dtype, input shapes, a list of op tuples, the outputs, a seed), so
a failing case prints as a readable reproducer and Hypothesis can shrink it. `FuzzModule`
interprets a case as an `nn.Module` (its parameters drawn from the case's seed), and
`check_case` compiles it with `waferscale.compile` (pipelined, run and compared with eager;
estimate mode, timed only) and returns what went wrong, if anything.

The op set is what the wafer lowers (docs/compiler.md's lowering table) plus a few ops
that fall back to the host, so the fallback path is fuzzed too: linear, matmul / mm / bmm,
layer norm, activations, softmax / log-softmax over any axis, SDPA (3-D or 4-D, causal or not),
embedding, sums (and means), reshape / permute / transpose / slice / cat / expand, clamp,
scalar and tensor arithmetic, powers, dtype casts, a causal mask from constants; fp32 and
bf16; sizes 1, odd, prime. Ops are kept in their
safe domains (``log(|x| + 1)``, division by ``|y| + 1``, ``exp(tanh(x))``) so that eager
results are finite.

Tolerance (`compare`): the wafer's outputs ``w`` against eager's ``e`` in the same dtype,
with ``scale = max(1, max |r|)`` and ``r`` the same module run in float64 on the same
(rounded) weights and inputs:

* fp32: ``max |w - e| <= 1e-4 * scale`` (docs/compiler.md: sum order only);
* bf16: ``max |w - e| <= 2**-5 * scale`` (a few bf16 roundings, 2**-8 each, of an O(1)
  value; docs/compiler.md's 0.1 on O(1) logits is looser);
* either dtype, when that fails: the wafer is no further from the float64 result than
  twice eager's own error plus the same tolerance, ``max |w - r| <= 2 max |e - r| + tol
  * scale``. An ill-conditioned graph (a layer norm over a near-constant softmax row
  divides bf16 rounding noise by a tiny standard deviation) differs from eager by more
  than bf16's resolution in both directions; a wrong result is far from float64 too.
* when both fail, element by element: the wafer is within the tolerance plus twice how far
  eager's own output moves when the input moves by one unit in the last place
  (`sensitivity`, a few random perturbations). Where an output depends on rounding
  discontinuously (a layer norm over two nearly equal values snaps to +-1, so one ulp
  upstream flips its sign; seed 207155 of the 10,000-case run), eager matching float64
  is luck, and neither side's rounding order is wrong; a wafer error in an element that
  rounding does not move is still a mismatch.
"""

from __future__ import annotations

import json
import math
import random
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

#: Axis lengths: 1, odd, prime, and a power of two.
SIZES = (1, 2, 3, 5, 7, 8, 11, 13)
UNARY = ("relu", "gelu", "gelu_tanh", "silu", "tanh", "sigmoid", "neg", "abs", "exp_tanh",
         "log_abs1", "sqrt_abs", "rsqrt_abs1", "sin", "cos", "erf", "square", "recip_abs1",
         "leaky_relu", "clamp_min", "hardtanh")
SCALAR = ("add", "sub", "mul", "div", "rsub", "pow2", "pow_half")
BINARY = ("add", "sub", "mul", "div_safe", "maximum", "minimum")
TOL = {"float32": 1e-4, "bfloat16": 2.0 ** -5}


@dataclass(frozen=True)
class Case:
    """One generated module: see the module docstring."""

    dtype: str
    x_shape: tuple[int, ...]
    ops: tuple[tuple[Any, ...], ...]
    outputs: tuple[int, ...]
    ids_shape: tuple[int, ...] | None = None
    vocab: int = 0
    seed: int = 0

    def __repr__(self) -> str:
        ops = ",\n    ".join(repr(o) for o in self.ops)
        return (f"Case(dtype={self.dtype!r}, x_shape={self.x_shape}, ids_shape="
                f"{self.ids_shape}, vocab={self.vocab}, seed={self.seed}, outputs="
                f"{self.outputs}, ops=(\n    {ops}))")


# ------------------------------------------------------------------ generation -----------
class Draw:
    """What the generator draws from: Hypothesis's ``draw`` or a `random.Random`."""

    def __init__(self, integers: Callable[[int, int], int],
                 choice: Callable[[Sequence[Any]], Any]) -> None:
        self.integers = integers
        self.choice = choice

    @classmethod
    def from_random(cls, rng: random.Random) -> Draw:
        return cls(rng.randint, lambda xs: xs[rng.randrange(len(xs))])

    @classmethod
    def from_hypothesis(cls, draw: Any) -> Draw:
        from hypothesis import strategies as st
        return cls(lambda lo, hi: draw(st.integers(lo, hi)),
                   lambda xs: draw(st.sampled_from(list(xs))))

    def boolean(self) -> bool:
        return bool(self.integers(0, 1))

    def size(self) -> int:
        return self.choice(SIZES)


def _divisors(n: int) -> list[int]:
    return [d for d in range(2, n) if n % d == 0]


def _candidates(d: Draw, shapes: list[tuple[int, ...]], has_ids: bool) -> list[str]:
    kinds = ["linear", "matmul_w", "layer_norm", "unary", "unary", "softmax", "sum",
             "reshape", "permute", "transpose", "slice", "cat", "expand", "scalar",
             "binary", "clamp", "mean", "cast"]
    if any(len(s) >= 2 and s[-1] == s[-2] for s in shapes):
        kinds.append("causal_mask")
    if any(len(s) == 2 for s in shapes):
        kinds.append("mm")
    if any(len(s) == 3 for s in shapes):
        kinds.append("bmm")
    if any(len(s) in (3, 4) for s in shapes):
        kinds += ["sdpa", "sdpa"]
    if has_ids:
        kinds.append("embedding")
    return kinds


def _pick(d: Draw, shapes: list[tuple[int, ...]], ok: Callable[[tuple[int, ...]], bool]
          ) -> int | None:
    """Index of a value whose shape satisfies ``ok``, preferring recent ones."""
    idx = [i for i, s in enumerate(shapes) if ok(s)]
    if not idx:
        return None
    # the last value half of the time: long chains, not only wide DAGs
    return idx[-1] if d.boolean() else d.choice(idx)


def _op(d: Draw, kind: str, shapes: list[tuple[int, ...]], ids_shape: tuple[int, ...] | None
        ) -> tuple[tuple[Any, ...], tuple[int, ...]] | None:
    """One op of ``kind`` over the values so far and its result shape, or None."""
    def nonscalar(s: tuple[int, ...]) -> bool:
        return len(s) >= 1

    if kind in ("linear", "matmul_w"):
        i = _pick(d, shapes, nonscalar)
        if i is None:
            return None
        out = d.size()
        bias = d.boolean() if kind == "linear" else False
        return (kind, i, out, bias), shapes[i][:-1] + (out,)
    if kind == "mm":
        i = _pick(d, shapes, lambda s: len(s) == 2)
        assert i is not None
        k = shapes[i][1]
        js = [j for j, s in enumerate(shapes) if len(s) == 2 and s[1] == k]
        j = d.choice(js)
        return ("mm", i, j), (shapes[i][0], shapes[j][0])
    if kind == "bmm":
        i = _pick(d, shapes, lambda s: len(s) == 3)
        assert i is not None
        b, _, k = shapes[i]
        js = [j for j, s in enumerate(shapes) if len(s) == 3 and s[0] == b and s[2] == k]
        j = d.choice(js)
        return ("bmm", i, j), (b, shapes[i][1], shapes[j][1])
    if kind == "layer_norm":
        i = _pick(d, shapes, nonscalar)
        if i is None:
            return None
        return ("layer_norm", i, d.boolean()), shapes[i]
    if kind == "unary":
        i = _pick(d, shapes, lambda s: True)
        assert i is not None
        return ("unary", i, d.choice(UNARY)), shapes[i]
    if kind == "softmax":
        i = _pick(d, shapes, nonscalar)
        if i is None:
            return None
        dim = -1 if d.integers(0, 3) else d.integers(0, len(shapes[i]) - 1)
        return ("softmax", i, dim, d.boolean()), shapes[i]
    if kind == "sdpa":
        i = _pick(d, shapes, lambda s: len(s) in (3, 4))
        assert i is not None
        s = shapes[i]
        same = [j for j, t in enumerate(shapes) if t == s]
        j, k = d.choice(same), d.choice(same)
        return ("sdpa", i, j, k, d.boolean()), s
    if kind == "embedding":
        assert ids_shape is not None
        dim = d.size()
        return ("embedding", dim), ids_shape + (dim,)
    if kind in ("sum", "mean"):
        i = _pick(d, shapes, nonscalar)
        if i is None:
            return None
        s = shapes[i]
        how = d.integers(0, 3)
        if how == 0:
            dims: tuple[int, ...] = (len(s) - 1,)
        elif how == 1:
            dims = (0,)
        elif how == 2 and len(s) >= 2:
            dims = tuple(range(len(s) - 1))
        else:
            dims = (d.integers(0, len(s) - 1),)
        keep = d.boolean()
        out = tuple(1 if a in dims else n for a, n in enumerate(s)) if keep else \
            tuple(n for a, n in enumerate(s) if a not in dims)
        return (kind, i, dims, keep), out
    if kind == "reshape":
        i = _pick(d, shapes, lambda s: True)
        assert i is not None
        s = shapes[i]
        how = d.integers(0, 3)
        if how == 0 and len(s) >= 2:
            new = (math.prod(s[:-1]), s[-1])
        elif how == 1 and len(s) >= 2:
            new = s[:-2] + (s[-2] * s[-1],)
        elif how == 2 and s and _divisors(s[-1]):
            a = d.choice(_divisors(s[-1]))
            new = s[:-1] + (a, s[-1] // a)
        else:
            if len(s) >= 4:
                return None
            pos = d.integers(0, len(s))
            new = s[:pos] + (1,) + s[pos:]
        return ("reshape", i, new), new
    if kind == "permute":
        i = _pick(d, shapes, lambda s: len(s) >= 2)
        if i is None:
            return None
        n = len(shapes[i])
        perm = list(range(n))
        for a in range(n - 1, 0, -1):  # Fisher-Yates from the drawer
            b = d.integers(0, a)
            perm[a], perm[b] = perm[b], perm[a]
        return ("permute", i, tuple(perm)), tuple(shapes[i][p] for p in perm)
    if kind == "transpose":
        i = _pick(d, shapes, lambda s: len(s) >= 2)
        if i is None:
            return None
        n = len(shapes[i])
        a, b = d.integers(0, n - 1), d.integers(0, n - 1)
        s = list(shapes[i])
        s[a], s[b] = s[b], s[a]
        return ("transpose", i, a, b), tuple(s)
    if kind == "slice":
        i = _pick(d, shapes, lambda s: any(n > 1 for n in s))
        if i is None:
            return None
        s = shapes[i]
        dim = d.choice([a for a, n in enumerate(s) if n > 1])
        start = d.integers(0, s[dim] - 1)
        stop = d.integers(start + 1, s[dim])
        out = list(s)
        out[dim] = stop - start
        return ("slice", i, dim, start, stop), tuple(out)
    if kind == "cat":
        i = _pick(d, shapes, nonscalar)
        if i is None:
            return None
        s = shapes[i]
        dim = d.integers(0, len(s) - 1)
        js = [j for j, t in enumerate(shapes) if len(t) == len(s)
              and all(t[a] == s[a] for a in range(len(s)) if a != dim)]
        j = d.choice(js)
        out = list(s)
        out[dim] += shapes[j][dim]
        return ("cat", i, j, dim), tuple(out)
    if kind == "expand":
        i = _pick(d, shapes, lambda s: len(s) <= 3)
        if i is None:
            return None
        s = shapes[i]
        pos = d.integers(0, len(s))
        k = d.size()
        return ("expand", i, pos, k), s[:pos] + (k,) + s[pos:]
    if kind == "scalar":
        i = _pick(d, shapes, lambda s: True)
        assert i is not None
        c = d.choice((0.5, -1.5, 2.0, 3.0, -0.25, 1.0))
        return ("scalar", i, d.choice(SCALAR), c), shapes[i]
    if kind == "binary":
        i = _pick(d, shapes, lambda s: True)
        assert i is not None
        s = shapes[i]
        # same shape, or a trailing-suffix shape that broadcasts
        js = [j for j, t in enumerate(shapes) if t == s or (len(t) < len(s)
                                                            and s[len(s) - len(t):] == t)]
        j = d.choice(js)
        return ("binary", i, j, d.choice(BINARY)), s
    if kind == "clamp":
        i = _pick(d, shapes, lambda s: True)
        assert i is not None
        lo, hi = d.choice(((-0.5, 0.5), (None, 0.25), (0.0, None), (-1.0, 2.0)))
        return ("clamp", i, lo, hi), shapes[i]
    if kind == "cast":
        i = _pick(d, shapes, lambda s: True)
        assert i is not None
        return ("cast", i), shapes[i]
    if kind == "causal_mask":
        i = _pick(d, shapes, lambda s: len(s) >= 2 and s[-1] == s[-2])
        assert i is not None
        return ("causal_mask", i), shapes[i]
    raise AssertionError(kind)


def generate(d: Draw, *, max_ops: int = 6) -> Case:
    """A random case (see the module docstring)."""
    dtype = "bfloat16" if d.integers(0, 2) == 0 else "float32"
    rank = d.integers(1, 4)
    x_shape = tuple(d.size() for _ in range(rank))
    ids_shape: tuple[int, ...] | None = None
    vocab = 0
    if d.integers(0, 3) == 0:
        ids_shape = (d.size(), d.size())
        vocab = d.choice((2, 7, 13))
    shapes: list[tuple[int, ...]] = [x_shape]
    ops: list[tuple[Any, ...]] = []
    n_ops = d.integers(1, max_ops)
    for _ in range(n_ops * 3):  # some kinds do not apply to the shapes at hand
        if len(ops) == n_ops:
            break
        kind = d.choice(_candidates(d, shapes, ids_shape is not None))
        made = _op(d, kind, shapes, ids_shape)
        if made is None or math.prod(made[1]) > 4096 or len(made[1]) > 4:
            continue
        ops.append(made[0])
        shapes.append(made[1])
    outputs = (len(shapes) - 1,)
    if len(shapes) > 2 and d.integers(0, 3) == 0:
        outputs = (d.integers(1, len(shapes) - 2), len(shapes) - 1)
    return Case(dtype, x_shape, tuple(ops), outputs, ids_shape, vocab, d.integers(0, 2**16))


def hypothesis_strategy(max_ops: int = 6) -> Any:
    """`generate` as a Hypothesis strategy (shrinks to fewer ops, smaller sizes)."""
    from hypothesis import strategies as st

    @st.composite
    def cases(draw: Any) -> Case:
        return generate(Draw.from_hypothesis(draw), max_ops=max_ops)

    return cases()


# ------------------------------------------------------------------ the module -----------
def _unary(name: str, x: torch.Tensor) -> torch.Tensor:
    if name == "gelu":
        return F.gelu(x)
    if name == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    if name == "exp_tanh":
        return torch.exp(torch.tanh(x))
    if name == "log_abs1":
        return torch.log(x.abs() + 1)
    if name == "sqrt_abs":
        return torch.sqrt(x.abs())
    if name == "rsqrt_abs1":
        return torch.rsqrt(x.abs() + 1)
    if name == "recip_abs1":
        return torch.reciprocal(x.abs() + 1)
    if name == "square":
        return torch.square(x)
    if name == "leaky_relu":
        return F.leaky_relu(x, 0.1)
    if name == "clamp_min":
        return torch.clamp_min(x, 0.1)
    if name == "hardtanh":
        return F.hardtanh(x)
    return (getattr(torch, name, None) or getattr(F, name))(x)


class FuzzModule(torch.nn.Module):
    """A `Case` as a module; parameters drawn from ``case.seed`` in the case's dtype."""

    def __init__(self, case: Case) -> None:
        super().__init__()
        self.case = case
        gen = torch.Generator().manual_seed(case.seed)
        dtype = getattr(torch, case.dtype)
        shapes: list[tuple[int, ...]] = [case.x_shape]
        self.params = torch.nn.ParameterList()
        self.slots: list[int] = []
        for op in case.ops:
            self.slots.append(len(self.params))
            kind = op[0]
            if kind in ("linear", "matmul_w"):
                k = shapes[op[1]][-1]
                w = torch.randn(op[2], k, generator=gen) / math.sqrt(k)
                self.params.append(torch.nn.Parameter(w.to(dtype)))
                if op[3]:
                    self.params.append(torch.nn.Parameter(
                        (torch.randn(op[2], generator=gen) * 0.1).to(dtype)))
            elif kind == "layer_norm" and op[2]:
                h = shapes[op[1]][-1]
                self.params.append(torch.nn.Parameter(
                    (1 + 0.1 * torch.randn(h, generator=gen)).to(dtype)))
                self.params.append(torch.nn.Parameter(
                    (0.1 * torch.randn(h, generator=gen)).to(dtype)))
            elif kind == "embedding":
                self.params.append(torch.nn.Parameter(
                    torch.randn(case.vocab, op[1], generator=gen).to(dtype)))
            shapes.append(_shape_after(op, shapes, case))

    def forward(self, x: torch.Tensor, ids: torch.Tensor | None = None) -> Any:
        vals: list[torch.Tensor] = [x]
        for op, slot in zip(self.case.ops, self.slots, strict=True):
            vals.append(self._step(op, slot, vals, ids))
        outs = tuple(vals[i] for i in self.case.outputs)
        return outs[0] if len(outs) == 1 else outs

    def _step(self, op: tuple[Any, ...], slot: int, v: list[torch.Tensor],
               ids: torch.Tensor | None) -> torch.Tensor:
        kind = op[0]
        p = self.params
        if kind == "linear":
            return F.linear(v[op[1]], p[slot], p[slot + 1] if op[3] else None)
        if kind == "matmul_w":
            return torch.matmul(v[op[1]], p[slot].t())
        if kind == "mm":
            return torch.mm(v[op[1]], v[op[2]].t())
        if kind == "bmm":
            return torch.bmm(v[op[1]], v[op[2]].transpose(1, 2))
        if kind == "layer_norm":
            x = v[op[1]]
            w, b = (p[slot], p[slot + 1]) if op[2] else (None, None)
            return F.layer_norm(x, x.shape[-1:], w, b)
        if kind == "unary":
            return _unary(op[2], v[op[1]])
        if kind == "softmax":
            fn = F.log_softmax if op[3] else F.softmax
            return fn(v[op[1]], dim=op[2])
        if kind == "sdpa":
            return F.scaled_dot_product_attention(v[op[1]], v[op[2]], v[op[3]],
                                                  is_causal=op[4])
        if kind == "embedding":
            assert ids is not None
            return F.embedding(ids, p[slot])
        if kind == "sum":
            return v[op[1]].sum(dim=op[2], keepdim=op[3])
        if kind == "mean":
            return v[op[1]].mean(dim=op[2], keepdim=op[3])
        if kind == "reshape":
            return v[op[1]].reshape(op[2])
        if kind == "permute":
            return v[op[1]].permute(op[2])
        if kind == "transpose":
            return v[op[1]].transpose(op[2], op[3])
        if kind == "slice":
            return v[op[1]].narrow(op[2], op[3], op[4] - op[3])
        if kind == "cat":
            return torch.cat([v[op[1]], v[op[2]]], dim=op[3])
        if kind == "expand":
            x = v[op[1]].unsqueeze(op[2])
            size = [-1] * x.dim()
            size[op[2]] = op[3]
            return x.expand(size)
        if kind == "scalar":
            x, how, c = v[op[1]], op[2], op[3]
            return {"add": lambda: x + c, "sub": lambda: x - c, "mul": lambda: x * c,
                    "div": lambda: x / c, "rsub": lambda: c - x, "pow2": lambda: x ** 2,
                    "pow_half": lambda: x.abs() ** 0.5}[how]()
        if kind == "binary":
            a, b, how = v[op[1]], v[op[2]], op[3]
            if how == "div_safe":
                return a / (b.abs() + 1)
            return {"add": torch.add, "sub": torch.sub, "mul": torch.mul,
                    "maximum": torch.maximum, "minimum": torch.minimum}[how](a, b)
        if kind == "clamp":
            return torch.clamp(v[op[1]], op[2], op[3])
        if kind == "cast":
            # through the other float dtype and back (every value keeps the case's dtype,
            # which the weights of later ops need)
            x = v[op[1]]
            other = torch.float32 if x.dtype == torch.bfloat16 else torch.bfloat16
            return (x.to(other) * 1.5).to(x.dtype)
        if kind == "causal_mask":
            # a mask built from constants (folded at compile time): a `where` on the wafer
            x = v[op[1]]
            n = x.shape[-1]
            keep = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
            return x.masked_fill(~keep, -30.0)
        raise AssertionError(kind)


def _shape_after(op: tuple[Any, ...], shapes: list[tuple[int, ...]], case: Case
                 ) -> tuple[int, ...]:
    """Result shape of ``op`` (meta tensors: the same rules as `_op`)."""
    m = FuzzModule.__new__(FuzzModule)
    torch.nn.Module.__init__(m)
    metas = [torch.empty(s, device="meta") for s in shapes]
    ids = torch.zeros(case.ids_shape or (1,), dtype=torch.long, device="meta")
    m.params = torch.nn.ParameterList()
    kind = op[0]
    if kind in ("linear", "matmul_w"):
        m.params.append(torch.nn.Parameter(torch.empty(op[2], shapes[op[1]][-1],
                                                       device="meta")))
        m.params.append(torch.nn.Parameter(torch.empty(op[2], device="meta")))
    elif kind == "layer_norm":
        h = shapes[op[1]][-1]
        m.params.append(torch.nn.Parameter(torch.empty(h, device="meta")))
        m.params.append(torch.nn.Parameter(torch.empty(h, device="meta")))
    elif kind == "embedding":
        m.params.append(torch.nn.Parameter(torch.empty(max(case.vocab, 1), op[1],
                                                       device="meta")))
    return tuple(FuzzModule._step(m, op, 0, metas, ids).shape)


def inputs(case: Case) -> tuple[torch.Tensor, ...]:
    """The example (and run) inputs of a case, from its seed."""
    gen = torch.Generator().manual_seed(case.seed + 1)
    x = torch.randn(case.x_shape, generator=gen).to(getattr(torch, case.dtype))
    if case.ids_shape is None:
        return (x,)
    return x, torch.randint(0, case.vocab, case.ids_shape, generator=gen)


# ------------------------------------------------------------------ the check ------------
@dataclass
class Outcome:
    """``status``: ``ok``, ``mismatch`` or ``crash``; ``detail`` says what and where."""

    status: str
    detail: str = ""
    error: float = 0.0
    fallbacks: list[str] = field(default_factory=list)


def _flat(out: Any) -> list[torch.Tensor]:
    return [out] if isinstance(out, torch.Tensor) else list(out)


def sensitivity(model: torch.nn.Module, args: Sequence[torch.Tensor], trials: int = 4
                ) -> list[torch.Tensor]:
    """Per output element, the most eager's output moves (float64) over ``trials`` runs
    with every floating input moved by one unit in the last place of its dtype, up or
    down at random: how much rounding alone can change that element."""
    gen = torch.Generator().manual_seed(12345)
    base = [t.double() for t in _flat(model(*args))]
    spread = [torch.zeros_like(t) for t in base]
    for _ in range(trials):
        moved = []
        for a in args:
            if not a.is_floating_point():
                moved.append(a)
                continue
            ulp = torch.finfo(a.dtype).eps
            sign = torch.randint(0, 2, a.shape, generator=gen).double() * 2 - 1
            moved.append((a.double() * (1 + ulp * sign)).to(a.dtype))
        for s, b, o in zip(spread, base, _flat(model(*moved)), strict=True):
            torch.maximum(s, (o.double() - b).abs(), out=s)
    return spread


def compare(case: Case, got: Any, eager: Any, ref64: Any,
            spread: list[torch.Tensor] | None = None) -> tuple[bool, float, str]:
    """Whether the wafer's outputs are within tolerance (module docstring), the worst
    error over the scale, and a line for a mismatch. ``spread``: `sensitivity` of
    eager's outputs, for the last criterion (None: not applied)."""
    tol = TOL[case.dtype]
    worst = 0.0
    for k, (w, e, r) in enumerate(zip(_flat(got), _flat(eager), _flat(ref64), strict=True)):
        if tuple(w.shape) != tuple(e.shape) or w.dtype != e.dtype:
            return False, math.inf, (f"output {k}: {tuple(w.shape)} {w.dtype} vs eager "
                                     f"{tuple(e.shape)} {e.dtype}")
        w, e, r = w.double(), e.double(), r.double()
        if w.numel() == 0:
            continue
        if not torch.isfinite(w).all():
            return False, math.inf, f"output {k}: non-finite values on the wafer"
        scale = max(1.0, float(r.abs().max()))
        err = float((w - e).abs().max()) / scale
        worst = max(worst, err)
        if err <= tol:
            continue
        err_w = float((w - r).abs().max()) / scale
        err_e = float((e - r).abs().max()) / scale
        if err_w <= 2 * err_e + tol:
            continue
        if spread is not None and bool(((w - e).abs() <= tol * scale + 2 * spread[k]).all()):
            continue
        return False, err, (f"output {k}: max |wafer - eager| = {err:.3g} x {scale:.3g} "
                            f"(tolerance {tol:g}); vs float64: wafer {err_w:.3g}, eager "
                            f"{err_e:.3g}")
    return True, worst, ""


def _strict_json(report: dict[str, Any], what: str) -> None:
    try:
        json.dumps(report, allow_nan=False, default=str)
    except ValueError as exc:
        bad = [k for k, v in report.items() if isinstance(v, float) and not math.isfinite(v)]
        raise AssertionError(f"{what} report is not strict JSON ({exc}): {bad}") from None


def check_case(case: Case, *, estimate: bool = True, spec: Any = "wse2") -> Outcome:
    """Compile ``case`` pipelined, run it, compare with eager; compile it in estimate mode
    too. Any exception is a crash (every generated graph is supported: what has no kernel
    falls back to the host)."""
    import waferscale

    torch.manual_seed(0)
    model = FuzzModule(case).eval()
    args = inputs(case)
    with torch.no_grad():
        eager = model(*args)
        ref64 = FuzzModule(case).double().eval()
        ref64.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
        r = ref64(*(a.double() if a.is_floating_point() else a for a in args))
    if not all(torch.isfinite(t.double()).all() for t in _flat(r)):
        return Outcome("ok", "skipped: the float64 result is not finite")
    stage = "compile"
    try:
        cm = waferscale.compile(model, args, spec=spec)
        if cm.mode != "pipelined":
            return Outcome("crash", f"compiled to {cm.mode!r}, not pipelined: "
                                    f"{'; '.join(cm.program.notes)[:300]}")
        stage = "run"
        got = cm(*args)
        stage = "report"
        rep = cm.report()
        _strict_json(rep, "pipelined")
        fb = [f["op"] for f in rep["fallback_ops"]]
        if estimate:
            stage = "estimate"
            ce = waferscale.compile(model, args, spec=spec, mode="estimate")
            _strict_json(ce.report(), "estimate")
    except Exception as exc:  # every failure is a finding; the caller reports it
        tb = traceback.extract_tb(exc.__traceback__)
        where = next((f"{f.filename.split('src/')[-1]}:{f.lineno}" for f in reversed(tb)
                      if "waferscale" in f.filename), "")
        return Outcome("crash", f"{stage}: {type(exc).__name__}: {str(exc)[:300]} "
                                f"(at {where})")
    ok, err, line = compare(case, got, eager, r)
    if not ok:   # maybe ill-conditioned: how far does rounding alone move eager?
        with torch.no_grad():
            spread = sensitivity(model, args)
        ok, err, line = compare(case, got, eager, r, spread)
    return Outcome("ok" if ok else "mismatch", line, err, fb)


__all__ = ["Case", "Draw", "FuzzModule", "Outcome", "SIZES", "TOL", "check_case", "compare",
           "generate", "hypothesis_strategy", "inputs", "sensitivity"]
