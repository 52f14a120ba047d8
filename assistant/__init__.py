"""assistant: offline question answering over a document, with verified citations.

The stages, in the order a document and then a question pass through them (one module each):
  loading      a file -> Document (text, hash, id)
  chunking     text -> sentence and chunk Spans (tiktoken-bounded)
  embedding    texts -> vectors (all-MiniLM-L6-v2 on onnxruntime; embedding_export makes its ONNX file)
  indexing     Documents -> a new index generation (Chroma vectors, BM25 through keywords)
  store        the index on disk: layout, manifest, opening it for answering
  retrieval    question -> chunk Passages (dense + BM25, fused by llama-index)
  evidence     Passages -> ranked sentences -> evidence Windows
  reading      Passages + question -> the trained reader's spans and its no-answer score (onnxruntime)
  prompting    Windows + question -> chat messages (from prompts/)
  generation   messages -> the local model's span scores or free text (via llamacpp; remote.py for servers)
  extraction   Windows -> candidate spans, scored by the model (span decoding)
  ranking      candidates -> the chosen span (fitted ranker; span decoding)
  abstention   signals -> answer or "The document does not say." (fitted gate)
  citations    [n] markers checked against exact document spans
  answering    all of the above for one question: Assistant.ask -> Answer
Shared by the stages: spans (the offset type), lexicon (words and stems), fitted (fitted weights),
memo (remembered model work), settings, errors. Shells: cli, ui. Beside the pipeline, never
imported by it: tools/ (eval, fit, report, bench, the reader's training data and training).

Importing the package makes every later run offline: the variables below must be set before
tiktoken, huggingface_hub, chromadb or gradio are first imported, so they are set here.
"""

from assistant import offline

offline.apply()

__version__ = "0.1.0"
