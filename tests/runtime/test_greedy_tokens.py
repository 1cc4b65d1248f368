"""`sampler.greedy_tokens` picks what `argmax` picks: the first maximum, NaN first of all,
on rows full of ties, of -inf, and on strided views, with one and two threads."""
import pytest
import torch

from lmnb.runtime.sampler import greedy_tokens


@pytest.mark.parametrize("threads", [1, 2])
def test_greedy_tokens_is_argmax(threads):
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(threads)
        for trial in range(60):
            rows = int(torch.randint(1, 40, (), generator=g))
            vocab = int(torch.randint(1, 70_000, (), generator=g))
            x = torch.randint(-3, 4, (rows, vocab), generator=g).float()   # many ties
            if trial % 3 == 0:
                x[torch.rand(rows, vocab, generator=g) < 0.001] = float("nan")
            if trial % 5 == 0:
                x[torch.rand(rows, vocab, generator=g) < 0.3] = float("-inf")
            if trial % 7 == 0:
                x[: rows // 2] = float("-inf")
            for view in (x, x[:, ::2], x.t().contiguous().t()):
                assert torch.equal(greedy_tokens(view), view.argmax(dim=-1)), (trial, view.stride())
    finally:
        torch.set_num_threads(old)
