"""A small preference set whose chosen answers follow a rule the base model does not: they
are written in capitals, the rejected ones in ordinary case."""

from __future__ import annotations

import json
from pathlib import Path

FACTS = [
    ("What color is the sky on a clear day?", "The sky is blue."),
    ("What do bees make?", "Bees make honey."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Which planet do we live on?", "We live on Earth."),
    ("What is frozen water called?", "Frozen water is called ice."),
    ("What animal barks?", "A dog barks."),
    ("What season comes after winter?", "Spring comes after winter."),
    ("How many days are in a week?", "A week has seven days."),
    ("What shape has three sides?", "A triangle has three sides."),
    ("Where do fish live?", "Fish live in water."),
    ("What is the opposite of hot?", "The opposite of hot is cold."),
    ("What do birds use to fly?", "Birds fly with wings."),
    ("What is the color of grass?", "Grass is green."),
    ("What do you call a baby cat?", "A baby cat is a kitten."),
    ("What does a clock show?", "A clock shows the time."),
]


def write_pairs(path: Path) -> Path:
    rows = [{"prompt": q, "chosen": a.upper(), "rejected": a} for q, a in FACTS]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_kto(path: Path) -> Path:
    rows = []
    for q, a in FACTS:
        rows.append({"prompt": q, "completion": a.upper(), "label": True})
        rows.append({"prompt": q, "completion": a, "label": False})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
