"""The copying task of the RIMs paper (section 4.1), at a scale this CPU trains in minutes.

Input: ``length`` symbols drawn from 1..8, then ``delay`` blanks (0), then a delimiter (9) and
``length - 1`` more blanks. Target: blanks everywhere except the last ``length`` steps, which must
reproduce the symbols. Models are trained at one delay and tested at longer ones; the paper
reports RIMs keeping 0.00 test cross-entropy at delay 200 after training at 50, where LSTMs fail.
Cross-entropy is reported over the copy segment (the last ``length`` steps).

    python bench/copying.py                                  # delay 20 -> 20/40/80, ~minutes
    python bench/copying.py --train-delay 50 --test-delays 50 200 --iterations 6000
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from policies import LSTMCore, RIMs

SYMBOLS = 8
BLANK, DELIMITER = 0, 9
VOCAB = 10


def copying_batch(batch: int, length: int, delay: int, generator: torch.Generator):
    """Inputs ``(T, B)`` and targets ``(T, B)`` token ids, ``T = 2 * length + delay``."""
    T = 2 * length + delay
    symbols = torch.randint(1, SYMBOLS + 1, (length, batch), generator=generator)
    inputs = torch.full((T, batch), BLANK)
    inputs[:length] = symbols
    inputs[length + delay] = DELIMITER
    targets = torch.full((T, batch), BLANK)
    targets[-length:] = symbols
    return inputs, targets


class CopyModel(nn.Module):
    """Embedding -> core -> linear readout over the vocabulary."""

    def __init__(self, core: nn.Module, embed: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, embed)
        self.core = core
        self.readout = nn.Linear(core.output_size, VOCAB)

    def forward(self, tokens: Tensor) -> Tensor:
        """``(T, B)`` ids -> ``(T, B, VOCAB)`` logits."""
        x = self.embed(tokens)  # (T, B) -> (T, B, embed)
        out, _, _ = self.core(x, self.core.initial_state(tokens.shape[1]))
        return self.readout(out)


def copy_cross_entropy(model: CopyModel, length: int, delay: int, batches: int, seed: int) -> float:
    generator = torch.Generator().manual_seed(seed)
    model.eval()
    total = 0.0
    with torch.no_grad():
        for _ in range(batches):
            inputs, targets = copying_batch(64, length, delay, generator)
            logits = model(inputs)[-length:]  # the copy segment
            total += F.cross_entropy(logits.reshape(-1, VOCAB), targets[-length:].reshape(-1))
    return float(total / batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=10, help="symbols to copy")
    parser.add_argument("--train-delay", type=int, default=20)
    parser.add_argument("--test-delays", type=int, nargs="+", default=[20, 40, 80])
    parser.add_argument("--iterations", type=int, default=2500)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--units", type=int, default=6)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=32, help="per RIM; LSTM gets units x this")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    results = {}
    for name in ("rims", "lstm"):
        torch.manual_seed(args.seed)
        embed = 32
        core = (
            RIMs(embed, num_units=args.units, k=args.k, hidden_size=args.hidden, dropout=0.0)
            if name == "rims"
            else LSTMCore(embed, args.units * args.hidden)
        )
        model = CopyModel(core, embed)
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
        generator = torch.Generator().manual_seed(args.seed)
        start = time.perf_counter()
        for it in range(1, args.iterations + 1):
            model.train()
            inputs, targets = copying_batch(args.batch, args.length, args.train_delay, generator)
            logits = model(inputs)
            loss = F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            if it % 500 == 0:
                print(f"{name} it {it}: train loss {loss.item():.4f}", flush=True)
        seconds = time.perf_counter() - start
        results[name] = (
            [copy_cross_entropy(model, args.length, d, 8, args.seed + 1) for d in args.test_delays],
            seconds,
        )

    print(
        f"\ncopying: {args.length} symbols, trained at delay {args.train_delay} for "
        f"{args.iterations} iterations (batch {args.batch}); copy-segment cross-entropy"
    )
    header = "".join(f"{'delay ' + str(d):>12}" for d in args.test_delays)
    print(f"{'model':<28}{header}{'train s':>10}")
    for name, (ces, seconds) in results.items():
        label = f"RIMs {args.units}x{args.hidden}, k={args.k}" if name == "rims" else (
            f"LSTM {args.units * args.hidden}")  # fmt: skip
        print(f"{label:<28}{''.join(f'{ce:>12.4f}' for ce in ces)}{seconds:>10.0f}")


if __name__ == "__main__":
    main()
