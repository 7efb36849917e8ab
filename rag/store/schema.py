"""What one row of the image collection holds: field names, scalar fields, and how a node
points at its image file. Shared by the store, ingestion, the reranker and the display."""

from __future__ import annotations

from typing import Any

PROP_MODEL = "mmsearch.model"
PROP_DIM = "mmsearch.dim"
# Which metadata fields make a row's search text, and whether any row holds text yet.
PROP_TEXT_FIELDS = "mmsearch.text_fields"
PROP_HAS_TEXT = "mmsearch.has_text"
ID_FIELD = "id"
DOC_ID_FIELD = "doc_id"
TEXT_FIELD = "text"
EMBEDDING_FIELD = "embedding"
# The catalog text (``TEXT_FIELD``, a node's text) feeds Milvus' built-in BM25 function, whose
# output is this sparse vector field. Names as in llama-index-vector-stores-milvus (text_key
# "text", sparse_embedding_field "sparse_embedding"), so its stock class can search it too.
SPARSE_FIELD = "sparse_embedding"
BM25_FUNCTION = "text_bm25"
TEXT_MAX_BYTES = 65_535
DEFAULT_TEXT_FIELDS: tuple[str, ...] = ("title", "description")
# Milvus' standard tokenizer (split on word characters, lowercase) with English stop words, so
# an instruction like "a phone case with this" matches on "phone" and "case". The explicit
# lowercase filter and stop-word list read the same on a server and in Milvus Lite.
TEXT_ANALYZER: dict[str, Any] = {
    "tokenizer": "standard",
    "filter": [
        "lowercase",
        {
            "type": "stop",
            "stop_words": [
                "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in",
                "into", "is", "it", "no", "not", "of", "on", "or", "such", "that", "the",
                "their", "then", "there", "these", "they", "this", "to", "was", "will", "with",
            ],
        },
    ],
}  # fmt: skip
ID_MAX_LEN = 64
# `mmsearch reindex` builds COLLECTION + NEW_SUFFIX, then swaps names through COLLECTION +
# OLD_SUFFIX; a run cut short leaves them behind, and opening the collection finishes the swap.
REINDEX_NEW_SUFFIX = "__reindex"
REINDEX_OLD_SUFFIX = "__old"
PROP_REINDEXED = "mmsearch.reindexed"  # set on a rebuilt copy once all rows are in it
# Real scalar fields (filterable fast); everything else in a node's metadata goes to the
# dynamic JSON field. (name, kind, max_length)
SCALAR_FIELDS: tuple[tuple[str, str, int], ...] = (
    ("item_key", "VARCHAR", 4096),
    ("image_path", "VARCHAR", 4096),
    ("content_sha256", "VARCHAR", 64),
    ("source", "VARCHAR", 4096),
    ("title", "VARCHAR", 4096),
    ("category", "VARCHAR", 512),
    ("price", "DOUBLE", 0),
)


def node_image_path(node: Any) -> str | None:
    """A readable file for a result node: the local copy of a URL image, else its path."""
    meta = node.metadata
    return meta.get("local_path") or meta.get("image_path") or getattr(node, "image_path", None)
