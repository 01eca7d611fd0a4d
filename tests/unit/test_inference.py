"""The batching inference service: same results as a direct call, real batching, failures."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
import torch
from torch import nn

from qcd.errors import InferenceError
from qcd.workers.inference import (
    BatchingPredictor,
    InferenceSettings,
    PredictorPool,
    select_device,
)

CPU = torch.device("cpu")


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)).eval()


def conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    ).eval()


class FailsOnNegative(nn.Module):
    """Raises when any sample of the batch has a negative first feature."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = mlp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x[:, 0] < 0).any()):
            raise RuntimeError("negative input")
        return self.inner(x)


class Gated(nn.Module):
    """Blocks inside forward until released, to hold the predictor busy."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.entered.set()
        assert self.release.wait(5)
        return x * 2


@pytest.fixture
def predictor() -> Iterator[BatchingPredictor]:
    with BatchingPredictor(mlp(), CPU, max_batch=16, max_wait_ms=20) as p:
        yield p


def expected(x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return mlp()(x)


def test_single_request_matches_direct_call(predictor: BatchingPredictor) -> None:
    x = torch.randn(5, 6)
    out = predictor.predict(x)
    assert out.dtype == torch.float32 and out.device == CPU and out.shape == (5, 3)
    torch.testing.assert_close(out, expected(x), atol=1e-5, rtol=1e-5)
    out.add_(1)  # a normal tensor, not an inference tensor


def test_a_request_that_requires_grad_is_detached(predictor: BatchingPredictor) -> None:
    # submit skips detach() for plain tensors (each tensor call hands the GIL over);
    # one that tracks gradients must still not drag autograd into the batch
    x = torch.randn(3, 6, requires_grad=True)
    out = predictor.predict(x)
    assert not out.requires_grad and out.grad_fn is None
    torch.testing.assert_close(out, expected(x.detach()), atol=1e-5, rtol=1e-5)


def test_a_cancelled_request_is_skipped_and_the_others_answered() -> None:
    model = Gated()
    with BatchingPredictor(model, CPU, max_batch=8, max_wait_ms=1) as p:
        first = p.submit(torch.ones(1, 6))  # holds the thread inside forward
        assert model.entered.wait(5)
        cancelled, kept = p.submit(torch.ones(1, 6)), p.submit(torch.full((1, 6), 3.0))
        assert cancelled.cancel()
        model.release.set()
        torch.testing.assert_close(first.result(5), torch.full((1, 6), 2.0))
        torch.testing.assert_close(kept.result(5), torch.full((1, 6), 6.0))
        assert cancelled.cancelled()


def test_concurrent_requests_get_their_own_rows(predictor: BatchingPredictor) -> None:
    inputs = [torch.randn(n, 6) for n in range(1, 9)]
    barrier = threading.Barrier(len(inputs))

    def call(x: torch.Tensor) -> torch.Tensor:
        barrier.wait()
        return predictor.predict(x)

    with ThreadPoolExecutor(len(inputs)) as pool:
        outs = list(pool.map(call, inputs))
    for x, out in zip(inputs, outs):
        torch.testing.assert_close(out, expected(x), atol=1e-5, rtol=1e-5)
    stats = predictor.stats()
    assert stats.requests == 8 and stats.samples == sum(range(1, 9))


def test_concurrent_single_samples_are_batched() -> None:
    with BatchingPredictor(mlp(), CPU, max_batch=32, max_wait_ms=50) as p:
        barrier = threading.Barrier(8)

        def call(_: int) -> torch.Tensor:
            barrier.wait()
            return p.predict(torch.randn(1, 6))

        with ThreadPoolExecutor(8) as pool:
            assert all(o.shape == (1, 3) for o in pool.map(call, range(8)))
        stats = p.stats()
    assert stats.samples == 8
    assert stats.batches < 8, stats
    assert stats.mean_batch_size > 1


def test_large_request_is_split_and_reassembled_in_order() -> None:
    with BatchingPredictor(mlp(), CPU, max_batch=4, max_wait_ms=1) as p:
        x = torch.randn(10, 6)
        out = p.predict(x)
        stats = p.stats()
    torch.testing.assert_close(out, expected(x), atol=1e-5, rtol=1e-5)
    assert stats.batches >= 3 and stats.samples == 10 and stats.requests == 1


def test_failure_hits_only_the_affected_requests() -> None:
    with BatchingPredictor(FailsOnNegative(), CPU, max_batch=32, max_wait_ms=50) as p:
        good = [torch.rand(2, 6) for _ in range(3)]
        bad = torch.rand(3, 6)
        bad[1, 0] = -1.0
        futures = [p.submit(x) for x in (good[0], bad, good[1], good[2])]
        for x, fut in zip(good, (futures[0], futures[2], futures[3])):
            torch.testing.assert_close(fut.result(5), expected(x), atol=1e-5, rtol=1e-5)
        with pytest.raises(InferenceError, match="negative input") as info:
            futures[1].result(5)
        assert isinstance(info.value.__cause__, RuntimeError)
        # still serving
        torch.testing.assert_close(p.predict(good[0]), expected(good[0]), atol=1e-5, rtol=1e-5)
        assert p.stats().failed_batches >= 1


def test_a_failed_chunk_fails_the_whole_split_request() -> None:
    with BatchingPredictor(FailsOnNegative(), CPU, max_batch=4, max_wait_ms=0) as p:
        x = torch.rand(10, 6)
        x[6, 0] = -1.0
        with pytest.raises(InferenceError, match="negative input"):
            p.predict(x)
        x[6, 0] = 1.0
        torch.testing.assert_close(p.predict(x), expected(x), atol=1e-5, rtol=1e-5)


def test_bad_model_output_is_an_inference_error() -> None:
    class Scalar(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.sum()

    with BatchingPredictor(Scalar(), CPU, max_wait_ms=0) as p, \
            pytest.raises(InferenceError, match="expected one tensor of shape"):
        p.predict(torch.ones(2, 3))


def test_close_fails_pending_futures() -> None:
    model = Gated()
    p = BatchingPredictor(model, CPU, max_batch=1, max_wait_ms=0)
    running = p.submit(torch.ones(1, 2))
    assert model.entered.wait(5)
    pending = [p.submit(torch.ones(1, 2)) for _ in range(3)]
    closer = threading.Thread(target=p.close)
    closer.start()
    while not p.closed:
        time.sleep(0.001)
    model.release.set()
    closer.join(5)
    assert not closer.is_alive()
    torch.testing.assert_close(running.result(5), torch.full((1, 2), 2.0))
    for fut in pending:
        with pytest.raises(InferenceError, match="closed"):
            fut.result(5)
    with pytest.raises(InferenceError, match="closed"):
        p.submit(torch.ones(1, 2))
    p.close()  # idempotent


def test_submit_rejects_misuse(predictor: BatchingPredictor) -> None:
    with pytest.raises(TypeError):
        predictor.submit([1.0, 2.0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n >= 1"):
        predictor.submit(torch.empty(0, 6))
    with pytest.raises(ValueError, match="max_batch"):
        BatchingPredictor(mlp(), CPU, max_batch=0)


def test_select_device() -> None:
    assert select_device("cpu") == CPU
    if not torch.cuda.is_available():
        assert select_device("auto") == CPU
        for pref in ("cuda", "cuda:0"):
            with pytest.raises(InferenceError, match="CUDA is not available"):
                select_device(pref)
    with pytest.raises(ValueError, match="allowed: auto, cpu, cuda, cuda:N"):
        select_device("tpu")


def test_pool_builds_once_per_key() -> None:
    calls: list[int] = []
    barrier = threading.Barrier(6)

    def factory() -> nn.Module:
        calls.append(1)
        return mlp()

    with PredictorPool(InferenceSettings(device="cpu", max_wait_ms=1)) as pool:
        key = pool.key("earl-stage1", "1.0.0")
        assert key == "earl-stage1/1.0.0@cpu"

        def get(_: int) -> BatchingPredictor:
            barrier.wait()
            return pool.get(key, factory)

        with ThreadPoolExecutor(6) as ex:
            got = list(ex.map(get, range(6)))
        assert len(calls) == 1 and all(g is got[0] for g in got)
        other = pool.get("other/1@cpu", mlp)
        assert other is not got[0] and set(pool.stats()) == {key, "other/1@cpu"}

        def broken() -> nn.Module:
            raise OSError("weights missing")

        with pytest.raises(InferenceError, match="weights missing"):
            pool.get("broken/1@cpu", broken)
        assert pool.get("broken/1@cpu", mlp) is not None  # a failed build is not cached
    assert got[0].closed
    with pytest.raises(InferenceError, match="pool closed"):
        pool.get(key, factory)


def test_importing_the_module_does_not_import_torch() -> None:
    code = "import sys, qcd.workers.inference; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_and_cuda_fp16_agree_on_decisions() -> None:
    torch.manual_seed(1)
    x = torch.randn(64, 1, 32, 32)
    with BatchingPredictor(conv_net(), CPU, max_batch=16) as cpu, \
            BatchingPredictor(conv_net(), select_device("cuda"), max_batch=16, amp=True) as gpu:
        futures: list[tuple[Future[torch.Tensor], Future[torch.Tensor]]] = [
            (cpu.submit(chunk), gpu.submit(chunk)) for chunk in x.split(5)
        ]
        ref = torch.cat([c.result(30) for c, _ in futures])
        half = torch.cat([g.result(30) for _, g in futures])
    assert half.dtype == torch.float32 and half.device == CPU
    torch.testing.assert_close(half, ref, atol=1e-2, rtol=0)
    assert torch.equal(half.argmax(1), ref.argmax(1))


def test_channels_last_is_a_cuda_only_layout_and_a_model_may_opt_out() -> None:
    x = torch.randn(6, 1, 16, 16)
    with BatchingPredictor(conv_net(), CPU, channels_last=True) as cpu:
        assert cpu.channels_last is False  # CPU keeps NCHW whatever the setting
        out = cpu.predict(x)
    assert out.is_contiguous() and out.shape[0] == 6
    if torch.cuda.is_available():
        net = conv_net()
        net.channels_last_ok = False  # type: ignore[assignment]
        with BatchingPredictor(net, select_device("cuda"), channels_last=True) as gpu:
            assert gpu.channels_last is False


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_channels_last_on_cuda_gives_the_nchw_results() -> None:
    torch.manual_seed(2)
    x = torch.randn(40, 1, 32, 32)
    net = conv_net()
    with BatchingPredictor(net, select_device("cuda"), amp=False) as nchw:
        ref = nchw.predict(x)
    with BatchingPredictor(net, select_device("cuda"), amp=False, channels_last=True) as nhwc:
        assert nhwc.channels_last is True
        out = nhwc.predict(x)
    assert out.is_contiguous()
    torch.testing.assert_close(out, ref, atol=5e-3, rtol=0)  # TF32 may differ by algorithm
