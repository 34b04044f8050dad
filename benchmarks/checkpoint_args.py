"""The command line of the benchmarks that read a trained checkpoint on its own data."""

from __future__ import annotations

import argparse
from pathlib import Path


def checkpoint_parser(doc: str) -> argparse.ArgumentParser:
    """A parser described by ``doc``'s first paragraph, taking the checkpoint, its annotations, features and split."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--annotations", type=Path, required=True)
    ap.add_argument("--features", type=Path, required=True)
    ap.add_argument("--split", type=Path, help="the train/test split file the checkpoint was trained with")
    return ap
