"""The program half of an exported file, checked as text so that no one is handed a file that plain
`torch.export.load` would run code from: featcache itself never deserializes it (deploy/archive.py
rebuilds the network from the tensors), but a file it accepts is one whose program a PyTorch user may
load. What `featcache export` writes with torch 2.x, and nothing else, passes:

- models/model.json: every node's target a registered aten operator overload or a symbolic-shape
  operator (`getattr` from `torch` resolves any target name, `torch.os.system` included), no operator
  passed as an argument; every shape expression (`expr_str`, handed to sympy.sympify, which evaluates
  Python) made of symbols, integers, Add, Mul, FloorDiv, Mod, Min and Max alone; every guard
  (`guards_code`, compiled by `.module()`) made of the input's sizes, integers, arithmetic (no powers),
  comparisons, `and`, torch.sym_min and torch.sym_max alone; the calling convention (in_spec and
  out_spec, which treespec_loads turns into types by importing the modules they name) exactly
  featcache's, and no named-tuple types; range constraints on plain symbol names;
- data/sample_inputs/model.pt: a torch.save file of plain tensors that `weights_only=True` loads
  (torch.export.load retries with weights_only=False when that fails).
"""
from __future__ import annotations

import io
import re

import torch

from ..errors import FeatcacheError
from ..npz import check_torch_file

OPERATOR = re.compile(r"torch\.ops\.aten\.(?!__)\w+\.(?!__)\w+|_operator\.(add|sub|mul|floordiv|mod|neg|truediv)"
                      r"|torch\.sym_(min|max|int|float|not)")
_SYMBOL = r"Symbol\('[a-z]+\d{1,6}'(, (positive|integer|nonnegative)=(True|False))*\)"
EXPRESSION = re.compile(rf"({_SYMBOL}|Integer\(-?\d{{1,30}}\)|(Add|Mul|FloorDiv|Mod|PythonMod|Min|Max)\(|[(), ])*")
# no `**` (a power tower would hang every call), integers of at most 30 digits
GUARD = re.compile(r"(L\['images'\]\.size\(\)\[\d\]|torch\.sym_(min|max)\(|\d{1,30}|//|\*(?!\*)|[-+%(), ]|[<>=!]=|[<>]"
                   r"| and )*")
SYMBOL_NAME = re.compile(r"[a-z]+\d{1,6}")  # range_constraints' keys: torch counts up to a symbol's number
NODE_METADATA = {"stack_trace", "nn_module_stack", "torch_fn"}  # kept as strings; no name in them is resolved
# The calling convention of featcache's Classifier (one tensor in, one out) as torch.export writes it. torch
# turns these into pytrees with treespec_loads, which imports any module a spec names: only these pass.
IN_SPEC = ('[1, {"type": "builtins.tuple", "context": "null", "children_spec": [{"type": "builtins.tuple", "context": '
           '"null", "children_spec": [{"type": null, "context": null, "children_spec": []}]}, {"type": "builtins.dict", '
           '"context": "[]", "children_spec": []}]}]')
OUT_SPEC = '[1, {"type": null, "context": null, "children_spec": []}]'


def check_program(where: str, model: dict) -> None:
    """Refuse, in one line naming the rule, a program (models/model.json, parsed) that holds anything
    but what the module docstring lists."""
    guards = model.get("guards_code", [])
    if not isinstance(guards, list):
        raise FeatcacheError(f"{where}: models/model.json's guards_code is not a list")
    for guard in guards:
        if not isinstance(guard, str) or not GUARD.fullmatch(guard):
            raise FeatcacheError(f"{where}: a guard of models/model.json is not plain size arithmetic "
                                 f"({str(guard)[:60]!r}): refused, torch.export.load would run it as Python")
    graph_module = model.get("graph_module")
    calls = graph_module.get("module_call_graph") if isinstance(graph_module, dict) else None
    if not isinstance(calls, list) or not all(isinstance(call, dict) for call in calls):
        raise FeatcacheError(f"{where}: models/model.json has no module call graph")
    signatures = [call.get("signature") for call in calls if call.get("signature") is not None]
    if len(signatures) != 1 or not isinstance(signatures[0], dict) or (
            signatures[0].get("in_spec"), signatures[0].get("out_spec")) != (IN_SPEC, OUT_SPEC):
        raise FeatcacheError(f"{where}: models/model.json's calling convention is not featcache's (one tensor in, "
                             "one out): refused, torch.export.load would import the modules it names")
    if graph_module.get("treespec_namedtuple_fields") not in (None, {}):
        raise FeatcacheError(f"{where}: models/model.json names tuple types featcache export never writes")
    ranges = model.get("range_constraints", {})
    if not isinstance(ranges, dict) or not all(SYMBOL_NAME.fullmatch(str(name)) for name in ranges):
        raise FeatcacheError(f"{where}: models/model.json's range constraints name symbols featcache export never writes")
    stack = [model]
    while stack:  # the JSON tree, walked without recursion: any depth is fine
        value = stack.pop()
        if isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, dict):
            if "as_operator" in value:  # an operator passed as an argument: resolved by getattr from torch
                raise FeatcacheError(f"{where}: models/model.json passes an operator as an argument: refused")
            if "target" in value and "inputs" in value:  # a node, wherever a graph sits
                _check_node(where, value)
            expression = value.get("expr_str")
            if expression is not None and not (isinstance(expression, str) and EXPRESSION.fullmatch(expression)):
                raise FeatcacheError(f"{where}: a shape expression of models/model.json is not plain arithmetic "
                                     f"({str(expression)[:60]!r}): refused, sympy would evaluate it as Python")
            stack.extend(value.values())


def _check_node(where: str, node: dict) -> None:
    target = node["target"]
    if not isinstance(target, str) or not OPERATOR.fullmatch(target) or (
            target.startswith("torch.ops.aten.") and not _is_aten_overload(target)):
        raise FeatcacheError(f"{where}: a node of models/model.json calls {str(target)[:60]!r}, not an aten "
                             "operator: refused")
    metadata = node.get("metadata") or {}
    if not isinstance(metadata, dict) or not set(metadata) <= NODE_METADATA:
        raise FeatcacheError(f"{where}: a node of models/model.json carries metadata featcache export never "
                             f"writes ({sorted(metadata)[:3] if isinstance(metadata, dict) else metadata!r})")


def _is_aten_overload(target: str) -> bool:
    """Whether torch.ops.aten.<name>.<overload> is an operator overload registered with this torch."""
    _, _, _, name, overload = target.split(".")
    try:
        return isinstance(getattr(getattr(torch.ops.aten, name), overload), torch._ops.OpOverload)
    except (AttributeError, RuntimeError):
        return False


def check_sample_inputs(where: str, data: bytes) -> None:
    """Refuse sample inputs that are not a (tuple, dict) of tensors loaded with weights_only=True."""
    try:
        check_torch_file(data)
        args, kwargs = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
        plain = isinstance(args, tuple) and isinstance(kwargs, dict) and all(
            isinstance(value, torch.Tensor) for value in (*args, *kwargs.values()))
    except Exception as error:  # noqa: BLE001 - the unpickler refuses with many types; each is the same refusal
        raise FeatcacheError(f"{where}: its sample inputs are not plain tensors that weights_only=True loads "
                             f"({type(error).__name__}): refused, torch.export.load would unpickle them") from None
    if not plain:
        raise FeatcacheError(f"{where}: its sample inputs are not a tuple of tensors: refused")
