"""The method contract: a pure function (PolicyBatch, args) -> (loss matrix [B, T], diagnostics).

A method never touches the model, optimizer or data. Aggregation of the loss matrix is shared
(`losses.aggregate`): each method declares a default mode, the config may override it, and the
mode actually used is returned with the output (and recorded with results).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import Tensor

from .losses import AGG_MODES, PolicyBatch, aggregate
from .registry import OffbenchError, Registry

RATIO_VS = ("behaviour", "old", "none")  # which reference a method's ratio uses: mu, pi_old, or none
LEVELS = ("token", "sequence")


@dataclass
class MethodOutput:
    loss: Tensor  # scalar, aggregated
    loss_matrix: Tensor  # [B, T] per-token loss before aggregation
    metrics: dict[str, float]
    agg: str  # aggregation mode used


@dataclass(frozen=True)
class WeightCurve:
    """What the kernel figure draws for a method: its gradient weight on A * grad log pi as a function
    of its importance ratio, for A > 0 (`positive`) and A < 0. Carried by the registration, so figures
    draw every registered method that has one and the core never names a method.

    weight(args, w, positive) -> weight at each ratio in the numpy array w
    label(args, positive) -> legend text
    knots(args, positive) -> ratios the curve must be evaluated at exactly (kinks, peaks)
    mark(args, positive) -> (w, weight, text) of a point to annotate, or None
    """

    weight: Callable[[Any, Any, bool], Any]
    label: Callable[[Any, bool], str]
    knots: Callable[[Any, bool], list] = lambda args, positive: []
    mark: Callable[[Any, bool], Any] = lambda args, positive: None
    style: tuple = ("-", 1.6)  # line style and width
    steps: bool = False  # a step function (drawn with drawstyle steps-mid)


@dataclass
class Method:
    name: str
    fn: Callable[[PolicyBatch, Any], tuple[Tensor, dict[str, float]]]
    args: type  # frozen dataclass of typed defaults
    default_agg: str
    ratio: str
    level: str
    equation: str
    origin: str
    doc: str = ""
    color: str | None = None  # its colour in every figure (None: a stable colour from its name)
    curve: WeightCurve | None = None  # its gradient weight vs ratio for the kernel figure

    def make_args(self, cfg: Any = None, **overrides) -> Any:
        """Build this method's args from its defaults, a mapping/dataclass `cfg`, and overrides.
        Keys that are not method args (name, agg, ...) are ignored; unknown keys are errors."""
        values: dict[str, Any] = {}
        if cfg is not None:
            if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
                values.update(dataclasses.asdict(cfg))
            else:
                values.update(dict(cfg))
        values.update(overrides)
        names = {f.name for f in dataclasses.fields(self.args)}
        for k in list(values):
            if k in ("name", "agg", "agg_norm_len"):
                values.pop(k)
            elif k not in names:
                raise OffbenchError(
                    f"method {self.name!r} has no argument {k!r}; its arguments: {', '.join(sorted(names))}"
                )
        return self.args(**values)

    def __call__(self, batch: PolicyBatch, cfg: Any = None, agg: str | None = None,
                 agg_norm_len: float | None = None, correction: Any = None, correction_cfg: Any = None,
                 **overrides) -> MethodOutput:
        """Loss of this method on `batch`. `correction` (a name or Correction) wraps it with a
        rollout-correction modifier: its mask narrows the batch first, its weights scale the loss
        matrix, then the shared aggregation runs."""
        from .correction import apply_correction, get_correction

        if cfg is not None and agg is None:
            agg = cfg.get("agg") if hasattr(cfg, "get") else getattr(cfg, "agg", None)
        args = self.make_args(cfg, **overrides)
        if isinstance(correction, str):
            correction = get_correction(correction)
        batch, weights, corr_metrics = apply_correction(batch, correction, correction_cfg)
        loss_mat, metrics = self.fn(batch, args)
        if weights is not None:
            loss_mat = loss_mat * weights
        mode = agg or self.default_agg
        loss = aggregate(loss_mat, batch.mask, mode, agg_norm_len)
        return MethodOutput(loss=loss, loss_matrix=loss_mat, metrics={**metrics, **corr_metrics}, agg=mode)


METHODS: Registry[Method] = Registry("method")


@dataclass(frozen=True)
class NoArgs:
    """This method has no arguments."""


def register_method(name: str, *, args: type = NoArgs, default_agg: str = "token-mean",
                    ratio: str, level: str, equation: str, color: str | None = None,
                    curve: WeightCurve | None = None):
    """Decorator: register a method function under `name` with its typed defaults; `color` and `curve`
    are what figures need to draw it (optional)."""
    if default_agg not in AGG_MODES:
        raise OffbenchError(f"method {name!r}: default_agg {default_agg!r} not in {AGG_MODES}")
    if ratio not in RATIO_VS or level not in LEVELS:
        raise OffbenchError(f"method {name!r}: ratio must be one of {RATIO_VS}, level one of {LEVELS}")

    def deco(fn):
        origin = f"{fn.__module__}.{fn.__qualname__}"
        METHODS.add(name, Method(name, fn, args, default_agg, ratio, level, equation, origin,
                                 (fn.__doc__ or "").strip(), color, curve), origin)
        return fn

    return deco


def check_arg(method: str, name: str, value: Any, low: float | None = None, high: float | None = None, *,
              low_open: bool = False, high_open: bool = False, none_ok: bool = False) -> None:
    """Argument validation for method args dataclasses (call from `__post_init__`): a value outside
    [low, high] (open ends with low_open / high_open; None = unbounded) is a one-line OffbenchError
    naming the range, e.g. `dppo_tv: delta_low=-0.1 must be in (0, 1]`."""
    if value is None:
        if none_ok:
            return
        raise OffbenchError(f"{method}: {name} must be a number, not null")
    ok = (low is None or (value > low if low_open else value >= low)) and \
         (high is None or (value < high if high_open else value <= high))
    if not ok:
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        rng = f"{'(' if low_open or low is None else '['}{lo}, {hi}{')' if high_open or high is None else ']'}"
        raise OffbenchError(f"{method}: {name}={value!r} must be in {rng}" + (" or null" if none_ok else ""))


def check_choice(method: str, name: str, value: Any, choices: tuple) -> None:
    """One-line OffbenchError when `value` is not one of `choices`."""
    if value not in choices:
        raise OffbenchError(f"{method}: {name}={value!r} is not one of {', '.join(map(str, choices))}")


def get_method(name: str) -> Method:
    from . import plugins

    plugins.load_builtin()
    return METHODS.get(name)


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass (the string literal right after each field)."""
    import ast
    import inspect
    import textwrap

    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs = {}
    for a, b in zip(body, body[1:]):
        if isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name) and isinstance(b, ast.Expr) \
                and isinstance(getattr(b, "value", None), ast.Constant) and isinstance(b.value.value, str):
            docs[a.target.id] = " ".join(b.value.value.split())
    return docs


__all__ = ["Method", "MethodOutput", "METHODS", "register_method", "get_method", "NoArgs", "field",
           "field_docs", "check_arg", "check_choice"]
