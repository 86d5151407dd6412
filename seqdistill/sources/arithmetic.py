"""The embedded problem set: grade-school arithmetic word problems, generated here, offline.

Seeded and reproducible, with exact integer answers and a difficulty knob (number of steps,
operand size). A problem belongs to the train or held-out split by a hash of its text, so the
two splits never share a problem, whatever the seed, count or difficulty used to draw them.
"""

from __future__ import annotations

import hashlib
import random

NAMES = ["Tom", "Anna", "Liam", "Maya", "Noah", "Emma", "Ravi", "Sofia", "Omar", "Lena", "Kai", "Zoe",
         "Ben", "Ivy", "Sam", "Nora", "Leo", "Mia", "Jack", "Aisha"]
ITEMS = ["apples", "marbles", "stickers", "books", "cookies", "pencils", "shells", "cards", "coins",
         "stamps", "balloons", "oranges", "toy cars", "flowers", "candies", "eggs"]

# Each step turns the running total v into a new total; phrasings vary so a student learns
# the arithmetic, not one sentence.
ADD = ["{name} buys {b} more {item}.", "{name} finds {b} more {item}.", "A friend gives {name} {b} {item}.",
       "Then {name} gets {b} more {item}.", "{name} picks up another {b} {item}."]
SUB = ["{name} gives {b} {item} to a friend.", "{name} loses {b} {item}.", "Then {name} uses {b} of the {item}.",
       "{name} sells {b} {item}.", "{name} gives away {b} {item}."]
MUL = ["{name} then has {b} times as many {item} as before.", "The number of {item} {name} has grows {b} times."]
DIV = ["{name} splits the {item} into {b} equal groups and keeps one group.",
       "{name} shares the {item} equally with {c} friends, and everyone, {name} included, gets the same number. "
       "{name} keeps one share."]
QUESTIONS = ["How many {item} does {name} have now?", "How many {item} does {name} have at the end?",
             "How many {item} are left with {name}?"]

HELDOUT_PERCENT = 20


def split_of(question: str) -> str:
    h = int(hashlib.sha1(question.encode()).hexdigest()[:8], 16)
    return "heldout" if h % 100 < HELDOUT_PERCENT else "train"


def make_problem(rng: random.Random, steps: int, max_operand: int, operations: str) -> tuple[str, int]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    value = rng.randint(2, max_operand)
    sentences = [f"{name} has {value} {item}."]
    for _ in range(steps):
        ops = ["add"]
        if value >= 2:
            ops.append("sub")
        if "*" in operations and value <= max_operand:
            ops.append("mul")
        if "/" in operations and any(value % d == 0 for d in range(2, 6)):
            ops.append("div")
        op = rng.choice(ops)
        if op == "add":
            b = rng.randint(1, max_operand)
            sentences.append(rng.choice(ADD).format(name=name, b=b, item=item))
            value += b
        elif op == "sub":
            b = rng.randint(1, min(value - 1, max_operand))
            sentences.append(rng.choice(SUB).format(name=name, b=b, item=item))
            value -= b
        elif op == "mul":
            b = rng.randint(2, 5)
            sentences.append(rng.choice(MUL).format(name=name, b=b, item=item))
            value *= b
        else:
            b = rng.choice([d for d in range(2, 6) if value % d == 0])
            sentences.append(rng.choice(DIV).format(name=name, b=b, c=b - 1, item=item))
            value //= b
    sentences.append(rng.choice(QUESTIONS).format(name=name, item=item))
    return " ".join(sentences), value


def generate(num_problems: int, split: str, seed: int = 0, min_steps: int = 1, max_steps: int = 2,
             max_operand: int = 20, operations: str = "+-") -> list[dict]:
    """`num_problems` distinct problems of one split, in a fixed order for a given seed and knobs."""
    rng = random.Random(f"seqdistill-{seed}-{min_steps}-{max_steps}-{max_operand}-{operations}")
    seen: set[str] = set()
    rows: list[dict] = []
    attempts = 0
    while len(rows) < num_problems:
        attempts += 1
        if attempts > 200 * num_problems + 10_000:
            raise ValueError(
                f"could not draw {num_problems} distinct {split} problems with max_steps={max_steps}, "
                f"max_operand={max_operand}; raise the difficulty or ask for fewer problems"
            )
        steps = rng.randint(min_steps, max_steps)
        question, answer = make_problem(rng, steps, max_operand, operations)
        if question in seen or split_of(question) != split:
            continue
        seen.add(question)
        rows.append({
            "id": "arith-" + hashlib.sha1(question.encode()).hexdigest()[:12],
            "question": question,
            "answer": str(answer),
            "steps": steps,
        })
    return rows
