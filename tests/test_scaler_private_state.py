"""The private `torch.amp.GradScaler` state the wrapper reads, all of it in `optim._scaler`.

If torch renames ``_per_optimizer_states``, its ``"stage"`` entries or ``_scale``, these
tests fail loudly (instead of the wrapper's AMP checks silently turning themselves off).
"""

from __future__ import annotations

import ast
from pathlib import Path

import torch

from subspace_optim.optim import _scaler

PACKAGE = Path(__file__).resolve().parent.parent / "subspace_optim"


def _setup():
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([w], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    return w, opt, scaler


def test_torch_still_has_the_private_state_we_read():
    w, opt, scaler = _setup()
    assert _scaler.supports_checks(scaler), "GradScaler lost _per_optimizer_states or _scale"
    assert not _scaler.has_scaled(scaler) and scaler._scale is None
    assert _scaler.stage(scaler, opt) == "READY"
    scaler.scale((w**2).sum()).backward()
    assert _scaler.has_scaled(scaler)
    assert _scaler.stage(scaler, opt) == "READY"
    assert id(opt) not in scaler._per_optimizer_states  # reading adds no entry
    scaler.unscale_(opt)
    assert _scaler.stage(scaler, opt) == "UNSCALED"
    assert "stage" in scaler._per_optimizer_states[id(opt)]
    scaler.step(opt)
    assert _scaler.stage(scaler, opt) == "STEPPED"
    scaler.update()
    assert _scaler.stage(scaler, opt) == "READY"
    assert {s.name for s in type(scaler._per_optimizer_states[id(opt)]["stage"])} == set(
        _scaler.STAGES
    )


def test_no_other_module_reads_the_scalers_private_state():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "_scaler.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("_per_optimizer_states", "_scale"):
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
            if isinstance(node, ast.Constant) and node.value in ("_per_optimizer_states",):
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert not offenders, offenders
