"""Cost of a training guard per checked step, next to a bare train step, in one run.

Run ``python bench/guards_cost.py`` (``--quick`` for fewer repeats; torch and transformers
installed). The model is a BERT-ish ``BertForSequenceClassification`` (vocab 30522, hidden
128, 2 layers, 2 heads, intermediate 512) at batch 32 x 128 with AdamW, on CPU. The bare
step is forward, backward, ``optimizer.step()`` and ``zero_grad()``. The guard's share is
what ``TrainerPadGuard`` runs per checked step (``every_n_steps=1``): its pre-optimizer
hook (the pad row's gradient, read on the device) and its step-end check (the pad rows,
read without a table copy, against their start). LightningPadGuard runs the same code.

Two figures: the guard's work timed alone over the bare step (the figure held to its
target: it does not drown in the step's noise), and guarded against bare steps timed in
turn (the same thing measured end to end, noisy on a shared machine). Exits non-zero when
the first misses its target.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
import transformers
from timing import interleaved, median_time

from pytest_padaudit.guards import TrainerPadGuard

BATCH, SEQ, VOCAB = 32, 128, 30522
TARGET = 0.01


def model_and_batch() -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=512,
        max_position_embeddings=SEQ,
        pad_token_id=0,
    )
    model = transformers.BertForSequenceClassification(config).train()
    lengths = torch.randint(SEQ // 4, SEQ + 1, (BATCH,))
    mask = (torch.arange(SEQ)[None] < lengths[:, None]).long()
    ids = torch.randint(1, VOCAB, (BATCH, SEQ)) * mask
    return model, {"input_ids": ids, "attention_mask": mask, "labels": lengths % 2}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    repeats = 5 if parser.parse_args().quick else 15
    model, batch = model_and_batch()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    guard = TrainerPadGuard(every_n_steps=1)
    state = SimpleNamespace(global_step=0)
    guard.on_train_begin(None, state, None, model=model, optimizer=optimizer)
    model(**batch)  # the guard's one-shot first-batch hook fires (and is removed) here

    def bare() -> None:
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    def guard_work() -> None:
        state.global_step += 1
        guard.on_pre_optimizer_step(None, state, None, model=model, optimizer=optimizer)
        guard.on_step_end(None, state, None, model=model, optimizer=optimizer)

    def guarded() -> None:
        model(**batch).loss.backward()
        guard.on_pre_optimizer_step(None, state, None, model=model, optimizer=optimizer)
        optimizer.step()
        optimizer.zero_grad()
        state.global_step += 1
        guard.on_step_end(None, state, None, model=model, optimizer=optimizer)

    step = median_time(bare, repeats)
    model(**batch).loss.backward()  # the guard reads a real gradient
    work = median_time(guard_work, repeats * 20)
    optimizer.zero_grad()
    bare_times, guarded_times = interleaved((bare, guarded), repeats)
    ratio = work / step
    end_to_end = statistics.median(
        (g - b) / b for b, g in zip(bare_times, guarded_times, strict=True)
    )
    load = Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"
    print(f"BertForSequenceClassification vocab {VOCAB}, hidden 128, 2 layers, batch {BATCH}x{SEQ}")
    print(f"bare train step (median of {repeats}): {step * 1e3:.1f} ms; load {load}")
    print(f"{'figure':<58} {'target':>8} {'measured':>10}")
    print(f"{'TrainerPadGuard work per checked step / bare step':<58} {'<= 1 %':>8} {ratio:>9.3%}")
    print(f"{'  (its work: ' + f'{work * 1e6:.0f} us per checked step)':<58}")
    print(f"{'guarded / bare step - 1, end to end (noisy)':<58} {'figure':>8} {end_to_end:>9.2%}")
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    raise SystemExit(main())
