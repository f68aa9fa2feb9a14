#!/usr/bin/env bash
# GPU figures: accuracy in fp32 and fp16, in-process throughput by batch size and stage by
# stage, the same answer in any batch, and HTTP (peak and p99 at half of peak load, one and
# several workers sharing the GPU), all on CUDA. Needs a CUDA build of torch and wrk.
#
#   make bench-gpu                    # or: PYTHON=python3 bash bench/gpu.sh
#
# Settings (environment): PYTHON, MODEL, RESULTS (where the JSON files go), DURATION
# (seconds per HTTP point), DEVICE (cuda; cpu only to try the script out), SAMPLE and
# LIMIT (0 = full test splits / all 5,000 benchmark sentences; smaller for a dry run),
# CONCURRENCY (HTTP connection counts), WORKERS (uvicorn workers sharing the GPU in the last
# HTTP point), STEPS (which of "eval inprocess stages viterbi invariance http" to run; all by
# default), CORPORA (the test splits eval scores; pd98-test and at least one NER corpus for the
# report), HTTP_ROUNDS (the stage step's ner-serve and bare-framework points, each, in turns).
# eval reads cluener-test and resume-test from NER_DATA_DIR (../shared/data).
# Each step runs even if one before it failed; the exit status says whether all passed.
set -u
PYTHON=${PYTHON:-.venv/bin/python}
MODEL=${MODEL:-model/artifacts/default}
RESULTS=${RESULTS:-bench/results/gpu}
DURATION=${DURATION:-5}
HTTP_ROUNDS=${HTTP_ROUNDS:-2}
DEVICE=${DEVICE:-cuda}
SAMPLE=${SAMPLE:-0}
LIMIT=${LIMIT:-0}
CONCURRENCY=${CONCURRENCY:-1,8,64,256}
WORKERS=${WORKERS:-4}
STEPS=${STEPS:-eval inprocess stages viterbi invariance http}
CORPORA=${CORPORA:-msra-test pd98-test cluener-test resume-test}
mkdir -p "$RESULTS"
failed=0
step() {
    echo "+ $*" >&2
    "$@" || { echo "FAILED ($?): $*" >&2; failed=1; }
}

if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$RESULTS/card.txt"
fi
"$PYTHON" -c 'import platform, torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "python", platform.python_version())' >>"$RESULTS/card.txt"

# Accuracy: fp16 is only worth offering if it holds the fp32 figures.
if [[ " $STEPS " == *" eval "* ]]; then
    for precision in fp32 fp16; do
        for corpus in $CORPORA; do
            step "$PYTHON" -m training.evaluate --model "$MODEL" --corpus "$corpus" --device "$DEVICE" --precision "$precision" \
                --sample "$SAMPLE" --no-peers --json "$RESULTS/eval-$corpus-$precision.json"
        done
    done
fi

# In-process: batch 1 (fp32) for the arrival-order ratio; large batches for the peak.
if [[ " $STEPS " == *" inprocess "* ]]; then
    step "$PYTHON" -m bench.throughput --model "$MODEL" --device "$DEVICE" --precision fp32 --rounds 1 --limit "$LIMIT" \
        --batch-sizes 1,32,128,512,2048 --out "$RESULTS/inprocess-fp32.json"
    step "$PYTHON" -m bench.throughput --model "$MODEL" --device "$DEVICE" --precision fp16 --rounds 1 --limit "$LIMIT" \
        --batch-sizes 32,128,512,2048 --out "$RESULTS/inprocess-fp16.json"
fi

# Where the time goes: the network on the GPU, everything else on one CPU thread.
if [[ " $STEPS " == *" stages "* ]]; then
    # fp32 also over HTTP, beside the bare framework (one sentence per request, 64 connections).
    step "$PYTHON" -m bench.stages --model "$MODEL" --device "$DEVICE" --precision fp32 --batch-size 2048 --limit "$LIMIT" \
        --http --duration "$DURATION" --http-rounds "$HTTP_ROUNDS" --out "$RESULTS/stages-fp32.json"
    step "$PYTHON" -m bench.stages --model "$MODEL" --device "$DEVICE" --precision fp16 --batch-size 2048 --limit "$LIMIT" \
        --out "$RESULTS/stages-fp16.json"
fi

# The Viterbi decoders in the whole tagger: the parallel scan (what CUDA runs) against the loop.
if [[ " $STEPS " == *" viterbi "* ]]; then
    step "$PYTHON" -m bench.viterbi --model "$MODEL" --device "$DEVICE" --limit "$LIMIT" --out "$RESULTS/viterbi.json"
fi

# The same text gets the same answer in any batch: the property test on CUDA (fp32, fp16), and
# under 64-client load against the server with default settings (fp32 on CUDA).
if [[ " $STEPS " == *" invariance "* ]]; then
    step "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_properties.py -k same_tags
    step "$PYTHON" -m bench.same_answer --model "$MODEL" --rounds 1 --server-env NER_DEVICE="$DEVICE" --json "$RESULTS/same-answer-fp32.json"
    step "$PYTHON" -m bench.same_answer --model "$MODEL" --rounds 1 --server-env NER_DEVICE="$DEVICE" --server-env NER_PRECISION=fp16 \
        --json "$RESULTS/same-answer-fp16.json"
fi

# HTTP: the defaults (fp32 on CUDA, batches of at most 64 sentences / 12,000 characters),
# batching on and off; then the larger batches a GPU can use, in fp32 and in fp16.
LARGE_BATCHES=(--server-env NER_MAX_BATCH_SENTENCES=512 --server-env NER_MAX_BATCH_CHARS=40000 --server-env NER_QUEUE_CAPACITY=16384)
if [[ " $STEPS " == *" http "* ]]; then
    step "$PYTHON" -m bench.http_load --model "$MODEL" --device "$DEVICE" --precision fp32 --servers on,off --duration "$DURATION" \
        --concurrency "$CONCURRENCY" --out "$RESULTS/http-fp32.json"
    for precision in fp32 fp16; do
        step "$PYTHON" -m bench.http_load --model "$MODEL" --device "$DEVICE" --precision "$precision" --servers on --duration "$DURATION" \
            --concurrency "$CONCURRENCY" "${LARGE_BATCHES[@]}" --out "$RESULTS/http-$precision-large-batches.json"
    done
    # The CPU work around the GPU (parsing, atoms, spans, JSON) spread over several processes.
    step "$PYTHON" -m bench.http_load --model "$MODEL" --device "$DEVICE" --precision fp32 --servers on --duration "$DURATION" \
        --concurrency "$CONCURRENCY" --workers "$WORKERS" "${LARGE_BATCHES[@]}" --out "$RESULTS/http-fp32-large-batches-$WORKERS-workers.json"
fi
exit $failed
