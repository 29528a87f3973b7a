"""BERT as `transformers` builds it (BertModel: embeddings, encoder layers, pooler), with random
weights from a seed and, optionally, every linear layer of the encoder and pooler magnitude-pruned
per layer (embeddings and layer norms dense; attention's products have no weights), as #19's
"linear layers pruned 90%" asks. One description for the fixtures (make-torch-fixtures.py) and the
full-size benchmark (export-bert.py). Inputs: input_ids, attention_mask, token_type_ids (int64);
outputs: last_hidden_state, pooler_output."""
import torch
import torch.nn as nn
import torch.nn.utils.prune as prune


class Bert(nn.Module):
    def __init__(self, layers, hidden, heads, intermediate, vocab=30522, positions=512, seed=0, noise=0.0, sparsity=0.0):
        super().__init__()
        from transformers import BertConfig, BertModel

        config = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                            intermediate_size=intermediate, max_position_embeddings=positions)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.bert = BertModel(config)
            with torch.no_grad():
                # BERT's initialisation leaves biases and norm shifts at 0: noise makes every
                # parameter count in a comparison.
                for p in self.bert.parameters():
                    p.add_(torch.randn_like(p) * noise)
        if sparsity > 0:
            for m in self.bert.modules():
                if isinstance(m, nn.Linear):
                    prune.l1_unstructured(m, "weight", sparsity)
                    prune.remove(m, "weight")
        self.eval()

    def forward(self, input_ids, attention_mask, token_type_ids):
        out = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return out.last_hidden_state, out.pooler_output


INPUTS = ["input_ids", "attention_mask", "token_type_ids"]
OUTPUTS = ["last_hidden_state", "pooler_output"]


def example(batch, sequence, vocab, seed=12):
    """Token ids, an attention mask hiding the last quarter of the first sample, token types."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, sequence), generator=g)
    mask = torch.ones(batch, sequence, dtype=torch.int64)
    mask[0, sequence - sequence // 4:] = 0
    types = torch.randint(0, 2, (batch, sequence), generator=g)
    return ids, mask, types
