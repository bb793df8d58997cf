"""The paths a run's steps use, and the inputs a step loads once.

``RunPaths`` is the workspace's layout (:class:`gpt.layout.Workspace`: the DVC outputs under
``data/``, the state under ``.gptops/``) with each step's outputs by key: its folder
``.gptops/runs/<step>/<key>/`` (checkpoints, ``model.safetensors``, ``key.json`` = what the key
was made of, ``result.json`` = the finished step's result).
``Inputs`` loads the tokenizer, the cleaned documents and the fine-tuning tasks at most once per
step.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from gpt import checkpoint as ckpt
from gpt.config import Params
from gpt.data.shards import read_parts
from gpt.data.tokenizer import load_hf_tokenizer, load_tokenizer, pad_id
from gpt.errors import TrainingError
from gpt.layout import Workspace
from gpt.pipeline.keys import StepKey


@dataclass(frozen=True)
class RunPaths(Workspace):
    """The workspace's paths (:class:`gpt.layout.Workspace`) and each step's outputs by key."""

    def step(self, key: StepKey) -> Path:
        return self.step_dir(key.step, key.digest)

    def weights(self, key: StepKey) -> Path:
        return self.step(key) / "model.safetensors"

    def result(self, key: StepKey) -> Path:
        return self.step(key) / "result.json"

    def read_result(self, key: StepKey) -> dict[str, Any] | None:
        """The finished step's result, or None if the step has not finished."""
        path = self.result(key)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except ValueError:  # torn by a crash mid-write of an older version: run it again
            return None

    def write_result(self, key: StepKey, result: dict[str, Any]) -> None:
        """Record the step as finished (written last and atomically: no result, not done)."""
        folder = self.step(key)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "key.json").write_text(json.dumps(key.reads, indent=2, sort_keys=True))
        tmp = folder / f".result.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(result, indent=2, default=str))
        os.replace(tmp, self.result(key))


class Inputs:
    """What steps read from a workspace, each loaded on first use and then kept."""

    def __init__(self, paths: RunPaths, params: Params) -> None:
        self.paths = paths
        self.params = params

    @cached_property
    def tokenizer(self):  # -> tokenizers.Tokenizer
        return load_tokenizer(self.paths.tokenizer)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    @cached_property
    def hf_tokenizer(self):  # -> transformers.PreTrainedTokenizerFast
        # Its model_max_length is set where every registered model gets it:
        # gpt.registry.serving.servable (the exported model's n_positions = model.block_size).
        return load_hf_tokenizer(self.paths.tokenizer)

    @cached_property
    def docs(self) -> pd.DataFrame:
        # The built-in tasks label documents of the built-in corpus: all of them are read.
        return read_parts(self.paths.clean, "clean")

    @cached_property
    def task(self):  # -> gpt.finetune.TaskData
        from gpt.finetune import build_task

        return build_task(self.params.finetune, self.docs)

    @cached_property
    def sft_task(self):  # -> gpt.finetune.SFTTask
        from gpt.finetune import build_docsummary_task, build_sft_file_task

        c = self.params.sft
        if c.task == "file":
            return build_sft_file_task(c.task_path, c.test_fraction, c.seed)
        return build_docsummary_task(self.docs, c.test_fraction, c.seed)

    def weights(self, key: StepKey) -> Path:
        """The finished weights of ``key``'s step.

        Raises:
            TrainingError: the step has not finished (naming the command that runs it).
        """
        path = self.paths.weights(key)
        if self.paths.read_result(key) is None or not path.is_file():
            command = {"pretrain": "pretrain", "finetune": "finetune", "sft": "sft"}[key.step]
            raise TrainingError(f"no finished {key.step} for these data and params (key "
                                f"{key.short}): run `gptops {command}` (or `gptops run`) first")
        return path

    def language_model(self, key: StepKey):  # -> gpt.model.GPT
        """The base or SFT LM trained under ``key``, in eval mode."""
        from gpt.train import build_model

        model = build_model(self.params.model, self.vocab_size)
        ckpt.load_weights(model, self.weights(key))
        return model.eval()

    def classifier(self, key: StepKey):  # -> gpt.finetune.GPTClassifier
        """The classifier fine-tuned under ``key``, in eval mode."""
        from gpt.finetune import GPTClassifier
        from gpt.train import build_model

        body = build_model(self.params.model, self.vocab_size)
        clf = GPTClassifier(body, len(self.task.labels), pad_id(self.tokenizer))
        ckpt.load_weights(clf, self.weights(key))
        return clf.eval()
