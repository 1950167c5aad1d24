"""The EMA update used by the training module."""

import torch

from wmplan.module import EMAWithWarmup


def test_ema_warms_up_then_uses_the_configured_decay():
    update = EMAWithWarmup(0.999)
    ema, current = [torch.zeros(2)], [torch.ones(2)]
    update(ema, current, torch.tensor(1))  # decay min(0.999, 2/11): mostly the current weights
    torch.testing.assert_close(ema[0], torch.full((2,), 1 - 2 / 11))
    late = [torch.zeros(2)]
    update(late, current, torch.tensor(100_000))  # warm-up over: the configured decay
    torch.testing.assert_close(late[0], torch.full((2,), 1 - 0.999))


def test_ema_forgets_the_initial_weights_in_a_short_run():
    update = EMAWithWarmup(0.999)
    ema, current = [torch.zeros(3)], [torch.ones(3)]
    for n in range(1, 1251):
        update(ema, current, torch.tensor(n))
    assert ema[0].min() > 0.99  # a fixed 0.999 would still hold 29% of the initial zeros


def test_ema_copies_integer_buffers():
    update = EMAWithWarmup(0.9)
    ema = [torch.zeros(2, dtype=torch.long)]
    update(ema, [torch.tensor([3, 4])], torch.tensor(5))
    assert ema[0].tolist() == [3, 4]
