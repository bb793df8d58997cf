"""Registered models are safe to use as users use them: any input length, pyfunc and HTTP.

A tiny classifier and a tiny language model (context 32) are registered through
``gpt.registry.register`` into a real MLflow store, then used the ways the README shows:
``mlflow.pyfunc.load_model(...).predict``, ``mlflow models serve`` with JSON requests,
``gptops predict``/``generate`` and a stock ``transformers.pipeline`` on an exported folder.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpt import registry
from gpt.config import PROJECT_PARAMS, load_params
from gpt.errors import ConfigError
from gpt.pipeline.candidates import model_name
from gpt.registry.serving import default_new_tokens
from gpt.registry.tracking import global_uri
from tests.integration.test_registry import candidate, tiny_hf
from tests.serving import free_port

LONG = "word " * 5000  # ~25,000 tokens of the tiny tokenizer, far past the context of 32
CONTEXT = 32
LABELS = ["billing", "login"]
#: The classifier's name as the naming rule derives it for finetune.task_path=.../tickets.csv.
CLF, LM = "gptops-tickets-clf", "safe-lm"


def tiny_classifier(tok: Any) -> Any:
    from transformers import GPT2Config, GPT2ForSequenceClassification

    return GPT2ForSequenceClassification(GPT2Config(
        n_layer=1, n_embd=16, n_head=2, vocab_size=300, n_positions=CONTEXT,
        num_labels=len(LABELS), id2label=dict(enumerate(LABELS)),
        label2id={v: i for i, v in enumerate(LABELS)}, pad_token_id=tok.pad_token_id)).eval()


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One store holding a champion classifier and a champion language model."""
    tmp = tmp_path_factory.mktemp("safe")
    uri = registry.default_tracking_uri(tmp)
    lm, tok = tiny_hf(tmp)
    clf = registry.Candidate(
        kind="task", name=CLF, task="text-classification", metrics={"macro_f1": 0.6},
        eval_hash="e1", spec=registry.GateSpec("macro_f1", True, None),
        keys={"model_key": "clf", "eval_key": "clf"}, tags={}, card=f"# {CLF}\n",
        export=lambda: (tiny_classifier(tok), tok))
    tracking = registry.Tracking(uri, "safe")
    assert registry.register(clf, tracking).champion
    assert registry.register(candidate(LM, lm, tok, 5.0), tracking).champion
    return uri


def pyfunc(uri: str, name: str) -> Any:
    import mlflow

    with global_uri(uri):
        return mlflow.pyfunc.load_model(f"models:/{name}@champion")


def test_pyfunc_classifier_truncates_a_5000_word_input(store):
    out = pyfunc(store, CLF).predict([LONG, "my invoice is wrong"])
    assert list(out.columns) == ["label", "score"] and len(out) == 2
    assert set(out["label"]) <= set(LABELS) and out["score"].between(0, 1).all()


def test_pyfunc_language_model_continues_a_5000_word_prompt(store):
    model = pyfunc(store, LM)
    assert model.model_config["max_new_tokens"] == default_new_tokens(CONTEXT) == 16
    out = model.predict([LONG, "Return the"])
    assert len(out) == 2 and all(isinstance(t, str) for t in out)
    full = model.predict(["Return the"], params={"max_new_tokens": 5, "return_full_text": True})
    assert full[0].startswith("Return the")


def test_the_logged_tokenizer_and_generation_config_carry_the_context(store, tmp_path):
    """What a stock ``transformers.pipeline`` needs on an exported folder."""
    from transformers import pipeline

    clf = registry.load_components(registry.ModelRef(store, CLF))
    assert (clf["tokenizer"].model_max_length, clf["tokenizer"].truncation_side) == (32, "right")
    registry.export_hf(registry.ModelRef(store, LM), tmp_path / "lm")
    gen = pipeline("text-generation", model=str(tmp_path / "lm"))
    assert (gen.tokenizer.model_max_length, gen.tokenizer.truncation_side) == (32, "left")
    assert gen.model.generation_config.max_new_tokens == 16  # not the pipeline's 256
    assert gen("Return the", do_sample=False)[0]["generated_text"].startswith("Return the")
    assert gen(LONG, handle_long_generation="hole", do_sample=False)[0]["generated_text"]


