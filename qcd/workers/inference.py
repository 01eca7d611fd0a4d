"""Shared model inference: one batching service per (model, device), used by every analyzer.

Analyzers running on several worker threads each send small requests (a slice, a
crop, a few patches). Sending them to the model one at a time wastes the GPU, so a
:class:`BatchingPredictor` queues them, merges whatever arrives within
``max_wait_ms`` (up to ``max_batch`` samples) into one forward pass, and splits the
output back to the callers. :class:`PredictorPool` makes sure there is exactly one
predictor per ``"<model>/<version>@<device>"`` key in the process.

Determinism: CPU runs in float32; CUDA with ``amp`` runs under float16 autocast, so
the two give slightly different logits (about 1e-3). Batch composition can change
the last bits on either device too. Analyzers should therefore compare *decisions*
(labels, thresholded scores, with a tolerance around thresholds), never raw logits.

``torch`` is imported only when a predictor is built, so loading the settings (and
every CLI command that does so) stays fast.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Self

from qcd.errors import InferenceError, QcdError

if TYPE_CHECKING:
    import torch

LOGGER = logging.getLogger(__name__)

DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
"""Device strings accepted by :func:`select_device` (and ``inference.device``)."""
DEVICE_CHOICES = "auto, cpu, cuda, cuda:N"


@dataclass(frozen=True)
class InferenceSettings:
    """Where models run and how requests are batched."""

    device: str = "auto"
    """``auto`` (first GPU if there is one, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    max_batch: int = 32
    """Most samples in one forward pass; larger requests are split into chunks."""
    max_wait_ms: float = 5.0
    """How long the first queued request waits for others to join its batch."""
    amp: bool = True
    """float16 autocast on CUDA (ignored on CPU); faster, logits differ by ~1e-3."""
    channels_last: bool = True
    """NHWC layout for 2-D convolution nets on CUDA (ignored on CPU): under fp16 autocast
    cuDNN then uses its tensor-core kernels (H100, same run: the atrium U-Net's batched
    throughput 3153 against 2669 slices/s). Nets that run in float32 opt out through a
    ``channels_last_ok = False`` attribute."""
    cpu_threads: int = 0
    """torch intra-op threads (process-wide); 0 keeps torch's default."""


@dataclass(frozen=True)
class PredictorStats:
    """Counters of one predictor, to see batching happen (tests, metrics)."""

    requests: int
    """Requests submitted by callers."""
    batches: int
    """Forward passes run, including failed ones and per-request retries."""
    samples: int
    """Samples in those forward passes."""
    failed_batches: int
    """Forward passes that raised."""

    @property
    def mean_batch_size(self) -> float:
        return self.samples / self.batches if self.batches else 0.0


def uses_nhwc(model: torch.nn.Module, device: torch.device, channels_last: bool) -> bool:
    """Whether ``model`` runs in the NHWC layout: asked for, on CUDA, and not opted out
    by the model (``channels_last_ok = False``, e.g. one that runs in float32)."""
    return (channels_last and device.type == "cuda"
            and bool(getattr(model, "channels_last_ok", True)))


def nhwc_model(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with its 4-D weights in the NHWC (channels_last) layout."""
    import torch

    # nn.Module.to takes memory_format; torch's type stubs do not list it
    return model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]


def nhwc_input(x: torch.Tensor) -> torch.Tensor:
    """A 4-D batch in the NHWC layout (other shapes as they are)."""
    import torch

    return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x


def select_device(preference: str = "auto") -> torch.device:
    """Resolve a device string to a :class:`torch.device`.

    Raises
    ------
    ValueError
        ``preference`` is not one of ``auto, cpu, cuda, cuda:N``.
    InferenceError
        CUDA was asked for but is not available (or has no device ``N``).
    """
    import torch

    pref = preference.strip().lower()
    if not DEVICE_RE.match(pref):
        raise ValueError(f"device {preference!r} is not supported; allowed: {DEVICE_CHOICES}")
    if pref == "cpu":
        return torch.device("cpu")
    available = torch.cuda.is_available()
    if pref == "auto":
        return torch.device("cuda:0" if available else "cpu")
    if not available:
        raise InferenceError(
            f"device {preference!r} requested but CUDA is not available "
            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
            f"use device = \"cpu\" or \"auto\""
        )
    index = int(pref.split(":", 1)[1]) if ":" in pref else 0
    count = torch.cuda.device_count()
    if index >= count:
        raise InferenceError(f"device {preference!r} requested but only {count} GPU(s) found")
    return torch.device("cuda", index)


class _Sink:
    """Collects the chunks of one request and completes its future once."""

    def __init__(self, future: Future[torch.Tensor], parts: int) -> None:
        self.future = future
        self._parts: list[torch.Tensor | None] = [None] * parts
        self._remaining = parts
        self._lock = threading.Lock()

    def deliver(self, index: int, out: torch.Tensor) -> None:
        import torch

        if len(self._parts) == 1:  # one chunk (most requests): nothing to collect
            with contextlib.suppress(InvalidStateError):  # cancelled by the caller
                self.future.set_result(out)
            return
        with self._lock:
            if self.future.done():  # another chunk failed, or the caller cancelled
                return
            self._parts[index] = out
            self._remaining -= 1
            if self._remaining:
                return
            parts = [p for p in self._parts if p is not None]
            self._parts = []
        result = parts[0] if len(parts) == 1 else torch.cat(parts)
        with contextlib.suppress(InvalidStateError):
            self.future.set_result(result)

    def fail(self, exc: BaseException) -> None:
        with contextlib.suppress(InvalidStateError):
            self.future.set_exception(exc)


@dataclass(frozen=True)
class _Item:
    """One queued chunk (at most ``max_batch`` samples) of a request."""

    x: torch.Tensor
    sink: _Sink
    index: int
    enqueued: float


class BatchingPredictor:
    """Runs one model on one device, merging concurrent requests into batches.

    A single background thread owns the model: it takes the first queued request,
    waits up to ``max_wait_ms`` (from when that request was queued) for more until
    ``max_batch`` samples are gathered, runs them as one batch under
    :func:`torch.inference_mode` (plus float16 autocast on CUDA when ``amp``), and
    hands each caller its rows of the output as a float32 CPU tensor.

    If a merged batch raises, each of its requests is retried alone, so only the
    requests that fail by themselves get an :class:`InferenceError` (with the
    model's exception as ``__cause__``); the predictor keeps serving. Requests whose
    trailing shape or dtype differ from the batch's are run in a later batch.
    Future callbacks run on the predictor's thread: keep them short. See the module
    docstring on CPU/CUDA determinism.

    Parameters
    ----------
    model
        The network, weights already loaded; moved to ``device`` and set to eval().
    device
        Where it runs (see :func:`select_device`).
    max_batch, max_wait_ms, amp, channels_last
        As in :class:`InferenceSettings` (``channels_last`` defaults to off here so that a
        bare predictor keeps the model's layout; the pool passes the setting).
    name
        Used in the thread name and in log lines.
    """

    def __init__(
        self, model: torch.nn.Module, device: torch.device | str, max_batch: int = 32,
        max_wait_ms: float = 5.0, amp: bool = True, name: str = "model",
        channels_last: bool = False,
    ) -> None:
        import torch

        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.device = torch.device(device)
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.amp = amp and self.device.type == "cuda"
        self.channels_last = uses_nhwc(model, self.device, channels_last)
        self.name = name
        self.model = model.to(self.device).eval()
        if self.channels_last:
            self.model = nhwc_model(self.model)
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._requests = self._batches = self._samples = self._failed = 0
        self._thread = threading.Thread(target=self._loop, name=f"qcd-infer-{name}", daemon=True)
        self._thread.start()
        LOGGER.info("predictor %s on %s (max_batch=%d, max_wait_ms=%g, amp=%s)",
                    name, self.device, max_batch, max_wait_ms, self.amp)

    # ------------------------------------------------------------------ public API

    def submit(self, x: torch.Tensor) -> Future[torch.Tensor]:
        """Queue ``x`` of shape ``(n, ...)``, n >= 1; the future gets the ``(n, ...)`` output.

        Do not modify ``x`` until the future is done.

        Raises
        ------
        TypeError, ValueError
            ``x`` is not a tensor with at least one sample.
        InferenceError
            The predictor is closed.
        """
        import torch

        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a torch.Tensor, got {type(x).__name__}")
        if x.ndim == 0 or x.shape[0] < 1:
            raise ValueError(f"expected a tensor of shape (n, ...) with n >= 1, got {tuple(x.shape)}")
        future: Future[torch.Tensor] = Future()
        # No tensor operation for the common request (no autograd, one chunk): each one
        # releases and re-takes the GIL, a hand-over among hundreds of job threads.
        if x.requires_grad:
            x = x.detach()
        chunks = (x,) if x.shape[0] <= self.max_batch else x.split(self.max_batch)
        sink = _Sink(future, len(chunks))
        now = time.monotonic()
        with self._lock:
            if self._closing.is_set():
                raise InferenceError(f"predictor {self.name} closed")
            for i, chunk in enumerate(chunks):
                self._queue.put(_Item(chunk, sink, i, now))
            self._requests += 1
        return future

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """``submit(x).result()``: blocks until the batch holding ``x`` has run."""
        return self.submit(x).result()

    def stats(self) -> PredictorStats:
        with self._lock:
            return PredictorStats(self._requests, self._batches, self._samples, self._failed)

    @property
    def closed(self) -> bool:
        return self._closing.is_set()

    def close(self, timeout: float | None = 30.0) -> None:
        """Stop the thread after the running batch; queued requests fail ("predictor closed")."""
        with self._lock:
            first = not self._closing.is_set()
            self._closing.set()
            if first:
                self._queue.put(None)  # wakes the thread if it waits for work
        self._thread.join(timeout)
        if self._thread.is_alive():
            LOGGER.warning("predictor %s: batch still running %.0f s after close", self.name,
                           timeout or 0.0)
        self._fail_queued()
        if first:
            LOGGER.info("predictor %s closed (%s)", self.name, self.stats())

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ the thread

    def _loop(self) -> None:
        carry: _Item | None = None
        while True:
            first = carry if carry is not None else self._queue.get()
            carry = None
            if first is None:
                break
            batch, carry = self._gather(first)
            if self._closing.is_set():
                self._fail(batch + ([carry] if carry is not None else []), _closed_error(self.name))
                break
            try:
                self._run(batch)
            except Exception as exc:  # a bug here must not kill the service
                LOGGER.exception("predictor %s: unexpected error", self.name)
                self._fail(batch, _wrap(exc, f"predictor {self.name} failed"))
        self._fail_queued()

    def _gather(self, first: _Item) -> tuple[list[_Item], _Item | None]:
        """The batch starting at ``first``, and a request that did not fit (or None)."""
        batch, n = [first], first.x.shape[0]
        deadline = first.enqueued + self.max_wait
        while n < self.max_batch:
            remaining = deadline - time.monotonic()
            try:  # past the deadline, still take what is already queued
                item = self._queue.get(timeout=remaining) if remaining > 0 else \
                    self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)  # seen again by _loop after this batch
                break
            if item.sink.future.cancelled():
                continue
            fits = (n + item.x.shape[0] <= self.max_batch
                    and item.x.shape[1:] == first.x.shape[1:] and item.x.dtype == first.x.dtype)
            if not fits:
                return batch, item
            batch.append(item)
            n += item.x.shape[0]
        return batch, None

    def _run(self, batch: list[_Item]) -> None:
        batch = [it for it in batch if not it.sink.future.cancelled()]
        if not batch:
            return
        try:
            outputs = self._forward(batch)
        except Exception as exc:
            if len(batch) > 1:  # find the culprit(s): the others still get results
                LOGGER.warning("predictor %s: batch of %d requests failed (%s); retrying each",
                               self.name, len(batch), type(exc).__name__)
                for item in batch:
                    self._run([item])
                return
            n = batch[0].x.shape[0]
            LOGGER.warning("predictor %s: request of %d sample(s) failed: %s: %s",
                           self.name, n, type(exc).__name__, exc, exc_info=True)
            self._fail(batch, _wrap(exc, f"model {self.name} failed on {n} sample(s)"))
            return
        for item, out in zip(batch, outputs):
            item.sink.deliver(item.index, out)

    def _forward(self, batch: list[_Item]) -> list[torch.Tensor]:
        import torch

        sizes = [it.x.shape[0] for it in batch]
        total = sum(sizes)
        with self._lock:
            self._batches += 1
            self._samples += total
        try:
            # one concatenation where the requests are, then one copy to the device
            xs = [it.x for it in batch]
            if len({t.device for t in xs}) > 1:
                xs = [t.to(self.device) for t in xs]
            x = xs[0] if len(xs) == 1 else torch.cat(xs)
            x = x.to(self.device)
            if self.channels_last:
                x = nhwc_input(x)
            autocast = (torch.autocast("cuda", dtype=torch.float16) if self.amp
                        else contextlib.nullcontext())
            with torch.inference_mode(), autocast:
                y = self.model(x)
            if not isinstance(y, torch.Tensor) or y.ndim == 0 or y.shape[0] != total:
                shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
                raise InferenceError(
                    f"model {self.name} returned {shape} for {total} sample(s); "
                    f"expected one tensor of shape ({total}, ...)"
                )
            y = y.detach().to(device="cpu", dtype=torch.float32,
                              memory_format=torch.contiguous_format)
            # clone outside inference mode: callers get normal, independent tensors
            return [part.clone() for part in y.split(sizes)]
        except Exception:
            with self._lock:
                self._failed += 1
            raise

    def _fail(self, items: list[_Item], exc: InferenceError) -> None:
        for item in items:
            item.sink.fail(exc)

    def _fail_queued(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                item.sink.fail(_closed_error(self.name))


def _closed_error(name: str) -> InferenceError:
    return InferenceError(f"predictor {name} closed")


def _wrap(exc: Exception, message: str) -> InferenceError:
    if isinstance(exc, InferenceError):
        return exc
    err = InferenceError(f"{message}: {type(exc).__name__}: {exc}")
    err.__cause__ = exc
    return err


class PredictorPool:
    """One :class:`BatchingPredictor` per key (``"<model>/<version>@<device>"``), shared.

    Built once by the composition root from :class:`InferenceSettings`; it resolves
    the device (failing fast if CUDA was asked for and is missing) and applies
    ``cpu_threads`` (a process-wide torch setting). After :meth:`close_all` the pool
    refuses new work.
    """

    def __init__(self, settings: InferenceSettings | None = None) -> None:
        import torch

        self.settings = settings or InferenceSettings()
        self.device = select_device(self.settings.device)
        if self.settings.cpu_threads > 0:
            torch.set_num_threads(self.settings.cpu_threads)
        self._lock = threading.Lock()
        self._entries: dict[str, Future[BatchingPredictor]] = {}
        self._closed = False

    def key(self, model: str, version: str) -> str:
        """The pool key of ``model`` ``version`` on this pool's device."""
        return f"{model}/{version}@{self.device}"

    def get(self, key: str, factory: Callable[[], torch.nn.Module]) -> BatchingPredictor:
        """The predictor for ``key``, calling ``factory`` only the first time.

        Concurrent callers of a new key wait for the one that builds it; other keys
        are not blocked meanwhile. A failed build is not cached (the next call retries).

        Raises
        ------
        InferenceError
            ``factory`` failed (the cause is chained), or the pool is closed.
        TypeError
            ``factory`` did not return a ``torch.nn.Module``.
        """
        with self._lock:
            if self._closed:
                raise InferenceError("predictor pool closed")
            entry = self._entries.get(key)
            if entry is not None:
                building = False
            else:
                building, entry = True, Future()
                self._entries[key] = entry
        if not building:
            return entry.result()
        try:
            predictor = self._build(key, factory)
        except BaseException as exc:
            with self._lock:
                self._entries.pop(key, None)
            entry.set_exception(exc if isinstance(exc, Exception)
                                else InferenceError(f"building {key} was interrupted"))
            raise
        with self._lock:
            closed = self._closed
        if closed:
            predictor.close()
            err = InferenceError("predictor pool closed")
            entry.set_exception(err)
            raise err
        entry.set_result(predictor)
        return predictor

    def _build(self, key: str, factory: Callable[[], torch.nn.Module]) -> BatchingPredictor:
        import torch

        try:
            model = factory()
        except (QcdError, TypeError, ValueError):
            raise
        except Exception as exc:
            raise InferenceError(f"cannot build model {key}: {type(exc).__name__}: {exc}") \
                from exc
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"factory for {key} returned {type(model).__name__}, "
                            f"not a torch.nn.Module")
        s = self.settings
        return BatchingPredictor(model, self.device, max_batch=s.max_batch,
                                 max_wait_ms=s.max_wait_ms, amp=s.amp, name=key,
                                 channels_last=s.channels_last)

    def stats(self) -> dict[str, PredictorStats]:
        """Counters of every built predictor, by key."""
        with self._lock:
            entries = dict(self._entries)
        return {k: e.result().stats() for k, e in entries.items()
                if e.done() and e.exception() is None}

    def close_all(self) -> None:
        """Close every predictor; queued requests fail, later ``get`` calls raise."""
        with self._lock:
            self._closed = True
            entries = list(self._entries.values())
            self._entries.clear()
        for entry in entries:
            if entry.done() and entry.exception() is None:
                entry.result().close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close_all()
