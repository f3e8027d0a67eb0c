"""Figures of a training run, for people: the loss curves and the learning-rate schedule."""

from __future__ import annotations

from matplotlib.figure import Figure


def training_figure(history: list[dict], curve: list[dict], title: str = "training") -> Figure:
    """Loss per logged step and per epoch, the validation score per epoch, and the learning rate.

    ``history`` and ``curve`` are ``Recommender.training.history`` and ``.curve``.
    """
    figure = Figure(figsize=(11, 4), layout="constrained")
    loss_axes, lr_axes = figure.subplots(1, 2)
    steps_per_epoch = [r["steps"] for r in history]
    if curve:
        loss_axes.plot([p["step"] for p in curve], [p["loss"] for p in curve], color="tab:blue", alpha=0.5, label="loss (running)")
        lr_axes.plot([p["step"] for p in curve], [p["lr"] for p in curve], color="tab:green")
    if history:
        loss_axes.plot(steps_per_epoch, [r["loss"] for r in history], "o-", color="tab:blue", label="loss (epoch mean)")
    loss_axes.set(xlabel="step", ylabel="in-batch softmax loss", title=f"{title}: loss")
    validated = [r for r in history if "validation" in r]
    if validated:
        score_axes = loss_axes.twinx()
        score_axes.plot([r["steps"] for r in validated], [r["validation"] for r in validated], "s--", color="tab:orange", label="validation Recall@K")
        score_axes.set_ylabel("validation Recall@K")
        score_axes.legend(loc="upper right")
    loss_axes.legend(loc="upper left")
    lr_axes.set(xlabel="step", ylabel="learning rate", title="learning-rate schedule")
    return figure