@contextmanager
def served(uri: str, name: str, log: Path) -> Iterator[str]:
    """``mlflow models serve`` of ``models:/<name>@champion``: its URL while it runs."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update({"MLFLOW_TRACKING_URI": uri, "HF_HUB_OFFLINE": "1",
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"})
    with log.open("w") as out:
        proc = subprocess.Popen(["mlflow", "models", "serve", "-m", f"models:/{name}@champion",
                                 "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                                env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def wait_up(url: str, log: Path, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2):
                return
        except OSError:
            if time.time() > deadline:
                pytest.fail(f"{url} did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)


def post(url: str, body: dict[str, Any]) -> Any:
    req = urllib.request.Request(f"{url}/invocations", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.load(r)["predictions"]


def serving_example(uri: str, name: str) -> dict[str, Any]:
    """The request stored with the version (``serving_input_example.json``)."""
    import mlflow

    with global_uri(uri):
        path = mlflow.artifacts.download_artifacts(f"models:/{name}@champion")
    return json.loads((Path(path) / "serving_input_example.json").read_text())


def test_mlflow_models_serve_answers_json_requests_of_any_length(store, tmp_path):
    with ExitStack() as stack:  # both servers start together: one wait instead of two
        clf_url = stack.enter_context(served(store, CLF, tmp_path / "clf.log"))
        lm_url = stack.enter_context(served(store, LM, tmp_path / "lm.log"))
        wait_up(clf_url, tmp_path / "clf.log")
        wait_up(lm_url, tmp_path / "lm.log")

        rows = post(clf_url, {"inputs": [LONG, "cannot log in"]})
        assert [r["label"] in LABELS and 0 <= r["score"] <= 1 for r in rows] == [True, True]
        texts = post(lm_url, {"inputs": [LONG, "Return the"], "params": {"max_new_tokens": 5}})
        assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
        # The stored examples are valid requests as they stand.
        assert len(post(clf_url, serving_example(store, CLF))) == 1
        assert len(post(lm_url, serving_example(store, LM))) == 1


def workspace(tmp_path: Path, uri: str, **sections: dict[str, Any]) -> Path:
    """A folder whose params.yaml is the project's with ``sections`` updated."""
    raw = yaml.safe_load(PROJECT_PARAMS.read_text())
    for section, values in {"registry": {"tracking_uri": uri}, **sections}.items():
        raw[section].update(values)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    return tmp_path


def test_gptops_predict_finds_the_task_files_classifier_and_generate_slides(store, tmp_path):
    """``gptops predict`` without --model finds ``gptops-tickets-clf``; generating past the
    context works through ``gptops generate`` (it slides the window)."""
    from typer.testing import CliRunner

    from gpt.cli import app

    ws = workspace(tmp_path, store, finetune={"task": "file", "task_path": "data/tickets.csv"})
    runner = CliRunner()
    r = runner.invoke(app, ["predict", "-w", str(ws), "--json", LONG, "cannot log in"])
    assert r.exit_code == 0, r.output
    assert [row["label"] in LABELS for row in json.loads(r.stdout)] == [True, True]
    r = runner.invoke(app, ["generate", LONG, "-n", "80", "--model", LM, "-w", str(ws)])
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith(LONG)


@pytest.mark.parametrize(("overrides", "kind", "name"), [
    ([], "task", "gptops-package-clf"),
    ([], "sft", "gptops-sft"),
    (["finetune.task=file", "finetune.task_path=/data/tickets.csv"], "task", "gptops-tickets-clf"),
    (["finetune.task=file", "finetune.task_path=My Tickets (2024).v2.CSV"], "task",
     "gptops-my-tickets-2024-v2-clf"),
    (["finetune.task=file", "finetune.task_path=/d/___.csv"], "task", "gptops-task-clf"),
    (["finetune.task=file", "finetune.task_path=t.csv", "registry.task_model=tickets-clf"],
     "task", "tickets-clf"),
    (["finetune.task=file", "finetune.task_path=t.csv"], "base", "gptops-base"),
    (["sft.task=file", "sft.task_path=/data/faq.jsonl"], "sft", "gptops-faq-sft"),
    (["sft.task=file", "sft.task_path=/data/faq.jsonl"], "task", "gptops-package-clf"),
])
def test_model_name_follows_a_task_file_unless_set(overrides, kind, name):
    assert model_name(kind, load_params(PROJECT_PARAMS, overrides=overrides)) == name


@pytest.mark.parametrize("bad", ["a/b", "clf@v2", "   "])
def test_model_name_refuses_names_mlflow_cannot_address(bad):
    params = load_params(PROJECT_PARAMS, overrides={"registry.task_model": bad})
    with pytest.raises(ConfigError, match=r"registry.task_model = .* --set registry.task_model="):
        model_name("task", params)


#: Lines a library logs (MLflow's "'models:/...' resolved as 'file:///...'", its "params
#: provided to the predict method will override ...", transformers' notices).
LIBRARY_LINE = ("INFO", "WARNING", "Warning:", "mlflow", "resolved as", "will override")


