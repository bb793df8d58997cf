"""Progress reporting: readable throughput, plain lines at an interval, a bar on a terminal."""

from __future__ import annotations

import io
import logging
import re
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from rich.console import Console

from gpt import progress
from gpt.finetune import predict
from gpt.train import Evaluation, LoopSettings, Throughput, run_loop


@pytest.fixture(autouse=True)
def _plain(monkeypatch, caplog):
    """Plain mode, every update logged, records captured; no bar left live between tests."""
    monkeypatch.setenv("GPTOPS_PROGRESS", "plain")
    monkeypatch.setenv("GPTOPS_PROGRESS_INTERVAL", "0")
    monkeypatch.delenv("RANK", raising=False)
    caplog.set_level(logging.INFO, logger="gpt.progress")
    monkeypatch.setattr(progress, "_live", None)


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "gpt.progress"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now


def test_throughput_is_formatted_the_same_way_every_time():
    assert progress.fmt_rate(12510.4) == "12,510 tok/s"
    assert progress.fmt_rate(1524) == "1,524 tok/s"
    assert progress.fmt_rate(0) == "0 tok/s"
    assert progress.fmt_rate(1.251e6) == "1,251,000 tok/s"
    assert progress.fmt_duration(42) == "42s"
    assert progress.fmt_duration(65) == "1m 05s"
    assert progress.fmt_duration(2 * 3600 + 3 * 60) == "2h 03m"


def test_plain_mode_logs_every_update_with_interval_0_and_a_final_line(caplog):
    with progress.phase("pretrain", total=4, unit="step") as p:
        for step in range(4):
            p.update(step + 1, loss=5.0 - step, tokens=12_510)
        assert not p.bar
    lines = _lines(caplog)
    assert len(lines) == 4
    assert lines[0].startswith("pretrain: step 1/4 (25%) loss 5.0000 | ")
    assert all("ETA" in line for line in lines[:3])
    assert all(re.search(r"\| [\d,]+ tok/s \|", line) for line in lines)
    assert "e+" not in " ".join(lines)
    assert lines[-1].startswith("pretrain: step 4/4 (100%) loss 2.0000")
    assert lines[-1].endswith("| done")
    assert not any(hasattr(r, progress.BAR_RECORD_ATTR) for r in caplog.records)


def test_plain_lines_come_at_the_interval_with_window_rate_and_eta(monkeypatch, caplog):
    monkeypatch.setenv("GPTOPS_PROGRESS_INTERVAL", "10")
    clock = FakeClock()
    monkeypatch.setattr(progress, "time", SimpleNamespace(perf_counter=clock.perf_counter))
    with progress.phase("pretrain", total=10, start=0) as p:
        p.note(val_loss=5.3)
        for step in range(10):
            clock.now += 3.0  # 3 s per step, 1,500 tokens per step: 500 tok/s
            p.update(step + 1, loss=4.0, tokens=1500)
    lines = _lines(caplog)
    # 12 s and 24 s after the start (steps 4 and 8), then the final line.
    assert lines == [
        "pretrain: step 4/10 (40%) loss 4.0000 | 500 tok/s | val_loss 5.3 | elapsed 12s "
        "| ETA 18s",
        "pretrain: step 8/10 (80%) loss 4.0000 | 500 tok/s | val_loss 5.3 | elapsed 24s "
        "| ETA 6s",
        "pretrain: step 10/10 (100%) loss 4.0000 | 500 tok/s | val_loss 5.3 | elapsed 30s "
        "| done",
    ]


def test_default_interval_still_logs_the_final_line(monkeypatch, caplog):
    monkeypatch.delenv("GPTOPS_PROGRESS_INTERVAL")
    assert progress.interval() == progress.DEFAULT_INTERVAL
    with progress.phase("sft", total=100, start=40) as p:
        for step in range(40, 100):
            p.update(step + 1, loss=1.5)
    assert _lines(caplog) == [_lines(caplog)[0]]
    assert _lines(caplog)[0].startswith("sft: step 100/100 (100%) loss 1.5000 | elapsed ")


def test_spinner_phase_and_a_failed_phase(caplog):
    with progress.phase("register gptops-base"):
        pass
    with pytest.raises(RuntimeError), progress.phase("evaluate: perplexity", total=3,
                                                     unit="batch") as p:
        p.advance()
        raise RuntimeError("boom")
    lines = _lines(caplog)
    assert re.fullmatch(r"register gptops-base: elapsed \d+s \| done", lines[0])
    assert lines[-1].startswith("evaluate: perplexity: batch 1/3 (33%)")
    assert lines[-1].endswith("| stopped")


def test_track_wraps_an_evaluation_loop(caplog):
    assert list(progress.track(range(3), "evaluate: perplexity", unit="batch")) == [0, 1, 2]
    lines = _lines(caplog)
    assert lines[-1].startswith("evaluate: perplexity: batch 3/3 (100%) | elapsed")


def test_only_rank_0_reports(monkeypatch, caplog):
    monkeypatch.setenv("RANK", "1")
    with progress.phase("pretrain", total=2) as p:
        p.update(2, loss=1.0)
    assert _lines(caplog) == []


def _bar_console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, width=200, color_system=None), out


