"""Exports BERT-base (scripts/bert.py: transformers' BertModel, 12 layers, hidden 768, 12 heads,
sequence 128, random weights from seed 1) dense and with its linear layers magnitude-pruned 90%
per layer (#19's target), with PyTorch's legacy exporter (opset 17, a dynamic batch: what
DeepSparse, which reads opsets up to 19 and IR up to 9, was fed) and its default one (opset 20,
IR 10, batch 1): python export-bert.py OUT_DIR (files there already are kept). Also writes the
example inputs OUT_DIR/{input_ids,attention_mask,token_type_ids}.npy (one sequence, its last
quarter masked). Used by scripts/bench-bert; needs torch, transformers, onnxscript and onnx."""
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bert import INPUTS, OUTPUTS, Bert, example  # noqa: E402

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
args = example(1, 128, 30522)
for name, value in zip(INPUTS, args):
    np.save(os.path.join(out, f"{name}.npy"), value.numpy())
for name, sparsity in [("bert_base_s90", 0.9), ("bert_base", 0.0)]:
    legacy, dynamo = (os.path.join(out, f"{name}.{e}.onnx") for e in ("legacy", "dynamo"))
    if os.path.exists(legacy) and os.path.exists(dynamo):
        continue
    model = Bert(12, 768, 12, 3072, seed=1, noise=0.02, sparsity=sparsity)
    torch.onnx.export(model, args, legacy, dynamo=False, input_names=INPUTS, output_names=OUTPUTS,
                      dynamic_axes={n: {0: "batch"} for n in INPUTS}, opset_version=17)
    torch.onnx.export(model, args, dynamo=True, input_names=INPUTS, output_names=OUTPUTS).save(dynamo, external_data=True)
    print(name, "written", file=sys.stderr)
