"""Milvus: the collection (schema, index, model guard, row helpers) and its LlamaIndex vector
store. Knows nothing of models, reranking, ingestion or the CLI."""
