"""Visualized BGE: the torch model, checkpoint loading, model directories (hub), preprocessing,
the LlamaIndex ``MultiModalEmbedding`` and the random-weight kit. Knows nothing of Milvus,
reranking, ingestion or the CLI."""
