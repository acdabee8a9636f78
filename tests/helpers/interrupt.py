"""Stop a training run part-way, as Ctrl-C would."""

from __future__ import annotations


def interrupt_after_epochs(monkeypatch, done: int) -> None:
    """Make the next training run raise KeyboardInterrupt when epoch ``done + 1`` starts training."""
    import lungxray.train.fit as train

    real, calls = train.run_epoch, {"train": 0}

    def run_epoch(model, batches, loss_fn, feed, opt=None, **kwargs):
        if opt is not None:
            calls["train"] += 1
            if calls["train"] > done:
                raise KeyboardInterrupt
        return real(model, batches, loss_fn, feed, opt, **kwargs)

    monkeypatch.setattr(train, "run_epoch", run_epoch)