def gptops(ws: Path, *args: str, probe: bool = False) -> subprocess.CompletedProcess:
    """``gptops ARGS -w ws`` in a new process; ``probe`` adds a last stderr line saying whether
    the command imported MLflow and transformers."""
    code = ("import sys\nfrom gpt.cli import main\nsys.argv = ['gptops', *sys.argv[1:]]\n"
            "try:\n    main()\nfinally:\n"
            "    print('imported mlflow:', 'mlflow' in sys.modules, 'transformers:',"
            " 'transformers' in sys.modules, file=sys.stderr)")
    cmd = [sys.executable, "-c", code] if probe else [str(Path(sys.executable).parent / "gptops")]
    return subprocess.run([*cmd, *args, "-w", str(ws)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(Path.cwd())})


def test_generate_predict_export_read_the_files_and_print_no_library_lines(store, tmp_path):
    """The commands a user types after a run print only their own output, and read the
    registered files directly (neither MLflow nor transformers is even imported)."""
    (tmp_path / "ws").mkdir()
    ws = workspace(tmp_path / "ws", store,
                   finetune={"task": "file", "task_path": "data/tickets.csv"})
    runs = {"generate": gptops(ws, "generate", "Return the", "-n", "5", "--model", LM,
                               probe=True),
            "predict": gptops(ws, "predict", "my invoice is wrong", "--json", probe=True),
            "export": gptops(ws, "export", str(tmp_path / "out"), "--model", LM, probe=True)}
    for command, r in runs.items():
        assert r.returncode == 0, (command, r.stderr)
        *lines, probe = r.stderr.splitlines()
        assert probe == "imported mlflow: False transformers: False", command
        output = r.stdout.splitlines() + lines
        assert not [ln for ln in output if any(w in ln for w in LIBRARY_LINE)], (command, output)
    assert runs["generate"].stdout.startswith("Return the")
    assert json.loads(runs["predict"].stdout)[0]["label"] in LABELS
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
        "tokenizer_config.json"]


def test_predict_on_the_files_matches_the_transformers_classifier(store):
    """`gptops predict`'s own classifier (gptops' GPT + tokenizers on the version's files) gives
    the label and score the registered transformers model gives, long inputs included."""
    from gpt.registry.models import predict_labels

    ref = registry.ModelRef(store, CLF)
    texts = [LONG, "my invoice is wrong", "I cannot log in"]
    ours = predict_labels(ref, texts)
    theirs = registry.classify(registry.load_components(ref), texts)
    assert [r["label"] for r in ours] == [r["label"] for r in theirs]
    assert [round(r["score"], 5) for r in ours] == [round(r["score"], 5) for r in theirs]
    assert predict_labels(ref, [""])[0]["label"] in LABELS  # transformers' own fails on ""


def test_a_mistyped_alias_or_version_is_one_line_exit_2(store, tmp_path):
    ws = workspace(tmp_path, store)
    for args, named in ((["generate", "x", "--model", LM, "--alias", "champ"], "'champ'"),
                        (["predict", "x", "--model", CLF, "--version", "7"], "'7'"),
                        (["export", str(tmp_path / "o"), "--model", LM, "--alias", "x"], "'x'")):
        r = gptops(ws, *args)
        output = (r.stdout + r.stderr).strip()
        assert r.returncode == 2, output
        assert len(output.splitlines()) == 1 and named in output, output


def test_the_direct_read_gives_what_mlflow_loads(store):
    """`gptops generate`'s model and tokenizer, read from the version's files, are MLflow's:
    same greedy tokens, same ids and text."""
    import torch

    from gpt.hf import from_hf_lm
    from gpt.registry.models import TextCodec, load_language_model, local_version

    ref = registry.ModelRef(store, LM)
    assert local_version(ref) is not None
    model, codec = load_language_model(ref)
    import mlflow

    with global_uri(store):
        comps = mlflow.transformers.load_model(ref.model_uri, return_type="components")
    theirs = from_hf_lm(comps["model"])
    their_codec = TextCodec.from_transformers(comps["tokenizer"])
    for text in ("Return the", "def f(x):\n    return x  # é", "<|endoftext|> ok"):
        assert codec.encode(text) == their_codec.encode(text)
    ids = codec.encode("Return the")
    assert codec.decode(ids) == their_codec.decode(ids)
    assert codec.eos_token_id == their_codec.eos_token_id
    x = torch.tensor([ids])
    ours = [int(t) for t in model.generate_stream(x, 8, temperature=0)]
    assert ours == [int(t) for t in theirs.generate_stream(x, 8, temperature=0)]
