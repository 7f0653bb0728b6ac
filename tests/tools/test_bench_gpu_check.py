"""benchmarks/gpu_check.py without CUDA: it says so and exits 0 without running a check; and its
comparison helper, which decides every kernel row, on CPU tensors."""
import torch

from benchmarks import gpu_check


def test_without_cuda_it_says_so_and_exits_0(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    ran = []
    monkeypatch.setattr(gpu_check, "kernel_rows", lambda *a: ran.append(1) or [])
    assert gpu_check.main([]) == 0
    out = capsys.readouterr().out
    assert "sees no CUDA device" in out and "nothing to check" in out
    assert not ran


def test_compare_tolerances_and_nan():
    x = torch.randn(50)
    assert gpu_check.compare(x, x.clone())[0]
    assert not gpu_check.compare(x * 1.01 + 1e-3, x)[0]
    nan = torch.full((4,), float("nan"), dtype=torch.bfloat16)
    assert gpu_check.compare(nan, nan, equal_nan=True)[0]
    assert not gpu_check.compare(nan, nan)[0]


def test_failed_check_is_a_row_not_a_crash(capsys):
    row = gpu_check._guarded("paged_attention", "case", lambda: 1 / 0)
    assert row.ok is False and row.detail.startswith("ZeroDivisionError")
    table = gpu_check.format_rows([row, gpu_check.Row("bandwidth", "x", None, "1 GB/s")], 1.0)
    assert "FAIL" in table and "0 ok, 1 failed" in table
