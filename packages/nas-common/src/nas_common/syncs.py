"""Finding host-device syncs on a CPU: what a search step would stall a GPU on.

`HostSyncDetector` records, while active, the data-dependent aten ops (a device->host read on CUDA:
`.item()`, `nonzero`, boolean-mask indexing, ...) and the Python-level reads (`Tensor.tolist`,
`.numpy`, `.cpu`) that never reach the dispatcher on the CPU. `detect_host_syncs` runs one over every
step a method marks with `SearchContext.step()`. The conformance suite (`nas_common.testing`) and the
harness's GPU runs use it; it needs nothing beyond torch.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .context import STEP_OBSERVERS

#: aten ops whose result size or value the host must read (a device->host sync on CUDA), and ops that
#: copy host data to the device (torch.tensor(...)); `index.Tensor`/`index_put_` only with a bool mask
SYNC_OPS = frozenset({
    "_local_scalar_dense", "nonzero", "masked_select", "unique_dim", "_unique", "_unique2", "unique_consecutive",
    "unique_dim_consecutive", "multinomial", "repeat_interleave", "is_nonzero", "equal", "allclose",
    "bincount", "histc", "lift_fresh", "argwhere", "masked_scatter",
})
#: Python-level reads that never reach the dispatcher on the CPU but sync on CUDA
SYNC_METHODS = ("tolist", "numpy", "cpu")


class HostSyncDetector(TorchDispatchMode):
    """Records data-dependent ops dispatched while active (`found`: op name -> count)."""

    def __init__(self, allow: frozenset[str] = frozenset()) -> None:
        super().__init__()
        self.allow = allow
        self.found: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        flagged = name in SYNC_OPS
        if name == "repeat_interleave" and kwargs.get("output_size") is not None:
            flagged = False
        if name in ("index", "index_put", "index_put_", "_index_put_impl_"):
            flagged = any(isinstance(t, torch.Tensor) and t.dtype == torch.bool
                          for t in (args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else ()))
        if flagged and f"aten.{name}" not in self.allow:
            self.found[f"aten.{name}"] = self.found.get(f"aten.{name}", 0) + 1
        return func(*args, **kwargs)

    def __enter__(self) -> HostSyncDetector:
        self._saved = {m: getattr(torch.Tensor, m) for m in SYNC_METHODS}
        for m in SYNC_METHODS:
            setattr(torch.Tensor, m, self._counting(m, self._saved[m]))
        try:
            super().__enter__()
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            super().__exit__(*exc)
        finally:
            self._restore()

    def _counting(self, m: str, orig: Any) -> Any:
        def f(t: torch.Tensor, *a: Any, **k: Any) -> Any:
            if f"Tensor.{m}" not in self.allow:
                self.found[f"Tensor.{m}"] = self.found.get(f"Tensor.{m}", 0) + 1
            return orig(t, *a, **k)

        return f

    def _restore(self) -> None:
        for m, f in self._saved.items():
            setattr(torch.Tensor, m, f)


# as in costs/macs.py: the plain method, without torch._dynamo's per-op wrapper
HostSyncDetector.__torch_dispatch__ = getattr(HostSyncDetector.__torch_dispatch__, "__wrapped__",
                                              HostSyncDetector.__torch_dispatch__)


@contextlib.contextmanager
def detect_host_syncs(allow: frozenset[str] = frozenset()) -> Iterator[dict[str, Any]]:
    """Inside: every `SearchContext.step()` runs under a HostSyncDetector. Yields a report dict with
    `steps` (how many steps ran) and `found` (op -> count over all steps)."""
    report: dict[str, Any] = {"steps": 0, "found": {}}

    @contextlib.contextmanager
    def observe() -> Iterator[None]:
        det = HostSyncDetector(allow)
        report["steps"] += 1
        with det:
            yield
        for k, v in det.found.items():
            report["found"][k] = report["found"].get(k, 0) + v

    with STEP_OBSERVERS.observe(observe):
        yield report


__all__ = ["SYNC_METHODS", "SYNC_OPS", "HostSyncDetector", "detect_host_syncs"]
