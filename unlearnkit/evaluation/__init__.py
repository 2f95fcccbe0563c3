"""Evaluation building blocks: text metrics, likelihoods, generation, embeddings.

- :mod:`unlearnkit.evaluation.text_metrics`: ROUGE-L, BLEU, distinct-n, exact
  token match (pure Python).
- :mod:`unlearnkit.evaluation.likelihood`: answer NLL, perplexity and
  TruthfulQA-style MC1/MC2 scores of a causal LM.
- :mod:`unlearnkit.evaluation.generation`: batched, order-preserving generation
  with the training template.
- :mod:`unlearnkit.evaluation.embedding`: a cached sentence encoder
  (all-MiniLM-L6-v2) for semantic similarity.

Nothing is imported here, so that ``import unlearnkit.evaluation`` stays cheap;
import the submodule you need.
"""
