"""BatchNorm statistics after quantization: re-estimated on the samples, or shifted relative to the teacher."""

import copy

import torch
from torch import nn

from compression_core.recon.batchnorm import correct_batchnorm, recalibrate_batchnorm


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 8, 1, bias=False),
        nn.BatchNorm2d(8),
    )
    with torch.no_grad():  # a trained network's statistics: those of its training data, not of a small sample
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
    return net.eval()


def _quantized(net: nn.Module, levels: int) -> nn.Module:
    student = copy.deepcopy(net)
    with torch.no_grad():
        for m in student.modules():
            if isinstance(m, nn.Conv2d):
                step = m.weight.abs().max() / levels
                m.weight.copy_(torch.round(m.weight / step) * step)
    return student


def _distance(student: nn.Module, teacher: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        t = teacher(x)
        return float((student(x) - t).pow(2).mean() / t.pow(2).mean())


def test_correction_lowers_the_distance_and_keeps_the_teachers_own_statistics():
    teacher = _net()
    x = torch.randn(96, 3, 12, 12) * 0.5 + 0.3  # calibration data unlike the training population
    student = _quantized(teacher, levels=3)
    corrected = copy.deepcopy(student)
    correct_batchnorm(corrected, teacher, x, batch_size=16, device=torch.device("cpu"))
    assert _distance(corrected, teacher, x) < 0.8 * _distance(student, teacher, x)
    held_out = torch.randn(64, 3, 12, 12) * 0.5 + 0.3
    assert _distance(corrected, teacher, held_out) < _distance(student, teacher, held_out)
    # variances untouched; unquantized weights need no correction at all
    for a, b in zip(student.modules(), corrected.modules(), strict=True):
        if isinstance(a, nn.BatchNorm2d):
            assert torch.equal(a.running_var, b.running_var)
    same = copy.deepcopy(teacher)
    correct_batchnorm(same, teacher, x, batch_size=16, device=torch.device("cpu"))
    assert _distance(same, teacher, x) < 1e-10


def test_re_estimation_on_unrepresentative_samples_moves_even_the_unquantized_model():
    """Why the correction exists: absolute statistics of a small, shifted sample are not the population's."""
    teacher = _net()
    x = torch.randn(96, 3, 12, 12) * 0.5 + 0.3
    recalibrated = copy.deepcopy(teacher)
    recalibrate_batchnorm(recalibrated, x, batch_size=16, device=torch.device("cpu"))
    assert _distance(recalibrated, teacher, x) > 0.05


def test_correction_in_chunks_approximates_the_single_batch_and_still_corrects():
    """A bounded-memory correction (16 samples a pass) lands near the exact one (all 64 in one batch) even when
    the chunks differ from each other (here each has its own brightness: measured against the teacher's mean
    over all 64, a chunk's own offset leaked into the shifts); one chunk holding every sample is the exact
    correction, bit for bit."""
    teacher = _net()
    offsets = torch.tensor([0.0, 0.6, -0.3, 0.3, 0.1, 0.2]).repeat_interleave(16)
    x = torch.randn(96, 3, 12, 12) * 0.5 + offsets[:, None, None, None]
    student = _quantized(teacher, levels=3)
    cpu = torch.device("cpu")
    exact, chunked, whole = copy.deepcopy(student), copy.deepcopy(student), copy.deepcopy(student)
    correct_batchnorm(exact, teacher, x, batch_size=16, device=cpu)
    correct_batchnorm(chunked, teacher, x, batch_size=16, device=cpu, chunk=16)
    correct_batchnorm(whole, teacher, x, batch_size=16, device=cpu, chunk=64)
    before, after_exact = _distance(student, teacher, x), _distance(exact, teacher, x)
    after_chunked = _distance(chunked, teacher, x)
    assert after_chunked < before - 0.8 * (before - after_exact)
    for s, e, c, w in zip(student.modules(), exact.modules(), chunked.modules(), whole.modules(), strict=True):
        if isinstance(e, nn.BatchNorm2d):
            assert torch.equal(e.running_mean, w.running_mean)
            exact_shift, chunked_shift = e.running_mean - s.running_mean, c.running_mean - s.running_mean
            assert (chunked_shift - exact_shift).abs().max() <= 0.05 * exact_shift.abs().max()
