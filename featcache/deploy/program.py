"""The program half of an exported file, checked as text so that no one is handed a file that plain
`torch.export.load` would run code from: featcache itself never deserializes it (deploy/archive.py
rebuilds the network from the tensors), but a file it accepts is one whose program a PyTorch user may
load. What `featcache export` writes with torch 2.x, and nothing else, passes:

- models/model.json: every node's target an aten operator or a symbolic-shape operator (`getattr` from
  `torch` resolves any target name, `torch.os.system` included); every shape expression (`expr_str`,
  handed to sympy.sympify, which evaluates Python) made of symbols, integers, Add, Mul, FloorDiv, Mod,
  Min and Max alone; every guard (`guards_code`, compiled by `.module()`) made of the input's sizes,
  integers, arithmetic, comparisons, `and`, torch.sym_min and torch.sym_max alone;
- data/sample_inputs/model.pt: a torch.save file of plain tensors that `weights_only=True` loads
  (torch.export.load retries with weights_only=False when that fails).
"""
from __future__ import annotations

import io
import re

import torch

from ..errors import FeatcacheError
from ..npz import check_torch_file

OPERATOR = re.compile(r"torch\.ops\.aten\.\w+\.\w+|_operator\.(add|sub|mul|floordiv|mod|neg|truediv)"
                      r"|torch\.sym_(min|max|int|float|not)")
_SYMBOL = r"Symbol\('[a-z]+\d+'(, (positive|integer|nonnegative)=(True|False))*\)"
EXPRESSION = re.compile(rf"({_SYMBOL}|Integer\(-?\d+\)|(Add|Mul|FloorDiv|Mod|PythonMod|Min|Max)\(|[(), ])*")
GUARD = re.compile(r"(L\['images'\]\.size\(\)\[\d\]|torch\.sym_(min|max)\(|\d+|//|[-+*%(), ]|[<>=!]=|[<>]| and )*")
NODE_METADATA = {"stack_trace", "nn_module_stack", "torch_fn"}  # kept as strings; no name in them is resolved


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
    stack = [model]
    while stack:  # the JSON tree, walked without recursion: any depth is fine
        value = stack.pop()
        if isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, dict):
            if "target" in value and "inputs" in value:  # a node, wherever a graph sits
                _check_node(where, value)
            expression = value.get("expr_str")
            if expression is not None and not (isinstance(expression, str) and EXPRESSION.fullmatch(expression)):
                raise FeatcacheError(f"{where}: a shape expression of models/model.json is not plain arithmetic "
                                     f"({str(expression)[:60]!r}): refused, sympy would evaluate it as Python")
            stack.extend(value.values())


def _check_node(where: str, node: dict) -> None:
    target = node["target"]
    if not isinstance(target, str) or not OPERATOR.fullmatch(target):
        raise FeatcacheError(f"{where}: a node of models/model.json calls {str(target)[:60]!r}, not an aten "
                             "operator: refused")
    metadata = node.get("metadata") or {}
    if not isinstance(metadata, dict) or not set(metadata) <= NODE_METADATA:
        raise FeatcacheError(f"{where}: a node of models/model.json carries metadata featcache export never "
                             f"writes ({sorted(metadata)[:3] if isinstance(metadata, dict) else metadata!r})")


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