def test_interactive_mode_draws_the_bar_and_marks_records(monkeypatch, caplog):
    monkeypatch.setenv("GPTOPS_PROGRESS", "bar")
    assert progress.interactive()
    console, out = _bar_console()
    with progress.phase("pretrain", total=5, console=console) as p:
        assert p.bar
        for step in range(5):
            p.update(step + 1, loss=3.25, tokens=12_510)
        p.note(val_loss=3.5)
    text = out.getvalue()
    assert "pretrain" in text
    assert "5/5 step" in text
    assert "loss 3.2500" in text
    assert re.search(r"[\d,]+ tok/s", text)
    assert "val_loss 3.5" in text
    records = [r for r in caplog.records if r.name == "gpt.progress"]
    assert records and all(getattr(r, progress.BAR_RECORD_ATTR) is True for r in records)
    # What a terminal handler does with them, and what Prefect's handler (no filter) keeps.
    assert not any(progress.BarRecordFilter().filter(r) for r in records)
    assert records[-1].getMessage().startswith("pretrain: step 5/5 (100%)")


def test_a_nested_phase_falls_back_to_plain_lines(monkeypatch, caplog):
    monkeypatch.setenv("GPTOPS_PROGRESS", "bar")
    console, _ = _bar_console()
    with progress.phase("pretrain", total=2, console=console) as outer:
        with progress.phase("evaluate: val", total=1, console=console) as inner:
            inner.update(1)
        outer.update(2)
        assert outer.bar and not inner.bar
    by_name = {r.getMessage().split(":")[0]: r for r in caplog.records if r.name == "gpt.progress"}
    assert not hasattr(by_name["evaluate"], progress.BAR_RECORD_ATTR)
    assert getattr(by_name["pretrain"], progress.BAR_RECORD_ATTR) is True
    assert progress._live is None


class _TwoParams(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0, -1.0]))


def _settings(steps: int = 5, kind: str = "finetune") -> LoopSettings:
    return LoopSettings(kind=kind, max_steps=steps, lr=0.1, min_lr=0.01, warmup_steps=1,
                        grad_accum=1, grad_clip=1.0, max_nonfinite_steps=5)


def test_fine_tuning_logs_progress_without_tokens_per_sec(caplog):
    """The bug: run_loop logged only when tokens/s was known, so fine-tuning and SFT were silent."""
    model = _TwoParams()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    result = run_loop(model, lambda m, step, micro: (m.w ** 2).sum(), opt, _settings(),
                      torch.device("cpu"))
    assert result.steps == 5
    lines = _lines(caplog)
    assert [line.split(" loss")[0] for line in lines] == [
        f"finetune: step {i}/5 ({20 * i}%)" for i in range(1, 6)]
    assert "ETA" in lines[0] and lines[-1].endswith("| done")
    assert not any("tok/s" in line for line in lines)


def test_pretraining_progress_shows_tokens_per_sec_and_val_loss(caplog):
    model = _TwoParams()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    seen = []
    run_loop(model, lambda m, step, micro: (m.w ** 2).sum(), opt, _settings(4, "pretrain"),
             torch.device("cpu"), evaluation=Evaluation(lambda m: {"val_loss": 0.25}, 4),
             throughput=Throughput(4096, 25),
             callback=lambda step, metrics: seen.append(metrics))
    final = _lines(caplog)[-1]
    assert final.startswith("pretrain: step 4/4 (100%) loss ")
    assert re.search(r"\| [\d,]+ tok/s \| val_loss 0\.25 \|", final)
    assert "tokens_per_sec" in seen[-1]  # the metrics callback still gets it


def test_classifier_predict_reports_per_batch(caplog):
    class Clf(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(1, 3)

        def forward(self, idx: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
            return self.head(idx[:, :1].float())

    ids = torch.zeros((5, 4), dtype=torch.long)
    out = predict(Clf(), ids, torch.ones(5, dtype=torch.long), batch_size=2)
    assert out.shape == (5,)
    assert _lines(caplog)[-1].startswith("evaluate: classify: batch 3/3 (100%)")


def test_a_counted_phase_s_records_carry_their_count_and_its_lines_parse_back(caplog):
    """A handler follows a step by the count on its records (the Prefect progress artifact),
    and a line relayed from another rank parses back to the same count."""
    import logging

    from gpt import progress

    with caplog.at_level(logging.INFO, logger="gpt.progress"):
        with progress.phase("pretrain", total=4, unit="step", bar=False) as p:
            p.update(3, loss=1.0)
            p.update(4, loss=0.5)
        with progress.phase("register m", bar=False):
            pass
    counted = [progress.done_of(r) for r in caplog.records]
    assert counted[-2] == progress.Done("pretrain", "step", 4, 4) and counted[-1] is None
    assert counted[-2].percent == 100.0
    assert progress.parse_line(caplog.records[-2].getMessage()) == counted[-2]
    assert progress.parse_line("register m: elapsed 0s | done") is None


def test_rank_0_s_relayed_progress_lines_keep_their_count(caplog):
    """A step on several processes: the launcher relays rank 0's lines with their count, so the
    Prefect progress artifact follows it; other ranks' lines carry none."""
    import logging

    from gpt import launch, progress

    with caplog.at_level(logging.INFO, logger="gpt.launch"):
        for rank in (0, 1):
            launch._Relay._emit(rank, "INFO\tgpt.progress\tpretrain: step 3/4 (75%) | elapsed 1s")
        launch._Relay._emit(0, "INFO\tgpt.train\tpretrain: step 3/4 (75%) said elsewhere")
    counted = [progress.done_of(r) for r in caplog.records]
    assert counted == [progress.Done("pretrain", "step", 3, 4), None, None]
    assert caplog.records[0].getMessage().startswith("[rank0] pretrain: step 3/4")
