"""The query engine: retrieval -> postprocessors -> rerank -> `SearchResult`."""
