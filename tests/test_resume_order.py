"""A resumed run continues where it stopped: the same training samples in the same order, the same augmentation
and dropout draws, and (with trainer.deterministic=true) the same final weights as a run that never stopped.

Before alexnet_gtsrb.data.sampling the resumed epoch replayed epoch 1's shuffle: seed_everything ran again and
no generator state was saved."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from alexnet_gtsrb.data.dataset import GTSRBDataset
from alexnet_gtsrb.data.sampling import RunSampler, batches_per_epoch, trainer_position


class StopAtStep(L.Callback):
    """Dies (like a killed job) when the batch after ``step`` optimizer steps starts."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"stopped at step {self.step}")


BATCH, BATCHES, EPOCHS = 32, 4, 3


@pytest.fixture()
def seen(monkeypatch) -> list[int]:
    """Indices of the training items the loader fetched, in order (validation and test items are plain ints)."""
    fetched: list[int] = []
    original = GTSRBDataset.__getitem__

    def spy(self, item):
        if isinstance(item, tuple):
            fetched.append(item[0])
        return original(self, item)

    monkeypatch.setattr(GTSRBDataset, "__getitem__", spy)
    return fetched


@pytest.mark.slow
def test_resumed_runs_see_the_same_samples_in_order_and_end_with_the_same_weights(
    compose_cfg, synthetic_root, tmp_path, seen
):
    from alexnet_gtsrb.train import train

    common = [
        "experiment=demo",
        "scheduler=step",
        "augment=gtsrb",  # per-item albumentations and flips: augmentation randomness is part of the claim
        f"data.data_dir={synthetic_root}",
        "data.synthetic=null",
        "data.image_size=67",
        f"data.batch_size={BATCH}",
        "data.num_workers=0",
        f"trainer.limit_train_batches={BATCHES}",
        "trainer.limit_val_batches=1",
        "trainer.deterministic=true",
        "test=false",
    ]

    def run(name: str, *extra: str):
        return train(compose_cfg([*common, f"paths.output_dir={tmp_path / name}", *extra]))[1]

    whole = run("whole", f"trainer.max_epochs={EPOCHS}")
    order = list(seen)
    assert len(order) == EPOCHS * BATCHES * BATCH
    assert order[: BATCHES * BATCH] != order[BATCHES * BATCH : 2 * BATCHES * BATCH]  # epochs differ
    weights = whole["model"].state_dict()

    # stopped at the end of epoch 1, resumed
    seen.clear()
    run("boundary", "trainer.max_epochs=1")
    run("boundary", f"trainer.max_epochs={EPOCHS}", "ckpt_path=last")
    assert seen == order

    # killed in the second epoch after 2 of its 4 batches, just after a step checkpoint, resumed
    seen.clear()
    stop = BATCHES + 2
    killer = ["+callbacks.killer._target_=tests.test_resume_order.StopAtStep", f"+callbacks.killer.step={stop}"]
    step_ckpt = f"callbacks.step_checkpoint.every_n_train_steps={stop}"
    with pytest.raises(RuntimeError, match=f"stopped at step {stop}"):
        run("mid", f"trainer.max_epochs={EPOCHS}", step_ckpt, *killer)
    trained = seen[: stop * BATCH]  # the loader had fetched ahead; those batches were never trained on
    seen.clear()
    resumed = run("mid", f"trainer.max_epochs={EPOCHS}", step_ckpt, "ckpt_path=last")
    assert resumed["trainer"].global_step == EPOCHS * BATCHES
    assert trained + seen == order

    for objs in (resumed,):
        state = objs["model"].state_dict()
        different = [k for k in weights if not torch.equal(weights[k], state[k])]
        assert not different, f"{len(different)} tensors differ from the uninterrupted run, e.g. {different[:3]}"


def test_the_order_is_a_function_of_seed_and_epoch_and_resumes_at_any_offset():
    """Independent of any trainer: a permutation per epoch (every index once), other epochs and seeds give other
    orders, and starting at an offset yields exactly the tail of the full order."""
    position = {"value": (0, 0)}
    sampler = RunSampler(50, seed=7, position=lambda: position["value"])
    full = list(sampler)
    assert sorted(i for i, _ in full) == list(range(50)) and len({s for _, s in full}) == 50
    position["value"] = (1, 0)
    assert [i for i, _ in sampler] != [i for i, _ in full]
    position["value"] = (0, 17)
    assert list(sampler) == full[17:]
    other = RunSampler(50, seed=8, position=lambda: (0, 0))
    assert [i for i, _ in other] != [i for i, _ in full]
    weighted = RunSampler(6, seed=7, position=lambda: (0, 0), weights=[1, 0, 0, 0, 0, 0])
    assert [i for i, _ in weighted] == [0] * 6  # draws with replacement in proportion to the weights


def test_position_from_the_global_step():
    class Trainer:
        limit_train_batches: int | float = 1.0
        accumulate_grad_batches = 1
        global_step = 0

    t = Trainer()
    assert batches_per_epoch(10, 1.0) == 10 and batches_per_epoch(10, 4) == 4 and batches_per_epoch(10, 0.25) == 2
    t.global_step = 23  # 10 batches per epoch: epoch 2, 3 batches of 8 done
    assert trainer_position(t, 10, 8, distributed=False) == (2, 24)
    assert trainer_position(t, 10, 8, distributed=True) == (2, 0)
    t.accumulate_grad_batches, t.global_step = 3, 5  # ceil(10 / 3) = 4 steps per epoch: epoch 1, 1 step done
    assert trainer_position(t, 10, 8, distributed=False) == (1, 24)
