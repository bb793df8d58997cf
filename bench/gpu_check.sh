#!/usr/bin/env bash
# The GPU checks of gptops, in one run of at most ~8 minutes on a lent GPU machine:
#   bash bench/gpu_check.sh            (from the repository root; writes bench/gpu_check.out)
# 1. the card, driver and torch;
# 2. bench/bench_train.py on GPT-2 124M's shape, CUDA, bf16, torch.compile: tokens/s and MFU
#    (nanoGPT's formula, H100/H200 bf16 dense peak 989 TFLOPS; target >= 45 %);
# 3. the fused linear + cross-entropy (gpt/loss.py) on CUDA against F.cross_entropy;
# 4. `gptops run --profile gpt2-124m --max-steps 50` end to end on CUDA (launch.nproc_per_node=auto:
#    one process per GPU, through torch's elastic launcher when there are several);
# 5. 2-rank FSDP2/NCCL pretraining when the machine has 2 GPUs or more;
# 6. GPT-2 small's published benchmark figures (docs/evaluation.md) through `gptops import hf:gpt2`,
#    when gpt2, lambada_openai and hellaswag are in the Hugging Face cache (the lent machine
#    reaches nothing outside, so copy the cache there first).
# Copy the figures, with the card's name, into bench/RESULTS.md.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench}/gpu_check.out
mkdir -p "$(dirname "$OUT")"
exec > >(tee "$OUT") 2>&1
[ -x .venv/bin/python ] || bash scripts/setup.sh
PY=.venv/bin/python
echo "== 1. machine"; date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"

echo "== 2. bench_train: GPT-2 124M shape, bf16, compile"
timeout 240 $PY bench/bench_train.py --device cuda --dtype bf16 --compile --n-layer 12 --n-embd 768 \
  --n-head 12 --block-size 1024 --batch 16 --vocab-size 50304 --steps 20 --warmup 5 --repeats 3

echo "== 3. fused loss vs F.cross_entropy on CUDA"
timeout 60 $PY - <<'PY'
import torch, torch.nn.functional as F
from gpt.loss import linear_cross_entropy
torch.manual_seed(0)
N, C, V = 8192, 768, 50304
x = torch.randn(N, C, device="cuda", requires_grad=True)
w = (torch.randn(V, C, device="cuda") * 0.02).requires_grad_()
y = torch.randint(0, V, (N,), device="cuda")
ours = linear_cross_entropy(x, w, y); ours.backward(); gx, gw = x.grad.clone(), w.grad.clone()
x.grad = w.grad = None
ref = F.cross_entropy(x @ w.T, y); ref.backward()
print(f"loss ours {ours.item():.6f} ref {ref.item():.6f} |diff| {abs(ours.item() - ref.item()):.2e}")
print(f"grad x max|diff| {(gx - x.grad).abs().max().item():.2e}  grad w max|diff| {(gw - w.grad).abs().max().item():.2e}")
PY

echo "== 4. gptops run --profile gpt2-124m --max-steps 50 on CUDA"
WS=$(mktemp -d)/ws; mkdir -p "$WS"; git -C "$WS" init -q
( cd "$WS" && time timeout 300 "$OLDPWD/.venv/bin/gptops" run -w "$WS" --profile gpt2-124m --max-steps 50 \
    --set finetune.max_steps=20 --set sft.max_steps=20 --set evaluate.ppl_batches=5 )

NGPU=$(nvidia-smi -L | wc -l)
if [ "$NGPU" -ge 2 ]; then
  echo "== 5. FSDP2 on 2 GPUs (NCCL) through the launcher"
  ( cd "$WS" && timeout 240 "$OLDPWD/.venv/bin/gptops" pretrain -w "$WS" --profile gpt2-124m \
      --set train.max_steps=20 --set launch.nproc_per_node=2 --set launch.strategy=fsdp )
else
  echo "== 5. skipped: $NGPU GPU (FSDP2 over NCCL needs 2)"
fi
echo "== 6. GPT-2's published figures (LAMBADA ppl 35.13 / acc 45.99 %, HellaSwag acc_norm ~0.31)"
if HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $PY -c "
import datasets as d, huggingface_hub as h
h.snapshot_download('gpt2', local_files_only=True)
d.load_dataset('EleutherAI/lambada_openai', 'default'); d.load_dataset('Rowan/hellaswag')" \
    >/dev/null 2>&1; then
  G=$(mktemp -d)/gpt2-eval; mkdir -p "$G"; git -C "$G" init -q
  B=(--set "evaluate.benchmarks=[lambada_openai,hellaswag]" --set evaluate.max_items=0)
  ( cd "$G" && export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
    && timeout 600 "$OLDPWD/.venv/bin/gptops" run --init -w "$G" --profile gpt2-continue \
         --set tokenizer.pretrained=hf:gpt2 --set sft.enabled=false "${B[@]}" \
    && timeout 600 "$OLDPWD/.venv/bin/gptops" import hf:gpt2 -w "$G" --profile gpt2-continue "${B[@]}" \
    && "$OLDPWD/.venv/bin/gptops" models -w "$G" --name gptops-base )
else
  echo "skipped: gpt2, lambada_openai or hellaswag is not in the Hugging Face cache"
fi
echo "== done"
